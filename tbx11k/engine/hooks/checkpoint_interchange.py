"""Checkpoints that resume under either the 1-GPU or the 2-GPU config."""
import copy
import re
from typing import Any, Dict, List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS

from ..loops import accumulative_counts_of


class IncompatibleCheckpoint(RuntimeError):
    """The checkpoint cannot be resumed by this config."""


def training_layout(runner) -> Dict:
    """How the current run splits an optimizer step, as stored in checkpoints."""
    loop = runner.train_loop
    batch = runner._train_dataloader['batch_size'] if isinstance(
        runner._train_dataloader, dict) else runner.train_dataloader.batch_size
    acc = accumulative_counts_of(runner.optim_wrapper)
    return dict(counter_unit='optimizer_step', world_size=runner.world_size, batch_size=int(batch),
                accumulative_counts=acc, effective_batch_size=runner.world_size * int(batch) * acc,
                steps_per_epoch=len(loop.dataloader))


def _stock_accumulation(meta: Dict) -> int:
    """accumulative_counts recorded in the config text of a checkpoint written by stock mmengine."""
    match = re.search(r'accumulative_counts\s*=\s*(\d+)', meta.get('cfg', '') or '')
    return int(match.group(1)) if match else 1


def is_bare_state_dict(checkpoint: Any) -> bool:
    """``torch.save(model.state_dict())``: tensors only, no ``state_dict`` entry."""
    return (isinstance(checkpoint, dict) and bool(checkpoint) and 'state_dict' not in checkpoint
            and all(isinstance(v, torch.Tensor) for v in checkpoint.values()))


def not_resumable(checkpoint: Any, name: str) -> Optional[str]:
    """None if ``checkpoint`` holds what resuming a training needs (the weights, the epoch and
    optimizer-step counters, the message hub, the optimizer state), else why it cannot be resumed
    and what to do instead (``name``: the file, for the advice)."""
    use_weights = (f'to start a new training from these weights, use --cfg-options '
                   f'load_from={name} model.backbone.init_cfg=None instead of --resume')
    use_a_checkpoint = ('give --resume a checkpoint that tools/train.py wrote (or --resume '
                        'without a path: the latest of the work dir)')
    if not isinstance(checkpoint, dict):
        return (f'is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict with '
                f'state_dict, meta, message_hub and optimizer; {use_a_checkpoint}')
    if is_bare_state_dict(checkpoint):
        return (f'holds a bare state dict (weights only, as torch.save(model.state_dict()) '
                f'writes): there is no training state to resume; {use_weights}')
    if 'state_dict' not in checkpoint:
        return (f'is not a checkpoint: no state_dict (top-level keys: '
                f'{sorted(map(str, checkpoint))[:10]}); {use_a_checkpoint}')
    meta = checkpoint.get('meta') or {}
    counters = [f'meta.{k}' for k in ('epoch', 'iter') if k not in meta]
    if counters or 'message_hub' not in checkpoint:
        missing = counters + [k for k in ('message_hub', 'optimizer') if k not in checkpoint]
        return (f'holds weights only (no {", ".join(missing)}; e.g. the output of '
                "tools/convert_coco_checkpoint.py or tools/test.py's raw_weights.pth): there is "
                f'no training state to resume; {use_weights}')
    if 'optimizer' not in checkpoint:
        return ('holds no optimizer state (best_* checkpoints are saved without it, and so is '
                'every checkpoint of a run with default_hooks.checkpoint.save_optimizer=False): '
                'mmengine cannot resume AdamW from it; resume from an epoch_N.pth or iter_N.pth '
                f'checkpoint saved with the optimizer, or, {use_weights}')
    return None


@HOOKS.register_module()
class CheckpointInterchangeHook(Hook):
    """Records the run's layout in every checkpoint and checks it when resuming.

    Iteration counters are optimizer steps with
    :class:`~tbx11k.engine.loops.AccumulationEpochBasedTrainLoop`, so a checkpoint of the 1-GPU
    config (1 x 1 x acc 2) resumes under the 2-GPU config (2 x 1 x acc 1) at the same step,
    epoch, LR and EMA state, and back. Checkpoints of stock mmengine loops count micro-batches:
    their ``iter`` is converted (divided by their accumulation). A resume is refused, with the
    reason, when the model's parameters or classes differ or the effective batch differs, or when
    the file holds no training state (weights only, a bare state dict, a ``best_*`` checkpoint
    without optimizer state, not a checkpoint): before mmengine reads its counters.

    With ``load_from`` (fine-tuning), a bare state dict is given a ``state_dict`` entry in place,
    as mmengine's ``EMAHook`` (which runs after this hook) reads it.
    """

    priority = 'VERY_HIGH'

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        checkpoint.setdefault('meta', {})['tbx11k'] = training_layout(runner)

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        if not runner._resume:
            # load_from (fine-tuning): mmengine reports missing/unexpected keys itself
            if is_bare_state_dict(checkpoint):
                state = copy.copy(checkpoint)  # keeps an OrderedDict's _metadata
                checkpoint.clear()
                checkpoint['state_dict'] = state
            return
        name = getattr(runner, '_load_from', None) or 'the resumed checkpoint'
        problem = not_resumable(checkpoint, name)
        if problem is not None:
            raise IncompatibleCheckpoint(f'{name} {problem}')
        meta = checkpoint.setdefault('meta', {})
        self._check_model(runner, checkpoint.get('state_dict', {}))
        self._check_classes(runner, meta)
        current = training_layout(runner)
        saved: Optional[Dict] = meta.get('tbx11k')
        if saved is None:
            acc = _stock_accumulation(meta)
            if acc > 1 and 'iter' in meta:
                steps = meta['iter'] // acc
                print_log(
                    f"Checkpoint from a stock mmengine loop: its iter {meta['iter']} counts "
                    f'micro-batches of {acc}-step accumulation; resuming at optimizer step {steps}'
                    + (f" (the last {meta['iter'] % acc} micro-batch(es) of an unfinished window "
                       'are dropped)' if meta['iter'] % acc else ''),
                    logger='current')
                meta['iter'] = steps
            return
        if saved['effective_batch_size'] != current['effective_batch_size']:
            raise IncompatibleCheckpoint(
                f"the checkpoint was trained with effective batch {saved['effective_batch_size']} "
                f"({saved['world_size']} GPU x {saved['batch_size']} image x "
                f"{saved['accumulative_counts']} accumulation), this run has "
                f"{current['effective_batch_size']} ({current['world_size']} x "
                f"{current['batch_size']} x {current['accumulative_counts']}): use the config "
                'that matches the number of GPUs (1 GPU: configs/dino_tbx11k_1gpu.py, 2 GPUs: '
                'configs/dino_tbx11k_2gpu.py)')
        if saved['steps_per_epoch'] != current['steps_per_epoch']:
            raise IncompatibleCheckpoint(
                f"the checkpoint has {saved['steps_per_epoch']} optimizer steps per epoch, this "
                f"run {current['steps_per_epoch']}: the training set is not the same")
        print_log(
            f"Resuming at epoch {meta.get('epoch')}, optimizer step {meta.get('iter')}: written by "
            f"{saved['world_size']} GPU x {saved['batch_size']} x {saved['accumulative_counts']} "
            f"accumulation, now {current['world_size']} x {current['batch_size']} x "
            f"{current['accumulative_counts']} (same effective batch "
            f"{current['effective_batch_size']}; counters are optimizer steps)", logger='current')

    @staticmethod
    def _check_model(runner, state_dict: Dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        own = model.state_dict()
        theirs = {re.sub(r'^module\.', '', k): v for k, v in state_dict.items()}
        problems: List[str] = []
        problems += [f'missing in checkpoint: {k}' for k in own if k not in theirs]
        problems += [f'not in this model: {k}' for k in theirs if k not in own]
        problems += [f'shape {tuple(theirs[k].shape)} in checkpoint vs {tuple(v.shape)} here: {k}'
                     for k, v in own.items() if k in theirs and theirs[k].shape != v.shape]
        if problems:
            shown = '\n  '.join(problems[:8])
            more = f'\n  ... and {len(problems) - 8} more' if len(problems) > 8 else ''
            raise IncompatibleCheckpoint(
                f'the checkpoint does not fit this model ({len(problems)} differences):\n  '
                f'{shown}{more}\nResume needs the same model config; use load_from to '
                'fine-tune from another model')

    @staticmethod
    def _check_classes(runner, meta: Dict) -> None:
        saved = (meta.get('dataset_meta') or {}).get('classes')
        current = getattr(runner.train_dataloader.dataset, 'metainfo', {}).get('classes')
        if saved is not None and current is not None and tuple(saved) != tuple(current):
            raise IncompatibleCheckpoint(
                f'the checkpoint was trained on classes {tuple(saved)}, this config trains '
                f'{tuple(current)}')
