"""Text, markdown and PNG reporting of a TBX11K evaluation report dict.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no
global backend switch), so they work headless and do not disturb other
users of matplotlib in the process.
"""
import os.path as osp
from typing import List, Optional

import numpy as np


def pct(v: Optional[float], nd: int = 1) -> str:
    """A fraction as a percentage string, ``n/a`` for None.

    Args:
        v (float, optional): The fraction.
        nd (int): Decimals. Defaults to 1.

    Returns:
        str: The percentage.
    """
    return 'n/a' if v is None else f'{100.0 * v:.{nd}f}'


def num(v: Optional[float], nd: int = 3) -> str:
    """A number as a string, ``n/a`` for None.

    Args:
        v (float, optional): The number.
        nd (int): Decimals. Defaults to 3.

    Returns:
        str: The number.
    """
    return 'n/a' if v is None else f'{v:.{nd}f}'


def detection_rows(report: dict) -> List[List[str]]:
    """Rows ``name, ALL AP50, ALL AP, TB-only AP50, TB-only AP``.

    Args:
        report (dict): The metric's report (see :class:`~tbx11k.evaluation.TBX11KMetric`).

    Returns:
        List[List[str]]: The rows.
    """
    m = report['metrics']
    rows = [[
        'Category-agnostic TB',
        pct(m.get('TB_AP50_all')),
        pct(m.get('TB_AP_all')),
        pct(m.get('TB_AP50_tbonly')),
        pct(m.get('TB_AP_tbonly'))
    ]]
    for short in report['class_keys']:
        rows.append([
            short,
            pct(m.get(f'{short}_AP50_all')),
            pct(m.get(f'{short}_AP_all')),
            pct(m.get(f'{short}_AP50_tbonly')),
            pct(m.get(f'{short}_AP_tbonly'))
        ])
    rows.append([
        'mean over classes with GT',
        pct(m.get('bbox_mAP_50')),
        pct(m.get('bbox_mAP')),
        pct(m.get('bbox_mAP_50_tbonly')),
        pct(m.get('bbox_mAP_tbonly'))
    ])
    return rows


DET_HEADER = ['', 'ALL AP50', 'ALL AP', 'TB-only AP50', 'TB-only AP']

BINARY_ACCURACY_NOTE = (
    'Binary accuracy is TB vs non-TB (two classes). The official tables\' '
    'Accuracy is 3-class (healthy / sick-non-TB / TB) and needs a healthy vs '
    'sick decision that boxes cannot give.')


def max_dets_text(report: dict) -> str:
    """``100``, or ``100 (AP), 1000 (AP50, AP75)`` for the official setting."""
    ap50 = report.get('max_dets_ap50_ap75', report['max_dets'])
    if ap50 == report['max_dets']:
        return f"{report['max_dets']}"
    return f"{report['max_dets']} (AP), {ap50} (AP50, AP75)"


def log_tables(report: dict) -> str:
    """Plain-text tables for the log.

    Args:
        report (dict): The metric's report (see :class:`~tbx11k.evaluation.TBX11KMetric`).

    Returns:
        str: The tables.
    """
    from terminaltables import AsciiTable
    c = report['classification']
    fr = report['froc']
    head = (f"TBX11K evaluation  weights={report.get('weights_tag') or '-'}  "
            f"images={report['num_images']} (TB {report['num_tb_images']})  "
            f"GT boxes={report['num_gt_boxes']}  "
            f"maxDets={max_dets_text(report)}")
    det = AsciiTable([DET_HEADER] + detection_rows(report),
                     'COCO bbox AP (%)').table
    froc = AsciiTable([
        ['FP/image'] + [f'{r:g}' for r in fr['fppi']] + ['mean'],
        ['sensitivity (%)'] + [pct(s) for s in fr['sensitivity']] +
        [pct(fr['mean'])]
    ], 'FROC, category-agnostic, ALL images, IoU>=0.5').table
    cls = AsciiTable([
        ['AUC', 'threshold', 'sensitivity', 'specificity', 'binary accuracy'],
        [
            pct(c['auc']),
            f"{num(c['threshold'], 4)} ({c['threshold_source']})",
            pct(c['sensitivity']),
            pct(c['specificity']),
            pct(c['binary_accuracy'])
        ]
    ], 'image-level TB vs non-TB (%)').table
    return '\n'.join([head, det, froc, cls])


def markdown(report: dict) -> str:
    """The ``metrics.md`` summary.

    Args:
        report (dict): The metric's report (see :class:`~tbx11k.evaluation.TBX11KMetric`).

    Returns:
        str: The markdown text.
    """
    c = report['classification']
    fr = report['froc']
    out = ['# TBX11K evaluation', '']
    out.append(f"- weights: {report.get('weights_tag') or 'not stated'}")
    out.append(f"- annotations: `{report['ann_file']}`")
    out.append(f"- classes evaluated: {', '.join(report['classes'])}")
    out.append(f"- images: {report['num_images']} "
               f"({report['num_tb_images']} with TB boxes); GT boxes: "
               f"{report['num_gt_boxes']}")
    if report.get('step'):
        out.append(f"- step: {report['step']}")
    out += [
        '', f"## Detection: COCO bbox AP (%), maxDets={max_dets_text(report)}",
        '', '| ' + ' | '.join(DET_HEADER) + ' |',
        '|' + '---|' * len(DET_HEADER)
    ]
    for r in detection_rows(report):
        out.append('| ' + ' | '.join(r) + ' |')
    out += [
        '', 'AP = AP@[.50:.95], AP50 = AP@.50. ALL = every evaluated image '
        '(every image of the annotation file the dataloader served); TB-only = '
        'images with at least one TB box. '
        'Classes without ground truth are n/a and are left out of the mean.',
        '', '## FROC (category-agnostic, ALL images)', '',
        '| FP/image | ' + ' | '.join(f'{r:g}' for r in fr['fppi']) +
        ' | mean |', '|' + '---|' * (len(fr['fppi']) + 2),
        '| sensitivity (%) | ' + ' | '.join(pct(s)
                                            for s in fr['sensitivity']) +
        f" | {pct(fr['mean'])} |", '', fr['rule'], '',
        '## Image-level classification: TB vs non-TB', '',
        '| AUC | threshold | sensitivity | specificity | binary accuracy |',
        '|---|---|---|---|---|',
        f"| {pct(c['auc'])} | {num(c['threshold'], 4)} | "
        f"{pct(c['sensitivity'])} | {pct(c['specificity'])} | "
        f"{pct(c['binary_accuracy'])} |", '',
        f"Threshold: {c['threshold_source']}. Confusion: TP={c['tp']} "
        f"FN={c['fn']} TN={c['tn']} FP={c['fp']}.", '', c['task'], '',
        BINARY_ACCURACY_NOTE
    ]
    if report.get('notes'):
        out += ['', '## Notes', ''] + [f'- {n}' for n in report['notes']]
    return '\n'.join(out) + '\n'


def _canvas(w=6.0, h=4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def plot_froc(path: str, curve_fppi: np.ndarray, curve_sens: np.ndarray,
              report: dict) -> None:
    """Plot the FROC curve and the reported operating points to ``path``.

    Args:
        path (str): The PNG file.
        curve_fppi (np.ndarray): The curve's false positives per image.
        curve_sens (np.ndarray): The curve's sensitivities.
        report (dict): The metric's report (see :class:`~tbx11k.evaluation.TBX11KMetric`).
    """
    fr = report['froc']
    fig, ax = _canvas()
    lo = min(fr['fppi']) / 2
    x = np.clip(curve_fppi, lo, None)
    ax.step(x, curve_sens, where='post', label='FROC')
    if fr['sensitivity'][0] is not None:
        ax.plot(fr['fppi'], fr['sensitivity'], 'o',
                label=f"reported points (mean {pct(fr['mean'])}%)")
    ax.set_xscale('log', base=2)
    ax.set_xlim(lo, max(fr['fppi']) * 2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel('average false positives per image')
    ax.set_ylabel('lesion sensitivity')
    ax.set_title('FROC, category-agnostic TB, IoU >= 0.5')
    ax.grid(True, alpha=.3)
    ax.legend(loc='lower right')
    fig.tight_layout()
    fig.savefig(path)


def plot_pr(path: str, rec_thrs: np.ndarray, curves: List[tuple]) -> None:
    """Plot precision-recall curves to ``path``.

    Args:
        path (str): The PNG file.
        rec_thrs (np.ndarray): The recall thresholds.
        curves (List[tuple]): ``(label, precision array over rec_thrs or None, AP50)``.
    """
    fig, ax = _canvas()
    for label, prec, ap50 in curves:
        if prec is None:
            ax.plot([], [], label=f'{label} (no GT)')
            continue
        ax.plot(rec_thrs, prec, label=f'{label} (AP50 {pct(ap50)})')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_title('precision-recall at IoU 0.5, ALL images')
    ax.grid(True, alpha=.3)
    ax.legend(loc='upper right')
    fig.tight_layout()
    fig.savefig(path)


#: the most and fewest bars of the image score histogram
MAX_SCORE_BINS = 60
MIN_SCORE_BINS = 10


def score_bin_edges(scores: np.ndarray,
                    thr: Optional[float] = None) -> np.ndarray:
    """Bin edges of the image score histogram over the scores' own range
    (with the threshold): numpy's ``'auto'`` rule kept between
    ``MIN_SCORE_BINS`` and ``MAX_SCORE_BINS`` bars, so that scores in a
    narrow range (a short run's 0.30-0.31) spread over several bars instead
    of falling into one bar of a fixed 0-1 grid.

    Args:
        scores: image scores (any shape; non-finite values are left out).
        thr: the classification threshold, drawn on the same axis.

    Returns:
        increasing bin edges.
    """
    finite = np.asarray(scores, dtype=np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    points = finite
    if thr is not None and np.isfinite(thr):
        points = np.append(points, float(thr))
    if points.size == 0:
        return np.linspace(0.0, 1.0, MIN_SCORE_BINS + 1)
    low, high = float(points.min()), float(points.max())
    if high - low <= 1e-9 * max(1.0, abs(high)):  # one value: a fixed pad
        pad = max(0.01, 0.05 * abs(high))
        low, high = low - pad, high + pad
    edges = np.histogram_bin_edges(finite if finite.size else points, 'auto',
                                   range=(low, high))
    bins = len(edges) - 1
    if not MIN_SCORE_BINS <= bins <= MAX_SCORE_BINS:
        bins = min(max(bins, MIN_SCORE_BINS), MAX_SCORE_BINS)
        edges = np.linspace(low, high, bins + 1)
    return edges


def score_hist_figure(scores: np.ndarray, labels: np.ndarray,
                      thr: Optional[float]):
    """The figure of ``score_hist.png``: image TB scores of TB and non-TB
    images, bins from :func:`score_bin_edges`, the threshold dashed."""
    fig, ax = _canvas()
    bins = score_bin_edges(scores, thr)
    from matplotlib.ticker import MaxNLocator
    labels = labels.astype(bool)
    counts = [ax.hist(scores[~labels], bins=bins, alpha=.6,
                      label=f'non-TB images (n={int((~labels).sum())})')[0],
              ax.hist(scores[labels], bins=bins, alpha=.6,
                      label=f'TB images (n={int(labels.sum())})')[0]]
    if thr is not None and np.isfinite(thr):
        ax.axvline(thr, color='k', ls='--', label=f'threshold {thr:.3f}')
    ax.set_xlim(bins[0], bins[-1])
    top = max([float(c.max()) for c in counts if c.size] + [1.0])
    if top > 100:  # thousands of images: the few in the tails stay visible
        ax.set_yscale('log')
        ax.set_ylim(0.7, top * 8)
    else:  # room above the bars for the legend
        ax.set_ylim(0, top * 1.45)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('image TB score (highest box score)')
    ax.set_ylabel('images')
    ax.set_title('image score: TB vs non-TB images')
    ax.legend(loc='upper center', ncol=3, fontsize=8)
    fig.tight_layout()
    return fig


def plot_score_hist(path: str, scores: np.ndarray, labels: np.ndarray,
                    thr: Optional[float]) -> None:
    score_hist_figure(scores, labels, thr).savefig(path)


def write_plots(out_dir: str, report: dict, curves: dict) -> List[str]:
    """Write ``froc.png``, ``pr_curves.png`` and ``score_hist.png`` to ``out_dir``.

    Args:
        out_dir (str): The folder.
        report (dict): The metric's report (see :class:`~tbx11k.evaluation.TBX11KMetric`).
        curves (dict): The curves (``froc_fppi``, ``froc_sens``, ``rec_thrs``, ``pr``,
            ``img_scores``, ``img_labels``).

    Returns:
        List[str]: The PNG files.
    """
    paths = [
        osp.join(out_dir, 'froc.png'),
        osp.join(out_dir, 'pr_curves.png'),
        osp.join(out_dir, 'score_hist.png')
    ]
    plot_froc(paths[0], curves['froc_fppi'], curves['froc_sens'], report)
    plot_pr(paths[1], curves['rec_thrs'], curves['pr'])
    plot_score_hist(paths[2], curves['img_scores'], curves['img_labels'],
                    report['classification']['threshold'])
    return paths
