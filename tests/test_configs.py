"""The shipped configs: what they train, and that the pairs differ only where intended."""
import os.path as osp

import pytest
from mmengine.config import Config

from tbx11k.testing import REPO_ROOT

CONFIGS = osp.join(REPO_ROOT, 'configs')


def load(name):
    return Config.fromfile(osp.join(CONFIGS, name))


def flatten(obj, prefix=''):
    """{dotted.path: leaf} of a config (lists keep their index)."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out = {}
    for k, v in items:
        out.update(flatten(v, f'{prefix}.{k}' if prefix else str(k)))
    return out


def differences(a, b):
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return {k for k in set(fa) | set(fb) if fa.get(k, '<missing>') != fb.get(k, '<missing>')}


@pytest.mark.parametrize('one,two', [('dino_tbx11k_1gpu.py', 'dino_tbx11k_2gpu.py'),
                                     ('dino_tbx11k_tiny_1gpu.py', 'dino_tbx11k_tiny_2gpu.py')])
def test_1gpu_and_2gpu_differ_only_in_the_split(one, two):
    a, b = load(one), load(two)
    assert differences(a, b) == {'optim_wrapper.accumulative_counts'}
    assert a.optim_wrapper.accumulative_counts == 2 and b.optim_wrapper.accumulative_counts == 1
    assert a.train_dataloader.batch_size == b.train_dataloader.batch_size == 1
    assert a.effective_batch_size == b.effective_batch_size == 2


@pytest.mark.parametrize('fixed, auto', [('dino_tbx11k_1gpu.py', 'dino_tbx11k_eb2.py'),
                                         ('dino_tbx11k_2gpu.py', 'dino_tbx11k_eb2.py')])
def test_eb2_is_the_batch_2_recipe_on_any_split(fixed, auto):
    assert differences(load(fixed), load(auto)) == {'optim_wrapper.accumulative_counts'}
    assert load(auto).optim_wrapper.accumulative_counts == 'auto'


#: what a recipe of another effective batch changes, and nothing else
RECIPE_SCALING = {'effective_batch_size', 'base_effective_batch_size',
                  'optim_wrapper.optimizer.lr', 'auto_scale_lr.base_batch_size',
                  'custom_hooks.1.momentum'}


@pytest.mark.parametrize('base, scaled, effective', [
    ('dino_tbx11k_eb2.py', 'dino_tbx11k_eb8.py', 8),
    ('dino_tbx11k_tiny_1gpu.py', 'dino_tbx11k_tiny_eb4.py', 4)])
def test_larger_effective_batch_is_the_recipe_scaled_by_its_rule(base, scaled, effective):
    """Square-root LR scaling from effective batch 2, the same epochs, milestones and warm-up
    epochs, the EMA horizon kept in images; --auto-scale-lr is a no-op on every split."""
    a, b = load(base), load(scaled)
    assert differences(a, b) - {'optim_wrapper.accumulative_counts'} == RECIPE_SCALING
    assert b.optim_wrapper.accumulative_counts == 'auto'
    assert (a.effective_batch_size, b.effective_batch_size) == (2, effective)
    assert b.base_effective_batch_size == a.effective_batch_size
    ratio = effective / a.effective_batch_size
    lr_a, lr_b = a.optim_wrapper.optimizer.lr, b.optim_wrapper.optimizer.lr
    assert lr_b == pytest.approx(lr_a * ratio ** 0.5)
    assert b.auto_scale_lr.base_batch_size == effective
    ema_a, ema_b = (next(h for h in c.custom_hooks if h.type == 'EMAHook') for c in (a, b))
    assert 1 - ema_b.momentum == pytest.approx((1 - ema_a.momentum) ** ratio)
    assert a.param_scheduler == b.param_scheduler and a.train_cfg == b.train_cfg


def test_tiny_overrides_sizes_only():
    full, tiny = load('dino_tbx11k_1gpu.py'), load('dino_tbx11k_tiny_1gpu.py')
    allowed_prefixes = (
        'model.num_queries', 'model.backbone.depth', 'model.backbone.base_channels',
        'model.backbone.init_cfg',
        'model.neck.in_channels',
        'model.encoder.num_layers', 'model.decoder.num_layers', 'model.encoder.layer_cfg.ffn_cfg',
        'model.decoder.layer_cfg.ffn_cfg', 'model.dn_cfg.group_cfg.num_dn_queries',
        'model.test_cfg.max_per_img', 'data_root', 'train_scales', 'test_scale', 'train_pipeline',
        'test_pipeline', 'train_dataloader.dataset.pipeline', 'val_dataloader.dataset.pipeline',
        'test_dataloader.dataset.pipeline', 'train_dataloader.dataset.data_root',
        'val_dataloader.dataset.data_root', 'test_dataloader.dataset.data_root',
        'val_evaluator.ann_file', 'test_evaluator.ann_file', 'train_dataloader.num_workers',
        'train_dataloader.persistent_workers', 'train_dataloader.pin_memory',
        'val_dataloader.num_workers', 'val_dataloader.persistent_workers',
        'test_dataloader.num_workers', 'test_dataloader.persistent_workers', 'max_epochs',
        'train_cfg.max_epochs', 'param_scheduler', 'default_hooks.logger.interval')
    extra = {k for k in differences(full, tiny) if not k.startswith(allowed_prefixes)}
    assert not extra, extra


def test_full_config_is_the_tbx11k_recipe():
    cfg = load('dino_tbx11k_1gpu.py')
    assert cfg.runner_type == 'TBX11KRunner'
    assert cfg.custom_imports.imports == ['tbx11k']
    assert cfg.model.type == 'WindowNormalizedDINO' and cfg.model.loss_normalization == 'window'
    assert cfg.model.backbone.depth == 50 and cfg.model.num_queries == 900
    assert cfg.model.bbox_head.num_classes == 2
    assert cfg.model.bbox_head.loss_cls.alpha == 0.75
    dataset = cfg.train_dataloader.dataset
    assert dataset.type == 'TBX11KDataset' and dataset.data_root == 'data/TBX11K/'
    assert dataset.metainfo.classes == ('ActiveTuberculosis', 'ObsoletePulmonaryTuberculosis')
    assert dataset.ann_file == 'annotations/json/TBX11K_train.json'
    assert dataset.data_prefix.img == 'imgs/'
    resize = [t for t in dataset.pipeline if t.type == 'RandomChoiceResize'][0]
    assert sorted(min(s) for s in resize.scales) == [480, 512, 544, 576, 608]
    assert {max(s) for s in resize.scales} == {640}
    assert cfg.train_dataloader.sampler.type == 'GlobalOrderSampler'
    assert cfg.train_dataloader.batch_sampler.type == 'AccumulationWindowBatchSampler'
    assert cfg.train_cfg.type == 'AccumulationEpochBasedTrainLoop'
    assert cfg.optim_wrapper.optimizer.type == 'MergedGroupsAdamW'
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.backbone.lr_mult == 0.1
    assert cfg.optim_wrapper.clip_grad.max_norm == 0.1
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.end, warmup.convert_to_iter_based) == ('LinearLR', 2, True)
    assert (steps.type, steps.milestones) == ('MultiStepLR', [30, 40])
    assert cfg.train_cfg.max_epochs == 50
    assert cfg.auto_scale_lr.base_batch_size == 2
    hooks = {h.type: h for h in cfg.custom_hooks}
    assert hooks['EMAHook'].momentum == 0.0002
    assert 'CheckpointInterchangeHook' in hooks
    assert cfg.val_evaluator.type == 'TBX11KMetric'


def test_full_model_builds():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = load('dino_tbx11k_1gpu.py')
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'WindowNormalizedDINO'
    assert model.bbox_head.cls_branches[0].out_features == 2
