"""EMA weights updated with one multi-tensor op instead of one ``lerp_`` per tensor."""
from collections import defaultdict

import torch
from mmengine.model import ExponentialMovingAverage

from mmdet.registry import MODELS


@MODELS.register_module()
class ForeachExponentialMovingAverage(ExponentialMovingAverage):
    """mmengine's ``ExponentialMovingAverage`` with the update as ``torch._foreach_lerp_``.

    mmengine updates every parameter (and with ``update_buffers=True`` every floating buffer) with
    its own ``lerp_``: for DINO-R50 ~330 kernel launches per optimizer step on a GPU. The same
    ``lerp`` in one multi-tensor op per (device, dtype) group gives the same values (the CPU test
    checks equality with mmengine's class;
    ``tbx11k.benchmark.ema_check`` checks it on the GPU). Use it
    with ``dict(type='EMAHook', ema_type='ForeachExponentialMovingAverage', ...)``; the
    checkpoints are the same as with ``ExponentialMovingAverage``.
    """

    def update_parameters(self, model: torch.nn.Module) -> None:
        if self.steps == 0 or self.steps % self.interval != 0:
            return super().update_parameters(model)  # the copy at step 0; skipped intervals
        src = model.state_dict() if self.update_buffers else dict(model.named_parameters())
        groups = defaultdict(lambda: ([], []))
        for key, p_avg in self.avg_parameters.items():
            if p_avg.dtype.is_floating_point:
                averaged, sources = groups[(p_avg.device, p_avg.dtype)]
                averaged.append(p_avg.data)
                sources.append(src[key].data.to(p_avg.device))
        for averaged, sources in groups.values():
            torch._foreach_lerp_(averaged, sources, self.momentum)
        if not self.update_buffers:
            for b_avg, b_src in zip(self.module.buffers(), model.buffers()):
                b_avg.data.copy_(b_src.data.to(b_avg.device))
        self.steps += 1
