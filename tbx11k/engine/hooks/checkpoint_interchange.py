"""Checkpoints that resume under either the 1-GPU or the 2-GPU config."""
import re
from typing import Dict, List, Optional

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


@HOOKS.register_module()
class CheckpointInterchangeHook(Hook):
    """Records the run's layout in every checkpoint and checks it when resuming.

    Iteration counters are optimizer steps with
    :class:`~tbx11k.engine.loops.AccumulationEpochBasedTrainLoop`, so a checkpoint of the 1-GPU
    config (1 x 1 x acc 2) resumes under the 2-GPU config (2 x 1 x acc 1) at the same step,
    epoch, LR and EMA state, and back. Checkpoints of stock mmengine loops count micro-batches:
    their ``iter`` is converted (divided by their accumulation). A resume is refused, with the
    reason, when the model's parameters or classes differ or the effective batch differs.
    """

    priority = 'VERY_HIGH'

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        checkpoint.setdefault('meta', {})['tbx11k'] = training_layout(runner)

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        if not runner._resume:
            return  # load_from (fine-tuning): mmengine reports missing/unexpected keys itself
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
