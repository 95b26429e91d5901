"""CUDAFusedOptimWrapperConstructor: fused AdamW on CUDA parameters only, opt-in."""
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

import tbx11k  # noqa: F401  (registers the constructor)
from tbx11k.testing import TINY_1GPU


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(3, 4)
        self.head = torch.nn.Linear(4, 2)


def build(constructor=True, **optimizer):
    cfg = Config.fromfile(TINY_1GPU).optim_wrapper.to_dict()
    cfg.pop('_scope_', None)
    cfg['optimizer'].update(optimizer)
    if constructor:
        cfg['constructor'] = 'CUDAFusedOptimWrapperConstructor'
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        return build_optim_wrapper(Net(), cfg)


def test_configs_do_not_fuse():
    cfg = Config.fromfile(TINY_1GPU)
    assert 'constructor' not in cfg.optim_wrapper and 'fused' not in cfg.optim_wrapper.optimizer


def test_cpu_parameters_are_not_fused():
    wrapper = build()
    assert isinstance(wrapper.optimizer, torch.optim.AdamW)
    assert not wrapper.optimizer.defaults.get('fused')
    # paramwise_cfg still applies (backbone lr x 0.1)
    assert sorted({g['lr'] for g in wrapper.optimizer.param_groups}) == [1e-5, 1e-4]


def test_cuda_parameters_are_fused(monkeypatch):
    monkeypatch.setattr(torch.Tensor, 'is_cuda', property(lambda self: True))
    wrapper = build()  # torch >= 2.4 also has a fused CPU AdamW, so this builds on the CPU
    assert wrapper.optimizer.defaults['fused'] is True
    assert sorted({g['lr'] for g in wrapper.optimizer.param_groups}) == [1e-5, 1e-4]


def test_explicit_foreach_is_respected(monkeypatch):
    monkeypatch.setattr(torch.Tensor, 'is_cuda', property(lambda self: True))
    wrapper = build(foreach=True)
    assert not wrapper.optimizer.defaults.get('fused')
