"""Runs and comparisons shared by the reliability tests of tests/engine (preemption, atomic
checkpoints, training health, deterministic resume).

Every run uses the tiny config on the 13-image ``training_root`` for 2 epochs (7 optimizer steps
each) unless a test says otherwise, validation off, every step logged, a regular checkpoint every
5 steps (``iter_5``, ``iter_10`` and the final ``iter_14``) and at most 3 kept.
"""
import glob
import os
import os.path as osp
import signal
import time

from ._utils import TINY_1GPU, load_checkpoint, train_command
from .reliability import TrainProcess, all_finite, max_abs_difference, rank_pids

STEPS_PER_EPOCH = 7
EPOCHS = 2
STEPS = STEPS_PER_EPOCH * EPOCHS
OPTIONS = {
    'train_cfg.max_epochs': EPOCHS,
    'train_cfg.val_begin': 99,  # no validation: these tests compare training
    'default_hooks.logger.interval': 1,
    'default_hooks.checkpoint.by_epoch': False,
    'default_hooks.checkpoint.interval': 5,
    'default_hooks.checkpoint.max_keep_ckpts': 3,
}


def command(work_dir, data_root, config=TINY_1GPU, nproc=1, resume=None, **options):
    """tools/train.py's command line; ``resume='auto'`` for a bare --resume."""
    extra = []
    if resume:
        extra = ['--resume'] + ([] if resume == 'auto' else [str(resume)])
    return train_command(config, str(work_dir), nproc, data_root, {**OPTIONS, **options}, extra)


def start(work_dir, data_root, config=TINY_1GPU, nproc=1, resume=None, preloaded=False,
          **options):
    """A training subprocess (log in WORK_DIR.<n>.log, n = 0, 1, ... per process, watchable);
    ``preloaded``: see :class:`.reliability.TrainProcess`."""
    n = len(glob.glob(f'{work_dir}.*.log'))
    return TrainProcess(command(work_dir, data_root, config, nproc, resume, **options),
                        f'{work_dir}.{n}.log', preloaded=preloaded)


def train(work_dir, data_root, config=TINY_1GPU, nproc=1, resume=None, timeout=300, **options):
    """Run a training to its end, uninterrupted (in forks of the preloaded tool server); return
    (exit status, log text)."""
    proc = start(work_dir, data_root, config, nproc, resume, preloaded=True, **options)
    rc = proc.wait(timeout)
    return rc, proc.text()


def compare(reference: dict, got: dict) -> float:
    """Max |difference| over raw weights, EMA weights and EMA step count, optimizer and LR
    scheduler states (0.0 means bit-identical); asserts both are at the same step."""
    assert got['meta']['iter'] == reference['meta']['iter']
    assert got['meta']['epoch'] == reference['meta']['epoch']
    return max(max_abs_difference(reference[k], got[k], k)
               for k in ('state_dict', 'ema_state_dict', 'optimizer', 'param_schedulers'))


def last_checkpoint(work_dir) -> dict:
    """What ``work_dir/last_checkpoint`` names, and facts about that checkpoint."""
    with open(osp.join(str(work_dir), 'last_checkpoint')) as f:
        path = f.read().strip()
    ckpt = load_checkpoint(path)
    meta = ckpt['meta']
    return dict(checkpoint=osp.basename(path), checkpoint_step=meta['iter'],
                checkpoint_epoch=meta['epoch'], finite=all_finite(ckpt),
                has_ema='ema_state_dict' in ckpt, has_optimizer='optimizer' in ckpt,
                has_layout='tbx11k' in meta)


def signal_segment(work_dir, data_root, signal_name, after_step, delay, config=TINY_1GPU,
                   nproc=1, resume=None, to_ranks=None, **options):
    """Start a training, send ``signal_name`` once step ``after_step`` is logged (+``delay`` s;
    ``after_step=None``: the process signals itself), wait for it to exit.

    With ``nproc > 1`` the signal goes to the rank processes ``to_ranks`` only.
    """
    proc = start(work_dir, data_root, config, nproc, resume, **options)
    sent_after = None
    if after_step is not None:
        proc.wait_for_step(after_step)
        time.sleep(delay)
        sent_after = proc.last_step()
        signum = getattr(signal, signal_name)
        if nproc == 1:
            os.kill(proc.proc.pid, signum)
        else:
            pids = rank_pids(proc.proc.pid)
            for rank in to_ranks:
                os.kill(pids[rank], signum)
    rc = proc.wait(300)
    target = 'itself' if after_step is None else (
        'the process' if nproc == 1 else f'rank(s) {", ".join(map(str, to_ranks))} only')
    return dict(kind=f'{signal_name} to {target}', signal=signal_name, rc=rc,
                sent_after_step=sent_after, log=proc.text(), **last_checkpoint(work_dir))
