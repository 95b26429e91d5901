"""Helpers shared by tests/tools (imported by its conftest and test modules)."""
import os.path as osp

import torch

from ._utils import REPO_ROOT

CONVERT = osp.join(REPO_ROOT, 'tools', 'model_converters', 'convert_coco_checkpoint.py')
RUN_EPOCHS = 2  # 2 x 7 optimizer steps on the 13-image training set, validation after each


def load_tool(name: str):
    """``tools/<name>.py`` as a module (its functions, without running it); ``name`` may name a
    sub-folder, e.g. ``'analysis_tools/plot_logs'``."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{name.replace('/', '_')}_tool",
                                                  osp.join(REPO_ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_model(config: str, **options):
    from tbx11k.apis.checkpoint_conversion import build_model_from_config
    return build_model_from_config(config, options)


def coco_like_checkpoint(config: str) -> dict:
    """A checkpoint shaped like mmdet's COCO DINO release for ``config``'s architecture: the
    model built with 80 classes, COCO class names in the meta, and training state entries."""
    from mmdet.datasets import CocoDataset
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        model = build_model(config, **{'model.bbox_head.num_classes': 80})
        model.init_weights()  # backbone.init_cfg is None in the tiny configs
    return dict(
        meta=dict(dataset_meta=dict(classes=CocoDataset.METAINFO['classes']), epoch=12,
                  iter=87960, mmdet_version='3.0.0rc5'),
        state_dict=model.state_dict(),
        optimizer=dict(state={}, param_groups=[]),
        message_hub=dict(log_scalars={}))
