"""Test factories of models: the tiny DINO of the tiny config and random batches for it."""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..utils import current_logger_level


def build_tiny_dino(head_type: Optional[str] = None, device: str = 'cpu',
                    head: Optional[Dict] = None, **overrides):
    """The tiny config's model (seed 0, mmdet's initialisation) with ``head_type`` as
    ``bbox_head`` (None: the config's), in train mode; ``head`` updates ``model.bbox_head``,
    ``overrides`` ``model``.

    ``init_weights`` is needed: some DINO parameters (e.g. the level embedding) are created
    uninitialised and only filled there. Its per-tensor report is not logged."""
    from mmengine.config import Config

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from ._utils import TINY_1GPU
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(TINY_1GPU)
    cfg.model.backbone.init_cfg = None
    cfg.model.update(overrides)
    cfg.model.bbox_head.update(head or {})
    if head_type is not None:
        cfg.model.bbox_head.type = head_type
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    with current_logger_level(logging.WARNING):
        model.init_weights()
    return model.to(device).train()


def random_batch(num_boxes: Sequence[int], device: str = 'cpu',
                 seed: int = 0) -> Tuple[torch.Tensor, List]:
    """Random 96 px images and DetDataSamples with ``num_boxes[i]`` boxes (unequal shapes)."""
    from mmengine.structures import InstanceData

    from mmdet.structures import DetDataSample
    g = torch.Generator().manual_seed(seed + 100 * len(num_boxes) + sum(num_boxes))
    samples = []
    for i, n in enumerate(num_boxes):
        h, w = (96, 80) if i % 2 else (80, 96)
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), pad_shape=(96, 96),
                                             batch_input_shape=(96, 96), scale_factor=(1., 1.)))
        xy = torch.rand(n, 2, generator=g) * 50
        wh = torch.rand(n, 2, generator=g) * 25 + 5
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1).to(device),
            labels=torch.randint(0, 2, (n, ), generator=g).to(device))
        samples.append(sample)
    return torch.randn(len(samples), 3, 96, 96, generator=g).to(device), samples


def losses_and_grads(model, inputs, samples) -> Tuple[Dict, Dict]:
    """Losses and parameter gradients (float64, on the CPU) of ``model`` on one batch, with the
    denoising noise seeded."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the denoising noise
    losses = model.loss(inputs, samples)
    model.parse_losses(losses)[0].backward()
    grads = {n: p.grad.detach().double().cpu() for n, p in model.named_parameters()
             if p.grad is not None}
    return {k: v.detach().double().cpu().reshape(()) for k, v in losses.items()}, grads
