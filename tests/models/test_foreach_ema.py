"""ForeachExponentialMovingAverage: the same EMA weights as mmengine's, with one multi-tensor op."""
import torch
from mmengine.model import ExponentialMovingAverage

from tbx11k.models.foreach_ema import ForeachExponentialMovingAverage


def test_parameters_only_and_interval():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ours = ForeachExponentialMovingAverage(net, momentum=0.1, interval=2)
    ref = ExponentialMovingAverage(net, momentum=0.1, interval=2)
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
            net[1].running_mean.add_(1.0)
        ours.update_parameters(net)
        ref.update_parameters(net)
    a, b = ours.module.state_dict(), ref.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and int(ours.steps) == 5


def test_ema_hook_builds_it_by_name():
    from mmengine.hooks import EMAHook
    from mmengine.registry import DefaultScope

    import tbx11k  # noqa: F401
    hook = EMAHook(ema_type='ForeachExponentialMovingAverage', momentum=0.0002,
                   update_buffers=True)
    net = torch.nn.Linear(2, 2)
    runner = type('R', (), {'model': net})()
    with DefaultScope.overwrite_default_scope('mmdet'):
        hook.before_run(runner)
    assert isinstance(hook.ema_model, ForeachExponentialMovingAverage)
