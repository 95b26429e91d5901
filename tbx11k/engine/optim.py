"""Optimizers and optimizer construction for speed.

``MergedGroupsAdamW`` (and Adam/SGD): the configs' optimizer. mmengine's
``DefaultOptimWrapperConstructor`` gives every parameter its own param group as soon as a
``paramwise_cfg`` is set (DINO's backbone ``lr_mult=0.1``): torch then runs its multi-tensor
(foreach) or fused update once per group, i.e. once per tensor (351 for R50 DINO: 3,161 of the
ops that launch a GPU kernel per step, 20 merged; ``tools/analysis_tools/count_ops.py``). On an
H100 that was 39-47 ms of host time per optimizer step of 0.30 s (profiler self time of
``Optimizer.step#AdamW.step``). These optimizers take the update over the groups whose
hyperparameters are
equal (two here: backbone and the rest) in one call; their param groups, state and
``state_dict`` stay torch's, per parameter, so checkpoints, LR schedulers and ``paramwise_cfg``
work unchanged, and the update is bit-identical (the same element-wise arithmetic).

``CUDAFusedOptimWrapperConstructor``: fused Adam/AdamW/SGD on CUDA, opt-in.
"""
from typing import Any, Dict, Hashable, List, Optional

import torch
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS

#: torch optimizers with a fused CUDA implementation (one kernel for all parameters)
FUSABLE_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def _hashable(value: Any) -> Hashable:
    """``value`` as a grouping key; tensors and other unhashables by identity (never merged)."""
    if isinstance(value, torch.Tensor):
        return ('tensor', id(value))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return ('object', id(value))
    return value


def merge_param_groups(param_groups: List[Dict]) -> List[Dict]:
    """Merge the param groups whose hyperparameters (every key but ``params``) are equal.

    Args:
        param_groups (List[Dict]): torch param groups.

    Returns:
        List[Dict]: One group per hyperparameter set, in first-seen order; parameters keep their
        order within a set.
    """
    merged: Dict[Hashable, Dict] = {}
    for group in param_groups:
        key = tuple(sorted((k, _hashable(v)) for k, v in group.items() if k != 'params'))
        if key in merged:
            merged[key]['params'] = merged[key]['params'] + list(group['params'])
        else:
            merged[key] = dict(group, params=list(group['params']))
    return list(merged.values())


class MergedGroupsStepMixin:
    """``step()`` over the param groups merged by hyperparameters; everything else is the
    optimizer's own (its ``param_groups`` are put back right after the step)."""

    def step(self, closure=None):
        # torch wraps each class's ``step`` once with its step hooks and profiler mark
        # (``Optimizer._patch_step_function``): this class's step is wrapped, and the base
        # class's too as soon as a plain instance of it exists. The base's own step is called
        # here, so that the hooks run once, and with torch's param groups.
        base_step = super(MergedGroupsStepMixin, type(self)).step
        if getattr(base_step, 'hooked', False):
            base_step = base_step.__wrapped__
        groups = self.param_groups
        merged = merge_param_groups(groups)
        if len(merged) == len(groups):
            return base_step(self, closure)
        self.param_groups = merged
        try:
            return base_step(self, closure)
        finally:
            self.param_groups = groups


def torch_optimizer_type(optimizer_type: str) -> str:
    """The torch optimizer a ``MergedGroups*`` type steps like.

    Args:
        optimizer_type (str): An optimizer type, e.g. ``'MergedGroupsAdamW'``.

    Returns:
        str: ``'AdamW'`` for ``'MergedGroupsAdamW'``; other types unchanged.
    """
    return optimizer_type[len('MergedGroups'):] if optimizer_type.startswith('MergedGroups') \
        else optimizer_type


@OPTIMIZERS.register_module()
class MergedGroupsAdamW(MergedGroupsStepMixin, torch.optim.AdamW):
    """``torch.optim.AdamW`` stepping all param groups of equal hyperparameters at once."""


@OPTIMIZERS.register_module()
class MergedGroupsAdam(MergedGroupsStepMixin, torch.optim.Adam):
    """``torch.optim.Adam`` stepping all param groups of equal hyperparameters at once."""


@OPTIMIZERS.register_module()
class MergedGroupsSGD(MergedGroupsStepMixin, torch.optim.SGD):
    """``torch.optim.SGD`` stepping all param groups of equal hyperparameters at once."""


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class CUDAFusedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` that builds Adam/AdamW/SGD with ``fused=True`` on CUDA.

    torch's fused optimizers need every parameter on the GPU, so ``fused`` cannot be written into a
    config that must also run on the CPU; this constructor decides when the optimizer is built
    (after the runner has moved the model): fused when all parameters are CUDA tensors and the
    optimizer is fusable, the default (foreach) implementation otherwise. An explicit ``fused`` or
    ``foreach`` in ``optim_wrapper.optimizer`` is left alone. Enable with::

        optim_wrapper = dict(constructor='CUDAFusedOptimWrapperConstructor')

    Fused and foreach AdamW compute the same update up to float rounding (not bit-identical).
    """

    def __call__(self, model: torch.nn.Module):
        self.fused = self._fuse(model)
        if self.fused:
            self.optimizer_cfg = dict(self.optimizer_cfg, fused=True)
        return super().__call__(model)

    def _fuse(self, model: torch.nn.Module) -> bool:
        optimizer_type = self.optimizer_cfg.get('type')
        optimizer_class = OPTIMIZERS.get(optimizer_type) if isinstance(optimizer_type, str) \
            else optimizer_type
        name = optimizer_type if isinstance(optimizer_type, str) else \
            getattr(optimizer_type, '__name__', str(optimizer_type))
        reason: Optional[str] = None
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class,
                                                                 FUSABLE_OPTIMIZERS)):
            reason = f'{name} has no fused implementation'
        elif 'fused' in self.optimizer_cfg or 'foreach' in self.optimizer_cfg:
            reason = 'the config sets fused/foreach itself'
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            if not params or not all(p.is_cuda and p.is_floating_point() for p in params):
                reason = 'the parameters are not all floating-point CUDA tensors'
        print_log(f'{type(self).__name__}: {name} ' +
                  ('fused (one CUDA kernel per step)' if reason is None
                   else f'not fused: {reason}'), logger='current')
        return reason is None
