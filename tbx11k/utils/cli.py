"""Helpers shared by tools/train.py, tools/test.py and the other tools."""
import os.path as osp
from typing import Iterator, Tuple

from mmengine.config import Config, ConfigDict

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


def set_data_root(cfg: Config, data_root: str) -> None:
    """Point every dataset and evaluator of ``cfg`` at ``data_root``."""
    data_root = osp.join(data_root, '')
    cfg.data_root = data_root
    for _, dataset in _datasets(cfg):
        dataset['data_root'] = data_root
    for split, evaluator_key in (('val_dataloader', 'val_evaluator'),
                                 ('test_dataloader', 'test_evaluator')):
        evaluator = cfg.get(evaluator_key)
        loader = cfg.get(split)
        if isinstance(evaluator, dict) and evaluator.get('ann_file') and loader is not None:
            evaluator['ann_file'] = osp.join(data_root, loader['dataset']['ann_file'])


def check_data_root(cfg: Config, splits=('train_dataloader', 'val_dataloader')) -> None:
    """Fail early, with what to do, when a dataset's files are not there."""
    for split, dataset in _datasets(cfg):
        if split not in splits:
            continue
        root = dataset.get('data_root') or ''
        ann = osp.join(root, dataset.get('ann_file', ''))
        if root and not osp.isdir(root):
            raise SystemExit(f'error: data root {root!r} ({split}) does not exist. {SYNTHETIC_HINT}'
                             ' and pass --data-root DATA_ROOT.')
        if dataset.get('ann_file') and not osp.isfile(ann):
            raise SystemExit(f'error: annotation file {ann!r} ({split}) does not exist. '
                             f'{SYNTHETIC_HINT} and pass --data-root DATA_ROOT.')
