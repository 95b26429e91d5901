"""MergedGroupsAdamW & co. (the configs' optimizer: torch's update, stepped per hyperparameter set)
and CUDAFusedOptimWrapperConstructor (fused AdamW on CUDA parameters only, opt-in)."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

import tbx11k  # noqa: F401  (registers the constructor)
from tbx11k.engine.optim import merge_param_groups
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


def test_configs_use_the_merged_groups_optimizer():
    wrapper = build(constructor=False)
    assert type(wrapper.optimizer).__name__ == 'MergedGroupsAdamW'
    assert len(wrapper.optimizer.param_groups) == 4  # one per tensor (paramwise_cfg), as torch's


def test_merge_param_groups_keeps_unequal_hyperparameters_apart():
    a, b, c, d = (torch.zeros(1) for _ in range(4))
    lr = torch.tensor(0.1)
    groups = [dict(params=[p], lr=value, betas=(0.9, 0.99))
              for p, value in ((a, 0.1), (b, 0.01), (c, 0.1), (d, lr))]
    merged = merge_param_groups(groups)
    assert [[id(p) for p in g['params']] for g in merged] == [[id(a), id(c)], [id(b)], [id(d)]]
    assert [g['lr'] for g in merged] == [0.1, 0.01, lr]
    assert [len(g['params']) for g in groups] == [1, 1, 1, 1]  # the input is left alone
    # a tensor hyperparameter is merged only with the same tensor
    assert len(merge_param_groups(groups + [dict(params=[a], lr=lr, betas=(0.9, 0.99))])) == 3


def _steps(optimizer, params, steps=4):
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        for i, group in enumerate(optimizer.param_groups):  # a scheduler changing the LRs
            group['lr'] = group['lr'] * (0.5 if i % 2 else 0.9)
        optimizer.step()


@pytest.mark.parametrize('impl', [dict(foreach=False), dict(foreach=True), dict(fused=True)])
@pytest.mark.parametrize('name', ['AdamW', 'Adam', 'SGD'])
def test_merged_groups_update_is_bit_identical_to_torch(name, impl):
    """Same parameters and state after several steps, one torch step per hyperparameter set, and
    state dicts that load into either optimizer."""
    from mmdet.registry import OPTIMIZERS
    torch_cls, merged_cls = getattr(torch.optim, name), OPTIMIZERS.get(f'MergedGroups{name}')
    extra = dict(momentum=0.9) if name == 'SGD' else dict(weight_decay=0.01)
    extra.update(impl)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 5)) for _ in range(6)]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]

    def groups(ps):  # one group per tensor, two learning rates (as mmengine's paramwise_cfg)
        return [dict(params=[p], lr=0.1 if i % 3 else 0.01) for i, p in enumerate(ps)]
    reference, merged = torch_cls(groups(params), **extra), merged_cls(groups(copies), **extra)
    calls = []
    init_group = merged._init_group
    merged._init_group = lambda group, *args: (calls.append(len(group['params']))
                                               or init_group(group, *args))
    _steps(reference, params)
    _steps(merged, copies)
    assert all(torch.equal(p, q) for p, q in zip(params, copies))
    assert len(merged.param_groups) == 6  # torch's groups are back after each step
    # step 1: lrs 0.09 / 0.05 / 0.009 / 0.045 alternate with the group index: 4 sets of sizes
    assert len(calls) == 4 * 4 and sorted(calls[:4]) == [1, 1, 2, 2]
    state = merged.state_dict()
    for key, value in reference.state_dict()['state'].items():
        for name_, tensor in value.items():
            assert torch.equal(tensor, state['state'][key][name_]), (key, name_)
    # a checkpoint of either loads into the other and continues identically
    loaded = merged_cls(groups([torch.nn.Parameter(p.detach().clone()) for p in params]), **extra)
    loaded.load_state_dict(copy.deepcopy(reference.state_dict()))
    _steps(reference, params, 2)
    _steps(loaded, [p for g in loaded.param_groups for p in g['params']], 2)
    assert all(torch.equal(p, q) for p, q in
               zip(params, [p for g in loaded.param_groups for p in g['params']]))


def test_step_hooks_run_once_with_torchs_param_groups():
    """torch wraps each optimizer class's ``step`` with its hooks once; with a plain AdamW in the
    process the base class's step is wrapped too, and must not run the hooks a second time."""
    from tbx11k.engine.optim import MergedGroupsAdamW
    torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))])  # wraps AdamW.step
    ps = [torch.nn.Parameter(torch.ones(2)) for _ in range(4)]
    optimizer = MergedGroupsAdamW([dict(params=[p]) for p in ps], lr=0.1)
    seen = []
    optimizer.register_step_pre_hook(lambda o, *_: seen.append(('pre', len(o.param_groups))))
    optimizer.register_step_post_hook(lambda o, *_: seen.append(('post', len(o.param_groups))))
    for p in ps:
        p.grad = torch.ones(2)
    optimizer.step()
    assert seen == [('pre', 4), ('post', 4)]


def test_param_groups_are_restored_when_the_step_fails():
    from tbx11k.engine.optim import MergedGroupsAdamW
    ps = [torch.nn.Parameter(torch.ones(2)) for _ in range(3)]
    optimizer = MergedGroupsAdamW([dict(params=[p]) for p in ps], lr=0.1)
    groups = optimizer.param_groups

    def closure():
        raise RuntimeError('boom')
    with pytest.raises(RuntimeError, match='boom'):
        optimizer.step(closure)
    assert optimizer.param_groups is groups
