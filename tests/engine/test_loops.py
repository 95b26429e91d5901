"""AccumulationEpochBasedTrainLoop helpers (the loop itself: test_equivalence, test_schedulers)."""
import math

import pytest
import torch

from tbx11k.benchmark.op_count import OpCounter
from tbx11k.engine.loops import _mean_log_vars


def test_log_vars_are_read_from_the_device_once_and_averaged_as_floats():
    outputs = [dict(loss=torch.tensor(1.0), loss_cls=torch.tensor([2.0]), other=3.0,
                    shape=torch.zeros(2)),
               dict(loss=torch.tensor(3.0, dtype=torch.float16),
                    loss_cls=torch.tensor([float('nan')]), other=5.0, shape=torch.ones(2))]
    with OpCounter() as counted:
        mean = _mean_log_vars(outputs)
        floats = {k: v for k, v in mean.items() if k != 'shape'}
    assert mean['loss'] == 2.0 and isinstance(mean['loss'], float)
    assert math.isnan(mean['loss_cls']) and mean['other'] == 4.0  # a NaN term stays visible
    assert torch.equal(mean['shape'], torch.full((2, ), 0.5))  # not a scalar: kept as a tensor
    assert all(isinstance(v, float) for v in floats.values())  # the hooks' .item() is gone
    # one stack + one device read for all one-element tensors (instead of one per term)
    ops, syncs = counted.names[counted.phase], counted.syncs[counted.phase]
    assert ops['stack'] == 1 and syncs['_local_scalar_dense'] == 0
    assert outputs[0]['loss'].dim() == 0  # the callers' dicts are not modified


def test_single_micro_batch_log_vars_become_floats_too():
    mean = _mean_log_vars([dict(loss=torch.tensor(1.5), loss_bbox=torch.tensor(0.25))])
    assert mean == dict(loss=1.5, loss_bbox=0.25)
    assert all(isinstance(v, float) for v in mean.values())


@pytest.mark.parametrize('diff_rank_seed', [False, True])
def test_every_rank_shuffles_and_draws_noise_with_the_runs_seed(monkeypatch, diff_rank_seed):
    """randomness.diff_rank_seed=True: mmengine gives rank r the seed + r; the loop seeded the
    window sampler and the denoising noise with it, so under DDP rank 1 read another shuffle
    (images trained twice or never in an epoch) and the run differed from the 1-GPU one."""
    import types

    from tbx11k.engine import loops
    monkeypatch.setattr(loops, 'get_dist_info', lambda: (1, 2))
    runner = types.SimpleNamespace(seed=2024 + (1 if diff_rank_seed else 0),
                                   _randomness_cfg=dict(seed=2024, diff_rank_seed=diff_rank_seed))
    assert loops.shared_seed(runner) == 2024


def test_micro_batch_counts_convert_optimizer_steps_for_the_optim_wrapper():
    """The loop counts optimizer steps, the optim wrapper's accumulation counter micro-batches:
    TBX11KRunner (resume) and the loop (a stock Runner) both convert through this one method."""
    from types import SimpleNamespace

    from tbx11k.engine.loops import AccumulationEpochBasedTrainLoop
    loop = SimpleNamespace(accumulative_counts=4)
    assert AccumulationEpochBasedTrainLoop.micro_batch_counts(loop, 3, 10) == (12, 40)
    assert AccumulationEpochBasedTrainLoop.micro_batch_counts(loop, 0, 7) == (0, 28)
