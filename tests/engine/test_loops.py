"""AccumulationEpochBasedTrainLoop helpers (the loop itself: test_equivalence, test_schedulers)."""
import math

import torch

from tbx11k.engine.loops import _mean_log_vars
from tbx11k.op_count import OpCounter


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
