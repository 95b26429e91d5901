"""Training health: non-finite optimizer steps are skipped, then the run stops; loss collapse warns.

End to end (tiny 1-GPU config, 1 epoch of 7 optimizer steps, a checkpoint after every step):
``loss_cls`` is made NaN in the first micro-batch of steps 3, 5 and 6 with
``max_skipped_steps=2``: steps 3 and 5 are skipped (whole accumulation window), step 6 stops the
run with exit status 6, and every checkpoint written is finite. DDP (conftest ``ddp_reference``):
NaN on rank 1 only at step 2 is skipped on both ranks.
"""
import math

import pytest
import torch
from mmengine.optim import OptimWrapper
from torch import nn

from tbx11k.engine.exit_codes import EXIT_DIVERGED
from tbx11k.engine.hooks.training_health import CollapseWatch, NonFiniteGuard, TrainingHealthHook
from tbx11k.engine.stopping import NonFiniteTraining
from tbx11k.testing import TINY_1GPU, load_checkpoint, raw_weights
from tbx11k.testing.reliability import all_finite, derived_config
from tbx11k.testing.reliability_runs import last_checkpoint, train

NAN_STEPS = [3, 5, 6]


def adam_steps(checkpoint) -> int:
    return int(max(float(s['step']) for s in checkpoint['optimizer']['state'].values()))


def same_weights(a, b) -> bool:
    a, b = raw_weights(a), raw_weights(b)
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def nan_run(tmp_path_factory, training_root):
    base = tmp_path_factory.mktemp('health')
    config = derived_config(TINY_1GPU, str(base / 'nan_at_3_5_6.py'), hooks=[
        dict(type='InjectNaNHook', steps=NAN_STEPS, term='loss_cls'),
        dict(type='TrainingHealthHook', max_skipped_steps=2,
             collapse_watch=dict(interval=1, begin=0, patience=2, score_thr=0.5,
                                 loss_thr=None))])
    work_dir = base / 'run'
    rc, log = train(work_dir, training_root, config=config, **{
        'train_cfg.max_epochs': 1, 'default_hooks.checkpoint.interval': 1,
        'default_hooks.checkpoint.max_keep_ckpts': 7})
    checkpoints = {int(p.stem.split('_')[1]): load_checkpoint(str(p))
                   for p in work_dir.glob('iter_*.pth')}
    yield dict(rc=rc, log=log, checkpoints=checkpoints, last=last_checkpoint(work_dir))
    for p in work_dir.glob('*.pth'):
        p.unlink()


def test_nan_steps_are_skipped_then_the_run_stops(nan_run):
    log, ckpts = nan_run['log'], nan_run['checkpoints']
    assert nan_run['rc'] == EXIT_DIVERGED, log[-5000:]
    assert ('Non-finite loss and gradient at optimizer step 3 (epoch 1, step 3/7); loss terms: '
            'loss=nan, loss_cls=nan') in log
    assert 'Skipped this optimizer step (its whole window of 2 micro-batch(es)): 1 of at most 2' \
        in log
    assert 'Stopping: 3 non-finite optimizer steps, more than max_skipped_steps=2' in log
    assert sorted(ckpts) == [1, 2, 3, 4, 5, 6]  # stopped after step 6
    # skipped steps leave the weights (and Adam) untouched; the others train
    assert same_weights(ckpts[2], ckpts[3]) and not same_weights(ckpts[3], ckpts[4])
    assert same_weights(ckpts[4], ckpts[5]) and same_weights(ckpts[5], ckpts[6])
    assert [adam_steps(ckpts[s]) for s in range(1, 7)] == [1, 2, 2, 3, 3, 3]
    assert all(all_finite(c) for c in ckpts.values())
    assert nan_run['last']['checkpoint'] == 'iter_6.pth' and nan_run['last']['finite']
    print(f'\n[figure] NaN in loss_cls at steps {NAN_STEPS}, max_skipped_steps=2: steps 3 and 5 '
          f'skipped, stopped at step 6 with exit {nan_run["rc"]}; {len(ckpts)} checkpoints '
          'written, all finite')


def test_collapse_watch_warns_in_the_log(nan_run):
    # the freshly initialised tiny model scores every box < 0.5 (DINO's prior is 0.01)
    assert 'Possible loss collapse' in nan_run['log']
    assert 'model.bbox_head.loss_cls.alpha (now 0.75' in nan_run['log']


def test_ddp_nan_on_one_rank_is_skipped_on_both(ddp_reference):
    log = ddp_reference['log']
    assert ('Non-finite loss and gradient at optimizer step 2 (epoch 1, step 2/7); loss terms: '
            'rank 0: all finite; rank 1: loss, loss_cls') in log
    assert adam_steps(ddp_reference['final']) == 6 and all_finite(ddp_reference['final'])


# ---- units ----------------------------------------------------------------------------------
def _toy(accumulative_counts=2, lr=0.1):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=lr),
                           accumulative_counts=accumulative_counts)
    wrapper.initialize_count_status(model, 0, 100)
    return model, wrapper, NonFiniteGuard(wrapper, model)


def test_guard_drops_the_whole_window_with_a_nan_micro_batch():
    model, wrapper, guard = _toy()
    x = torch.ones(1, 3)
    before = [p.detach().clone() for p in model.parameters()]
    wrapper.update_params(model(x).sum() * float('nan'))  # micro-batch 1 of 2: no step yet
    wrapper.update_params(model(x).sum())  # micro-batch 2: the step would happen here
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    skipped = guard.pop_skipped()
    assert skipped['loss'] and skipped['grads'] and 'weight' in skipped['grad_names']
    wrapper.update_params(model(x).sum())
    wrapper.update_params(model(x).sum())  # a finite window steps
    assert guard.pop_skipped() is None
    assert not torch.equal(before[0], model.weight)


def test_guard_keeps_the_step_counter_of_mmengine_schedulers():
    """mmengine's LR schedulers wrap ``step`` to count optimizer steps and warn at their first
    step if the wrap is gone ("optimizer.step() has been overridden"): every training run with
    the hook printed that warning; the guard keeps the count and the mark, remove() the wrap."""
    import warnings

    from mmengine.optim.scheduler import LinearLR
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = LinearLR(wrapper, start_factor=0.5, end=3)
    counted_step = wrapper.step
    guard = NonFiniteGuard(wrapper, model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        wrapper.update_params(model(torch.ones(1, 3)).sum())
        scheduler.step()
    assert not [w for w in caught if 'optimizer.step' in str(w.message)]
    assert wrapper._global_step == 0  # counted through the guard (mmengine starts at -1)
    guard.remove()
    assert wrapper.step is counted_step
    # a scheduler built after the guard wraps the guard's step (a bound method) as usual
    NonFiniteGuard(wrapper, model).remove()
    guard = NonFiniteGuard(OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1)), model)
    LinearLR(guard.optim_wrapper, start_factor=0.5, end=3)
    assert getattr(guard.optim_wrapper.step, '_with_counter', False)


def test_guard_skips_non_finite_gradients_of_finite_losses():
    model, wrapper, guard = _toy(accumulative_counts=1)
    wrapper.backward(model(torch.ones(1, 3)).sum())
    model.bias.grad[0] = math.inf
    before = model.bias.detach().clone()
    wrapper.step()
    assert torch.equal(before, model.bias)
    skipped = guard.pop_skipped()
    assert not skipped['loss'] and skipped['grad_names'] == ['bias']


def test_huge_finite_gradients_and_weights_are_not_called_non_finite():
    """The every-step check uses the 2-norm, which overflows for |x| > ~1e19: such a tensor is
    re-checked exactly and the step goes on."""
    model, wrapper, guard = _toy(accumulative_counts=1, lr=1e-30)
    wrapper.backward(model(torch.ones(1, 3)).sum())
    model.bias.grad[0] = 3e30  # finite, but its square is inf in float32
    with torch.no_grad():
        model.weight[0, 0] = 3e30
    before = model.bias.detach().clone()
    wrapper.step()
    assert guard.pop_skipped() is None and not torch.equal(before, model.bias)
    model.bias.grad[0] = math.nan
    wrapper.step()
    assert guard.pop_skipped()['grad_names'] == ['bias']


def test_weights_turning_non_finite_stop_the_run():
    model, wrapper, _ = _toy(accumulative_counts=1, lr=float('nan'))
    with pytest.raises(NonFiniteTraining, match='weights became non-finite'):
        wrapper.update_params(model(torch.ones(1, 3)).sum())


def test_no_checkpoint_with_non_finite_weights():
    class Runner:
        iter = 4

    hook = TrainingHealthHook()
    good = {'w': torch.ones(2)}
    hook.before_save_checkpoint(Runner(), dict(state_dict=good, ema_state_dict=good))
    with pytest.raises(NonFiniteTraining, match='non-finite ema_state_dict'):
        hook.before_save_checkpoint(Runner(), dict(state_dict=good, ema_state_dict={
            'module.w': torch.tensor([1.0, math.nan])}))


def test_collapse_watch_thresholds():
    watch = CollapseWatch(interval=2, begin=4, patience=2, score_thr=0.05, loss_thr=1.0)
    for step in (1, 2, 3):
        watch.add_loss(step, 0.1)
        assert not watch.probe_due  # nothing before `begin`
    watch.add_loss(4, 0.1)
    assert watch.probe_due and watch.add_probe(4, 0.01) is None  # 1 of 2 probes
    watch.add_loss(5, 0.1)
    watch.add_loss(6, 0.1)
    warning = watch.add_probe(6, 0.02)
    assert 'Possible loss collapse' in warning and 'optimizer steps 4 to 6' in warning
    # a box scoring above the threshold, or losses that are not near zero: no warning
    watch.add_probe(8, 0.01)
    assert watch.add_probe(10, 0.3) is None
    busy = CollapseWatch(interval=2, begin=0, patience=1, loss_thr=1.0)
    busy.add_loss(2, 5.0)
    assert busy.add_probe(2, 0.0) is None
