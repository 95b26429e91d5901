"""A training loop whose iteration is one optimizer step, however the step's batch is split."""
import logging
from typing import Dict, List, Sequence, Tuple, Union

import torch
from mmengine.dist import all_reduce, get_dist_info
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import DataLoader

from mmdet.registry import LOOPS

from ..datasets.samplers import AccumulationWindowBatchSampler, micro_batch_seed, split_window
from .layout import LayoutMismatch, resolve_accumulative_counts
from .startup_log import batch_norm_accumulation_note

__all__ = ['AccumulationEpochBasedTrainLoop', 'LayoutMismatch', 'NothingToTrain',
           'accumulative_counts_of', 'shared_seed']


class NothingToTrain(RuntimeError):
    """Raised when a resumed run has no optimizer step left to do."""


def accumulative_counts_of(optim_wrapper) -> int:
    """``accumulative_counts`` of a built optim wrapper or of its config.

    Args:
        optim_wrapper (OptimWrapper | dict): The optim wrapper or its config.

    Returns:
        int: The micro-batches per optimizer step (1 when not set).
    """
    if isinstance(optim_wrapper, dict):
        return int(optim_wrapper.get('accumulative_counts', 1))
    return int(getattr(optim_wrapper, '_accumulative_counts', 1))


def shared_seed(runner) -> int:
    """The run's seed, the same on every rank.

    With ``randomness.diff_rank_seed=True`` mmengine's ``set_random_seed`` adds the rank to
    ``runner.seed``: each rank would shuffle the epoch differently (DDP then trains some images
    twice and others never) and draw other denoising noise than the 1-GPU run. The window order
    and the per-sample and per-micro-batch seeds must be the run's, so the rank is taken off again.

    Args:
        runner (Runner): The runner.

    Returns:
        int: The seed.
    """
    seed = runner.seed
    if (getattr(runner, '_randomness_cfg', None) or {}).get('diff_rank_seed', False):
        seed -= get_dist_info()[0]
    return seed


#: why layouts of one effective batch are the same training only at equal images per micro-batch
BATCH_ABOVE_1_NOTE = (
    'More than 1 image per micro-batch: DINO gives every image of a batch as many denoising '
    'queries as the image with the most boxes needs, and the extra ones count in the loss, so '
    'this trains differently from the same effective batch made of 1-image micro-batches (e.g. '
    '2 GPUs x 1 image); layouts with the same images per micro-batch still train identically')


@LOOPS.register_module()
class AccumulationEpochBasedTrainLoop(EpochBasedTrainLoop):
    """Epoch-based training where one iteration is one optimizer step.

    Each iteration takes a whole accumulation window from
    :class:`~tbx11k.datasets.samplers.AccumulationWindowBatchSampler` and runs its
    ``accumulative_counts`` micro-batches through ``model.train_step`` (the optim wrapper scales,
    accumulates, skips DDP syncs and steps as usual). Hooks therefore see optimizer steps:
    ``runner.iter``, ``by_epoch=False`` schedulers, logging intervals, EMA and checkpoints count
    optimizer steps, and ``len(dataloader)`` is optimizer steps per epoch, the same for every
    split of the effective batch (1 GPU x 2 accumulation steps and 2 GPUs; 1 x 8, 2 x 4, 4 x 2
    and 8 x 1). ``optim_wrapper.accumulative_counts='auto'`` is resolved here from
    ``effective_batch_size`` and the world size (:mod:`tbx11k.engine.layout`).

    Before each micro-batch the loop reseeds torch from the micro-batch's position in the epoch
    (model randomness such as DINO's denoising noise then does not depend on rank or step
    order) and gives a window-normalised model the window's positive counts.

    Args:
        runner (Runner): The runner; its ``optim_wrapper.accumulative_counts`` gives the
            micro-batches per optimizer step.
        dataloader (DataLoader | dict): The training dataloader or its config; its batch sampler
            becomes an ``AccumulationWindowBatchSampler``.
        max_epochs (int): Total training epochs.
        **kwargs: ``val_begin``, ``val_interval``, ``dynamic_intervals``, as
            ``EpochBasedTrainLoop``.

    Raises:
        LayoutMismatch: When the accumulation, batch size or batch sampler cannot give the
            config's windows.
    """

    def __init__(self, runner, dataloader: Union[DataLoader, Dict], max_epochs: int,
                 **kwargs) -> None:
        batch_size = (dataloader.get('batch_size', 1) if isinstance(dataloader, dict)
                      else dataloader.batch_size)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise LayoutMismatch(f'train_dataloader.batch_size={batch_size!r}: it must be a '
                                 'whole number >= 1 (the configs use 1)')
        self.accumulative_counts = self._resolve_accumulation(runner, batch_size)
        if isinstance(dataloader, dict):
            dataloader = dict(dataloader)
            batch_sampler = dict(dataloader.get('batch_sampler') or {})
            if batch_sampler.get('type') not in (None, 'AccumulationWindowBatchSampler'):
                raise LayoutMismatch(
                    f"{type(self).__name__} needs train_dataloader.batch_sampler="
                    f"dict(type='AccumulationWindowBatchSampler'), got {batch_sampler['type']!r}")
            declared = batch_sampler.get('accumulative_counts', self.accumulative_counts)
            if declared != self.accumulative_counts:
                raise LayoutMismatch(
                    f'train_dataloader.batch_sampler.accumulative_counts={declared} contradicts '
                    f'optim_wrapper.accumulative_counts={self.accumulative_counts}; set only the '
                    'latter')
            batch_sampler.update(type='AccumulationWindowBatchSampler',
                                 accumulative_counts=self.accumulative_counts)
            dataloader['batch_sampler'] = batch_sampler
        super().__init__(runner, dataloader, max_epochs, **kwargs)
        if not isinstance(self.dataloader.batch_sampler, AccumulationWindowBatchSampler):
            raise TypeError(f'{type(self).__name__} needs an AccumulationWindowBatchSampler')
        self.window_sampler: AccumulationWindowBatchSampler = self.dataloader.batch_sampler
        self._skip = 0

    @staticmethod
    def _resolve_accumulation(runner, batch_size: int) -> int:
        """``optim_wrapper.accumulative_counts`` of this launch (``'auto'`` resolved from
        ``effective_batch_size`` and the world size, and written into the optim wrapper's config
        before the runner builds it); refuses a launch that does not give the declared effective
        batch (:func:`~tbx11k.engine.layout.resolve_accumulative_counts`)."""
        optim_wrapper = runner.optim_wrapper
        configured = (optim_wrapper.get('accumulative_counts', 1) if isinstance(optim_wrapper, dict)
                      else accumulative_counts_of(optim_wrapper))
        counts = resolve_accumulative_counts(configured, runner.cfg.get('effective_batch_size'),
                                             runner.world_size, batch_size)
        if isinstance(optim_wrapper, dict) and configured != counts:
            optim_wrapper['accumulative_counts'] = counts
            print_log(f"optim_wrapper.accumulative_counts='auto': {counts} accumulation steps "
                      f'= effective batch {runner.cfg.effective_batch_size} / ({runner.world_size} '
                      f'GPU x {batch_size} image)', logger='current')
        return counts

    @property
    def effective_batch_size(self) -> int:
        """Images per optimizer step over all processes."""
        return self.window_sampler.window_size

    def _layout(self) -> str:
        sampler = self.window_sampler
        return (f'{sampler.world_size} GPU x {sampler.batch_size} image x '
                f'{sampler.accumulative_counts} accumulation steps')

    def report_layout(self) -> None:
        """Log the layout (effective batch, what the counters count, batch norms under
        accumulation), once: ``TBX11KRunner.train`` calls it before mmengine's config dump,
        :meth:`run` otherwise."""
        if getattr(self, '_layout_reported', False):
            return
        self._layout_reported = True
        model = self.runner.model
        model = model.module if is_model_wrapper(model) else model
        normalization = getattr(model, 'loss_normalization', 'micro_batch (stock mmdet)')
        print_log(f'Effective batch size: {self.effective_batch_size} = {self._layout()}',
                  logger='current')
        if self.window_sampler.batch_size > 1:
            print_log(BATCH_ABOVE_1_NOTE, logger='current', level=logging.WARNING)
        print_log(
            f'Counters are optimizer steps: {len(self.dataloader)} per epoch '
            f'({self.micro_batches_per_epoch} micro-batches per process), {self._max_iters} in '
            f'{self._max_epochs} epochs. runner.iter, by_epoch=False and converted LR schedules, '
            'logging and checkpoint intervals and EMA updates all count optimizer steps. '
            f'Loss normalisation: {normalization}.', logger='current')
        note = batch_norm_accumulation_note(model, self.accumulative_counts,
                                            self.window_sampler.batch_size)
        if note is not None:
            print_log(note[1], logger='current', level=note[0])

    @property
    def micro_batches_per_epoch(self) -> int:
        return len(self.dataloader) * self.accumulative_counts

    def micro_batch_counts(self, optimizer_steps: int,
                           max_optimizer_steps: int) -> Tuple[int, int]:
        """The optim wrapper's accumulation counter for counts of this loop.

        The loop counts optimizer steps (``iter``, ``max_iters``); the optim wrapper's
        ``initialize_count_status`` counts micro-batches. This is the one place that converts.

        Args:
            optimizer_steps (int): Optimizer steps done (e.g. the resumed ``iter``).
            max_optimizer_steps (int): Optimizer steps of the whole training (``max_iters``).

        Returns:
            Tuple[int, int]: ``(init_counts, max_counts)`` in micro-batches.
        """
        return (optimizer_steps * self.accumulative_counts,
                max_optimizer_steps * self.accumulative_counts)

    def run(self) -> torch.nn.Module:
        """Check what is left after a resume, align counters, then train."""
        self.report_layout()
        steps_per_epoch = len(self.dataloader)
        if self._iter >= self._max_iters or self._epoch >= self._max_epochs:
            raise NothingToTrain(
                f'Nothing to train: the run is at epoch {self._epoch}, optimizer step '
                f'{self._iter}, '
                f'and the schedule ends at epoch {self._max_epochs} (step {self._max_iters}). '
                'Raise train_cfg.max_epochs (and the schedulers) to train longer, or start a new '
                'work dir.')
        self._skip = self._iter - self._epoch * steps_per_epoch
        # an iteration checkpoint of an epoch's last step is written before the epoch's end hooks
        # ran (mmengine's CheckpointHook.after_train_iter): epoch N-1, all N steps done
        end_epoch_first = self._skip == steps_per_epoch
        if not 0 <= self._skip <= steps_per_epoch:
            raise RuntimeError(
                f'resumed optimizer step {self._iter} does not lie in epoch {self._epoch} '
                f'({steps_per_epoch} steps per epoch): the checkpoint was written with another '
                'effective batch size or dataset')
        if end_epoch_first:
            self._skip = 0
            print_log(f'The checkpoint was written after the last optimizer step of epoch '
                      f'{self._epoch + 1}, before its end: ending that epoch first (by-epoch '
                      'schedulers, validation when due)', logger='current')
        elif self._skip:
            print_log(f'Resuming inside epoch {self._epoch + 1}: skipping its first {self._skip} '
                      f'of {steps_per_epoch} optimizer steps (already trained)', logger='current')
        # the optim wrapper counts micro-batches: TBX11KRunner already initialised it so; this
        # re-initialisation is for a stock Runner (e.g. the benchmark), which counts optimizer steps
        optim_wrapper = self.runner.optim_wrapper
        counts = self.micro_batch_counts(self._iter, self._max_iters)
        if (getattr(optim_wrapper, '_inner_count', None),
                getattr(optim_wrapper, '_max_counts', None)) != counts:
            type(optim_wrapper).initialize_count_status(optim_wrapper, self.runner.model, *counts)
        # The sampler was built before resume could restore the run's seed.
        self.window_sampler.sampler.seed = shared_seed(self.runner)

        self.runner.call_hook('before_train')
        if end_epoch_first:
            self._end_epoch()
            self._validate_if_due()
        while self._epoch < self._max_epochs and not self.stop_training:
            if not self.run_epoch() or self.stop_training:
                break  # stopped inside the epoch (no validation of a half epoch) or at its end
            self._validate_if_due()
        self.runner.call_hook('after_train')
        return self.runner.model

    def _end_epoch(self) -> None:
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _validate_if_due(self) -> None:
        self._decide_current_val_interval()
        if (self.runner.val_loop is not None and self._epoch >= self.val_begin
                and (self._epoch % self.val_interval == 0 or self._epoch == self._max_epochs)):
            self.runner.val_loop.run()

    def run_epoch(self) -> bool:
        """Train one epoch (or its rest after a resume); False if stopped inside it."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        skip, self._skip = self._skip, 0
        self.window_sampler.skip_next(skip)
        for idx, data_batch in enumerate(self.dataloader, start=skip):
            self.run_iter(idx, data_batch)
            if self.stop_training:
                break
        else:
            self._end_epoch()
            return True
        return False  # stopped inside the epoch (e.g. by a preemption hook)

    def run_iter(self, idx: int, data_batch: Dict) -> None:
        runner = self.runner
        runner.call_hook('before_train_iter', batch_idx=idx, data_batch=data_batch)
        micro_batches = split_window(data_batch, self.accumulative_counts)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        window_normalized = getattr(model, 'window_normalized', False)
        if window_normalized:
            local_counts = [model.loss_counts(mb['data_samples']) for mb in micro_batches]
            window_mean = self._window_mean(local_counts)
        outputs: List[Dict] = []
        for j, micro_batch in enumerate(micro_batches):
            torch.manual_seed(micro_batch_seed(shared_seed(runner), self._epoch,
                                               self.window_sampler, idx, j))
            if window_normalized:
                model.set_loss_window(window_mean, local_counts[j])
            try:
                outputs.append(runner.model.train_step(micro_batch,
                                                       optim_wrapper=runner.optim_wrapper))
            finally:
                if window_normalized:
                    model.set_loss_window(None)
        runner.call_hook('after_train_iter', batch_idx=idx, data_batch=data_batch,
                         outputs=_mean_log_vars(outputs))
        self._iter += 1

    def _window_mean(self, local_counts: Sequence[Sequence[float]]) -> List[float]:
        """Mean positive count per micro-batch over the whole window (all micro-batches, ranks)."""
        _, world_size = get_dist_info()
        total = torch.tensor(local_counts, dtype=torch.float64).sum(0)
        if world_size > 1:
            device = next(self.runner.model.parameters()).device
            total = total.to(device)
            all_reduce(total, op='sum')
        return (total.cpu() / (world_size * self.accumulative_counts)).tolist()


def _mean_log_vars(outputs: List[Dict]) -> Dict:
    """Average the micro-batches' log variables into the optimizer step's.

    One-element tensors are read from the device in ONE copy and averaged as python floats:
    mmengine's logging hooks would otherwise call ``.item()`` on every term of every step (DINO
    logs 39 loss terms: 39 host syncs per optimizer step, each one draining the GPU queue).
    """
    scalars = [(i, k) for i, out in enumerate(outputs) for k, v in out.items()
               if isinstance(v, torch.Tensor) and v.numel() == 1]
    if scalars:
        read = torch.stack([outputs[i][k].detach().reshape(()).float() for i, k in scalars])
        outputs = [dict(out) for out in outputs]
        for (i, k), value in zip(scalars, read.tolist()):
            outputs[i][k] = value
    if len(outputs) == 1:
        return outputs[0]
    keys = dict.fromkeys(k for out in outputs for k in out)
    return {k: sum(out[k] for out in outputs if k in out) / sum(k in out for out in outputs)
            for k in keys}
