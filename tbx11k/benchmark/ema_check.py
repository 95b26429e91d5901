"""GPU self-check of ``ForeachExponentialMovingAverage`` against mmengine's per-tensor EMA."""
import torch
from mmengine.model import ExponentialMovingAverage

from ..models.foreach_ema import ForeachExponentialMovingAverage


def compare_with_mmengine_ema(device='cuda', steps: int = 3, seed: int = 0) -> dict:
    """Whether the foreach update equals mmengine's per-tensor update bit for bit on ``device``
    (a small conv net with BN buffers, ``update_buffers=True``)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                              torch.nn.Flatten(), torch.nn.LazyLinear(4))
    net(torch.randn(2, 3, 8, 8))
    net = net.to(device)
    ours = ForeachExponentialMovingAverage(net, momentum=0.0002, update_buffers=True)
    ref = ExponentialMovingAverage(net, momentum=0.0002, update_buffers=True)
    for _ in range(steps):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            for b in net.buffers():
                if b.dtype.is_floating_point:
                    b.add_(torch.rand_like(b))
        ours.update_parameters(net)
        ref.update_parameters(net)
    a, b = ours.module.state_dict(), ref.module.state_dict()
    return dict(equal=all(torch.equal(a[k], b[k]) for k in a),
                max_abs_difference=max(float((a[k].double() - b[k].double()).abs().max())
                                       for k in a if a[k].dtype.is_floating_point))
