"""BatchedLossDINOHead against mmdet's DINOHead on any device (the GPU run checks it too)."""
import contextlib
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..utils import current_logger_level


def build_tiny_dino(head_type: Optional[str] = None, device: str = 'cpu', head: Optional[Dict] = None,
                    **overrides):
    """The tiny config's model (seed 0, mmdet's initialisation) with ``head_type`` as
    ``bbox_head`` (None: the config's), in train mode; ``head`` updates ``model.bbox_head``, ``overrides`` ``model``.

    ``init_weights`` is needed: some DINO parameters (e.g. the level embedding) are created
    uninitialised and only filled there. Its per-tensor report is not logged."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from ..testing import TINY_1GPU
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
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
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


def _losses_and_grads(model, inputs, samples) -> Tuple[Dict, Dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the denoising noise
    losses = model.loss(inputs, samples)
    model.parse_losses(losses)[0].backward()
    grads = {n: p.grad.detach().double().cpu() for n, p in model.named_parameters()
             if p.grad is not None}
    return {k: v.detach().double().cpu().reshape(()) for k, v in losses.items()}, grads


@contextlib.contextmanager
def full_fp32_matmuls() -> Iterator[None]:
    """TF32 off in cuDNN convolutions and CUDA matmuls (cuDNN's is on by default): TF32 rounds
    inputs to 10 mantissa bits, so a 1e-7 difference in a loss can flip a rounding and show up
    as a 1e-5..1e-4 relative gradient difference that says nothing about the loss code."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def _worst_differences(la: Dict, ga: Dict, lb: Dict, gb: Dict) -> Tuple[float, float]:
    """Worst relative loss difference and worst per-tensor relative gradient difference (a
    tensor's norm floored at 1e-6 x the largest gradient norm)."""
    worst_loss = max((float((la[k] - lb[k]).abs() / la[k].abs().clamp(min=1e-12))
                      for k in la.keys() & lb.keys()), default=0.0)
    scale = max(float(g.norm()) for g in ga.values())
    worst_grad = max((float((ga[n] - gb[n]).norm()) / max(float(ga[n].norm()), 1e-6 * scale)
                      for n in ga.keys() & gb.keys()), default=0.0)
    return worst_loss, worst_grad


def compare_with_stock_head(device: str = 'cuda',
                            batches: Sequence[Sequence[int]] = ((0, ), (3, ), (2, 5), (0, 4))
                            ) -> Dict:
    """Losses and gradients of a tiny model with ``BatchedLossDINOHead`` and with ``DINOHead``
    (same weights, same denoising noise) on ``device`` in full fp32 (no TF32): the worst
    relative differences, beside those of ``DINOHead`` run twice (the device's run-to-run noise,
    e.g. atomic adds in the deformable attention's backward). Equal: below 1e-5, or below 4x
    that noise where the device has more."""
    stock = build_tiny_dino('DINOHead', device)
    batched = build_tiny_dino('BatchedLossDINOHead', device)
    batched.load_state_dict(stock.state_dict())
    worst_loss = worst_grad = noise_loss = noise_grad = 0.0
    same_keys = True
    with full_fp32_matmuls():
        for num_boxes in batches:
            inputs, samples = random_batch(num_boxes, device)
            la, ga = _losses_and_grads(stock, inputs, samples)
            lb, gb = _losses_and_grads(batched, inputs, samples)
            lr, gr = _losses_and_grads(stock, inputs, samples)
            same_keys &= list(la) == list(lb) and ga.keys() == gb.keys()
            loss, grad = _worst_differences(la, ga, lb, gb)
            worst_loss, worst_grad = max(worst_loss, loss), max(worst_grad, grad)
            loss, grad = _worst_differences(la, ga, lr, gr)
            noise_loss, noise_grad = max(noise_loss, loss), max(noise_grad, grad)
    return dict(device=device, same_keys=same_keys, max_loss_rel_difference=worst_loss,
                max_grad_rel_difference=worst_grad, stock_rerun_loss_rel_difference=noise_loss,
                stock_rerun_grad_rel_difference=noise_grad,
                equal=(same_keys and worst_loss < max(1e-5, 4 * noise_loss)
                       and worst_grad < max(1e-5, 4 * noise_grad)))
