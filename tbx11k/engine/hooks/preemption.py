"""Checkpoint-and-exit on SIGUSR1/SIGTERM, at an optimizer-step boundary, on 1 or N processes.

Slurm sends SIGTERM before it preempts or cancels a job (and SIGUSR1 ``T`` seconds before the time
limit with ``--signal=USR1@T``). :class:`PreemptionCheckpointHook` turns either into: finish the
current optimizer step, write ``work_dir/iter_<steps done>.pth`` (weights, EMA, optimizer, LR
schedulers, message hub, layout meta), point ``work_dir/last_checkpoint`` at it, and make
``tools/train.py`` exit with ``EXIT_PREEMPTED`` (75). ``tools/train.py --resume`` then continues
exactly where it stopped (bit-identical on CPU).

How it decides, per optimizer step (``after_train_iter``, i.e. at a step boundary):

- the signal handler only records the signal; every rank installs it;
- under DDP the ranks all-reduce (MAX) their flag at every step, so a signal that reached one rank
  only stops all ranks at the same step (no rank waits in a collective for a rank that left);
- inside an epoch the checkpoint is written at once (``epoch`` = the current epoch, ``iter`` =
  steps done: the loop skips the epoch's finished steps on resume);
- at the last step of an epoch it is written in ``after_train_epoch`` instead, once the epoch's
  end hooks ran (by-epoch LR step), as an end-of-epoch checkpoint (``epoch + 1``); the loop then
  stops before that epoch's validation (exit quickly, the grace time is short; that validation is
  not made up on resume). A signal at the last step of the whole schedule lets the run finish
  normally (exit 0);
- a signal that arrived while the run was starting (imports, building, loading: ``tools/train.py``
  records signals from its first line and the hook adopts them) stops it before its first step with
  status 75 and no new checkpoint (nothing was trained);
- a signal during validation is acted on at the next optimizer step.

Only rank 0 writes (``Runner.save_checkpoint`` is master-only); all ranks wait at a barrier until
the file and ``last_checkpoint`` are complete, so no rank exits early. Both files are written
atomically (:mod:`tbx11k.utils.atomic_io`).
"""
import os
import os.path as osp
import signal
import time
from typing import Dict, Optional, Sequence

import torch
from mmengine.dist import all_reduce, barrier, get_dist_info, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import BaseLoop

from mmdet.registry import HOOKS

from ...utils.atomic_io import atomic_write_text
from ..exit_codes import EXIT_PREEMPTED
from ..stopping import request_stop
from .atomic_checkpoint import LAST_CHECKPOINT, PREEMPTION_CHECKPOINTS


@HOOKS.register_module()
class PreemptionCheckpointHook(Hook):
    """On SIGUSR1/SIGTERM: checkpoint at the next optimizer-step boundary and exit with 75.

    Args:
        signals (Sequence[str]): Names of the signals to handle. Defaults to
            ``('SIGUSR1', 'SIGTERM')``.

    Raises:
        ValueError: For a name that is not a signal.
    """

    priority = 'LOWEST'  # after EMA, LR schedulers, logging and regular checkpoints of the step

    def __init__(self, signals: Sequence[str] = ('SIGUSR1', 'SIGTERM')) -> None:
        self.signals = tuple(signals)
        for name in self.signals:
            if not isinstance(getattr(signal, name, None), signal.Signals):
                raise ValueError(f'unknown signal {name!r}')
        self._received: Optional[str] = None
        self._received_at: Optional[float] = None
        self._previous: Dict[int, object] = {}
        self._save_at_epoch_end = False

    # ---- signal handling ----------------------------------------------------------------------
    def _handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._received is None:
            self._received, self._received_at = name, time.time()
        rank, _ = get_dist_info()
        # no logging here (the interrupted code may hold the logging lock): a raw write
        os.write(2, f'[rank {rank}] {name} received: will checkpoint at the next optimizer-step '
                    'boundary and exit\n'.encode())

    def install(self) -> None:
        for name in self.signals:
            signum = getattr(signal, name)
            if signum in self._previous:
                continue
            try:
                previous = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                print_log(f'PreemptionCheckpointHook: cannot handle {name} outside the main '
                          'thread', logger='current', level=30)
                continue
            self._previous[signum] = previous
            self._adopt_early(previous)

    def _adopt_early(self, previous) -> None:
        """Take over what a start-up recorder (``tools/train.py``'s ``EarlySignalRecorder``, any
        handler with a ``received`` list of ``(name, time)``) recorded before the hook existed."""
        received = getattr(previous, 'received', None)
        if self._received is None and isinstance(received, list) and received:
            self._received, self._received_at = received[0]

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def before_run(self, runner) -> None:
        # as early as hooks allow (a signal while loading is not lost), but only for training:
        # tools/test.py builds the same custom hooks and must stay killable by SIGTERM
        if isinstance(getattr(runner, '_train_loop', None), BaseLoop):
            self._received = self._received_at = None
            self._save_at_epoch_end = False
            self.install()

    def after_run(self, runner) -> None:
        self.uninstall()

    # ---- decisions ----------------------------------------------------------------------------
    def _agreed(self, runner) -> bool:
        """Whether any rank got a signal (collective under DDP: every rank, every step)."""
        flag = torch.tensor([1 if self._received else 0], dtype=torch.int32)
        _, world_size = get_dist_info()
        if world_size > 1:
            flag = flag.to(next(runner.model.parameters()).device)
            all_reduce(flag, op='max')
        return bool(flag.item())

    def before_train(self, runner) -> None:
        if self._agreed(runner):
            request_stop(runner, EXIT_PREEMPTED,
                         f'Preempted ({self._signal_name()}) before the first optimizer step: '
                         'nothing new to save; resume with tools/train.py --resume')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._save_at_epoch_end or not self._agreed(runner):
            return
        if batch_idx + 1 >= len(runner.train_dataloader):
            self._save_at_epoch_end = True  # end-of-epoch hooks first, see after_train_epoch
            return
        self._save_and_stop(runner, steps_done=runner.iter + 1, by_epoch=False)

    def after_train_epoch(self, runner) -> None:
        if not self._save_at_epoch_end:
            return
        self._save_at_epoch_end = False
        if runner.epoch + 1 >= runner.max_epochs:
            print_log(f'{self._signal_name()} arrived at the last optimizer step of the schedule: '
                      'finishing the run normally', logger='current')
            return
        self._save_and_stop(runner, steps_done=runner.iter, by_epoch=True)

    def _signal_name(self) -> str:
        return self._received or 'a signal sent to another rank'

    def _save_and_stop(self, runner, steps_done: int, by_epoch: bool) -> None:
        filename = f'iter_{steps_done}.pth'
        path = osp.join(runner.work_dir, filename)
        waited = (f' {time.time() - self._received_at:.1f} s ago' if self._received_at else '')
        runner.logger.warning(
            f'Got {self._signal_name()}{waited}: saving {path} after optimizer step '
            f'{steps_done} (epoch {runner.epoch + 1}) and stopping')
        earlier = list(runner.message_hub.get_info(PREEMPTION_CHECKPOINTS, None) or [])
        runner.message_hub.update_info(PREEMPTION_CHECKPOINTS, earlier + [path])
        runner.save_checkpoint(runner.work_dir, filename, save_optimizer=True,
                               save_param_scheduler=True, by_epoch=by_epoch)
        if is_main_process():
            atomic_write_text(path, osp.join(runner.work_dir, LAST_CHECKPOINT))
        barrier()  # no rank leaves before rank 0 has written both files
        request_stop(
            runner, EXIT_PREEMPTED,
            f'Preempted by {self._signal_name()}: saved {path} (optimizer step {steps_done}, '
            f'{"end" if by_epoch else "inside"} of epoch {runner.epoch + 1}); exit status '
            f'{EXIT_PREEMPTED}: continue with tools/train.py CONFIG --work-dir '
            f'{runner.work_dir} --resume')
