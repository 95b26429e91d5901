"""1 process x 2 accumulation steps trains exactly like 2 DDP processes x 1 image (gloo, CPU).

The tiny configs differ from the real ones in sizes only, so this tests the real logic: the
window-aligned sampler, per-sample seeds, the optimizer-step loop and the window loss
normalisation. Data: 13 synthetic images (windows mix empty, 1-box and multi-box films; the last
window of each epoch is padded), 2 epochs = 14 optimizer steps with warm-up, DN noise and
multi-scale/flip augmentation all on.

Tolerances (float32 on CPU): the two layouts differ only in the order of float sums
(g_a/2 + g_b/2 vs (g_a + g_b)/2), measured here at ~1e-8 relative over all weights and ~4e-5 for
the worst single tensor (a query bias whose true gradient is 0, so Adam amplifies rounding noise).
Stock per-micro-batch normalisation differs by ~1e-3 overall and ~0.5 for the worst tensor.
"""

import pytest

from tbx11k.testing import (
    TINY_1GPU,
    TINY_2GPU,
    ema_weights,
    global_relative_difference,
    load_checkpoint,
    lr_by_step,
    raw_weights,
    relative_difference,
    run,
    train_command,
)

GLOBAL_TOL = 1e-6
TENSOR_TOL = 1e-3
STEPS = 14  # 2 epochs x 7 windows of the 13-image set

COMMON = {
    'train_cfg.max_epochs': 2,
    'train_cfg.val_begin': 99,  # no validation: this compares training only
    'default_hooks.logger.interval': 1,
    'default_hooks.checkpoint.by_epoch': False,
    'default_hooks.checkpoint.interval': 5,
    'default_hooks.checkpoint.max_keep_ckpts': 5,
}


def train(config, work_dir, data_root, nproc=1, resume=None, **options):
    extra = ['--resume', resume] if resume else []
    return run(train_command(config, str(work_dir), nproc, data_root, {**COMMON, **options},
                             extra))


@pytest.fixture(scope='module')
def runs(tmp_path_factory, training_root):
    base = tmp_path_factory.mktemp('equivalence')
    out = {name: base / name for name in ('acc', 'ddp', 'stock', 'acc_to_ddp', 'ddp_to_acc')}
    train(TINY_1GPU, out['acc'], training_root)
    train(TINY_2GPU, out['ddp'], training_root, nproc=2)
    train(TINY_1GPU, out['stock'], training_root, **{'model.loss_normalization': 'micro_batch'})
    # stop after 5 steps of the 1-GPU run, finish with 2 GPUs; stop after 10 steps (inside the
    # second epoch) of the 2-GPU run, finish with 1 GPU
    train(TINY_2GPU, out['acc_to_ddp'], training_root, nproc=2,
          resume=str(out['acc'] / 'iter_5.pth'))
    out["ddp_to_acc_log"] = train(TINY_1GPU, out['ddp_to_acc'], training_root,
                                  resume=str(out['ddp'] / 'iter_10.pth')).stdout
    return out


def final(work_dir):
    return load_checkpoint(str(work_dir / f'iter_{STEPS}.pth'))


def test_accumulation_equals_ddp(runs):
    acc, ddp = final(runs['acc']), final(runs['ddp'])
    assert acc['meta']['tbx11k']['accumulative_counts'] == 2
    assert ddp['meta']['tbx11k']['world_size'] == 2
    assert global_relative_difference(raw_weights(acc), raw_weights(ddp)) < GLOBAL_TOL
    assert relative_difference(raw_weights(acc), raw_weights(ddp)) < TENSOR_TOL
    assert relative_difference(ema_weights(acc), ema_weights(ddp)) < TENSOR_TOL
    assert acc['meta']['iter'] == ddp['meta']['iter'] == STEPS


def test_learning_rate_identical_at_every_optimizer_step(runs):
    acc, ddp = lr_by_step(str(runs['acc'])), lr_by_step(str(runs['ddp']))
    assert sorted(acc) == list(range(1, STEPS + 1))
    assert acc == ddp
    assert acc[1] < acc[7] == acc[8]  # one warm-up epoch = 7 optimizer steps, then flat


def test_stock_normalisation_differs(runs):
    """The same comparison with stock mmdet loss normalisation fails: the test can fail."""
    stock, ddp = final(runs['stock']), final(runs['ddp'])
    assert global_relative_difference(raw_weights(stock), raw_weights(ddp)) > 100 * GLOBAL_TOL
    assert relative_difference(raw_weights(stock), raw_weights(ddp)) > 10 * TENSOR_TOL


@pytest.mark.parametrize('resumed', ['acc_to_ddp', 'ddp_to_acc'])
def test_resume_across_layouts_equals_uninterrupted(runs, resumed):
    reference, got = final(runs['acc']), final(runs[resumed])
    assert global_relative_difference(raw_weights(reference), raw_weights(got)) < GLOBAL_TOL
    assert relative_difference(raw_weights(reference), raw_weights(got)) < TENSOR_TOL
    assert relative_difference(ema_weights(reference), ema_weights(got)) < TENSOR_TOL
    assert got['meta']['epoch'] == reference['meta']['epoch']
    reference_lr, got_lr = lr_by_step(str(runs['acc'])), lr_by_step(str(runs[resumed]))
    first = 6 if resumed == 'acc_to_ddp' else 11
    assert sorted(got_lr) == list(range(first, STEPS + 1))
    assert all(got_lr[k] == reference_lr[k] for k in got_lr)


def test_resume_log_says_what_happened(runs):
    log = runs["ddp_to_acc_log"]
    assert 'written by 2 GPU x 1 x 1 accumulation, now 1 x 1 x 2' in log
    assert 'skipping its first 3 of 7 optimizer steps' in log
