"""Schedulers advance once per optimizer step, whatever the accumulation
(open-mmlab/mmengine#1308 fixed).

These run the real TBX11KRunner, AccumulationEpochBasedTrainLoop, ParamSchedulerHook and optim
wrapper on the tiny config with a trivial model step (the detector's forward is not what is under
test), for accumulative_counts 1, 2 and 4 on the 13-image set (13, 7 and 4 steps per epoch).
"""
import types

import pytest
from mmengine.config import Config
from mmengine.hooks import Hook

from tbx11k.testing import TINY_1GPU, load_checkpoint
from tbx11k.utils import set_data_root


class Recorder(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.lrs, self.optimizer_steps, self.micro_batches = [], 0, 0

    def before_train(self, runner):
        optimizer = runner.optim_wrapper.optimizer
        step = optimizer.step

        def counted_step(*args, **kwargs):
            self.optimizer_steps += 1
            return step(*args, **kwargs)

        optimizer.step = counted_step

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.lrs.append(runner.optim_wrapper.get_lr()['lr'][0])


def run_schedule(tmp_path, data_root, acc, param_scheduler, max_epochs=3, loop=None,
                 custom_hooks=(), resume_from=None, batch_size=1):
    cfg = Config.fromfile(TINY_1GPU)
    set_data_root(cfg, data_root)
    cfg.work_dir = str(tmp_path / f'acc{acc}')
    cfg.optim_wrapper.accumulative_counts = acc
    cfg.train_cfg.max_epochs = max_epochs
    cfg.train_dataloader.batch_size = batch_size
    cfg.effective_batch_size = acc * batch_size
    cfg.train_cfg.val_begin = 99
    if loop is not None:
        cfg.train_cfg.type = loop
    cfg.param_scheduler = param_scheduler
    cfg.custom_hooks = list(custom_hooks)
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, str(resume_from)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=99)
    cfg.experiment_name = f'sched_{acc}_{tmp_path.name}'
    from mmengine.registry import RUNNERS
    runner = RUNNERS.build(cfg)
    recorder = Recorder()
    runner.register_hook(recorder)

    def train_step(model, data, optim_wrapper):
        recorder.micro_batches += 1
        assert len(data['inputs']) == batch_size  # a micro-batch, not the window
        optim_wrapper.update_params(sum(p.sum() for p in model.parameters()) * 0.0)
        return {}

    runner.model.train_step = types.MethodType(train_step, runner.model)
    runner.train()
    return runner, recorder


ITER_WARMUP = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=3, milestones=[2], gamma=0.1),
]
EPOCH_WARMUP = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=3, milestones=[2], gamma=0.1),
]


@pytest.mark.parametrize('acc', [1, 2, 4])
def test_iteration_warmup_and_milestones_in_optimizer_steps(tmp_path, training_root, acc):
    runner, rec = run_schedule(tmp_path, training_root, acc, ITER_WARMUP)
    steps_per_epoch = -(-13 // acc)
    assert len(runner.train_dataloader) == steps_per_epoch
    assert rec.optimizer_steps == len(rec.lrs) == runner.iter == 3 * steps_per_epoch
    assert rec.micro_batches == 3 * steps_per_epoch * acc
    base = 1e-4
    # the warm-up written as end=5 iterations ramps over 5 optimizer steps (mmengine's LinearLR
    # reaches the base LR at its 5th step), for every accumulation
    expected = [base * (0.1 + 0.9 * k / 4) for k in range(5)] + [base]
    assert rec.lrs[:6] == pytest.approx(expected, rel=1e-9)
    # the epoch-2 milestone falls on the first optimizer step of epoch 3
    drop = 2 * steps_per_epoch
    assert rec.lrs[drop - 1] == pytest.approx(base, rel=1e-9)
    assert rec.lrs[drop] == pytest.approx(base * 0.1, rel=1e-9)
    assert rec.lrs[-1] == pytest.approx(base * 0.1, rel=1e-9)


@pytest.mark.parametrize('acc', [1, 2, 4])
def test_epoch_warmup_converted_to_optimizer_steps(tmp_path, training_root, acc):
    runner, rec = run_schedule(tmp_path, training_root, acc, EPOCH_WARMUP, max_epochs=3)
    steps_per_epoch = -(-13 // acc)
    base = 1e-4
    assert rec.lrs[0] == pytest.approx(base * 0.1, rel=1e-9)
    # one epoch of warm-up: the base LR is reached at the epoch's last optimizer step
    assert rec.lrs[steps_per_epoch - 2] < base
    assert rec.lrs[steps_per_epoch - 1] == pytest.approx(base, rel=1e-9)
    assert rec.lrs[2 * steps_per_epoch] == pytest.approx(base * 0.1, rel=1e-9)


def test_same_lr_per_optimizer_step_for_1gpu_and_2gpu_layouts(tmp_path, training_root):
    """World size is part of the window; per rank the 2-GPU layout is acc 1 with half the data."""
    from tbx11k.datasets.samplers import AccumulationWindowBatchSampler, GlobalOrderSampler
    sampler = GlobalOrderSampler(range(13), seed=0)
    two_gpu = AccumulationWindowBatchSampler(sampler, 1, 1, world_size=2, rank=0)
    one_gpu = AccumulationWindowBatchSampler(sampler, 1, 2, world_size=1, rank=0)
    assert len(two_gpu) == len(one_gpu) == 7  # same optimizer steps per epoch -> same schedule


WARMUP_2_EPOCHS = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=3, milestones=[2], gamma=0.1),
]


@pytest.mark.parametrize('writer, stock_epochs', [('mmengine', 1), ('tbx11k_with_stock_loop', 1),
                                                  ('mmengine', 2)])
def test_micro_batch_checkpoint_resumes_on_the_optimizer_step_schedule(tmp_path, training_root,
                                                                       writer, stock_epochs):
    """A checkpoint of a loop counting micro-batches (stock mmengine, or this project with
    train_cfg.type='EpochBasedTrainLoop') at acc 2, after 1 epoch (in the middle of an
    epoch-converted warm-up: its schedulers count 26 micro-batches of warm-up where this run
    counts 14 optimizer steps) or 2. Its windows run across epoch ends (13 micro-batches per
    epoch), ours end with the epoch (7 steps). Resumed, every later optimizer step has the LR of an
    uninterrupted run."""
    _, reference = run_schedule(tmp_path / 'ref', training_root, 2, WARMUP_2_EPOCHS)
    hooks = [dict(type='CheckpointInterchangeHook')] if writer != 'mmengine' else []
    run_schedule(tmp_path / 'stock', training_root, 2, WARMUP_2_EPOCHS, max_epochs=stock_epochs,
                 loop='EpochBasedTrainLoop', custom_hooks=hooks)
    checkpoint_file = tmp_path / 'stock' / 'acc2' / f'epoch_{stock_epochs}.pth'
    saved = load_checkpoint(str(checkpoint_file))  # a stock mmengine loop's checkpoint
    assert saved['meta']['iter'] == 13 * stock_epochs  # micro-batches
    assert saved['param_schedulers'][0]['end'] == 26
    assert ('tbx11k' in saved['meta']) == (writer != 'mmengine')
    if writer != 'mmengine':
        assert saved['meta']['tbx11k']['counter_unit'] == 'micro_batch'
    resumed, rec = run_schedule(tmp_path / 'resumed', training_root, 2, WARMUP_2_EPOCHS,
                                custom_hooks=[dict(type='CheckpointInterchangeHook')],
                                resume_from=checkpoint_file)
    assert len(rec.lrs) == 7 * (3 - stock_epochs)  # the epochs left, 7 optimizer steps each
    assert rec.lrs == pytest.approx(reference.lrs[7 * stock_epochs:], rel=1e-12)
    assert resumed.param_schedulers[0].end == 14


def test_more_than_one_image_per_micro_batch_is_warned(tmp_path, training_root, monkeypatch):
    """2 images x acc 1 is the effective batch of 2 GPUs x 1 image, but DINO pads each image's
    denoising queries to the batch's largest GT count: not the same training (the audit measured
    weights 1.8e-3 apart after 14 steps); the run says so."""
    import tbx11k.engine.loops as loops
    said = []
    monkeypatch.setattr(loops, 'print_log', lambda msg, **kw: said.append(msg))
    run_schedule(tmp_path / 'b1', training_root, 2, ITER_WARMUP, max_epochs=1)
    assert not any('More than 1 image per micro-batch' in m for m in said)
    run_schedule(tmp_path / 'b2', training_root, 1, ITER_WARMUP, max_epochs=1, batch_size=2)
    assert 'Effective batch size: 2 = 1 GPU x 2 image x 1 accumulation steps' in said
    assert any(m.startswith('More than 1 image per micro-batch') for m in said)
