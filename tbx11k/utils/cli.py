"""Helpers shared by tools/train.py, tools/test.py and the other tools."""
import os
import os.path as osp
from typing import Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config, ConfigDict, DictAction

from ..engine.layout import accepted_world_sizes

SYNTHETIC_HINT = (
    'Get TBX11K from https://mmcheng.net/tb/ (or its Kaggle/Google-Drive mirrors) and unpack it so '
    'that DATA_ROOT/imgs/ and DATA_ROOT/annotations/json/ exist, or make a synthetic set in the '
    'same layout: python tools/make_synthetic_tbx11k.py DATA_ROOT')


def _datasets(cfg: Config) -> Iterator[Tuple[str, ConfigDict]]:
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(split)
        if loader is None:
            continue
        dataset = loader.get('dataset')
        while dataset is not None and 'dataset' in dataset and 'data_root' not in dataset:
            dataset = dataset['dataset']  # dataset wrappers
        if dataset is not None:
            yield split, dataset


EVALUATOR_SPLITS = (('val_dataloader', 'val_evaluator'), ('test_dataloader', 'test_evaluator'))


def metric_configs(evaluator) -> List[ConfigDict]:
    """The metric configs of an evaluator config.

    Args:
        evaluator (dict | list | None): One metric, a list of them, or an ``Evaluator`` dict
            with ``metrics``.

    Returns:
        List[ConfigDict]: The metric configs (empty for None).
    """
    if isinstance(evaluator, dict):
        if 'metrics' in evaluator:
            return metric_configs(evaluator['metrics'])
        return [evaluator]
    if isinstance(evaluator, (list, tuple)):
        return [m for item in evaluator for m in metric_configs(item)]
    return []


def _rebased(path: str, old_root: str, new_root: str) -> str:
    """``path`` moved from under ``old_root`` to under ``new_root``; other paths unchanged."""
    if old_root and osp.normpath(path).startswith(osp.join(osp.normpath(old_root), '')):
        return osp.join(new_root, osp.relpath(path, old_root))
    return path


def set_data_root(cfg: Config, data_root: str) -> None:
    """Point every dataset of ``cfg``, and every evaluator ``ann_file`` under a dataset's old
    root, at ``data_root``.

    Args:
        cfg (Config): The config, changed in place.
        data_root (str): The new data root.
    """
    data_root = osp.join(data_root, '')
    old_roots = {split: dataset.get('data_root') or '' for split, dataset in _datasets(cfg)}
    cfg.data_root = data_root
    for _, dataset in _datasets(cfg):
        dataset['data_root'] = data_root
    for split, evaluator_key in EVALUATOR_SPLITS:
        old_root = old_roots.get(split, '')
        for metric in metric_configs(cfg.get(evaluator_key)):
            if metric.get('ann_file'):
                metric['ann_file'] = _rebased(metric['ann_file'], old_root, data_root)


def _loader_ann_file(cfg: Config, split: str) -> Optional[str]:
    """The annotation file a dataloader's dataset reads (data root joined), or None."""
    dataset = dict(_datasets(cfg)).get(split)
    if dataset is None or not dataset.get('ann_file'):
        return None
    return osp.join(dataset.get('data_root') or '', dataset['ann_file'])


def check_evaluators_read_their_loaders_json(cfg: Config, splits: Sequence[str]) -> None:
    """Exit before anything runs when a TBX11KMetric's ``ann_file`` is another json than its
    dataloader's.

    Ids restart at 1 in every TBX11K file, so every id may exist in both: the metric refuses
    it only after the whole inference, or after the training's first epoch.

    Args:
        cfg (Config): The config.
        splits (Sequence[str]): The dataloaders whose evaluators to check, e.g.
            ``('val_dataloader', )``.

    Raises:
        SystemExit: With a message naming the evaluator and both files.
    """
    from ..datasets.validation import TBX11KDataError, read_json
    for split, evaluator_key in EVALUATOR_SPLITS:
        loader_ann = _loader_ann_file(cfg, split)
        if split not in splits or loader_ann is None or not osp.isfile(loader_ann):
            continue
        for metric in metric_configs(cfg.get(evaluator_key)):
            ann = metric.get('ann_file')
            if (metric.get('type') != 'TBX11KMetric' or not isinstance(ann, str)
                    or not osp.isfile(ann) or osp.samefile(ann, loader_ann)):
                continue
            names = []
            for path in (loader_ann, ann):
                try:
                    names.append({im['id']: im.get('file_name')
                                  for im in read_json(path).get('images', [])})
                except (TBX11KDataError, TypeError, KeyError, AttributeError):
                    names = None  # the dataset and the metric report broken files themselves
                    break
            if names is None:
                continue
            loader_names, metric_names = names
            wrong = [i for i, name in loader_names.items() if metric_names.get(i) != name]
            if wrong:
                raise SystemExit(
                    f'error: {evaluator_key}.ann_file {ann!r} is another json than the one '
                    f'{split} reads ({loader_ann!r}): {len(wrong)} of its {len(loader_names)} '
                    f'images differ, e.g. image id={wrong[0]} is '
                    f'{loader_names[wrong[0]]!r} there and {metric_names.get(wrong[0])!r} in '
                    f'the evaluator\'s; set both to the same json')


#: the configs shipped with this repository
REPO_CONFIGS = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs')


def _shown_path(path: str) -> str:
    """``path`` relative to the current folder when it lies below it, else absolute."""
    relative = osp.relpath(path)
    return path if relative.startswith(os.pardir) else relative


def closest_config(path: str) -> Optional[str]:
    """The existing config whose name is closest to the missing ``path`` (a typo), or None.

    Candidates are the ``.py`` files of ``path``'s folder when it exists, else the repository's
    ``configs/``."""
    import difflib
    folder = osp.dirname(path)
    if not (folder and osp.isdir(folder)):
        folder = REPO_CONFIGS
    try:
        names = sorted(name for name in os.listdir(folder) if name.endswith('.py'))
    except OSError:
        return None
    match = difflib.get_close_matches(osp.basename(path), names, n=1, cutoff=0.6)
    if not match:
        return None
    return osp.join(osp.dirname(path), match[0]) if folder != REPO_CONFIGS else _shown_path(
        osp.join(folder, match[0]))


def configs_for_layout(effective_batch: int, world_size: int, like: Optional[str] = None,
                       folder: str = REPO_CONFIGS) -> List[str]:
    """The configs of ``folder`` (default: the repository's ``configs/``) that train with
    ``effective_batch`` images per optimizer step on ``world_size`` processes: their
    ``effective_batch_size`` is ``effective_batch`` and they accept ``world_size``
    (:func:`~tbx11k.engine.layout.accepted_world_sizes`: a fixed accumulation that gives it, or
    ``'auto'``).

    Args:
        effective_batch (int): images per optimizer step the run needs.
        world_size (int): processes (GPUs) of the launch.
        like (str, optional): a config name; the configs are listed closest name first.
        folder (str): where to look (not in sub-folders such as ``_base_``).

    Returns:
        list[str]: paths, relative to the current folder when below it.
    """
    import difflib
    fitting = []
    for name in sorted(os.listdir(folder)) if osp.isdir(folder) else []:
        path = osp.join(folder, name)
        if not (name.endswith('.py') and osp.isfile(path)):
            continue
        try:
            cfg = Config.fromfile(path, import_custom_modules=False)
            declared = cfg.get('effective_batch_size')
            world_sizes = accepted_world_sizes(cfg)
        except Exception:  # a config that does not parse or has no training: not a candidate
            continue
        if declared == effective_batch and world_sizes and world_size in world_sizes:
            fitting.append(name)
    if like:
        like = osp.basename(like)
        fitting.sort(key=lambda name: -difflib.SequenceMatcher(None, like, name).ratio())
    return [_shown_path(osp.join(folder, name)) for name in fitting]


def read_config(path: str) -> Config:
    """``Config.fromfile`` with a one-line error (tools/train.py, tools/test.py).

    A mistyped name gets the closest existing config in the error.

    Args:
        path (str): The config file.

    Returns:
        Config: The config.

    Raises:
        SystemExit: When ``path`` is not a file or does not parse.
    """
    if not osp.isfile(path):
        if osp.isdir(path):
            raise SystemExit(f'error: config {path!r} is a folder, not a config file (the '
                             'configs are in configs/, e.g. configs/dino_tbx11k_1gpu.py)')
        suggestion = closest_config(path)
        hint = (f'did you mean {suggestion}?' if suggestion else
                'the configs are in configs/, e.g. configs/dino_tbx11k_1gpu.py')
        raise SystemExit(f'error: config {path!r} does not exist ({hint})')
    try:
        return Config.fromfile(path)
    except (SyntaxError, FileNotFoundError, KeyError, NameError, ImportError) as error:
        raise SystemExit(f'error: cannot read config {path!r}: {type(error).__name__}: '
                         f'{error}') from error


LAUNCHER_ENVIRONMENT = {
    'slurm': (('SLURM_PROCID', 'SLURM_NTASKS'), 'run it under srun (tools/slurm_train.sh, '
              'slurm/*.sbatch)'),
    'pytorch': (('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'),
                'start it with torchrun (tools/dist_train.sh CONFIG GPUS)'),
    'mpi': (('OMPI_COMM_WORLD_LOCAL_RANK', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE',
             'MASTER_ADDR'), 'start it with Open MPI\'s mpirun and export MASTER_ADDR'),
}


def check_launcher_environment(launcher: str) -> None:
    """Exit with what to do when ``--launcher`` is given outside the launcher that sets its
    environment (a bare ``KeyError: 'SLURM_PROCID'`` or torch's ``RANK expected`` otherwise).

    Args:
        launcher (str): The ``--launcher`` value.

    Raises:
        SystemExit: When the launcher's environment variables are missing.
    """
    needed, how = LAUNCHER_ENVIRONMENT.get(launcher, ((), ''))
    missing = [name for name in needed if name not in os.environ]
    if missing:
        raise SystemExit(f'error: --launcher {launcher} needs {", ".join(missing)} in the '
                         f'environment: {how}; or drop --launcher for one process')
    import torch
    if launcher == 'mpi' and not torch.cuda.is_available():
        raise SystemExit('error: --launcher mpi needs GPUs (mmengine\'s MPI launcher selects a '
                         'CUDA device per process); without GPUs use --launcher pytorch through '
                         'tools/dist_train.sh, which runs the processes on gloo')


class KeyValueDictAction(DictAction):
    """mmengine's ``DictAction`` (``--cfg-options key=value ...``) that refuses an item without
    ``=`` with a usage error naming it (mmengine fails with a bare "not enough values to
    unpack")."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = values if isinstance(values, (list, tuple)) else [values]
        bad = [item for item in items if '=' not in item]
        if bad:
            parser.error(f'{option_string}: {bad[0]!r} is not key=value (e.g. '
                         'train_cfg.max_epochs=12 or optim_wrapper.optimizer.lr=2e-4)')
        super().__call__(parser, namespace, values, option_string)


def check_output_paths(work_dir: str, out: Optional[str] = None) -> None:
    """Exit before anything runs when the work dir or ``--out``'s folder cannot be made.

    A file in the way would otherwise fail the run after training steps or after all inference.

    Args:
        work_dir (str): The work dir.
        out (str, optional): The ``--out`` file. Defaults to None.

    Raises:
        SystemExit: When a file is in the way of a folder to make.
    """
    for what, folder in (('--work-dir', work_dir),
                         ('--out', osp.dirname(osp.abspath(out)) if out else None)):
        path = folder
        while path and not osp.exists(path):
            path = osp.dirname(path.rstrip(os.sep)) or None
        if path and not osp.isdir(path):
            raise SystemExit(f'error: {what}: {path} is a file, so {folder} cannot be a folder')


def _model_head(cfg: Config) -> Optional[ConfigDict]:
    """The detector's ``bbox_head`` config (inside a test-time-augmentation wrapper too)."""
    model = cfg.get('model') or {}
    while isinstance(model, dict) and 'module' in model:
        model = model['module']
    head = model.get('bbox_head') if isinstance(model, dict) else None
    return head if isinstance(head, dict) else None


def class_names(value) -> Tuple[str, ...]:
    """A ``classes`` value as given on the command line or in a config: names, or one name."""
    names = (value, ) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise SystemExit(f'error: classes must be category names, got {value!r}')
    return names


def set_classes(cfg: Config, classes) -> None:
    """Train/test on ``classes``: the config's ``classes``, every dataset's
    ``metainfo.classes`` (the evaluators take theirs from the dataset) and the head's
    ``num_classes``.

    Args:
        cfg (Config): the config, changed in place.
        classes (Sequence[str] | str): the category names, in the json's category order.
    """
    classes = class_names(classes)
    cfg.classes = classes
    for _, dataset in _datasets(cfg):
        metainfo = dataset.get('metainfo') or {}
        if tuple(metainfo.get('classes') or ()) != classes:
            # a palette of the old classes would not fit: the dataset picks one for these
            metainfo = {k: v for k, v in metainfo.items() if k != 'palette'}
        dataset['metainfo'] = dict(metainfo, classes=classes)
    head = _model_head(cfg)
    if head is not None and 'num_classes' in head:
        head['num_classes'] = len(classes)


def merge_cli_options(cfg: Config, cfg_options: Optional[dict], data_root: Optional[str],
                      classes: Optional[Sequence[str]] = None) -> None:
    """Apply ``--data-root``, ``--classes`` and ``--cfg-options`` (tools/train.py,
    tools/test.py).

    ``--cfg-options data_root=DIR`` alone would change only the top-level variable: the datasets
    and evaluators were built from the old one when the config was read, so it is applied like
    ``--data-root`` (which wins when both are given). The same holds for ``classes``: the config's
    top-level ``classes`` (from the file, ``--cfg-options classes=...`` or ``--classes``, which
    wins) is applied to every dataset and the head's ``num_classes`` (:func:`set_classes`), so a
    derived config that sets ``classes`` trains on them. The data root and the classes are applied
    first, then the options, so explicit keys (e.g. ``val_evaluator.ann_file=...``) win, as in
    mmdet. A metric that reads its dataloader's json keeps reading it when the options change the
    dataloader's ``ann_file`` or ``data_root``, unless they name the evaluator's ``ann_file``
    too.

    Args:
        cfg (Config): The config, changed in place.
        cfg_options (dict, optional): The ``--cfg-options``.
        data_root (str, optional): The ``--data-root``.
        classes (Sequence[str], optional): The ``--classes``.
    """
    cfg_options = dict(cfg_options or {})
    data_root = data_root or cfg_options.get('data_root')
    cfg_options.pop('data_root', None)
    classes = classes or cfg_options.pop('classes', None) or cfg.get('classes')
    cfg_options.pop('classes', None)
    linked = []  # (split, evaluator key, metric index) of metrics reading their loader's json
    for split, evaluator_key in EVALUATOR_SPLITS:
        loader_ann = _loader_ann_file(cfg, split)
        named = any(key == evaluator_key or (key.startswith(f'{evaluator_key}.')
                                             and key.endswith('ann_file')) for key in cfg_options)
        if loader_ann is None or named:
            continue
        for i, metric in enumerate(metric_configs(cfg.get(evaluator_key))):
            ann = metric.get('ann_file')
            if ann and osp.normpath(ann) == osp.normpath(loader_ann):
                linked.append((split, evaluator_key, i))
    if data_root:
        set_data_root(cfg, data_root)
    if classes:
        set_classes(cfg, classes)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    for split, evaluator_key, i in linked:
        metric_configs(cfg.get(evaluator_key))[i]['ann_file'] = _loader_ann_file(cfg, split)


def check_data_root(cfg: Config, splits=('train_dataloader', 'val_dataloader')) -> None:
    """Fail early, with what to do, when a dataset's files are not there.

    Args:
        cfg (Config): The config.
        splits (Sequence[str]): The dataloaders to check. Defaults to
            ``('train_dataloader', 'val_dataloader')``.

    Raises:
        SystemExit: Naming the missing data root or annotation file.
    """
    for split, dataset in _datasets(cfg):
        if split not in splits:
            continue
        root = dataset.get('data_root') or ''
        ann = osp.join(root, dataset.get('ann_file', ''))
        if root and not osp.isdir(root):
            what = 'is a file, not a folder' if osp.exists(root) else 'does not exist'
            raise SystemExit(f'error: data root {root!r} ({split}) {what}. {SYNTHETIC_HINT}'
                             ' and pass --data-root DATA_ROOT.')
        if dataset.get('ann_file') and not osp.isfile(ann):
            raise SystemExit(f'error: annotation file {ann!r} ({split}) does not exist. '
                             f'{SYNTHETIC_HINT} and pass --data-root DATA_ROOT.')
    for split, evaluator_key in EVALUATOR_SPLITS:
        if split not in splits or cfg.get(split) is None:
            continue
        for metric in metric_configs(cfg.get(evaluator_key)):
            ann = metric.get('ann_file')
            if ann and '://' not in ann and not osp.isfile(ann):
                raise SystemExit(f'error: {evaluator_key} ({metric.get("type")}) ann_file '
                                 f'{ann!r} does not exist. Set it with --cfg-options '
                                 f'{evaluator_key}.ann_file=PATH, or --data-root DATA_ROOT when '
                                 'it lies under the data root.')


def _dataset_classes(dataset: ConfigDict):
    """The classes a dataset config will use: its metainfo's, else its type's default."""
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is None:
        from mmdet.registry import DATASETS
        dataset_type = DATASETS.get(dataset.get('type')) if isinstance(dataset.get('type'),
                                                                        str) else None
        classes = getattr(dataset_type, 'METAINFO', {}).get('classes')
    return classes


def check_num_classes(cfg: Config, splits=('train_dataloader', 'val_dataloader')) -> None:
    """Fail early when a dataset's classes and the detector's ``num_classes`` differ.

    mmdet does not check it: with more classes than ``num_classes`` a box of the extra class
    crashes the denoising label embedding (IndexError) or, without such a box in a batch, trains
    and evaluates silently with a label space that does not fit.

    Args:
        cfg (Config): The config.
        splits (Sequence[str]): The dataloaders to check. Defaults to
            ``('train_dataloader', 'val_dataloader')``.

    Raises:
        SystemExit: Naming the dataset's classes and the model's ``num_classes``.
    """
    head = _model_head(cfg)
    num_classes = head.get('num_classes') if head is not None else None
    if num_classes is None:
        return
    for split, dataset in _datasets(cfg):
        if split not in splits:
            continue
        classes = _dataset_classes(dataset)
        if isinstance(classes, (list, tuple)) and len(classes) != num_classes:
            raise SystemExit(
                f'error: {split}.dataset has {len(classes)} classes {tuple(classes)} but the '
                f'model has model.bbox_head.num_classes={num_classes}. Set the classes of every '
                'dataset and the head at once with --classes NAME ... (or the config\'s '
                '`classes`), or --cfg-options model.bbox_head.num_classes='
                f'{len(classes)} and the same metainfo.classes for every dataset.')


def check_classes_fit_the_json(cfg: Config,
                               splits: Sequence[str] = ('train_dataloader', 'val_dataloader')
                               ) -> None:
    """Exit before anything is built when a TBX11KDataset's classes are not categories of its
    json, in its order: the dataset refuses it only once the runner builds the data, after the
    model (the words are the dataset's, and ``tools/check_dataset.py``'s)."""
    from mmdet.registry import DATASETS

    from ..datasets import TBX11KDataset
    from ..datasets.validation import IssueCollector, TBX11KDataError, read_json, resolve_class_ids
    for split, dataset in _datasets(cfg):
        dataset_type = dataset.get('type')
        dataset_type = DATASETS.get(dataset_type) if isinstance(dataset_type, str) else dataset_type
        ann = _loader_ann_file(cfg, split)
        if (split not in splits or not isinstance(dataset_type, type)
                or not issubclass(dataset_type, TBX11KDataset) or ann is None
                or not osp.isfile(ann)):
            continue
        try:
            categories = read_json(ann).get('categories')
        except (TBX11KDataError, AttributeError):
            continue  # the dataset reports a broken json itself
        if not isinstance(categories, list) or not all(
                isinstance(c, dict) and 'name' in c and 'id' in c for c in categories):
            continue
        try:
            resolve_class_ids(_dataset_classes(dataset), categories,
                              IssueCollector(ann, raise_errors=True))
        except TBX11KDataError as error:
            raise SystemExit(f'error: {error}') from None


def check_amp_device() -> None:
    """``--amp`` on a machine without an accelerator: say so instead of mmengine's assertion."""
    from mmengine.device import (
        is_cuda_available,
        is_mlu_available,
        is_musa_available,
        is_npu_available,
    )
    if not (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available()):
        raise SystemExit('error: --amp needs a GPU (CUDA, NPU, MLU or MUSA): mmengine\'s '
                         'AmpOptimWrapper does not run on the CPU. Train without --amp.')
