"""Checkpoints that resume under any split of their effective batch (GPUs x accumulation)."""
import copy
import logging
import re
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler

from mmdet.registry import HOOKS

from ..layout import describe_world_sizes
from ..loops import BATCH_ABOVE_1_NOTE, AccumulationEpochBasedTrainLoop, accumulative_counts_of


class IncompatibleCheckpoint(RuntimeError):
    """The checkpoint cannot be resumed by this config."""


def training_layout(runner) -> Dict:
    """How the current run splits an optimizer step, as stored in checkpoints.

    ``counter_unit`` is what ``iter``, ``steps_per_epoch`` and ``by_epoch=False`` schedulers
    count: optimizer steps with :class:`AccumulationEpochBasedTrainLoop`, micro-batches with a
    stock mmengine loop (``train_cfg.type='EpochBasedTrainLoop'``).

    Args:
        runner (Runner): The runner.

    Returns:
        Dict: The layout (world size, batch size, accumulation, counter unit, steps per epoch).
    """
    loop = runner.train_loop
    batch = runner._train_dataloader['batch_size'] if isinstance(
        runner._train_dataloader, dict) else runner.train_dataloader.batch_size
    acc = accumulative_counts_of(runner.optim_wrapper)
    unit = 'optimizer_step' if isinstance(loop, AccumulationEpochBasedTrainLoop) else 'micro_batch'
    return dict(counter_unit=unit, world_size=runner.world_size, batch_size=int(batch),
                accumulative_counts=acc, effective_batch_size=runner.world_size * int(batch) * acc,
                steps_per_epoch=len(loop.dataloader))


def _stock_accumulation(meta: Dict) -> int:
    """accumulative_counts recorded in the config text of a checkpoint written by stock mmengine."""
    match = re.search(r'accumulative_counts\s*=\s*(\d+)', meta.get('cfg', '') or '')
    return int(match.group(1)) if match else 1


def counts_per_optimizer_step(layout: Dict) -> int:
    """How many counter units make one optimizer step in a run of ``layout``.

    Args:
        layout (Dict): A layout of :func:`training_layout`.

    Returns:
        int: 1 when the counter counts optimizer steps, else the accumulation.
    """
    return layout['accumulative_counts'] if layout.get('counter_unit') == 'micro_batch' else 1


def replay_schedule(runner, epoch: int, iteration: int) -> Tuple[List[Dict], List[Dict]]:
    """The state of this run's LR/momentum schedulers, and each param group's scheduled values,
    at ``epoch`` (completed) and counter ``iteration``.

    The config's schedulers are built on a stand-in optimizer with the real groups' initial
    values and stepped as ``ParamSchedulerHook`` steps them (``by_epoch=False`` ones every
    iteration, the others at each epoch's end).

    Args:
        runner (Runner): The runner.
        epoch (int): Completed epochs.
        iteration (int): The counter (in this run's unit).

    Returns:
        Tuple[List[Dict], List[Dict]]: The schedulers' state dicts and the param groups'
        scheduled values.
    """
    groups = []
    for group in runner.optim_wrapper.optimizer.param_groups:
        stand_in = {k: v for k, v in group.items() if k != 'params'}
        stand_in.update({k[len('initial_'):]: v for k, v in group.items()
                         if k.startswith('initial_')})
        groups.append(dict(stand_in, params=[torch.zeros(1, requires_grad=True)]))
    optim_wrapper = OptimWrapper(torch.optim.SGD(groups, lr=0.0))
    with warnings.catch_warnings():  # stepped without optimizer steps, on purpose
        warnings.simplefilter('ignore')
        schedulers = runner._build_param_scheduler(
            copy.deepcopy(runner.cfg.param_scheduler), optim_wrapper)
        per_epoch = len(runner.train_loop.dataloader)
        for done in range(iteration):
            for scheduler in schedulers:
                if not scheduler.by_epoch:
                    scheduler.step()
            if (done + 1) % per_epoch == 0 and (done + 1) // per_epoch <= epoch:
                for scheduler in schedulers:
                    if scheduler.by_epoch:
                        scheduler.step()
    names = {scheduler.param_name for scheduler in schedulers}
    values = [{name: group[name] for name in names}
              for group in optim_wrapper.optimizer.param_groups]
    return [scheduler.state_dict() for scheduler in schedulers], values


def _stock_epoch_length(runner) -> int:
    """Micro-batches per process in an epoch of a stock loop with this run's GPUs and batch
    (mmengine's ``DefaultSampler`` pads the set to a multiple of the world size)."""
    layout = training_layout(runner)
    per_rank = -(-len(runner.train_loop.dataloader.dataset) // layout['world_size'])
    return -(-per_rank // layout['batch_size'])


def convert_counters(runner, checkpoint: Dict, saved_per_step: int, current_per_step: int,
                     saved_epoch_length: Optional[int] = None) -> str:
    """Convert ``checkpoint``'s counters from another layout to this run's.

    Rewrites ``meta.iter`` of ``checkpoint`` from counting ``saved_per_step`` units per
    optimizer step to ``current_per_step``, and puts its LR schedulers and scheduled optimizer
    values where this run's schedule is at that point (the saved ones count the other unit: a
    warm-up would take longer or shorter).

    The position is converted within the checkpoint's epoch (``saved_epoch_length`` counters
    long; by default a stock loop's): a stock loop's accumulation windows run across epoch ends,
    ours end with the epoch, so after e epochs the two step counts differ by up to e.

    Args:
        runner (Runner): The runner.
        checkpoint (Dict): The loaded checkpoint, changed in place.
        saved_per_step (int): Counter units per optimizer step where it was saved.
        current_per_step (int): Counter units per optimizer step in this run.
        saved_epoch_length (int, optional): Counters per epoch where it was saved. Defaults to
            None (a stock loop's).

    Returns:
        str: What was done, for the log.
    """
    meta = checkpoint['meta']
    saved_iter, epoch = int(meta['iter']), int(meta.get('epoch', 0))
    per_epoch = len(runner.train_loop.dataloader)
    if saved_epoch_length is None:
        saved_epoch_length = _stock_epoch_length(runner)
    within = saved_iter - epoch * saved_epoch_length
    if 0 <= within < saved_epoch_length:
        new_iter = epoch * per_epoch + min(within // saved_per_step * current_per_step,
                                           per_epoch - 1)
    else:  # not an epoch loop's checkpoint: the loop refuses it with its own message
        new_iter = saved_iter // saved_per_step * current_per_step
    meta['iter'] = new_iter
    done = f'iter {saved_iter} -> {new_iter}'
    if runner.param_schedulers is None or 'param_schedulers' not in checkpoint:
        return done
    if not (isinstance(runner.param_schedulers, list) and all(
            type(s).step is _ParamScheduler.step for s in runner.param_schedulers)):
        print_log('The LR schedulers of this config (several optimizers, or ReduceOnPlateau) '
                  'cannot be replayed: their saved state is kept as it is, in the other unit',
                  logger='current', level=logging.WARNING)
        return done
    states, values = replay_schedule(runner, epoch, new_iter)
    checkpoint['param_schedulers'] = states
    for group, scheduled in zip(checkpoint.get('optimizer', {}).get('param_groups', []), values):
        group.update(scheduled)
    return (done + f'; LR schedulers replayed to step {new_iter} of this config (lr '
            f"{values[0].get('lr', float('nan')):.6g} in the first param group)")


def _same_effective_batch_advice(effective_batch: int, current: Dict) -> str:
    """How to give this launch the checkpoint's effective batch."""
    per_micro_batch = current['world_size'] * current['batch_size']
    if effective_batch % per_micro_batch:
        return (f"{current['world_size']} GPU x {current['batch_size']} image cannot make "
                f'{effective_batch} images per step with whole accumulation steps; resume with '
                f"{describe_world_sizes(effective_batch, current['batch_size'])}")
    acc = effective_batch // per_micro_batch
    return (f'resume with --cfg-options optim_wrapper.accumulative_counts={acc} '
            f'effective_batch_size={effective_batch} (or the config of that effective batch, '
            f'configs/*_eb{effective_batch}.py, which derives the accumulation from the number '
            'of GPUs)')


def is_bare_state_dict(checkpoint: Any) -> bool:
    """Whether ``checkpoint`` is ``torch.save(model.state_dict())``: tensors only, no
    ``state_dict`` entry.

    Args:
        checkpoint (Any): A loaded checkpoint.

    Returns:
        bool: True for a bare state dict.
    """
    return (isinstance(checkpoint, dict) and bool(checkpoint) and 'state_dict' not in checkpoint
            and all(isinstance(v, torch.Tensor) for v in checkpoint.values()))


def not_resumable(checkpoint: Any, name: str) -> Optional[str]:
    """Why ``checkpoint`` cannot be resumed, if it cannot.

    Resuming a training needs the weights, the epoch and optimizer-step counters, the message
    hub and the optimizer state.

    Args:
        checkpoint (Any): A loaded checkpoint.
        name (str): The file, for the advice.

    Returns:
        str | None: None when it can be resumed, else why not and what to do instead.
    """
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
                "tools/model_converters/convert_coco_checkpoint.py or tools/test.py's "
                f'raw_weights.pth): there is no training state to resume; {use_weights}')
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
    their ``iter`` is converted to optimizer steps and the config's LR schedule is replayed to
    that step (the saved schedulers count micro-batches: a warm-up would last ``acc`` times
    longer). A run with ``train_cfg.type='EpochBasedTrainLoop'`` counts micro-batches too and is
    converted both ways. A resume is refused, with the
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
        current_per_step = counts_per_optimizer_step(current)
        if saved is None:  # written by stock mmengine: its loop counts micro-batches
            saved_per_step = _stock_accumulation(meta)
            if saved_per_step != current_per_step and 'iter' in meta:
                saved_iter = meta['iter']
                unfinished = saved_iter % saved_per_step
                done = convert_counters(runner, checkpoint, saved_per_step, current_per_step)
                print_log(
                    f'Checkpoint from a stock mmengine loop: its iter {saved_iter} counts '
                    f'micro-batches of {saved_per_step}-step accumulation; resuming at '
                    f"{current['counter_unit'].replace('_', ' ')} {meta['iter']}"
                    + (f' (the last {unfinished} micro-batch(es) of an unfinished window are '
                       'dropped)' if unfinished else '') + f'; converted: {done}',
                    logger='current')
            return
        saved_per_step = counts_per_optimizer_step(saved)
        if saved['effective_batch_size'] != current['effective_batch_size']:
            raise IncompatibleCheckpoint(
                f"the checkpoint was trained with effective batch {saved['effective_batch_size']} "
                f"({saved['world_size']} GPU x {saved['batch_size']} image x "
                f"{saved['accumulative_counts']} accumulation), this run has "
                f"{current['effective_batch_size']} ({current['world_size']} x "
                f"{current['batch_size']} x {current['accumulative_counts']}): "
                + _same_effective_batch_advice(saved['effective_batch_size'], current))
        # a stock loop's epoch of n micro-batches is ceil(n / acc) optimizer steps, as ours
        saved_steps = -(-saved['steps_per_epoch'] // saved_per_step)
        current_steps = -(-current['steps_per_epoch'] // current_per_step)
        if saved_steps != current_steps:
            raise IncompatibleCheckpoint(
                f"the checkpoint has {saved_steps} optimizer steps per epoch, this "
                f"run {current_steps}: the training set is not the same")
        if saved['batch_size'] != current['batch_size']:
            print_log(
                f"The checkpoint was trained with {saved['batch_size']} image(s) per micro-batch, "
                f"this run has {current['batch_size']}: the same effective batch, but not the "
                f"same training from here on. {BATCH_ABOVE_1_NOTE}.", logger='current',
                level=logging.WARNING)
        if saved_per_step != current_per_step:
            print_log(
                f"The checkpoint's counters count {saved.get('counter_unit')}s, this run's "
                f"{current['counter_unit']}s; converted: "
                + convert_counters(runner, checkpoint, saved_per_step, current_per_step,
                                   saved['steps_per_epoch']),
                logger='current')
        self._check_optimizer_groups(runner, checkpoint)
        self._note_kept_optimizer_settings(runner, checkpoint)
        print_log(
            f"Resuming at epoch {meta.get('epoch')}, optimizer step {meta.get('iter')}: written by "
            f"{saved['world_size']} GPU x {saved['batch_size']} x {saved['accumulative_counts']} "
            f"accumulation, now {current['world_size']} x {current['batch_size']} x "
            f"{current['accumulative_counts']} (same effective batch "
            f"{current['effective_batch_size']}; counters are {current['counter_unit']}s)",
            logger='current')

    @staticmethod
    def _check_optimizer_groups(runner, checkpoint: Dict) -> None:
        """Refuse a checkpoint whose optimizer has other parameter groups than this config's
        (e.g. another ``paramwise_cfg``): torch's load_state_dict failed with a traceback after
        the model had been loaded."""
        saved_groups = (checkpoint.get('optimizer') or {}).get('param_groups')
        optimizer = getattr(runner.optim_wrapper, 'optimizer', None)
        if saved_groups is None or optimizer is None:
            return
        saved_sizes = [len(group.get('params', [])) for group in saved_groups]
        sizes = [len(group['params']) for group in optimizer.param_groups]
        if saved_sizes != sizes:
            def show(n):
                return f'{len(n)} group(s) of {n[:6]}' + (' ...' if len(n) > 6 else '')

            raise IncompatibleCheckpoint(
                f"the checkpoint's optimizer has {show(saved_sizes)} parameters, this config's "
                f'{show(sizes)}: optim_wrapper.paramwise_cfg (or the optimizer) differs from the '
                'run that wrote it. Resume with the same optim_wrapper, or start a new work dir '
                'with load_from=<checkpoint> (weights only)')

    @staticmethod
    def _note_kept_optimizer_settings(runner, checkpoint: Dict) -> None:
        """Warn when this config's base LR or weight decay differs from the checkpoint's: a
        resume restores the optimizer and LR schedulers as saved (mmengine), so a changed
        ``optim_wrapper.optimizer.lr`` or ``--auto-scale-lr`` in a later session does nothing
        (mmengine still logs its scaling)."""
        saved_groups = (checkpoint.get('optimizer') or {}).get('param_groups') or []
        wrapper = runner.optim_wrapper
        if not hasattr(wrapper, 'optimizer'):  # several optimizers: not compared
            return
        changed = []
        for index, (saved, now) in enumerate(zip(saved_groups, wrapper.optimizer.param_groups)):
            for key, name in (('initial_lr', 'base LR'), ('weight_decay', 'weight decay')):
                if key in saved and key in now and float(saved[key]) != float(now[key]):
                    changed.append(f'{name} of param group {index}: {float(saved[key]):g} in the '
                                   f'checkpoint, {float(now[key]):g} in this config')
        if changed:
            print_log('Resuming keeps the optimizer settings of the checkpoint (mmengine restores '
                      'the optimizer and LR schedulers as saved); this config differs and does '
                      'not apply: ' + '; '.join(changed[:3])
                      + (f' (and {len(changed) - 3} more)' if len(changed) > 3 else '')
                      + '. To train with the new values, start a new work dir with '
                      'load_from=<checkpoint> (weights only).', logger='current',
                      level=logging.WARNING)

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
