"""Every split of an effective batch E trains exactly alike (gloo, CPU): E = 2 as 1 process x 2
accumulation steps and 2 x 1 (the shipped tiny_1gpu / tiny_2gpu configs), E = 4 as 1 x 4, 2 x 2
and 4 x 1 (tiny_eb4, ``accumulative_counts='auto'``); checkpoints resume across the splits.

The tiny configs differ from the real ones in sizes only, so this tests the real logic: the
window-aligned sampler, per-sample seeds, the optimizer-step loop, the schedulers counting
optimizer steps and the window loss normalisation. Data (``small_training_root``): 9 synthetic
128-px images with 0 to 5 boxes, so the micro-batches of a window have uneven box counts and the
last window of each epoch is padded (9 = 2+2+2+2+1 = 4+4+1); 2 epochs with a one-epoch LR warm-up,
DN noise and multi-scale/flip augmentation all on.

Tolerances (float32 on CPU): the splits differ only in the order of float sums
(g_a/4 + ... + g_d/4 vs (g_a + ... + g_d)/4), measured at ~5e-9 relative over all weights and
~3e-5 for the worst single tensor (a query bias whose true gradient is 0, so Adam amplifies
rounding noise). Stock per-micro-batch normalisation differs by ~1e-3 overall.
"""
from typing import Dict, NamedTuple, Optional, Tuple

import pytest

from tbx11k.testing import (
    TINY_1GPU,
    TINY_2GPU,
    TINY_EB4,
    ema_weights,
    global_relative_difference,
    load_checkpoint,
    lr_by_step,
    raw_weights,
    relative_difference,
    run,
    train_command,
)

GLOBAL_TOL = 1e-6  # the issue asks <= 1e-5
TENSOR_TOL = 1e-3
IMAGES = 9
EPOCHS = 2


class Layout(NamedTuple):
    """One split of a recipe's effective batch: ``processes`` x 1 image x accumulation."""
    config: str
    processes: int


class Recipe(NamedTuple):
    effective_batch: int
    layouts: Dict[str, Layout]  # the first one is the reference
    checkpoint_interval: int
    # (name, from layout, its checkpoint step, to layout): a run stopped and resumed elsewhere
    resumes: Tuple[Tuple[str, str, int, str], ...]
    stock_control: Optional[str] = None  # a layout also trained with stock normalisation

    @property
    def steps_per_epoch(self) -> int:
        return -(-IMAGES // self.effective_batch)

    @property
    def steps(self) -> int:
        return EPOCHS * self.steps_per_epoch


RECIPES = {
    # 5 steps per epoch; the 2-process run resumed on 1 process at step 7 (inside epoch 2)
    2: Recipe(2, {'1x2': Layout(TINY_1GPU, 1), '2x1': Layout(TINY_2GPU, 2)}, 7,
              (('2x1@7->1x2', '2x1', 7, '1x2'),)),
    # 3 steps per epoch; the 4-process run resumed on 1 process at step 2 (inside the warm-up
    # epoch), the 1-process run on 4 processes at step 4 (the first step of epoch 2)
    4: Recipe(4, {'1x4': Layout(TINY_EB4, 1), '2x2': Layout(TINY_EB4, 2),
                  '4x1': Layout(TINY_EB4, 4)}, 2,
              (('4x1@2->1x4', '4x1', 2, '1x4'), ('1x4@4->4x1', '1x4', 4, '4x1')),
              stock_control='1x4'),
}


def options(recipe: Recipe, **extra) -> Dict:
    return {
        'train_cfg.max_epochs': EPOCHS,
        'train_cfg.val_begin': 99,  # no validation: this compares training only
        'default_hooks.logger.interval': 1,
        'default_hooks.checkpoint.by_epoch': False,
        'default_hooks.checkpoint.interval': recipe.checkpoint_interval,
        'default_hooks.checkpoint.max_keep_ckpts': 10,
        **extra}


def train(layout: Layout, work_dir, data_root, recipe: Recipe, resume=None, **extra) -> str:
    cmd = train_command(layout.config, str(work_dir), layout.processes, data_root,
                        options(recipe, **extra), ['--resume', resume] if resume else [])
    proc = run(cmd)
    return proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def runs(tmp_path_factory, small_training_root):
    """Every layout, the stock control and the cross-layout resumes of both recipes, trained once:
    {effective batch: {run name: dict(dir, log)}} (checkpoints deleted after the module)."""
    base = tmp_path_factory.mktemp('equivalence')
    out = {}
    for effective, recipe in RECIPES.items():
        done = out[effective] = {}
        for name, layout in recipe.layouts.items():
            work_dir = base / f'eb{effective}_{name}'
            done[name] = dict(dir=work_dir, log=train(layout, work_dir, small_training_root,
                                                      recipe))
        if recipe.stock_control:
            work_dir = base / f'eb{effective}_stock'
            done['stock'] = dict(dir=work_dir, log=train(
                recipe.layouts[recipe.stock_control], work_dir, small_training_root, recipe,
                **{'model.loss_normalization': 'micro_batch'}))
        for name, source, step, target in recipe.resumes:
            work_dir = base / f'eb{effective}_{name}'
            checkpoint = str(done[source]['dir'] / f'iter_{step}.pth')
            done[name] = dict(dir=work_dir, log=train(recipe.layouts[target], work_dir,
                                                      small_training_root, recipe, checkpoint))
    yield out
    for path in base.glob('*/*.pth'):  # ~54 MB each: not for pytest's kept tmp dirs
        path.unlink()


def final(recipe: Recipe, work_dir) -> Dict:
    return load_checkpoint(str(work_dir / f'iter_{recipe.steps}.pth'))


def differences(reference: Dict, got: Dict) -> Tuple[float, float, float]:
    """(global relative, worst tensor relative, worst EMA tensor relative) weight difference."""
    return (global_relative_difference(raw_weights(reference), raw_weights(got)),
            relative_difference(raw_weights(reference), raw_weights(got)),
            relative_difference(ema_weights(reference), ema_weights(got)))


SPLITS = [(e, name) for e, r in RECIPES.items() for name in list(r.layouts)[1:]]


@pytest.mark.parametrize('effective,name', SPLITS, ids=[f'eb{e}-{n}' for e, n in SPLITS])
def test_every_split_trains_identically(runs, effective, name):
    recipe = RECIPES[effective]
    reference_name = next(iter(recipe.layouts))
    reference = final(recipe, runs[effective][reference_name]['dir'])
    got = final(recipe, runs[effective][name]['dir'])
    layout = got['meta']['tbx11k']
    processes = recipe.layouts[name].processes
    assert (layout['world_size'], layout['accumulative_counts']) == (
        processes, effective // processes)
    assert layout['effective_batch_size'] == effective
    assert reference['meta']['iter'] == got['meta']['iter'] == recipe.steps
    global_diff, tensor_diff, ema_diff = differences(reference, got)
    print(f'E={effective}: {name} vs {reference_name}: global {global_diff:.2e}, worst tensor '
          f'{tensor_diff:.2e}, worst EMA tensor {ema_diff:.2e}')
    assert global_diff < GLOBAL_TOL
    assert tensor_diff < TENSOR_TOL and ema_diff < TENSOR_TOL


@pytest.mark.parametrize('effective', list(RECIPES))
def test_learning_rate_identical_at_every_optimizer_step(runs, effective):
    recipe = RECIPES[effective]
    rates = {name: lr_by_step(str(runs[effective][name]['dir'])) for name in recipe.layouts}
    reference = next(iter(rates.values()))
    assert sorted(reference) == list(range(1, recipe.steps + 1))
    assert all(got == reference for got in rates.values()), rates
    # the one-epoch warm-up counts optimizer steps: it rises over exactly the first epoch
    per_epoch = recipe.steps_per_epoch
    assert reference[1] < reference[per_epoch - 1] < reference[per_epoch] == reference[recipe.steps]


def test_auto_accumulation_is_reported(runs):
    log = runs[4]['2x2']['log']
    assert ("optim_wrapper.accumulative_counts='auto': 2 accumulation steps = effective batch 4 "
            '/ (2 GPU x 1 image)') in log
    assert ('Effective batch size: 4 = 4 GPU x 1 image x 1 accumulation steps'
            in runs[4]['4x1']['log'])


def test_stock_normalisation_differs(runs):
    """The same comparison with stock mmdet loss normalisation fails: the test can fail."""
    recipe = RECIPES[4]
    stock = final(recipe, runs[4]['stock']['dir'])
    other = final(recipe, runs[4]['4x1']['dir'])
    global_diff, tensor_diff, _ = differences(stock, other)
    print(f'E=4: stock normalisation 1x4 vs window normalisation 4x1: global {global_diff:.2e}, '
          f'worst tensor {tensor_diff:.2e}')
    assert global_diff > 100 * GLOBAL_TOL
    assert tensor_diff > 10 * TENSOR_TOL


RESUMES = [(e, resume) for e, r in RECIPES.items() for resume in r.resumes]


@pytest.mark.parametrize('effective,resume', RESUMES, ids=[r[0] for _, r in RESUMES])
def test_resume_across_layouts_equals_uninterrupted(runs, effective, resume):
    recipe = RECIPES[effective]
    name, source, step, target = resume
    reference_dir = runs[effective][source]['dir']
    reference, got = final(recipe, reference_dir), final(recipe, runs[effective][name]['dir'])
    assert got['meta']['tbx11k']['world_size'] == recipe.layouts[target].processes
    assert got['meta']['epoch'] == reference['meta']['epoch']
    global_diff, tensor_diff, ema_diff = differences(reference, got)
    print(f'E={effective}: {name} vs uninterrupted {source}: global {global_diff:.2e}, worst '
          f'tensor {tensor_diff:.2e}, worst EMA tensor {ema_diff:.2e}')
    assert global_diff < GLOBAL_TOL
    assert tensor_diff < TENSOR_TOL and ema_diff < TENSOR_TOL
    reference_lr = lr_by_step(str(reference_dir))
    got_lr = lr_by_step(str(runs[effective][name]['dir']))
    assert sorted(got_lr) == list(range(step + 1, recipe.steps + 1))
    assert all(got_lr[k] == reference_lr[k] for k in got_lr)


def test_resume_log_says_what_happened(runs):
    log = runs[4]['4x1@2->1x4']['log']
    assert 'written by 4 GPU x 1 x 1 accumulation, now 1 x 1 x 4' in log
    assert 'skipping its first 2 of 3 optimizer steps' in log
    log = runs[4]['1x4@4->4x1']['log']
    assert 'written by 1 GPU x 1 x 4 accumulation, now 4 x 1 x 1' in log
    assert 'skipping its first 1 of 3 optimizer steps' in log
    log = runs[2]['2x1@7->1x2']['log']
    assert 'written by 2 GPU x 1 x 1 accumulation, now 1 x 1 x 2' in log
    assert 'skipping its first 2 of 5 optimizer steps' in log
