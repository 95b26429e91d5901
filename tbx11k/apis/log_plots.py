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

    def epoch_ends(self) -> List[float]:
        """Optimizer steps between epochs (for vertical guide lines)."""
        last: Dict[int, int] = {}
        for r in self.train:
            if 'epoch' in r:
                last[int(r['epoch'])] = max(last.get(int(r['epoch']), 0), int(r['step']))
        return [last[e] + 0.5 for e in sorted(last)[:-1]]


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
def _figure(rows: int, cols: int, w: float, h: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w * cols, h * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    return fig, axes


def _epoch_guides(ax, log: TrainingLog) -> None:
    ends = log.epoch_ends()
    if 0 < len(ends) <= 100:
        for x in ends:
            ax.axvline(x, color='0.85', lw=0.8, zorder=0)


def _save(fig, path: str) -> str:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plot_lines(ax, log: TrainingLog, keys: Sequence[str], val: bool = False,
                label=None) -> int:
    drawn = 0
    for key in keys:
        x, y = log.series(key, val)
        if not x:
            continue
        style = dict(marker='o', ms=3) if (val or len(x) < 30) else {}
        thin = (not val) and loss_term(key)[2] is not None
        ax.plot(x, y, lw=0.8 if thin else 1.4, alpha=0.6 if thin else 1.0,
                label=(label or _label)(key), **style)
        drawn += 1
    return drawn


def plot_losses(log: TrainingLog, path: str, all_layers: bool = False, dpi: int = 90) -> str:
    """Plot the loss panels (:func:`loss_panels`) against the optimizer step.

    Args:
        log (TrainingLog): The merged logs (:func:`load_training_log`).
        path (str): The PNG file.
        all_layers (bool): Also the intermediate decoder layers. Defaults to False.
        dpi (int): The PNG's resolution. Defaults to 90.

    Returns:
        str: ``path``.
    """
    panels = loss_panels(log, all_layers)
    if 'grad_norm' in log.keys():
        panels.append(('grad_norm (before clipping)', ['grad_norm']))
    if not panels:
        raise ValueError('no loss terms in the train records')
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = _figure(rows, cols, 6.0, 3.4, dpi)
    for ax, (title, keys) in zip(axes, panels):
        _plot_lines(ax, log, keys, label=(lambda k: k) if title.startswith('grad') else None)
        _epoch_guides(ax, log)
        ax.set_title(title)
        ax.set_xlabel('optimizer step')
        ax.grid(True, alpha=.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return _save(fig, path)


def _lr_axis(ax, log: TrainingLog) -> None:
    x, y = log.series('lr')
    ax.plot(x, y, lw=1.4, marker='o' if len(x) < 30 else None, ms=3)
    positive = [v for v in y if v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale('log')
    _epoch_guides(ax, log)
    ax.set_title('learning rate (first param group)')
    ax.set_xlabel('optimizer step')
    ax.grid(True, alpha=.3)


def plot_lr(log: TrainingLog, path: str, dpi: int = 90) -> str:
    """Plot the learning rate against the optimizer step.

    Args:
        log (TrainingLog): The merged logs (:func:`load_training_log`).
        path (str): The PNG file.
        dpi (int): The PNG's resolution. Defaults to 90.

    Returns:
        str: ``path``.

    Raises:
        ValueError: When the train records have no lr.
    """
    if not log.series('lr')[0]:
        raise ValueError('no lr in the train records')
    fig, (ax,) = _figure(1, 1, 6.0, 3.4, dpi)
    _lr_axis(ax, log)
    return _save(fig, path)


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


def plot_val(log: TrainingLog, path: str, metrics: Optional[Sequence[str]] = None,
             dpi: int = 90) -> str:
    """Plot the val metrics (:func:`val_panels`) against the epoch.

    Args:
        log (TrainingLog): The merged logs (:func:`load_training_log`).
        path (str): The PNG file.
        metrics (Sequence[str], optional): fnmatch patterns of val keys. Defaults to None.
        dpi (int): The PNG's resolution. Defaults to 90.

    Returns:
        str: ``path``.

    Raises:
        ValueError: When there are no (matching) val metrics.
    """
    panels = val_panels(log, metrics)
    if not panels:
        raise ValueError('no val metrics in the logs' + (f' matching {list(metrics)}'
                                                         if metrics else ''))
    fig, axes = _figure(1, len(panels), 6.0, 3.6, dpi)
    for ax, (title, keys) in zip(axes, panels):
        _val_axis(ax, log, keys, title)
    return _save(fig, path)


def _val_axis(ax, log: TrainingLog, keys: Sequence[str], title: str) -> None:
    from matplotlib.ticker import MaxNLocator
    _plot_lines(ax, log, keys, val=True, label=lambda k: k.split('/', 1)[-1])
    ax.set_title(title)
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=.3)
    ax.legend(fontsize=7)


def plot_overview(log: TrainingLog, path: str, metrics: Optional[Sequence[str]] = None,
                  dpi: int = 80) -> str:
    """One 2 x 2 figure: total loss, last-layer loss terms, LR, the main val metrics.

    Args:
        log (TrainingLog): The merged logs (:func:`load_training_log`).
        path (str): The PNG file.
        metrics (Sequence[str], optional): fnmatch patterns of val keys. Defaults to None.
        dpi (int): The PNG's resolution. Defaults to 80.

    Returns:
        str: ``path``.
    """
    panels = val_panels(log, metrics)
    fig, axes = _figure(2, 2, 5.0, 3.2, dpi)
    keys = log.keys()
    terms = [k for k in ('loss_cls', 'loss_bbox', 'loss_iou') if k in keys] or [
        k for k in keys if 'loss' in k and k != 'loss'][:4]
    for ax, title, shown in ((axes[0], 'training loss (total)', ['loss']),
                             (axes[1], 'loss terms of the last decoder layer', terms)):
        if _plot_lines(ax, log, shown, label=lambda k: k):
            _epoch_guides(ax, log)
            ax.set_title(title)
            ax.set_xlabel('optimizer step')
            ax.grid(True, alpha=.3)
            if len(shown) > 1:
                ax.legend(fontsize=7)
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
    return _save(fig, path)


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
