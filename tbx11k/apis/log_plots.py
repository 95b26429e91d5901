"""PNG plots of a training run from mmengine's json logs.

mmengine (``LocalVisBackend``) writes one ``WORK_DIR/<timestamp>/vis_data/scalars.json`` per
session, one json object per line:

- train records (every ``LoggerHook`` interval): ``lr``, ``loss``, the loss terms, ``grad_norm``,
  ``epoch``, ``iter``, ``step``; with :class:`~tbx11k.engine.loops.AccumulationEpochBasedTrainLoop`
  ``step``/``iter`` count optimizer steps. Values are means over the logging interval.
- val records (after each validation): the metric keys (``tbx11k/...`` or ``coco/...``), ``time``,
  ``data_time`` and ``step`` = the epoch just finished.

A work dir resumed N times holds N+1 sessions. They are merged in timestamp order and a later
session wins: where it starts, the earlier sessions' records from that point on are dropped,
since training restarted from a checkpoint there. The start is the resume point its text log
(``<timestamp>/<timestamp>.log``) gives (mmengine's ``resumed epoch: E, iter: I``), else its
first train record's step / epoch: with another logging interval than the earlier session the
first record lies past the resume point, and records of the retrained steps were kept. A session
that logged nothing (crashed at start) is ignored.
"""
import fnmatch
import glob
import json
import math
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

BOOKKEEPING = ('step', 'epoch', 'iter', 'time', 'data_time', 'memory', 'base_lr')
#: val metrics plotted by default when present (detection AP panel / image-level panel)
DEFAULT_AP_KEYS = ('tbx11k/TB_AP50_all', 'tbx11k/TB_AP_all', 'tbx11k/TB_AP50_tbonly',
                   'tbx11k/ActiveTB_AP50_all', 'tbx11k/LatentTB_AP50_all', 'tbx11k/bbox_mAP_50',
                   'tbx11k/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP', 'coco/bbox_mAP_75')
DEFAULT_IMAGE_KEYS = ('tbx11k/FROC_mean', 'tbx11k/AUC', 'tbx11k/sensitivity',
                      'tbx11k/specificity')
LAYER_PREFIX = re.compile(r'^d(\d+)\.')


@dataclass
class Session:
    name: str
    path: str
    train: List[Dict] = field(default_factory=list)
    val: List[Dict] = field(default_factory=list)
    bad_lines: int = 0
    resumed_at: Optional[Tuple[int, int]] = None  # (epoch, iter) its text log says it resumed at


@dataclass
class TrainingLog:
    """The merged records of a work dir."""
    sessions: List[Session]
    train: List[Dict]  # by increasing optimizer step
    val: List[Dict]  # by increasing epoch

    def series(self, key: str, val: bool = False) -> Tuple[List[float], List[float]]:
        """The values of ``key`` and the optimizer steps they were logged at.

        Args:
            key (str): A logged scalar.
            val (bool): From the val records instead of the train records. Defaults to False.

        Returns:
            Tuple[List[float], List[float]]: The steps and the values.
        """
        records = self.val if val else self.train
        pairs = [(r['step'], r[key]) for r in records
                 if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def keys(self, val: bool = False) -> List[str]:
        """The numeric keys of the records, in first-seen order (bookkeeping keys left out).

        Args:
            val (bool): Of the val records instead of the train records. Defaults to False.

        Returns:
            List[str]: The keys.
        """
        seen: Dict[str, None] = {}
        for r in self.val if val else self.train:
            for k, v in r.items():
                if k not in BOOKKEEPING and isinstance(v, (int, float)):
                    seen.setdefault(k)
        return list(seen)

    def steps_per_epoch(self) -> Optional[int]:
        """Optimizer steps per epoch, when the logged (epoch, step) pairs pin it down: a record
        of epoch ``e`` (1-based) at step ``s`` means ``(e - 1) * N < s <= e * N``. None for a
        single epoch, or when the logging interval leaves more than one ``N`` possible."""
        lowest, highest = 1, None
        for r in self.train:
            if 'epoch' not in r:
                continue
            epoch, step = int(r['epoch']), int(r['step'])
            if epoch < 1:
                continue
            lowest = max(lowest, -(-step // epoch))
            if epoch > 1:
                bound = (step - 1) // (epoch - 1)
                highest = bound if highest is None else min(highest, bound)
        return lowest if highest is not None and lowest == highest else None

    def epoch_starts(self) -> List[Tuple[int, float]]:
        """(epoch, optimizer step where it starts, less a half) of every logged epoch after the
        first: where the vertical guide lines go. Exact when the records pin the steps per epoch
        down, else half-way between the last logged step of an epoch and the first of the
        next."""
        first: Dict[int, int] = {}
        last: Dict[int, int] = {}
        for r in self.train:
            if 'epoch' in r:
                epoch, step = int(r['epoch']), int(r['step'])
                first[epoch] = min(first.get(epoch, step), step)
                last[epoch] = max(last.get(epoch, step), step)
        epochs = sorted(last)
        if len(epochs) < 2:
            return []
        per_epoch = self.steps_per_epoch()
        if per_epoch is not None:
            return [(e + 1, e * per_epoch + 0.5) for e in range(epochs[0], epochs[-1])]
        return [(nxt, (last[e] + first[nxt]) / 2 if nxt == e + 1 else first[nxt] - 0.5)
                for e, nxt in zip(epochs, epochs[1:])]

    def epoch_ends(self) -> List[float]:
        """Optimizer steps between epochs (see :meth:`epoch_starts`)."""
        return [x for _, x in self.epoch_starts()]


def scalar_files(work_dir: str) -> List[str]:
    """``<timestamp>/vis_data/scalars.json`` files of a work dir, oldest session first.

    Args:
        work_dir (str): A work dir; a session folder or a scalars.json file is accepted too.

    Returns:
        List[str]: The files.
    """
    if osp.isfile(work_dir):
        return [work_dir]
    own = osp.join(work_dir, 'vis_data', 'scalars.json')
    if osp.isfile(own):
        return [own]
    return sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))


RESUMED = re.compile(r'resumed epoch: (\d+), iter: (\d+)')


def resume_point(session_dir: str) -> Optional[Tuple[int, int]]:
    """(epoch, iter) at which the session of ``session_dir`` resumed, from its text log.

    Args:
        session_dir (str): A ``<timestamp>`` session folder.

    Returns:
        Tuple[int, int] | None: The resume point; None when it did not resume (or has no text
        log).
    """
    name = osp.basename(osp.normpath(session_dir))
    path = osp.join(session_dir, f'{name}.log')
    if not osp.isfile(path):
        return None
    with open(path, errors='replace') as f:
        for line in f:
            match = RESUMED.search(line)
            if match:
                return int(match.group(1)), int(match.group(2))
    return None


def read_session(path: str) -> Session:
    """Read one session's ``scalars.json`` (unreadable lines are counted, not fatal).

    Args:
        path (str): The session's ``vis_data/scalars.json``.

    Returns:
        Session: Its train and val records.
    """
    session_dir = osp.dirname(osp.dirname(path))
    name = osp.basename(session_dir) or path
    session = Session(name, path, resumed_at=resume_point(session_dir))
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                session.bad_lines += 1  # e.g. a line cut by a crash
                continue
            if not isinstance(record, dict) or 'step' not in record:
                session.bad_lines += 1
                continue
            record['step'] = int(record['step'])
            if 'lr' in record or any(k.startswith('loss') for k in record):
                session.train.append(record)
            elif any(k not in BOOKKEEPING for k in record):
                session.val.append(record)
    return session


def merge_sessions(sessions: Sequence[Session]) -> TrainingLog:
    """Merge the sessions of a resumed run.

    A later session's records replace the earlier ones' from its first step (or its resume
    point) on: the steps trained again after a resume count once, as the later session logged
    them.

    Args:
        sessions (Sequence[Session]): The sessions, oldest first.

    Returns:
        TrainingLog: The merged records.
    """
    train: Dict[int, Dict] = {}
    val: Dict[int, Dict] = {}
    used = [s for s in sessions if s.train or s.val]
    for session in used:
        if session.train:
            first_step = min(r['step'] for r in session.train)
            epochs = [int(r['epoch']) for r in session.train if 'epoch' in r]
            first_val = min(epochs) if epochs else min(r['step'] for r in session.train)
        else:  # val records count epochs, not steps
            first_step, first_val = float('inf'), min(r['step'] for r in session.val)
        if session.resumed_at is not None:  # a train record's step is the iter after the step
            first_step = min(first_step, session.resumed_at[1] + 1)
            first_val = min(first_val, session.resumed_at[0] + 1)
        train = {k: v for k, v in train.items() if k < first_step}
        val = {k: v for k, v in val.items() if k < first_val}
        for r in session.train:
            train[r['step']] = r
        for r in session.val:
            val[r['step']] = r
    return TrainingLog(list(used), [train[k] for k in sorted(train)],
                       [val[k] for k in sorted(val)])


def load_training_log(work_dir: str) -> TrainingLog:
    """Read and merge every session of a work dir.

    Args:
        work_dir (str): The work dir (or a session folder, or a scalars.json file).

    Returns:
        TrainingLog: The merged records.

    Raises:
        FileNotFoundError: When there is no ``<timestamp>/vis_data/scalars.json``.
        ValueError: When the logs hold no train or val records yet.
    """
    files = scalar_files(work_dir)
    if not files:
        raise FileNotFoundError(f'no <timestamp>/vis_data/scalars.json under {work_dir} (is it '
                                'a work dir of tools/train.py?)')
    log = merge_sessions([read_session(f) for f in files])
    if not log.train and not log.val:
        raise ValueError(f'{work_dir}: the logs hold no train or val records yet')
    return log


# ---- loss terms --------------------------------------------------------------------------------
def loss_term(key: str) -> Tuple[str, str, Optional[int]]:
    """(base term, variant, decoder layer) of a DINO loss key.

    ``d1.dn_loss_cls`` -> ('loss_cls', 'denoising', 1); ``enc_loss_iou`` -> ('loss_iou',
    'encoder', None).

    Args:
        key (str): A loss key.

    Returns:
        Tuple[str, str, Optional[int]]: The term, the variant and the decoder layer.
    """
    layer = None
    m = LAYER_PREFIX.match(key)
    if m:
        layer, key = int(m.group(1)), key[m.end():]
    variant = 'final'
    if key.startswith('enc_'):
        variant, key = 'encoder', key[len('enc_'):]
    elif key.startswith('dn_'):
        variant, key = 'denoising', key[len('dn_'):]
    return key, variant, layer


def loss_panels(log: TrainingLog, all_layers: bool = False) -> List[Tuple[str, List[str]]]:
    """The panels of the loss plot: the total loss, then one panel per loss term.

    Args:
        log (TrainingLog): The merged logs (:func:`load_training_log`).
        all_layers (bool): Also the intermediate decoder layers (else final, encoder and
            denoising variants only). Defaults to False.

    Returns:
        List[Tuple[str, List[str]]]: ``[(panel title, keys)]``.
    """
    keys = [k for k in log.keys() if 'loss' in k]
    panels: Dict[str, List[str]] = {}
    for key in keys:
        if key == 'loss':
            continue
        base, _, layer = loss_term(key)
        if layer is not None and not all_layers:
            continue
        panels.setdefault(base, []).append(key)
    order = {'loss_cls': 0, 'loss_bbox': 1, 'loss_iou': 2}
    out = [('total loss', ['loss'])] if 'loss' in keys else []
    out += [(base, panels[base]) for base in sorted(panels, key=lambda b: (order.get(b, 9), b))]
    return out


def _label(key: str) -> str:
    base, variant, layer = loss_term(key)
    if key == 'loss':
        return 'loss'
    where = variant if layer is None else (
        f'decoder layer {layer}' if variant == 'final' else f'{variant}, layer {layer}')
    return f'{where} ({key})'


# ---- figures -----------------------------------------------------------------------------------
#: markers on at most this many points of a curve (every point of a short run, every k-th after)
MAX_MARKERS = 40
#: val metrics that are fractions in [0, 1]; plotted in percent, as the evaluation tables print
FRACTION_METRIC = re.compile(
    r'(^|_)(m?AP\d*|FROC|AUC|sensitivity|specificity|accuracy|recall|precision)(@|_|$)')
#: top of a percent axis: the first of these the values stay under (with a margin)
PERCENT_TOPS = (10.0, 20.0, 50.0, 100.0)


def _figure(rows: int, cols: int, w: float, h: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w * cols, h * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    return fig, axes


def _markers(points: int) -> Dict:
    """Marker style for a curve of ``points`` points: a two-point run shows its two points."""
    return dict(marker='o', ms=3, markevery=max(1, math.ceil(points / MAX_MARKERS)))


def _epoch_guides(ax, log: TrainingLog) -> None:
    """Dashed vertical lines where each epoch after the first starts, labelled (up to about 12
    labels), on an axis whose x is the optimizer step."""
    starts = log.epoch_starts()
    if not 0 < len(starts) <= 200:
        return
    label_every = math.ceil(len(starts) / 12)
    for i, (epoch, x) in enumerate(starts):
        ax.axvline(x, color='0.55', ls='--', lw=0.8, zorder=0.5, gid='epoch start')
        if i % label_every == 0:
            ax.text(x, 0.98, f' ep {epoch}', transform=ax.get_xaxis_transform(), fontsize=7,
                    color='0.35', ha='left', va='top', zorder=0.5)


def _fit_ylim(ax, values: Sequence[float], percent: bool = False) -> None:
    """A readable y range: 0 to 10/20/50/100 for a percent panel (an all-zero AP panel reads 0
    to 10, not -0.04 to 0.04); a fixed pad around a constant curve."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    if percent:
        top = next((t for t in PERCENT_TOPS if high <= 0.95 * t), PERCENT_TOPS[-1])
        ax.set_ylim(-0.03 * top, 1.03 * top)
    elif high - low <= 1e-12 * max(1.0, abs(high)):
        pad = 0.1 * abs(high) if high else 1.0
        ax.set_ylim(high - pad if high else -0.05, high + pad)


def in_percent(log: TrainingLog, keys: Sequence[str]) -> bool:
    """Whether the val ``keys`` are all fraction metrics (AP, FROC, AUC, ...) with logged values
    in [0, 1], so that a panel of them is drawn in percent like the evaluation tables."""
    for key in keys:
        if not FRACTION_METRIC.search(key.split('/', 1)[-1]):
            return False
        if any(not 0.0 <= v <= 1.0 for v in log.series(key, val=True)[1]):
            return False
    return bool(keys)


def _plot_lines(ax, log: TrainingLog, keys: Sequence[str], val: bool = False,
                label=None, scale: float = 1.0) -> List[float]:
    """Draw the series of ``keys`` (times ``scale``) with markers; returns the values drawn."""
    values: List[float] = []
    for key in keys:
        x, y = log.series(key, val)
        if not x:
            continue
        y = [v * scale for v in y]
        thin = (not val) and loss_term(key)[2] is not None
        ax.plot(x, y, lw=0.8 if thin else 1.4, alpha=0.6 if thin else 1.0,
                label=(label or _label)(key), **_markers(len(x)))
        values += y
    return values


def _step_axis(ax, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel('optimizer step')
    ax.grid(True, alpha=.3)


def losses_figure(log: TrainingLog, all_layers: bool = False, dpi: int = 90):
    """The figure of ``losses.png``: one panel per loss term (and grad_norm) vs optimizer step."""
    panels = loss_panels(log, all_layers)
    if 'grad_norm' in log.keys():
        panels.append(('grad_norm (before clipping)', ['grad_norm']))
    if not panels:
        raise ValueError('no loss terms in the train records')
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = _figure(rows, cols, 6.0, 3.4, dpi)
    for ax, (title, keys) in zip(axes, panels):
        values = _plot_lines(ax, log, keys,
                             label=(lambda k: k) if title.startswith('grad') else None)
        _fit_ylim(ax, values)
        _epoch_guides(ax, log)
        _step_axis(ax, title)
        if len(keys) > 1:
            ax.legend(fontsize=7, loc='best')
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _lr_axis(ax, log: TrainingLog) -> None:
    x, y = log.series('lr')
    ax.plot(x, y, lw=1.4, label='lr', **_markers(len(x)))
    positive = [v for v in y if v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale('log')
    else:
        _fit_ylim(ax, y)
        ax.ticklabel_format(axis='y', style='sci', scilimits=(-3, 4))
    _epoch_guides(ax, log)
    _step_axis(ax, 'learning rate (first param group)')


def lr_figure(log: TrainingLog, dpi: int = 90):
    """The figure of ``lr.png``: the learning rate vs optimizer step."""
    if not log.series('lr')[0]:
        raise ValueError('no lr in the train records')
    fig, (ax,) = _figure(1, 1, 6.0, 3.4, dpi)
    _lr_axis(ax, log)
    fig.tight_layout()
    return fig


def val_panels(log: TrainingLog,
               metrics: Optional[Sequence[str]] = None) -> List[Tuple[str, List[str]]]:
    """The panels of the val plot.

    Args:
        log (TrainingLog): The merged logs (:func:`load_training_log`).
        metrics (Sequence[str], optional): fnmatch patterns of val keys (one panel). Defaults
            to None (the default AP and image-level keys present, else every numeric val key).

    Returns:
        List[Tuple[str, List[str]]]: ``[(title, keys)]``.
    """
    available = log.keys(val=True)
    if metrics:
        keys = [k for k in available if any(fnmatch.fnmatchcase(k, p) for p in metrics)]
        return [('validation', keys)] if keys else []
    ap = [k for k in DEFAULT_AP_KEYS if k in available]
    image = [k for k in DEFAULT_IMAGE_KEYS if k in available]
    panels = []
    if ap:
        panels.append(('validation: detection AP', ap))
    if image:
        panels.append(('validation: FROC and image-level TB', image))
    if not panels and available:
        panels.append(('validation', available))
    return panels


def val_figure(log: TrainingLog, metrics: Optional[Sequence[str]] = None, dpi: int = 90):
    """The figure of ``val_metrics.png``: the val metrics vs epoch."""
    panels = val_panels(log, metrics)
    if not panels:
        raise ValueError('no val metrics in the logs' + (f' matching {list(metrics)}'
                                                         if metrics else ''))
    fig, axes = _figure(1, len(panels), 6.0, 3.6, dpi)
    for ax, (title, keys) in zip(axes, panels):
        _val_axis(ax, log, keys, title)
    fig.tight_layout()
    return fig


def _val_axis(ax, log: TrainingLog, keys: Sequence[str], title: str) -> None:
    from matplotlib.ticker import MaxNLocator
    percent = in_percent(log, keys)
    values = _plot_lines(ax, log, keys, val=True, label=lambda k: k.split('/', 1)[-1],
                         scale=100.0 if percent else 1.0)
    _fit_ylim(ax, values, percent)
    ax.set_title(title + (' (%)' if percent else ''))
    ax.set_xlabel('epoch')
    if percent:
        ax.set_ylabel('%')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=.3)
    # beside the axes: never over the curves
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def overview_figure(log: TrainingLog, metrics: Optional[Sequence[str]] = None, dpi: int = 80):
    """The figure of ``overview.png``: total loss, last-layer loss terms, LR, main val metrics."""
    panels = val_panels(log, metrics)
    fig, axes = _figure(2, 2, 5.0, 3.2, dpi)
    keys = log.keys()
    terms = [k for k in ('loss_cls', 'loss_bbox', 'loss_iou') if k in keys] or [
        k for k in keys if 'loss' in k and k != 'loss'][:4]
    for ax, title, shown in ((axes[0], 'training loss (total)', ['loss']),
                             (axes[1], 'loss terms of the last decoder layer', terms)):
        values = _plot_lines(ax, log, shown, label=lambda k: k)
        if values:
            _fit_ylim(ax, values)
            _epoch_guides(ax, log)
            _step_axis(ax, title)
            if len(shown) > 1:
                ax.legend(fontsize=7, loc='best')
        else:
            ax.set_visible(False)
    if log.series('lr')[0]:
        _lr_axis(axes[2], log)
    else:
        axes[2].set_visible(False)
    if panels:
        _val_axis(axes[3], log, panels[0][1], panels[0][0])
    else:
        axes[3].text(0.5, 0.5, 'no validation records', ha='center', va='center',
                     transform=axes[3].transAxes)
        axes[3].set_axis_off()
    fig.tight_layout()
    return fig


def _save(fig, path: str) -> str:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def plot_losses(log: TrainingLog, path: str, all_layers: bool = False, dpi: int = 90) -> str:
    """Write :func:`losses_figure` to ``path``; returns ``path``."""
    return _save(losses_figure(log, all_layers, dpi), path)


def plot_lr(log: TrainingLog, path: str, dpi: int = 90) -> str:
    """Write :func:`lr_figure` to ``path``; returns ``path``."""
    return _save(lr_figure(log, dpi), path)


def plot_val(log: TrainingLog, path: str, metrics: Optional[Sequence[str]] = None,
             dpi: int = 90) -> str:
    """Write :func:`val_figure` to ``path``; returns ``path``."""
    return _save(val_figure(log, metrics, dpi), path)


def plot_overview(log: TrainingLog, path: str, metrics: Optional[Sequence[str]] = None,
                  dpi: int = 80) -> str:
    """Write :func:`overview_figure` to ``path``; returns ``path``."""
    return _save(overview_figure(log, metrics, dpi), path)


def plot_logs(work_dir: str, out_dir: Optional[str] = None,
              metrics: Optional[Sequence[str]] = None, all_layers: bool = False) -> Dict:
    """Write ``losses.png``, ``lr.png``, ``val_metrics.png`` (when there are val records) and
    ``overview.png``.

    Args:
        work_dir (str): The work dir (or a session folder, or a scalars.json file).
        out_dir (str, optional): The output folder. Defaults to None (``WORK_DIR/plots``, next
            to a ``scalars.json`` given instead of a folder).
        metrics (Sequence[str], optional): fnmatch patterns of val keys. Defaults to None.
        all_layers (bool): Also the intermediate decoder layers' losses. Defaults to False.

    Returns:
        Dict: A summary with the written paths.
    """
    log = load_training_log(work_dir)
    # a scalars.json file: its folder
    out_dir = out_dir or osp.join(work_dir if osp.isdir(work_dir) else osp.dirname(work_dir),
                                  'plots')
    if metrics and log.val and not val_panels(log, metrics):
        raise ValueError(f'no logged val metric matches {list(metrics)}; the logs have '
                         f'{log.keys(val=True)}')
    written = []
    if log.train:
        written.append(plot_losses(log, osp.join(out_dir, 'losses.png'), all_layers))
        if log.series('lr')[0]:
            written.append(plot_lr(log, osp.join(out_dir, 'lr.png')))
    if val_panels(log, metrics):
        written.append(plot_val(log, osp.join(out_dir, 'val_metrics.png'), metrics))
    written.append(plot_overview(log, osp.join(out_dir, 'overview.png'), metrics))
    return dict(
        sessions=[s.name for s in log.sessions],
        bad_lines=sum(s.bad_lines for s in log.sessions),
        train_records=len(log.train),
        steps=(log.train[0]['step'], log.train[-1]['step']) if log.train else None,
        val_epochs=[r['step'] for r in log.val],
        files=written)
