"""Training health: skip non-finite optimizer steps, stop when they repeat, watch for collapse.

Non-finite losses and gradients
    The decision must be taken between the last backward of an accumulation window and
    ``optimizer.step()``, which both happen inside ``model.train_step`` (``OptimWrapper.
    update_params``), where no hook is called. :class:`TrainingHealthHook` therefore wraps two
    methods of the run's optim wrapper *instance* when training starts (:class:`NonFiniteGuard`):
    ``backward`` records whether each micro-batch's loss is finite, and ``step`` (called once per
    optimizer step, after the window's last backward, before gradient clipping) checks the
    recorded losses and the accumulated gradients. If anything is non-finite it does not step:
    ``update_params`` then zeroes the gradients as usual, so the whole window is dropped and the
    weights, Adam moments and step count stay as they were. No config key changes: any optim
    wrapper type works (``--amp`` included) and nothing else in the config has to know. Under
    DDP the gradients are already all-reduced (identical on all ranks) and the loss flags are
    all-reduced (MAX) once per step, so all ranks skip the same steps.

    With ``AmpOptimWrapper`` inf/NaN *gradients* are the loss scaler's business (it skips the step
    and lowers the scale, which is normal while the scale calibrates): only non-finite losses are
    counted there.

    After each applied step the weights are checked (one fused reduction); if they are
    non-finite anyway (e.g. an overflow inside the optimizer) the run raises
    :class:`~tbx11k.engine.stopping.NonFiniteTraining` before any hook can save them, and
    ``tools/train.py`` exits with ``EXIT_DIVERGED`` (6). ``before_save_checkpoint`` refuses to
    write a checkpoint with a non-finite weight or EMA weight as a last line of defence.

    The hook names the optimizer step, epoch and the non-finite loss terms (all ranks) and the
    first parameters with non-finite gradients. ``max_skipped_steps`` steps are skipped (counted
    over the whole run, resumes included); the next one stops the run (status 6) with what to
    check.

Loss-collapse watch (``collapse_watch``, ``None`` to disable)
    The failure seen on TBX11K with focal-loss ``alpha=0.25``: the detector learns to predict
    nothing (most films are healthy), its losses sink towards zero and no box ever reaches a
    useful score. Every ``interval`` optimizer steps from step ``begin``, the hook runs the model
    in test mode on the window's training images that have boxes (the next window with boxes if
    this one has none) and records whether any prediction reaches ``score_thr``. If the last
    ``patience`` probes all found no such box on images with lesions **and** the mean total loss
    over the last ``interval`` steps is below ``loss_thr`` (``None``: do not require it), it logs
    a warning with what to check. Defaults: ``interval=50, begin=500, patience=3,
    score_thr=0.05, loss_thr=1.0`` (DINO's total loss sums 21 terms and is ~5-20 on a training
    model; ``begin`` skips the start, when DINO's classifier prior of 0.01 makes every
    prediction score ~0.01).
"""
from collections import deque
from typing import Dict, List, Optional

import torch
from mmengine.dist import all_gather_object, all_reduce, get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS

from ..exit_codes import EXIT_DIVERGED
from ..stopping import NonFiniteTraining, request_stop

#: message-hub key: non-finite optimizer steps skipped so far (saved in checkpoints)
SKIPPED_STEPS = 'nonfinite_skipped_steps'

WHAT_TO_CHECK = (
    'What to check: the learning rate and warm-up (too high for this effective batch?), '
    'gradient clipping (optim_wrapper.clip_grad), with --amp the loss scale, and the data: '
    'boxes with zero or negative size or outside the image (python tools/check_dataset.py '
    'DATA_ROOT). Resume from the last checkpoint (tools/train.py --resume) after fixing it; '
    'raise the max_skipped_steps of TrainingHealthHook only if the failures are rare.')


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _finite_flags(tensors: List[torch.Tensor]) -> torch.Tensor:
    """Per-tensor finiteness (bool vector), exact: one fused max-abs reduction."""
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors, float('inf'))))


def _maybe_finite_flags(tensors: List[torch.Tensor]) -> torch.Tensor:
    """Per-tensor finiteness from the 2-norm: False for every tensor with a NaN/inf, and also for
    finite tensors whose squares overflow (|x| > ~1e19), so a False must be confirmed with
    :func:`_finite_flags`. The every-step check: the 2-norm is the fast multi-tensor kernel on
    every device (on the CPU ~5x faster than the max-abs norm)."""
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors)))


class NonFiniteGuard:
    """Wraps ``backward``/``step`` of one optim wrapper instance (see the module docstring).

    Args:
        optim_wrapper (OptimWrapper): The optim wrapper whose ``backward`` and ``step`` to wrap.
        model (nn.Module): The model (DDP-wrapped or not), for parameter names in messages.
        check_grads (bool): Also check the accumulated gradients (not with AMP, whose loss
            scaler does). Defaults to True.
        check_weights (bool): Check the weights after every applied step. Defaults to True.
    """

    def __init__(self, optim_wrapper, model, check_grads: bool = True,
                 check_weights: bool = True) -> None:
        self.optim_wrapper = optim_wrapper
        self.amp = hasattr(optim_wrapper, 'loss_scaler')
        self.check_grads = check_grads and not self.amp
        self.check_weights = check_weights
        self.names = {id(p): n for n, p in _unwrap(model).named_parameters()}
        self._loss_bad: Optional[torch.Tensor] = None
        self.skipped: Optional[Dict] = None  # details of the step skipped last, until popped
        self._backward = optim_wrapper.backward
        self._step = optim_wrapper.step
        # what the instance had of its own (mmengine's LR schedulers wrap ``step``), for remove()
        self._own = {name: optim_wrapper.__dict__[name] for name in ('backward', 'step')
                     if name in optim_wrapper.__dict__}
        optim_wrapper.backward = self.backward
        optim_wrapper.step = self._counted_step()

    def _counted_step(self):
        """``self.step``, keeping the mark of mmengine's schedulers where they wrapped ``step``
        already: they count optimizer steps (the count is in the wrapped step, which
        :meth:`step` calls) and warn at their first step that "``optimizer.step()`` has been
        overridden" if the mark is gone. Unwrapped, the bound method itself (a scheduler built
        later wraps it: it needs ``__self__``)."""
        if not getattr(self._step, '_with_counter', False):
            return self.step

        def step(**kwargs):
            return self.step(**kwargs)
        step._with_counter = True
        return step

    def remove(self) -> None:
        for name in ('backward', 'step'):
            self.optim_wrapper.__dict__.pop(name, None)
            if name in self._own:
                setattr(self.optim_wrapper, name, self._own[name])

    def _params(self) -> List[torch.Tensor]:
        return [p for group in self.optim_wrapper.optimizer.param_groups for p in group['params']]

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """Record whether ``loss`` is finite, then back-propagate it as the optim wrapper does.

        Args:
            loss (torch.Tensor): The micro-batch's loss.
            **kwargs: Passed to the optim wrapper's ``backward``.
        """
        bad = ~torch.isfinite(loss.detach()).all()
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad
        return self._backward(loss, **kwargs)

    def step(self, **kwargs) -> None:
        params = self._params()
        grads = [p.grad for p in params if p.grad is not None]
        device = grads[0].device if grads else params[0].device
        flags = torch.zeros(2, dtype=torch.int32, device=device)
        if self._loss_bad is not None:
            flags[0] = self._loss_bad.to(device).int()
        grad_ok = None
        if self.check_grads and grads:
            grad_ok = _maybe_finite_flags(grads)
            flags[1] = (~grad_ok.all()).int()
        self._loss_bad = None
        if get_dist_info()[1] > 1:
            all_reduce(flags, op='max')
        loss_bad, grad_bad = (bool(v) for v in flags.tolist())
        if grad_bad:  # confirm exactly (the gradients are the same on every rank: same answer)
            grad_ok = _finite_flags(grads)
            grad_bad = not bool(grad_ok.all())
        if loss_bad or grad_bad:
            bad_grads = []
            if grad_ok is not None:
                with_grad = [p for p in params if p.grad is not None]
                bad_grads = [self.names.get(id(p), '?')
                             for p, ok in zip(with_grad, grad_ok.tolist()) if not ok]
            self.skipped = dict(loss=loss_bad, grads=grad_bad, grad_names=bad_grads,
                                num_grads=len(grads))
            return None  # no step: update_params zeroes the window's gradients next
        result = self._step(**kwargs)
        if self.check_weights and params and not bool(_maybe_finite_flags(params).all()):
            finite = _finite_flags(params).tolist()  # exact re-check of a flagged step
            names = [self.names.get(id(p), '?') for p, ok in zip(params, finite) if not ok]
        else:
            names = []
        if names:
            raise NonFiniteTraining(
                f'weights became non-finite in an optimizer step whose loss and gradients were '
                f'finite ({len(names)} tensors, first: {", ".join(names[:3])}); nothing was '
                f'saved after it. {WHAT_TO_CHECK}')
        return result

    def pop_skipped(self) -> Optional[Dict]:
        skipped, self.skipped = self.skipped, None
        return skipped


class CollapseWatch:
    """Decides, from probes and losses, when to warn of a loss collapse (see module docstring).

    Args:
        interval (int): Optimizer steps between probes. Defaults to 50.
        begin (int): The first optimizer step probed. Defaults to 500.
        patience (int): Probes in a row that must look collapsed before the warning.
            Defaults to 3.
        score_thr (float): A probe looks collapsed when no box scores this much on images
            with lesions. Defaults to 0.05.
        loss_thr (float, optional): The warning also needs the mean total loss of the last
            ``interval`` steps below this (None: not required). Defaults to 1.0.
    """

    def __init__(self, interval: int = 50, begin: int = 500, patience: int = 3,
                 score_thr: float = 0.05, loss_thr: Optional[float] = 1.0) -> None:
        if interval < 1 or patience < 1:
            raise ValueError('collapse_watch needs interval >= 1 and patience >= 1')
        self.interval, self.begin, self.patience = int(interval), int(begin), int(patience)
        self.score_thr, self.loss_thr = float(score_thr), loss_thr
        self.losses: deque = deque(maxlen=self.interval)
        self.probes: deque = deque(maxlen=self.patience)  # (step, max score on positive images)
        self.probe_due = False

    def add_loss(self, step: int, loss: float) -> None:
        """Record the total loss of an optimizer step; schedule probes.

        Args:
            step (int): The optimizer step (1-based).
            loss (float): Its total loss.
        """
        self.losses.append(loss)
        if step >= self.begin and step % self.interval == 0:
            self.probe_due = True

    def add_probe(self, step: int, max_score: float) -> Optional[str]:
        """Record a probe.

        Args:
            step (int): The optimizer step probed (1-based).
            max_score (float): The highest score the model gave on the probe batch.

        Returns:
            str | None: The warning to log when the run looks collapsed, else None.
        """
        self.probe_due = False
        self.probes.append((step, max_score))
        if len(self.probes) < self.patience or any(s >= self.score_thr for _, s in self.probes):
            return None
        mean_loss = sum(self.losses) / max(len(self.losses), 1)
        if self.loss_thr is not None and mean_loss >= self.loss_thr:
            return None
        first, last = self.probes[0][0], self.probes[-1][0]
        best = max(s for _, s in self.probes)
        self.probes.clear()
        loss_part = (f' while the mean total loss of the last {len(self.losses)} steps is '
                     f'{mean_loss:.3g} (< {self.loss_thr})' if self.loss_thr is not None else '')
        return (f'Possible loss collapse: at {self.patience} probes (optimizer steps {first} to '
                f'{last}) the model predicted no box scoring >= {self.score_thr} on training '
                f'images that have lesions (best score {best:.3g}){loss_part}. DINO fails this '
                'way on TBX11K with focal-loss alpha 0.25: it learns to predict nothing on a set '
                'of mostly healthy films.')


@HOOKS.register_module()
class TrainingHealthHook(Hook):
    """Skip non-finite optimizer steps (up to a count, then stop), watch for loss collapse.

    Args:
        max_skipped_steps (int): Non-finite optimizer steps to skip over the whole run; the
            next one stops training with ``EXIT_DIVERGED`` (6). 0 stops at the first.
            Defaults to 3.
        check_grads (bool): Also check the accumulated gradients (not only the losses).
            Defaults to True.
        check_weights (bool): Check the weights after every applied step and before every
            save. Defaults to True.
        collapse_watch (dict, optional): ``dict(interval, begin, patience, score_thr,
            loss_thr)`` (see :class:`CollapseWatch`), or None for no watch. Defaults to
            ``dict()`` (the defaults).
    """

    priority = 'LOW'  # after EMAHook (49): before_save_checkpoint sees the EMA weights too

    def __init__(self, max_skipped_steps: int = 3, check_grads: bool = True,
                 check_weights: bool = True, collapse_watch: Optional[Dict] = dict()) -> None:
        if max_skipped_steps < 0:
            raise ValueError('max_skipped_steps must be >= 0')
        self.max_skipped_steps = int(max_skipped_steps)
        self.check_grads = check_grads
        self.check_weights = check_weights
        self.collapse = CollapseWatch(**collapse_watch) if collapse_watch is not None else None
        self.guard: Optional[NonFiniteGuard] = None
        self.skipped_steps = 0

    def before_train(self, runner) -> None:
        if self.guard is None or self.guard.optim_wrapper is not runner.optim_wrapper:
            self.guard = NonFiniteGuard(runner.optim_wrapper, runner.model, self.check_grads,
                                        self.check_weights)
        self.skipped_steps = int(runner.message_hub.get_info(SKIPPED_STEPS, 0) or 0)

    def after_train(self, runner) -> None:
        if self.guard is not None:
            self.guard.remove()
            self.guard = None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        skipped = self.guard.pop_skipped() if self.guard is not None else None
        if skipped is not None:
            self._report_skip(runner, batch_idx, skipped, outputs or {})
            return  # a skipped step says nothing about collapse
        if self.collapse is not None and outputs and 'loss' in outputs:
            loss = float(torch.as_tensor(outputs['loss']).detach())
            self.collapse.add_loss(runner.iter + 1, loss)
            if self.collapse.probe_due and data_batch is not None:
                self._probe(runner, data_batch)

    # ---- non-finite steps -----------------------------------------------------------------------
    def _report_skip(self, runner, batch_idx: int, skipped: Dict, outputs: Dict) -> None:
        rank, world_size = get_dist_info()
        terms = [k for k, v in outputs.items()
                 if not torch.isfinite(torch.as_tensor(v).detach()).all()]
        if world_size > 1:  # every rank skips the same steps, so this collective is safe
            per_rank = all_gather_object(terms)
            terms_text = '; '.join(f'rank {r}: {", ".join(t) or "all finite"}'
                                   for r, t in enumerate(per_rank))
        else:
            terms_text = ', '.join(f'{k}={float(torch.as_tensor(outputs[k]).detach())}'
                                   for k in terms) or 'all finite'
        self.skipped_steps += 1
        runner.message_hub.update_info(SKIPPED_STEPS, self.skipped_steps)
        step = runner.iter + 1
        what = ' and '.join(w for w, bad in (('loss', skipped['loss']),
                                             ('gradient', skipped['grads'])) if bad)
        grads = ''
        if skipped['grad_names']:
            names = skipped['grad_names']
            grads = (f'; non-finite gradients in {len(names)} of {skipped["num_grads"]} tensors '
                     f'(first: {", ".join(names[:3])})')
        acc = getattr(runner.train_loop, 'accumulative_counts', 1)
        message = (f'Non-finite {what} at optimizer step {step} (epoch {runner.epoch + 1}, step '
                   f'{batch_idx + 1}/{len(runner.train_dataloader)}); loss terms: {terms_text}'
                   f'{grads}.')
        if self.skipped_steps <= self.max_skipped_steps:
            runner.logger.warning(
                f'{message} Skipped this optimizer step (its whole window of {acc} '
                f'micro-batch(es)): {self.skipped_steps} of at most {self.max_skipped_steps} '
                'skipped steps.')
            return
        runner.logger.error(
            f'{message} Stopping: {self.skipped_steps} non-finite optimizer steps, more than '
            f'max_skipped_steps={self.max_skipped_steps} (this step was not applied either; the '
            f'weights are finite). {WHAT_TO_CHECK}')
        request_stop(runner, EXIT_DIVERGED,
                     f'Stopped at optimizer step {step} after {self.skipped_steps} non-finite '
                     f'optimizer steps (max_skipped_steps={self.max_skipped_steps}; see the error '
                     f'above); exit status {EXIT_DIVERGED}. No checkpoint holds non-finite '
                     'weights.')

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        if not self.check_weights:
            return
        for key in ('state_dict', 'ema_state_dict'):
            tensors = {k: v for k, v in (checkpoint.get(key) or {}).items()
                       if isinstance(v, torch.Tensor) and v.is_floating_point()}
            if not tensors:
                continue
            ok = _finite_flags(list(tensors.values())).tolist()
            bad = [k for k, good in zip(tensors, ok) if not good]
            if bad:
                raise NonFiniteTraining(
                    f'refusing to save a checkpoint with non-finite {key} ({len(bad)} tensors, '
                    f'first: {", ".join(bad[:3])}) at optimizer step {runner.iter}. '
                    f'{WHAT_TO_CHECK}')

    # ---- loss collapse --------------------------------------------------------------------------
    def _probe(self, runner, data_batch: Dict) -> None:
        samples = data_batch['data_samples']
        positive = [i for i, s in enumerate(samples) if len(s.gt_instances) > 0]
        if not positive:
            return  # probe the next window that has lesions
        probe = {'inputs': [data_batch['inputs'][i] for i in positive],
                 'data_samples': [samples[i] for i in positive]}
        model = _unwrap(runner.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                results = model.val_step(probe)
        finally:
            model.train(was_training)
        best = max((float(r.pred_instances.scores.max()) if len(r.pred_instances) else 0.0)
                   for r in results)
        warning = self.collapse.add_probe(runner.iter + 1, best)
        if warning:
            alpha = getattr(getattr(getattr(model, 'bbox_head', None), 'loss_cls', None),
                            'alpha', None)
            runner.logger.warning(
                f'{warning} Check: model.bbox_head.loss_cls.alpha (now {alpha}; 0.75 in this '
                'repo\'s configs), the learning rate and warm-up, that the training annotations '
                'have boxes and the right classes (python tools/check_dataset.py DATA_ROOT), '
                'num_classes; evaluate the latest checkpoint with tools/test.py.')
