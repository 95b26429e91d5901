"""SIGUSR1/SIGTERM: a checkpoint at an optimizer-step boundary, exit 75, bit-identical resume.

Trials (seeded random points, see conftest): four in one 1-GPU run (after a random step of
epoch 1; at the last step of epoch 1; after a random step of epoch 2, twice, with a kill -9 in
between that test_atomic_checkpoint checks), and one 2-process DDP run where only rank 1 gets
the signal. Every resumed run must end bit-identical (weights, EMA, optimizer, LR schedulers) to
the uninterrupted run of the same layout.
"""
import os
import random
import signal

from tbx11k.engine.exit_codes import EXIT_PREEMPTED
from tbx11k.engine.hooks.preemption import PreemptionCheckpointHook
from tbx11k.engine.stopping import stop_request
from tbx11k.testing import load_checkpoint

from reliability_helpers import STEPS_PER_EPOCH, compare, signal_segment, train

DDP_SEED = 7


def _check_segment(seg, steps_per_epoch=STEPS_PER_EPOCH):
    assert seg['rc'] == EXIT_PREEMPTED, seg['log'][-5000:]
    assert (f"Preempted by {seg['signal']}" in seg['log']
            or 'Preempted by a signal sent to another rank' in seg['log'])
    step, epoch = seg['checkpoint_step'], seg['checkpoint_epoch']
    assert seg['checkpoint'] == f'iter_{step}.pth'
    # a whole optimizer step, in a position the loop resumes from (inside or at the end of an epoch)
    assert 0 <= step - steps_per_epoch * epoch < steps_per_epoch
    if seg['sent_after_step'] is not None:
        assert step >= seg['sent_after_step']
    assert seg['finite'] and seg['has_ema'] and seg['has_optimizer'] and seg['has_layout']


def test_signals_at_random_steps_resume_bit_identical(interrupted_run, reference_run):
    segments = [s for s in interrupted_run['segments'] if 'signal' in s]
    assert len(segments) == 4
    for seg in segments:
        _check_segment(seg)
    at_epoch_end = segments[1]
    assert (at_epoch_end['checkpoint_step'], at_epoch_end['checkpoint_epoch']) == (7, 1)
    assert 'Resuming inside epoch' not in interrupted_run['segments'][2]['log']
    difference = compare(reference_run['final'], interrupted_run['final'])
    print('\n[figure] 1-GPU preemption trials (signal, sent after step -> checkpoint step): ' +
          '; '.join(f"{s['kind']}: {s['sent_after_step']} -> {s['checkpoint_step']}"
                    for s in segments))
    print(f'[figure] resumed 5 times, max |difference| vs uninterrupted at step 14: '
          f'{difference!r}')
    assert difference == 0.0


def test_ddp_signal_to_one_rank(ddp_reference, training_root):
    """SIGUSR1 to rank 1 only: both ranks stop at the same step, rank 0 writes, resume equals."""
    rng = random.Random(DDP_SEED)
    work_dir = ddp_reference['base'] / 'interrupted'
    seg = signal_segment(work_dir, training_root, 'SIGUSR1', rng.randint(1, 4),
                         rng.uniform(0, 0.3), config=ddp_reference['config'], nproc=2,
                         to_ranks=[1], **{'train_cfg.max_epochs': 1})
    # torch.distributed.run exits 1 when a worker fails and names the first failure's status
    assert seg['rc'] == 1 and 'exitcode  : 75' in seg['log'], seg['log'][-5000:]
    seg['rc'] = EXIT_PREEMPTED
    # rank 0 (the one that logs and writes) did not get the signal itself
    assert 'Preempted by a signal sent to another rank' in seg['log']
    _check_segment(seg)
    rc, log = train(work_dir, training_root, config=ddp_reference['config'], nproc=2,
                    resume='auto', **{'train_cfg.max_epochs': 1})
    assert rc == 0, log[-5000:]
    difference = compare(ddp_reference['final'], load_checkpoint(str(work_dir / 'iter_7.pth')))
    print(f"\n[figure] DDP trial: SIGUSR1 to rank 1 only after step {seg['sent_after_step']} "
          f"-> checkpoint at step {seg['checkpoint_step']}; resumed with 2 processes, max "
          f'|difference| vs uninterrupted DDP at step 7: {difference!r}')
    assert difference == 0.0


class _Loop:
    stop_training = False


class _Runner:
    def __init__(self):
        self._train_loop = self.train_loop = _Loop()


def test_signal_while_starting_stops_before_the_first_step():
    hook = PreemptionCheckpointHook()
    before = signal.getsignal(signal.SIGUSR1)
    hook.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # handled: only recorded
        runner = _Runner()
        hook.before_train(runner)
        assert runner.train_loop.stop_training
        assert stop_request(runner).exit_code == EXIT_PREEMPTED
    finally:
        hook.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is before
