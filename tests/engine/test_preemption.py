"""SIGUSR1/SIGTERM: a checkpoint at an optimizer-step boundary, exit 75, bit-identical resume.

Trials (seeded random points, see conftest): four in one 1-GPU run (after a random step of
epoch 1; at the last step of epoch 1; after a random step of epoch 2, twice, with a kill -9 in
between that test_atomic_checkpoint checks), and one 2-process DDP run where only rank 1 gets
the signal. Every resumed run must end bit-identical (weights, EMA, optimizer, LR schedulers) to
the uninterrupted run of the same layout.
"""
import glob
import os
import os.path as osp
import random
import signal
import sys
import time

import pytest

from tbx11k.engine.exit_codes import EXIT_PREEMPTED
from tbx11k.engine.hooks.preemption import PreemptionCheckpointHook
from tbx11k.engine.stopping import stop_request
from tbx11k.testing import REPO_ROOT, free_port, load_checkpoint
from tbx11k.testing.reliability import TrainProcess
from tbx11k.testing.reliability_runs import STEPS_PER_EPOCH, command, compare, signal_segment, train

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


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (Linux /proc SigCgt)."""
    with open(f'/proc/{pid}/status') as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith('SigCgt:'))
    return bool(caught >> (signum - 1) & 1)


def _start_until_it_handles(work_dir, training_root, signum: int) -> TrainProcess:
    """Start tools/train.py and return as soon as it has a handler for ``signum`` (its first
    lines, while it still imports torch)."""
    proc = TrainProcess(command(work_dir, training_root), f'{work_dir}.log')
    deadline = time.time() + 30
    while not _catches(proc.proc.pid, signum):
        assert proc.proc.poll() is None and time.time() < deadline, proc.text()[-3000:]
        time.sleep(0.005)
    return proc


@pytest.mark.slow
def test_signal_during_imports_exits_75_without_checkpoint(tmp_path, training_root):
    """SIGUSR1 while tools/train.py is still importing: recorded from its first line, adopted by
    the hook, status 75 (Slurm job chains requeue), not death by the default action."""
    work_dir = tmp_path / 'early'
    proc = _start_until_it_handles(work_dir, training_root, signal.SIGUSR1)
    os.kill(proc.proc.pid, signal.SIGUSR1)
    rc = proc.wait(300)
    log = proc.text()
    assert rc == EXIT_PREEMPTED, log[-5000:]
    assert 'SIGUSR1 received while starting' in log
    assert 'Preempted (SIGUSR1) before the first optimizer step' in log
    assert not glob.glob(str(work_dir / '*.pth'))


@pytest.mark.slow
def test_the_same_signal_twice_while_starting_terminates(tmp_path, training_root):
    """A hung start-up (e.g. a rendezvous that never completes) stays terminable: the second
    SIGTERM while starting takes its default action."""
    work_dir = tmp_path / 'twice'
    proc = _start_until_it_handles(work_dir, training_root, signal.SIGTERM)
    os.kill(proc.proc.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.kill(proc.proc.pid, signal.SIGTERM)
    assert proc.wait(60) == -signal.SIGTERM, proc.text()[-3000:]
    assert 'SIGTERM received while starting' in proc.text()


@pytest.mark.slow
def test_dist_train_sh_forwards_signals_and_exits_75(ddp_reference, training_root, tmp_path):
    """SIGUSR1 to tools/dist_train.sh reaches the ranks (not torch.distributed.run, which would
    kill them 30 s later); the script exits 75, not the launcher's 1; resuming through it ends
    bit-identical to the uninterrupted 2-process run."""
    work_dir = tmp_path / 'dist'
    options = command(work_dir, training_root, config=ddp_reference['config'],
                      **{'train_cfg.max_epochs': 1})[2:]  # after `python tools/train.py`
    script = [os.environ.get('BASH', 'bash'), osp.join(REPO_ROOT, 'tools', 'dist_train.sh')]

    def launch(extra=()):
        cmd = script + [options[0], '2'] + options[1:] + list(extra)
        env_cmd = ['env', f'PYTHON={sys.executable}', f'PORT={free_port()}'] + cmd
        n = len(glob.glob(f'{work_dir}.*.log'))
        return TrainProcess(env_cmd, f'{work_dir}.{n}.log')

    proc = launch()
    proc.wait_for_step(3)
    os.kill(proc.proc.pid, signal.SIGUSR1)
    rc = proc.wait(300)
    log = proc.text()
    assert rc == EXIT_PREEMPTED, log[-5000:]
    assert 'every rank exited with status 75 (torch.distributed.run: 1)' in log
    assert 'Preempted by SIGUSR1' in log
    with open(work_dir / 'last_checkpoint') as f:
        stopped_at = load_checkpoint(f.read().strip())['meta']['iter']
    assert 3 <= stopped_at < 7

    resumed = launch(['--resume'])
    assert resumed.wait(300) == 0, resumed.text()[-5000:]
    difference = compare(ddp_reference['final'], load_checkpoint(str(work_dir / 'iter_7.pth')))
    print(f'\n[figure] dist_train.sh: SIGUSR1 after step 3 -> checkpoint at step {stopped_at}, '
          f'exit 75; resumed through dist_train.sh, max |difference| vs uninterrupted: '
          f'{difference!r}')
    assert difference == 0.0
