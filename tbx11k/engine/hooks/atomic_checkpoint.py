"""Checkpoints that survive being killed at any moment.

- Every checkpoint file is written atomically (:mod:`tbx11k.utils.atomic_io`, the backend of local
  paths once :mod:`tbx11k` is imported): a killed write leaves ``*.pth.tmp-<pid>``, never a
  truncated ``*.pth``.
- :class:`AtomicCheckpointHook` (``default_hooks.checkpoint``) is mmengine's ``CheckpointHook``
  with two changes: ``last_checkpoint`` is written atomically after the checkpoint is complete,
  and checkpoints beyond ``max_keep_ckpts`` are deleted *after* the new one is saved (stock
  mmengine deletes the oldest first, so with ``max_keep_ckpts=1`` a kill during the write leaves
  no checkpoint at all). It also deletes a preemption checkpoint once a newer regular one exists,
  and leftovers of killed writes when training starts. A ``save_best`` key that an evaluation
  leaves out (``TBX11KMetric`` omits n/a values, e.g. every AP of a val set without TB boxes)
  skips the best-checkpoint choice with a warning instead of stopping the run with a KeyError.
- :func:`find_resumable_checkpoint` picks what ``--resume`` (auto) resumes: the file
  ``last_checkpoint`` names if it loads and no checkpoint was completed after the pointer was
  written (a kill between a checkpoint's rename and the pointer update), else the newest
  checkpoint a Runner wrote in the work dir (not ``best_*``, not weights-only files), with a
  warning (the runner calls it).
"""
import glob
import os
import os.path as osp
from typing import Callable, List, Optional, Tuple

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log

from mmdet.registry import HOOKS

from ...compat.torch_load import load_checkpoint_mmapped
from ...utils.atomic_io import atomic_write_text, stale_temporaries
from ...utils.safe_checkpoint import UntrustedCheckpointError
from .checkpoint_interchange import not_resumable

#: message-hub key listing checkpoints written by PreemptionCheckpointHook (not kept by N)
PREEMPTION_CHECKPOINTS = 'preemption_checkpoints'
LAST_CHECKPOINT = 'last_checkpoint'


def _checkpoint_status(path: str) -> Tuple[Optional[str], int]:
    """``(None, meta['iter'])`` if ``path`` can be resumed (see :func:`not_resumable`), else
    ``(why not, -1)``.

    Weights-only files (``tools/test.py``'s ``raw_weights.pth``, ``convert_coco_checkpoint.py``
    output put into the work dir) are never auto-resumed. The file's tensors are mmapped. A
    checkpoint holding Python objects besides weights and training state is not skipped for an
    older one: its :class:`UntrustedCheckpointError` stops the resume."""
    try:
        ckpt = load_checkpoint_mmapped(path)
    except UntrustedCheckpointError:
        raise
    except Exception:  # truncated, empty, not a checkpoint: all mean "cannot resume from it"
        return 'it cannot be loaded (truncated or corrupt)', -1
    problem = not_resumable(ckpt, path)
    if problem is not None:
        return f'it {problem}', -1
    return None, int((ckpt.get('meta') or {}).get('iter') or 0)


def _resumable_candidates(work_dir: str, exclude: Optional[str] = None,
                          newer_than: float = float('-inf')) -> List[str]:
    """``*.pth`` files of ``work_dir`` modified after ``newer_than``, newest first (``best_*``
    checkpoints hold no optimizer state and are left out)."""
    exclude = osp.abspath(exclude) if exclude else None
    candidates = [p for p in glob.glob(osp.join(work_dir, '*.pth'))
                  if not osp.basename(p).startswith('best_') and osp.isfile(p)
                  and osp.abspath(p) != exclude and osp.getmtime(p) > newer_than]
    return sorted(candidates, key=lambda p: (osp.getmtime(p), p), reverse=True)


def find_resumable_checkpoint(work_dir: str,
                              warn: Callable[[str], None] = None) -> Optional[str]:
    """The checkpoint to auto-resume from, or None to train from scratch.

    ``work_dir/last_checkpoint`` names it. Checkpoints are completed before the pointer is
    updated, so a training checkpoint modified after the pointer file, and at least as far into
    training, means the run was killed between the two: the newest such file is taken (nothing
    saved is lost). If the pointer is missing, empty, or names a missing or unloadable file (a
    work dir copied from another cluster names the old paths), the loadable training checkpoint
    of ``work_dir`` furthest into training (``meta['iter']``, then the newest) is taken instead:
    modification times alone can go back (``cp -r``, ``touch``). Only files a Runner wrote are
    candidates: ``best_*`` checkpoints (no optimizer state) and weights-only files are skipped.

    Args:
        work_dir (str): The run's work dir.
        warn (Callable[[str], None], optional): Called with a message for each checkpoint
            passed over. Defaults to None.

    Returns:
        str | None: The checkpoint's path, or None when there is nothing to resume.
    """
    warn = warn or (lambda msg: print_log(msg, logger='current', level=30))
    pointer = osp.join(work_dir, LAST_CHECKPOINT)
    named = None
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
        if named is None:
            problem = f'{pointer} is empty'
        elif not osp.isfile(named):
            problem = f'{pointer} names {named}, which does not exist'
        elif (status := _checkpoint_status(named))[0] is not None:
            problem = f'{pointer} names {named}: {status[0]}'
        else:
            for path in _resumable_candidates(work_dir, named, osp.getmtime(pointer)):
                not_resumable, steps = _checkpoint_status(path)
                if not_resumable is None and steps >= status[1]:
                    warn(f'{pointer} names {named}, but {path} was completed after it was '
                         'written (the run was killed before it could update the pointer): '
                         f'resuming from {path}')
                    return path
                if not_resumable is None:
                    warn(f'{path} is newer than {pointer} but behind {named} (iter {steps} < '
                         f'{status[1]}): not resumed')
            return named
    else:
        problem = f'there is no {pointer}'
    best, best_steps = None, -1
    candidates = _resumable_candidates(work_dir, named)
    for path in candidates:  # newest first: a tie goes to the newest
        not_resumable, steps = _checkpoint_status(path)
        if not_resumable is not None:
            warn(f'skipping {path}: {not_resumable}')
        elif steps > best_steps:
            best, best_steps = path, steps
    if best is not None:
        warn(f'{problem}: resuming from the loadable checkpoint furthest into training (iter '
             f'{best_steps}), {best} instead')
        return best
    if named is not None or candidates:
        warn(f'{problem} and {work_dir} has no other training checkpoint that loads: training '
             'from scratch')
    return None


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose ``last_checkpoint`` only ever names complete checkpoints.

    Same arguments as mmengine's ``CheckpointHook``. Order of a save: write the checkpoint
    (atomically), point ``last_checkpoint`` at it (atomically), then delete the checkpoints that
    ``max_keep_ckpts`` no longer keeps and preemption checkpoints older than it.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if not is_main_process():
            return
        for directory in {self.out_dir, runner.work_dir}:
            for path in stale_temporaries(directory):
                runner.logger.warning(f'Removing {path}: an unfinished write of a killed run')
                os.remove(path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if self.save_best:
            missing = [k for k in self.key_indicators if k != 'auto' and k not in metrics]
            if missing:
                runner.logger.warning(
                    f'save_best: {", ".join(missing)} not in this evaluation (n/a, e.g. the val '
                    'set has no ground-truth box of that kind): no best checkpoint chosen this '
                    'time')
                metrics = dict(metrics, **{k: None for k in missing})  # mmengine skips None
        super()._save_best_checkpoint(runner, metrics)

    def _remove(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are directories
            self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            # _save_checkpoint and _save_best_checkpoint may both save the same step
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        # preemption checkpoints this one supersedes (the new checkpoint must not list them)
        preempted = list(runner.message_hub.get_info(PREEMPTION_CHECKPOINTS, None) or [])
        if preempted:
            runner.message_hub.update_info(PREEMPTION_CHECKPOINTS, [])

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        atomic_write_text(self.last_ckpt, osp.join(runner.work_dir, LAST_CHECKPOINT))

        kept = {self.last_ckpt}
        kept.update(self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(s))
                    for s in getattr(self, 'keep_ckpt_ids', ()))
        for old_step in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if path not in kept:
                self._remove(path)
        for path in preempted:
            if path not in kept and osp.abspath(path) not in {osp.abspath(k) for k in kept}:
                self._remove(path)
