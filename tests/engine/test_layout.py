"""Which launches a config of effective batch E takes (tbx11k.engine.layout): the accumulation
steps follow from the world size with ``accumulative_counts='auto'``; other launches are refused
with a message naming the world sizes that fit (tools/train.py: exit 5)."""
import os.path as osp

import pytest
from mmengine.config import Config

from tbx11k.engine.layout import (
    LayoutMismatch,
    accepted_world_sizes,
    check_launch,
    fitting_world_sizes,
    launch_rank,
    launch_world_size,
    resolve_accumulative_counts,
)
from tbx11k.testing import REPO_ROOT


def test_fitting_world_sizes():
    assert fitting_world_sizes(8) == [1, 2, 4, 8]
    assert fitting_world_sizes(2) == [1, 2]
    assert fitting_world_sizes(12, batch_size=2) == [1, 2, 3, 6]
    assert fitting_world_sizes(6, batch_size=4) == []


@pytest.mark.parametrize('world_size, accumulation', [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_auto_derives_the_accumulation_from_the_world_size(world_size, accumulation):
    assert resolve_accumulative_counts('auto', 8, world_size, 1) == accumulation


@pytest.mark.parametrize('world_size', [3, 5, 6, 16])
def test_auto_refuses_a_world_size_that_does_not_divide_the_effective_batch(world_size):
    with pytest.raises(LayoutMismatch) as error:
        resolve_accumulative_counts('auto', 8, world_size, 1)
    message = str(error.value)
    assert f'{world_size} process(es) x 1 image cannot split it' in message
    assert ('World sizes that fit: 1, 2, 4 or 8 processes (GPUs) with 8, 4, 2, 1 accumulation'
            in message)


def test_auto_needs_an_effective_batch():
    with pytest.raises(LayoutMismatch, match='does not set: add effective_batch_size'):
        resolve_accumulative_counts('auto', None, 2, 1)


def test_fixed_accumulation_still_checks_the_declared_effective_batch():
    assert resolve_accumulative_counts(2, 2, 1, 1) == 2
    assert resolve_accumulative_counts(3, None, 2, 1) == 3  # nothing declared: not checked
    with pytest.raises(LayoutMismatch) as error:
        resolve_accumulative_counts(2, 2, 2, 1)
    assert 'but this launch gives 4 = 2 GPU x 1 image x 2 accumulation steps' in str(error.value)
    assert 'World sizes that fit effective_batch_size=2: 1 or 2 processes' in str(error.value)
    for bad in (0, -1, 1.5, 'two', True):
        with pytest.raises(LayoutMismatch, match='it must be a whole number >= 1'):
            resolve_accumulative_counts(bad, 2, 1, 1)


@pytest.mark.parametrize('config, world_sizes', [
    ('dino_tbx11k_1gpu.py', [1]), ('dino_tbx11k_2gpu.py', [2]), ('dino_tbx11k_eb2.py', [1, 2]),
    ('dino_tbx11k_eb8.py', [1, 2, 4, 8]), ('dino_tbx11k_tiny_1gpu.py', [1]),
    ('dino_tbx11k_tiny_2gpu.py', [2]), ('dino_tbx11k_tiny_eb4.py', [1, 2, 4])])
def test_world_sizes_each_shipped_config_takes(config, world_sizes):
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', config))
    assert accepted_world_sizes(cfg) == world_sizes


def test_world_sizes_of_configs_without_an_effective_batch():
    assert accepted_world_sizes(dict(optim_wrapper=dict(accumulative_counts=2))) is None
    assert accepted_world_sizes(dict(optim_wrapper=dict(accumulative_counts='auto'))) == []


def test_launch_world_size_and_rank_from_the_launchers_environment():
    assert launch_world_size('none', {}) == 1
    assert launch_world_size('pytorch', {'WORLD_SIZE': '4'}) == 4
    assert launch_world_size('slurm', {'SLURM_NTASKS': '8', 'WORLD_SIZE': '2'}) == 8
    assert launch_world_size('mpi', {'OMPI_COMM_WORLD_SIZE': '2'}) == 2
    assert launch_world_size('pytorch', {}) is None
    assert launch_world_size('pytorch', {'WORLD_SIZE': 'x'}) is None
    assert launch_rank('slurm', {'SLURM_PROCID': '3'}) == 3 and launch_rank('none', {}) == 0


def test_check_launch_applies_to_the_optimizer_step_loop_only():
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'dino_tbx11k_eb8.py'))
    assert [check_launch(cfg, w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(LayoutMismatch, match='World sizes that fit: 1, 2, 4 or 8'):
        check_launch(cfg, 6)
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1)
    assert check_launch(cfg, 6) is None  # a stock loop: the config's own business
