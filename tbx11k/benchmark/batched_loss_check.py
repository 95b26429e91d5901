"""BatchedLossDINOHead against mmdet's DINOHead on any device (the GPU run checks it too)."""
import contextlib
from typing import Dict, Iterator, Sequence, Tuple

import torch

from ..testing.models import build_tiny_dino, losses_and_grads, random_batch


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
            la, ga = losses_and_grads(stock, inputs, samples)
            lb, gb = losses_and_grads(batched, inputs, samples)
            lr, gr = losses_and_grads(stock, inputs, samples)
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
