"""Optimizer construction switches for speed (off unless a config asks for them)."""
from typing import Optional

import torch
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS

#: torch optimizers with a fused CUDA implementation (one kernel for all parameters)
FUSABLE_OPTIMIZERS = ('Adam', 'AdamW', 'SGD')


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
        name = optimizer_type if isinstance(optimizer_type, str) else \
            getattr(optimizer_type, '__name__', str(optimizer_type))
        reason: Optional[str] = None
        if name not in FUSABLE_OPTIMIZERS:
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
