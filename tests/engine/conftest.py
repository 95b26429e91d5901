"""Fixtures of the reliability tests: an uninterrupted reference run, and one run interrupted
in every way we support that must end bit-identical to it (see tbx11k.testing.reliability_runs)."""
import glob
import os
import random
import time

import pytest

from tbx11k.testing import TINY_1GPU, TINY_2GPU, load_checkpoint
from tbx11k.testing.reliability import all_finite, derived_config
from tbx11k.testing.reliability_runs import (
    STEPS,
    compare,
    last_checkpoint,
    signal_segment,
    start,
    train,
)
from tbx11k.utils.atomic_io import stale_temporaries

SEED = 20241126


def _drop_checkpoints(*dirs):
    """The tiny checkpoints are ~54 MB each: do not leave them in pytest's kept tmp dirs."""
    for d in dirs:
        for path in glob.glob(os.path.join(str(d), '*.pth')):
            os.remove(path)


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory, training_root):
    """The uninterrupted tiny 1-GPU run (tbx11k.testing.reliability_runs.OPTIONS): dict(work_dir,
    final)."""
    work_dir = tmp_path_factory.mktemp('reliability') / 'reference'
    rc, log = train(work_dir, training_root)
    assert rc == 0, log[-5000:]
    final = load_checkpoint(str(work_dir / f'iter_{STEPS}.pth'))
    assert final['meta']['iter'] == STEPS and all_finite(final)
    yield dict(work_dir=work_dir, final=final, log=log)
    _drop_checkpoints(work_dir)


def _compare_common(reference_dir, work_dir, compared):
    """Compare the checkpoints both runs have at the same step (regular ones: 5, 10, 14)."""
    for step in (5, 10, STEPS):
        name = f'iter_{step}.pth'
        if step not in compared and os.path.isfile(os.path.join(str(work_dir), name)):
            compared[step] = compare(load_checkpoint(str(reference_dir / name)),
                                     load_checkpoint(os.path.join(str(work_dir), name)))


@pytest.fixture(scope='session')
def interrupted_run(tmp_path_factory, training_root, reference_run):
    """One 1-GPU run through six processes in one work dir (seeded random points):

    1. SIGUSR1 from outside after a random step 1-3 (+0-0.3 s): exit 75;
    2. ``--resume``; SIGTERM raised by the process itself during step 7, the last step of epoch 1
       (the end-of-epoch path): exit 75;
    3. ``--resume``; SIGUSR1 from outside after a random step 8-9: exit 75;
    4. ``--resume`` with a regular checkpoint every step; SIGKILL 0-50 ms after a checkpoint write
       started (its ``*.tmp-<pid>`` appeared);
    5. ``--resume`` (auto: ``last_checkpoint``); SIGTERM from outside after a random later step
       (11 at the latest);
    6. ``--resume`` to the end (step 14).

    After each process, a checkpoint the reference run also wrote (steps 5, 10, 14) is compared
    with it. Returns dict(work_dir, segments: list of dicts, final checkpoint,
    compared: {step: max |difference| vs the reference}).
    """
    rng = random.Random(SEED)
    base = tmp_path_factory.mktemp('interrupted')
    work_dir = base / 'run'
    segments = []
    compared = {}
    ref_dir = reference_run['work_dir']

    segments.append(signal_segment(work_dir, training_root, 'SIGUSR1', rng.randint(1, 3),
                                   rng.uniform(0, 0.3)))
    _compare_common(ref_dir, work_dir, compared)
    at_epoch_end = derived_config(TINY_1GPU, str(base / 'sigterm_at_step_7.py'), hooks=[
        dict(type='SignalAtStepHook', step=7, signal_name='SIGTERM')])
    segments.append(signal_segment(work_dir, training_root, 'SIGTERM', None, 0.0,
                                   config=at_epoch_end, resume='auto'))
    _compare_common(ref_dir, work_dir, compared)
    segments.append(signal_segment(work_dir, training_root, 'SIGUSR1', rng.randint(8, 9),
                                   rng.uniform(0, 0.3), resume='auto'))
    _compare_common(ref_dir, work_dir, compared)

    # 4: kill -9 while a checkpoint is being written
    proc = start(work_dir, training_root, resume='auto',
                 **{'default_hooks.checkpoint.interval': 1})
    proc.wait_for(lambda: stale_temporaries(work_dir), poll=0.002)
    time.sleep(rng.uniform(0, 0.05))
    proc.kill()
    proc.wait()
    segments.append(dict(kind='SIGKILL during a checkpoint write', rc=proc.proc.returncode,
                         killed_after_step=proc.last_step(),
                         leftovers=[os.path.basename(p) for p in stale_temporaries(work_dir)],
                         log=proc.text(), **last_checkpoint(work_dir)))
    _compare_common(ref_dir, work_dir, compared)

    # sent 3 steps before the end at the latest: a signal that arrives during the last step
    # finishes the run normally (nothing left to resume), and a tiny step takes 0.2 s
    after = segments[-1]['checkpoint_step']
    segments.append(signal_segment(work_dir, training_root, 'SIGTERM',
                                   rng.randint(after + 1, max(after + 1, STEPS - 3)),
                                   rng.uniform(0, 0.3), resume='auto'))
    _compare_common(ref_dir, work_dir, compared)
    rc, log = train(work_dir, training_root, resume='auto')
    assert rc == 0, log[-5000:]
    segments.append(dict(kind='resume to the end', rc=rc, log=log))
    _compare_common(ref_dir, work_dir, compared)
    final = load_checkpoint(str(work_dir / f'iter_{STEPS}.pth'))
    yield dict(work_dir=work_dir, segments=segments, final=final, compared=compared)
    _drop_checkpoints(work_dir)


DDP_OPTIONS = {'train_cfg.max_epochs': 1}  # 7 optimizer steps of 2 processes x 1 image
DDP_NAN = dict(type='InjectNaNHook', steps=[2], term='loss_cls', ranks=[1])


@pytest.fixture(scope='session')
def ddp_reference(tmp_path_factory, training_root):
    """The uninterrupted 2-process (gloo) run, 1 epoch, with loss_cls made NaN on rank 1 only at
    optimizer step 2 (the health hook must skip that step on both ranks):
    dict(work_dir, config, final, log)."""
    base = tmp_path_factory.mktemp('ddp')
    config = derived_config(TINY_2GPU, str(base / 'tiny_2gpu_nan_rank1_step2.py'),
                            hooks=[DDP_NAN])
    work_dir = base / 'reference'
    rc, log = train(work_dir, training_root, config=config, nproc=2, **DDP_OPTIONS)
    assert rc == 0, log[-5000:]
    final = load_checkpoint(str(work_dir / 'iter_7.pth'))
    yield dict(work_dir=work_dir, config=config, final=final, log=log, base=base)
    _drop_checkpoints(work_dir)
