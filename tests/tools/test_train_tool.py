"""tools/train.py end to end on the tiny configs (CPU): training, resume, refusals, LR scaling."""
import json
import os.path as osp
import re
import sys
import types

import pytest
import torch

from tbx11k.engine.exit_codes import (
    EXIT_INCOMPATIBLE_CHECKPOINT,
    EXIT_NOTHING_TO_TRAIN,
    EXIT_PRETRAINED_UNAVAILABLE,
    EXIT_WRONG_LAYOUT,
)
from tbx11k.testing import (
    REPO_ROOT,
    TINY_1GPU,
    TINY_2GPU,
    TINY_EB4,
    load_checkpoint,
    raw_weights,
    run,
    scalars,
    train_command,
)
from tbx11k.testing.tools import load_tool

TEST = osp.join(REPO_ROOT, 'tools', 'test.py')

OPTIONS = {
    'train_cfg.max_epochs': 3,
    'train_cfg.val_begin': 99,
    'default_hooks.logger.interval': 1,
    'optim_wrapper.optimizer.lr': 5e-4,  # learn visibly within 21 optimizer steps
}


@pytest.fixture(scope='module')
def trained(tmp_path_factory, training_root):
    """3 epochs from scratch, started as a Slurm session starts: with --resume in an empty work
    dir."""
    work_dir = tmp_path_factory.mktemp('train_tool')
    proc = run(train_command(TINY_1GPU, str(work_dir), 1, training_root, OPTIONS, ['--resume']))
    return work_dir, proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def resumed(trained, tmp_path_factory, training_root):
    """The last epoch of ``trained`` again, resumed from its epoch 2 in a new work dir."""
    work_dir, _ = trained
    resumed_dir = tmp_path_factory.mktemp('resumed')
    proc = run(train_command(TINY_1GPU, str(resumed_dir), 1, training_root, OPTIONS,
                             ['--resume', str(work_dir / 'epoch_2.pth')]))
    return resumed_dir, proc.stdout + proc.stderr


def test_startup_report_and_checkpoints(trained):
    work_dir, log = trained
    assert 'Effective batch size: 2 = 1 GPU x 1 image x 2 accumulation steps' in log
    assert 'Counters are optimizer steps: 7 per epoch (14 micro-batches per process)' in log
    for epoch in (1, 2, 3):
        assert osp.isfile(work_dir / f'epoch_{epoch}.pth')
    meta = load_checkpoint(str(work_dir / 'epoch_3.pth'))['meta']
    assert (meta['epoch'], meta['iter']) == (3, 21)


def test_log_starts_with_the_layout_and_keeps_the_noise_out(trained):
    """The layout report comes before mmengine's config dump and hook listing; the optimizer
    constructor's per-tensor lines are at DEBUG (not in this INFO log); no pkg_resources
    deprecation on stderr; mmengine's BatchNorm warning is answered: the tiny model's batch
    norms are frozen (norm_eval=True), so accumulation is exact."""
    work_dir, output = trained
    log_file, = work_dir.glob('*/*.log')
    lines = log_file.read_text().splitlines()
    layout = next(i for i, line in enumerate(lines) if 'Effective batch size: 2 = ' in line)
    config = next(i for i, line in enumerate(lines) if line.endswith('INFO - Config:'))
    hooks = next(i for i, line in enumerate(lines) if 'Hooks will be executed' in line)
    assert layout < 60 and layout < config < hooks, (layout, config, hooks)
    assert 'Counters are optimizer steps' in lines[layout + 1]
    assert 'INFO - Gradient accumulation is exact here: the 20 BatchNorm layers of the model ' \
        'are frozen' in lines[layout + 2]
    for text in (lines, output.splitlines()):
        assert not [line for line in text if 'is skipped since its requires_grad=False' in line
                    or 'paramwise_options -- ' in line]
        assert not [line for line in text if 'Gradient accumulative may slightly' in line]
    assert 'pkg_resources' not in output


def test_loss_falls(trained):
    work_dir, _ = trained
    losses = [r['loss'] for r in scalars(str(work_dir))]
    assert len(losses) == 21
    first, last = sum(losses[:7]) / 7, sum(losses[-7:]) / 7
    assert last < 0.9 * first, (first, last)


def test_resume_in_an_empty_work_dir_is_a_warning(trained):
    """It was said at INFO level only: a mistyped --work-dir started a new run unnoticed."""
    work_dir, log = trained
    assert re.search(rf'WARNING - Nothing to resume in {re.escape(str(work_dir))}: starting '
                     'from scratch', log), log[-3000:]


def test_resume_from_checkpoint_is_bit_identical(trained, resumed):
    """Resume on torch >= 2.6 (mmengine 0.10.7's torch.load is fixed by tbx11k)."""
    work_dir, _ = trained
    resumed_dir, log = resumed
    assert torch.__version__ >= '2.6'
    assert 'Resuming at epoch 2, optimizer step 14' in log
    a = raw_weights(load_checkpoint(str(work_dir / 'epoch_3.pth')))
    b = raw_weights(load_checkpoint(str(resumed_dir / 'epoch_3.pth')))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_test_tool_takes_the_config_saved_by_a_resumed_run(resumed, tmp_path):
    """mmdet's habit: test with the config the run saved in its work dir. After a resume that
    config holds resume=True and load_from, and tools/test.py crashed with KeyError:
    'param_groups' (it tried to resume the optimizer)."""
    resumed_dir, _ = resumed
    saved = resumed_dir / osp.basename(TINY_1GPU)
    assert 'resume = True' in saved.read_text()
    proc = run([sys.executable, TEST, str(saved), str(resumed_dir / 'epoch_3.pth'),
                '--work-dir', str(tmp_path)], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'Traceback' not in out
    assert 'TB_AP_all' in json.loads((tmp_path / 'metrics.json').read_text())['metrics']


def test_resume_with_another_lr_says_the_checkpoints_is_kept(trained, tmp_path, training_root):
    """mmengine restores the optimizer and schedulers as saved: a changed lr (or --auto-scale-lr)
    in a later session did nothing, without a word (and --auto-scale-lr logged its scaling)."""
    work_dir, _ = trained
    options = dict(OPTIONS, **{'optim_wrapper.optimizer.lr': 0.5})
    proc = run(train_command(TINY_1GPU, str(tmp_path), 1, training_root, options,
                             ['--resume', str(work_dir / 'epoch_2.pth')]))
    out = proc.stdout + proc.stderr
    assert 'Resuming keeps the optimizer settings of the checkpoint' in out
    assert 'in the checkpoint, 0.5 in this config' in out
    a = raw_weights(load_checkpoint(str(work_dir / 'epoch_3.pth')))
    b = raw_weights(load_checkpoint(str(tmp_path / 'epoch_3.pth')))
    assert all(torch.equal(a[k], b[k]) for k in a)  # as the message says: trained as saved


def test_checkpoint_of_other_optimizer_groups_is_refused(trained, tmp_path, training_root):
    """Without the config's paramwise_cfg the optimizer has one group, not one per parameter:
    torch's load_state_dict failed with a traceback after the model had been loaded."""
    work_dir, _ = trained
    options = dict(OPTIONS, **{'optim_wrapper.paramwise_cfg': None})
    proc = run(train_command(TINY_1GPU, str(tmp_path), 1, training_root, options,
                             ['--resume', str(work_dir / 'epoch_1.pth')]), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_INCOMPATIBLE_CHECKPOINT, out[-3000:]
    assert re.search(r"the checkpoint's optimizer has \d+ group\(s\) of \[1, 1, .* this "
                     r"config's 1 group\(s\) of \[\d+\]: optim_wrapper.paramwise_cfg",
                     out), out[-3000:]
    assert 'Traceback' not in out


def test_finished_run_says_nothing_to_train(trained, training_root):
    work_dir, _ = trained
    proc = run(train_command(TINY_1GPU, str(work_dir), 1, training_root, OPTIONS, ['--resume']),
               check=False)
    assert proc.returncode == EXIT_NOTHING_TO_TRAIN
    assert 'Nothing to train: the run is at epoch 3, optimizer step 21' in proc.stdout + proc.stderr


def test_checkpoint_of_other_classes_is_refused(trained, tmp_path, training_root):
    work_dir, _ = trained
    three = '[ActiveTuberculosis,ObsoletePulmonaryTuberculosis,PulmonaryTuberculosis]'
    options = dict(OPTIONS, **{
        'train_dataloader.dataset.metainfo.classes': three,
        'val_dataloader.dataset.metainfo.classes': three,  # tools/train.py checks both
        'model.bbox_head.num_classes': 3})
    proc = run(train_command(TINY_1GPU, str(tmp_path), 1, training_root, options,
                             ['--resume', str(work_dir / 'epoch_1.pth')]), check=False)
    assert proc.returncode == EXIT_INCOMPATIBLE_CHECKPOINT, proc.stderr[-3000:]
    assert 'does not fit this model' in proc.stdout + proc.stderr
    assert 'bbox_head.cls_branches.0.weight' in proc.stdout + proc.stderr


def test_checkpoint_of_other_effective_batch_is_refused(trained, tmp_path, training_root):
    work_dir, _ = trained
    options = dict(OPTIONS, **{'optim_wrapper.accumulative_counts': 4, 'effective_batch_size': 4})
    proc = run(train_command(TINY_1GPU, str(tmp_path), 1, training_root, options,
                             ['--resume', str(work_dir / 'epoch_1.pth')]), check=False)
    assert proc.returncode == EXIT_INCOMPATIBLE_CHECKPOINT
    assert 'trained with effective batch 2 (1 GPU x 1 image x 2 accumulation)' in proc.stdout
    # the advice gives this launch the checkpoint's effective batch
    assert ('resume with --cfg-options optim_wrapper.accumulative_counts=2 '
            'effective_batch_size=2') in proc.stdout


@pytest.mark.slow
def test_2gpu_config_on_one_process_is_refused(tmp_path, training_root):
    """The refusal named configs/*_1gpu.py, not the config that fits this launch."""
    proc = run(train_command(TINY_2GPU, str(tmp_path), 1, training_root, OPTIONS), check=False)
    assert proc.returncode == EXIT_WRONG_LAYOUT
    log = proc.stdout + proc.stderr
    assert 'effective batch of 2 images per optimizer step, but this launch gives 1' in log
    assert 'World sizes that fit effective_batch_size=2: 1 or 2 processes (GPUs)' in log
    assert (
        'Configs for 1 process: configs/dino_tbx11k_tiny_1gpu.py (or configs/dino_tbx11k_1gpu.py'
            in log), log[-3000:]


@pytest.mark.slow
def test_configs_that_fit_a_launch_are_found_by_their_layout(tmp_path):
    from tbx11k.utils.cli import configs_for_layout
    assert configs_for_layout(2, 2, like='dino_tbx11k_tiny_1gpu.py') == [
        'configs/dino_tbx11k_tiny_2gpu.py', 'configs/dino_tbx11k_2gpu.py',
        'configs/dino_tbx11k_eb2.py']  # 'auto' takes 2 processes too
    assert configs_for_layout(2, 4) == []
    # computed from each config, not from its name
    (tmp_path / 'eb8_any_name.py').write_text(
        f"_base_ = '{TINY_1GPU}'\neffective_batch_size = 8\n"
        "optim_wrapper = dict(accumulative_counts=2)\n")
    (tmp_path / 'broken.py').write_text('model = dict(\n')
    assert configs_for_layout(8, 4, folder=str(tmp_path)) == [str(tmp_path / 'eb8_any_name.py')]
    assert configs_for_layout(8, 2, folder=str(tmp_path)) == []


@pytest.mark.parametrize('launcher, env', [
    ('pytorch', {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '3', 'MASTER_ADDR': '127.0.0.1',
                 'MASTER_PORT': '9'}),
    ('slurm', {'SLURM_PROCID': '0', 'SLURM_LOCALID': '0', 'SLURM_NTASKS': '3',
               'SLURM_NODELIST': 'node1'})])
@pytest.mark.slow
def test_world_size_that_does_not_divide_the_effective_batch_is_refused_first(
        tmp_path, training_root, launcher, env):
    """3 processes for effective batch 4 ('auto'): exit 5 naming the world sizes that fit, from
    the launcher's environment alone (no process group, model or data built: a lone rank of a
    3-process launch returns at once instead of waiting for its peers)."""
    work_dir = tmp_path / 'work'
    proc = run(train_command(TINY_EB4, str(work_dir), 1, training_root, OPTIONS,
                             ['--launcher', launcher]), check=False, timeout=120, env=env)
    assert proc.returncode == EXIT_WRONG_LAYOUT, proc.stderr[-2000:]
    assert ("effective batch of 4 images per optimizer step (effective_batch_size=4, "
            "optim_wrapper.accumulative_counts='auto'); 3 process(es) x 1 image cannot split it"
            in proc.stderr)
    assert ('World sizes that fit: 1, 2 or 4 processes (GPUs) with 4, 2, 1 accumulation steps'
            in proc.stderr)
    assert 'Traceback' not in proc.stderr
    assert not work_dir.exists() or not any(work_dir.iterdir())


@pytest.mark.parametrize('options, says', [
    ({'optim_wrapper.accumulative_counts': 0}, 'optim_wrapper.accumulative_counts=0: it must be'),
    ({'train_dataloader.batch_size': 0}, 'train_dataloader.batch_size=0: it must be'),
    ({'train_dataloader.batch_sampler.accumulative_counts': 4},
     'batch_sampler.accumulative_counts=4 contradicts optim_wrapper.accumulative_counts=2'),
    ({'optim_wrapper.accumulative_counts': 'auto', 'effective_batch_size': 3,
      'train_dataloader.batch_size': 2},
     '1 process(es) x 2 image cannot split it into whole accumulation steps. World sizes that '
     'fit: none: effective_batch_size=3 is not a multiple of train_dataloader.batch_size=2'),
])
@pytest.mark.slow
def test_impossible_layout_settings_exit_5_with_a_message(tmp_path, training_root, options, says):
    """They ended in bare ValueError tracebacks (exit 1)."""
    proc = run(train_command(TINY_1GPU, str(tmp_path), 1, training_root, {**OPTIONS, **options}),
               check=False)
    assert proc.returncode == EXIT_WRONG_LAYOUT, proc.stderr[-2000:]
    assert says in proc.stdout + proc.stderr
    assert 'Traceback' not in proc.stdout + proc.stderr


FULL_1GPU = osp.join(REPO_ROOT, 'configs', 'dino_tbx11k_1gpu.py')


@pytest.mark.slow
def test_backbone_weights_offline_stop_the_run_first_with_what_to_do(tmp_path, training_root):
    """Without network the ImageNet backbone's download failed after the model and data were
    built, with ~60 lines of traceback ending in URLError. An unresolvable host stands for no
    network; the hub cache is empty."""
    url = 'https://download.invalid/models/resnet50-0676ba61.pth'
    env = dict(TORCH_HOME=str(tmp_path / 'torch_home'))
    work_dir = tmp_path / 'work_dir'
    proc = run(train_command(FULL_1GPU, str(work_dir), 1, training_root,
                             {'model.backbone.init_cfg.checkpoint': url}), check=False, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_PRETRAINED_UNAVAILABLE, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'Traceback' not in out, out[-3000:]
    assert f'cannot download the pretrained weights model.backbone.init_cfg.checkpoint={url}' \
        in errors[0]
    assert '--backbone-checkpoint PATH' in errors[0]
    assert osp.join(str(tmp_path / 'torch_home'), 'hub', 'checkpoints',
                    'resnet50-0676ba61.pth') in errors[0]
    assert not work_dir.exists()  # nothing was built, no layout report, no data loaded
    # a local copy that is not there: the same status (also through dist_train.sh, whose
    # torch.distributed.run says 1 for any failure), and where the config gets the file
    from tbx11k.testing import free_port
    proc = run(['bash', osp.join(REPO_ROOT, 'tools', 'dist_train.sh'),
                osp.join(REPO_ROOT, 'configs', 'dino_tbx11k_2gpu.py'), '2', '--work-dir',
                str(work_dir), '--data-root', training_root, '--backbone-checkpoint',
                str(tmp_path / 'resnet50.pth')], check=False,
               env=dict(env, PYTHON=sys.executable, PORT=str(free_port())))
    assert proc.returncode == EXIT_PRETRAINED_UNAVAILABLE, proc.stderr[-3000:]
    assert not work_dir.exists()
    assert [line for line in proc.stderr.splitlines() if line.startswith('error:')][0] == (
        f'error: the pretrained weights model.backbone.init_cfg.checkpoint='
        f"{tmp_path / 'resnet50.pth'}: no such file. Download the config's file "
        'https://download.pytorch.org/models/resnet50-0676ba61.pth and give its path with '
        '--backbone-checkpoint PATH (the same as --cfg-options '
        'model.backbone.init_cfg.checkpoint=PATH)')


def test_backbone_checkpoint_option_and_the_hub_cache_need_no_network(tmp_path, monkeypatch):
    from tbx11k.utils.pretrained import PretrainedWeightsUnavailable, check_pretrained_weights
    tool = load_tool('train')
    local = tmp_path / 'resnet50-0676ba61.pth'
    torch.save({'conv1.weight': torch.zeros(1)}, str(local))
    cfg = tool.build_config(tool.parse_args([FULL_1GPU, '--backbone-checkpoint', str(local)]))
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint=str(local))
    check_pretrained_weights(cfg.model)  # a loadable local file
    cfg = tool.build_config(tool.parse_args([TINY_1GPU, '--backbone-checkpoint', str(local)]))
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint=str(local))
    # the config's URL, already in torch's hub cache: no download, no network needed
    url = 'https://download.invalid/models/resnet50-0676ba61.pth'
    cfg = tool.build_config(tool.parse_args([FULL_1GPU, '--cfg-options',
                                             f'model.backbone.init_cfg.checkpoint={url}']))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    with pytest.raises(PretrainedWeightsUnavailable, match='cannot download'):
        check_pretrained_weights(cfg.model)
    (tmp_path / 'torch_home' / 'hub' / 'checkpoints').mkdir(parents=True)
    local.rename(tmp_path / 'torch_home' / 'hub' / 'checkpoints' / local.name)
    check_pretrained_weights(cfg.model)
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(PretrainedWeightsUnavailable, match='empty.pth: cannot load it'):
        check_pretrained_weights(dict(backbone=dict(init_cfg=[
            dict(type='Pretrained', checkpoint=str(empty))])))


@pytest.mark.slow
def test_missing_data_root_says_how_to_get_data(tmp_path):
    proc = run(train_command(TINY_1GPU, str(tmp_path), 1, str(tmp_path / 'nowhere')), check=False)
    assert proc.returncode != 0
    assert 'make_synthetic_tbx11k.py' in proc.stderr and 'does not exist' in proc.stderr


def _runner_stub(world_size, batch_size):
    from tbx11k.engine.runner import TBX11KRunner
    runner = object.__new__(TBX11KRunner)
    runner._world_size = world_size
    runner._train_dataloader = dict(batch_size=batch_size)
    runner.logger = types.SimpleNamespace(info=lambda msg: None)
    return runner


@pytest.mark.parametrize('world_size,batch_size,acc,expected', [
    (1, 1, 2, 2.0), (2, 1, 1, 2.0), (1, 1, 1, 1.0), (2, 2, 2, 8.0)])
def test_auto_scale_lr_uses_effective_batch(world_size, batch_size, acc, expected):
    from mmengine.optim import OptimWrapper
    param = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(torch.optim.SGD([param], lr=0.1), accumulative_counts=acc)
    _runner_stub(world_size, batch_size).scale_lr(wrapper, dict(enable=True, base_batch_size=1))
    assert wrapper.optimizer.param_groups[0]['lr'] == pytest.approx(0.1 * expected)


def test_auto_scale_lr_flag_gives_both_configs_the_same_lr():
    """With base_batch_size=2 both layouts keep their LR (the stock runner halves the 1-GPU one)."""
    from mmengine.optim import OptimWrapper
    lrs = []
    for world_size, acc in ((1, 2), (2, 1)):
        param = torch.nn.Parameter(torch.zeros(1))
        wrapper = OptimWrapper(torch.optim.SGD([param], lr=1e-4), accumulative_counts=acc)
        _runner_stub(world_size, 1).scale_lr(wrapper, dict(enable=True, base_batch_size=2))
        lrs.append(wrapper.optimizer.param_groups[0]['lr'])
    assert lrs == [pytest.approx(1e-4)] * 2


@pytest.mark.slow
def test_dist_train_sh_runs_two_gloo_processes(tmp_path, training_root):
    import sys

    from tbx11k.testing import REPO_ROOT, free_port
    options = ['--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_begin=99']
    proc = run(['bash', osp.join(REPO_ROOT, 'tools', 'dist_train.sh'), TINY_2GPU, '2',
                '--work-dir', str(tmp_path), '--data-root', training_root] + options,
               env={'PYTHON': sys.executable, 'PORT': str(free_port())})
    assert 'Effective batch size: 2 = 2 GPU x 1 image x 1 accumulation steps' in proc.stdout
    meta = load_checkpoint(str(tmp_path / 'epoch_1.pth'))['meta']
    assert meta['tbx11k']['world_size'] == 2 and meta['iter'] == 7


def test_stock_micro_batch_checkpoint_is_converted(trained, tmp_path, training_root):
    """A checkpoint of a stock mmengine loop counts micro-batches: 14 micro-batches at acc 2 = 7
    optimizer steps, which is the end of epoch 1 here."""
    work_dir, _ = trained
    checkpoint = load_checkpoint(str(work_dir / 'epoch_1.pth'))
    del checkpoint['meta']['tbx11k']
    checkpoint['meta']['iter'] = 14
    assert 'accumulative_counts=2' in checkpoint['meta']['cfg'].replace(' ', '')
    stock = tmp_path / 'stock.pth'
    torch.save(checkpoint, stock)
    options = dict(OPTIONS, **{'train_cfg.max_epochs': 1})
    proc = run(train_command(TINY_1GPU, str(tmp_path / 'run'), 1, training_root, options,
                             ['--resume', str(stock)]), check=False)
    log = proc.stdout + proc.stderr
    assert ('its iter 14 counts micro-batches of 2-step accumulation; resuming at optimizer '
            'step 7') in log
    assert proc.returncode == EXIT_NOTHING_TO_TRAIN


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only refusal')
def test_amp_without_a_gpu_is_refused_with_a_message(tmp_path):
    tool = load_tool('train')
    with pytest.raises(SystemExit, match='--amp needs a GPU'):
        tool.build_config(tool.parse_args([TINY_1GPU, '--work-dir', str(tmp_path), '--amp']))


def test_resume_from_a_missing_file_is_refused_with_a_message(tmp_path):
    tool = load_tool('train')
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(SystemExit, match='no such checkpoint file'):
        tool.build_config(tool.parse_args([TINY_1GPU, '--resume', missing]))


def test_resume_without_a_checkpoint_starts_from_load_from(trained, tmp_path, training_root):
    """mmdet's --resume drops load_from, and tools/slurm_train.sh always passes --resume: a
    fine-tuning run submitted to Slurm trained from scratch, without a word."""
    work_dir, _ = trained
    weights = str(work_dir / 'epoch_1.pth')
    options = dict(OPTIONS, **{'train_cfg.max_epochs': 1, 'load_from': weights})
    proc = run(train_command(TINY_1GPU, str(tmp_path), 1, training_root, options, ['--resume']))
    log = proc.stdout + proc.stderr
    assert re.search(rf'WARNING - Nothing to resume in {re.escape(str(tmp_path))}: starting '
                     rf'from the weights of load_from={re.escape(weights)}', log), log[-3000:]
    assert f'Load checkpoint from {weights}' in log
    assert 'training from scratch' not in log
    # a second session resumes its own checkpoint, not load_from
    proc = run(train_command(TINY_1GPU, str(tmp_path), 1, training_root, options, ['--resume']),
               check=False)
    assert proc.returncode == EXIT_NOTHING_TO_TRAIN
    assert 'Nothing to train: the run is at epoch 1, optimizer step 7' in proc.stdout + proc.stderr


def test_unloadable_resume_or_load_from_is_refused_with_a_message(trained, tmp_path):
    """An empty or truncated checkpoint crashed in mmengine with EOFError / a zip reader error."""
    work_dir, _ = trained
    tool = load_tool('train')
    empty, truncated = tmp_path / 'empty.pth', tmp_path / 'truncated.pth'
    empty.write_bytes(b'')
    truncated.write_bytes((work_dir / 'epoch_1.pth').read_bytes()[:30000])
    for path in (empty, truncated):
        for flags, what in ((['--resume', str(path)], f'--resume {path}'),
                            (['--cfg-options', f'load_from={path}'], f'load_from={path}')):
            with pytest.raises(SystemExit, match=f'error: {re.escape(what)}: cannot load it'):
                tool.build_config(tool.parse_args([TINY_1GPU, *flags]))
    tool.build_config(tool.parse_args([TINY_1GPU, '--resume', str(work_dir / 'epoch_1.pth')]))
    home = str(work_dir.parent)  # load_from=~/... is expanded, as mmengine's loader does
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('HOME', home)
        tool.build_config(tool.parse_args([TINY_1GPU, '--cfg-options', 'load_from=~/' + str(
            (work_dir / 'epoch_1.pth').relative_to(home))]))


def test_missing_load_from_is_refused_with_a_message(tmp_path):
    """It failed after the model and data were built, with a bare FileNotFoundError."""
    tool = load_tool('train')
    missing = str(tmp_path / 'nope.pth')
    for flags in ([], ['--resume']):
        with pytest.raises(SystemExit, match=f'load_from={missing}: no such checkpoint file'):
            tool.build_config(tool.parse_args([TINY_1GPU, *flags, '--cfg-options',
                                               f'load_from={missing}']))


@pytest.mark.parametrize('tool_name', ['train', 'test'])
def test_config_that_is_not_there_or_does_not_parse_is_named(tool_name, tmp_path):
    """A wrong config path gave a bare FileNotFoundError traceback."""
    tool = load_tool(tool_name)
    extra = [] if tool_name == 'train' else [str(tmp_path / 'x.pth')]
    broken = tmp_path / 'broken.py'
    broken.write_text("_base_ = ['missing_base.py']\n")
    syntax = tmp_path / 'syntax.py'
    syntax.write_text('model = dict(\n')
    for path, says in ((tmp_path / 'nope.py', 'does not exist'),
                       (tmp_path, 'is a folder, not a config file'),
                       (broken, 'cannot read config'), (syntax, 'cannot read config')):
        with pytest.raises(SystemExit, match=f'error: .*{says}'):
            tool.build_config(tool.parse_args([str(path), *extra]))


@pytest.mark.slow
def test_config_name_typo_suggests_the_closest_config():
    proc = run([sys.executable, osp.join(REPO_ROOT, 'tools', 'train.py'),
                'configs/dino_tbx11k_1gp.py'], check=False, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: config 'configs/dino_tbx11k_1gp.py' does not exist "
                                   '(did you mean configs/dino_tbx11k_1gpu.py?)')


@pytest.mark.parametrize('tool_name', ['train', 'test'])
def test_launcher_outside_its_environment_says_what_to_do(tool_name, tmp_path, monkeypatch):
    """--launcher slurm outside srun gave KeyError: 'SLURM_PROCID'; pytorch without torchrun a
    torch traceback."""
    tool = load_tool(tool_name)
    extra = [] if tool_name == 'train' else [str(tmp_path / 'x.pth')]
    for name in ('SLURM_PROCID', 'SLURM_NTASKS', 'RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(name, raising=False)
    for name in ('OMPI_COMM_WORLD_LOCAL_RANK', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE'):
        monkeypatch.delenv(name, raising=False)
    for launcher, says in (('slurm', 'SLURM_PROCID, SLURM_NTASKS .* srun'),
                           ('pytorch', 'RANK, WORLD_SIZE.* torchrun'),
                           ('mpi', 'OMPI_COMM_WORLD_LOCAL_RANK.* mpirun')):
        with pytest.raises(SystemExit, match=f'--launcher {launcher} needs {says}'):
            tool.build_config(tool.parse_args([TINY_1GPU, *extra, '--launcher', launcher]))
    if not torch.cuda.is_available():  # mmengine's MPI launcher calls torch.cuda.set_device
        for name, value in (('OMPI_COMM_WORLD_LOCAL_RANK', '0'), ('OMPI_COMM_WORLD_RANK', '0'),
                            ('OMPI_COMM_WORLD_SIZE', '1'), ('MASTER_ADDR', 'localhost')):
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit, match='--launcher mpi needs GPUs.*--launcher pytorch'):
            tool.build_config(tool.parse_args([TINY_1GPU, *extra, '--launcher', 'mpi']))


@pytest.mark.parametrize('tool_name', ['train', 'test', 'infer', 'analysis_tools/count_ops'])
def test_cfg_options_item_without_equals_is_a_usage_error(tool_name, capsys):
    """mmengine's DictAction failed with a bare 'not enough values to unpack'."""
    tool = load_tool(tool_name)
    with pytest.raises(SystemExit) as exc:
        tool.parse_args([TINY_1GPU, 'x.pth', '--cfg-options', 'a.b=1', 'train_cfg.max_epochs'])
    assert exc.value.code == 2
    assert "--cfg-options: 'train_cfg.max_epochs' is not key=value" in capsys.readouterr().err


@pytest.mark.parametrize('tool_name', ['train', 'test'])
def test_work_dir_or_out_blocked_by_a_file_is_refused_first(tool_name, tmp_path):
    """--work-dir naming a file crashed in mmengine; test.py --out under a file failed after
    all inference, its predictions lost."""
    tool = load_tool(tool_name)
    extra = [] if tool_name == 'train' else [str(tmp_path / 'x.pth')]
    blocker = tmp_path / 'afile'
    blocker.write_text('')
    with pytest.raises(SystemExit, match=f'--work-dir: {blocker} is a file'):
        tool.build_config(tool.parse_args([TINY_1GPU, *extra, '--work-dir', str(blocker / 'w')]))
    if tool_name == 'test':
        with pytest.raises(SystemExit, match=f'--out: {blocker} is a file'):
            tool.build_config(tool.parse_args([TINY_1GPU, *extra, '--work-dir',
                                               str(tmp_path / 'w'), '--out',
                                               str(blocker / 'r.pkl')]))


def test_dataset_classes_must_match_num_classes(tmp_path):
    """3 dataset classes on the 2-class model crashed in DINO's denoising label embedding
    (IndexError) at the first PulmonaryTuberculosis box, or trained silently without one."""
    from tbx11k.utils import check_num_classes
    tool = load_tool('train')
    three = ('train_dataloader.dataset.metainfo.classes=[ActiveTuberculosis,'
             'ObsoletePulmonaryTuberculosis,PulmonaryTuberculosis]')
    cfg = tool.build_config(tool.parse_args([TINY_1GPU, '--cfg-options', three]))
    with pytest.raises(SystemExit, match=r'train_dataloader.dataset has 3 classes .* '
                       r'model.bbox_head.num_classes=2'):
        check_num_classes(cfg)
    cfg.model.bbox_head.num_classes = 3
    with pytest.raises(SystemExit, match='val_dataloader.dataset has 2 classes'):
        check_num_classes(cfg)  # val keeps the default 2 classes
    cfg.val_dataloader.dataset.metainfo.classes = cfg.train_dataloader.dataset.metainfo.classes
    check_num_classes(cfg)
    check_num_classes(tool.build_config(tool.parse_args([TINY_1GPU])))  # the shipped config


@pytest.mark.parametrize('flags', [['--data-root', '/data/TBX11K'],
                                   ['--cfg-options', 'data_root=/data/TBX11K']])
def test_data_root_option_reaches_every_dataset_and_evaluator(flags):
    """mmdet habit: --cfg-options data_root=DIR changed only the variable, and training went on
    silently with the config's data/tbx11k_synthetic/."""
    tool = load_tool('train')
    cfg = tool.build_config(tool.parse_args([TINY_1GPU] + flags))
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[split].dataset.data_root == '/data/TBX11K/'
    for evaluator in ('val_evaluator', 'test_evaluator'):
        assert cfg[evaluator].ann_file == '/data/TBX11K/annotations/json/TBX11K_val.json'


# ---- --resume with something that is not a training checkpoint ----------------------------------
def _not_a_training_checkpoint(kind, trained_checkpoint):
    state = trained_checkpoint['state_dict']
    if kind == 'weights_only':  # what tools/model_converters/convert_coco_checkpoint.py writes
        return dict(meta=dict(dataset_meta=trained_checkpoint['meta']['dataset_meta']),
                    state_dict=state)
    if kind == 'bare_state_dict':  # torch.save(model.state_dict())
        return dict(state)
    return [1, 2, 3]  # a pickle that is no checkpoint at all


def test_resume_from_a_weights_only_file_is_refused(trained, tmp_path, training_root):
    """A weights-only file given to --resume crashed with KeyError: 'epoch' (exit 1)."""
    work_dir, _ = trained
    path = str(tmp_path / 'weights_only.pth')
    torch.save(_not_a_training_checkpoint('weights_only',
                                          load_checkpoint(str(work_dir / 'epoch_1.pth'))), path)
    proc = run(train_command(TINY_1GPU, str(tmp_path / 'run'), 1, training_root, OPTIONS,
                             ['--resume', path]), check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_INCOMPATIBLE_CHECKPOINT, log[-3000:]
    assert 'Traceback' not in log
    assert f'Cannot resume: {path} holds weights only' in log
    assert f'--cfg-options load_from={path}' in log


@pytest.mark.parametrize('kind, says', [
    ('bare_state_dict', 'holds a bare state dict (weights only'),
    ('list', 'is not a checkpoint: it holds a list')])
def test_resume_from_what_is_not_a_checkpoint_is_refused(kind, says):
    """The same refusal as above, by the hook that train.py turns into exit status 4."""
    from tbx11k.engine import CheckpointInterchangeHook, IncompatibleCheckpoint
    trained = dict(meta=dict(dataset_meta=dict(classes=('a', 'b'))),
                   state_dict={'w': torch.zeros(1)})
    runner = _HookRunner(_resume=True, _load_from='x.pth')
    with pytest.raises(IncompatibleCheckpoint, match=re.escape(f'x.pth {says}')):
        CheckpointInterchangeHook().after_load_checkpoint(
            runner, _not_a_training_checkpoint(kind, trained))


class _HookRunner(types.SimpleNamespace):
    """What CheckpointInterchangeHook reads of a runner before it looks at the model."""


def test_resume_from_a_best_checkpoint_is_refused():
    """best_* checkpoints hold no optimizer or scheduler state: mmengine resumed them with a fresh
    AdamW and the LR schedule restarted from warm-up."""
    from tbx11k.engine import CheckpointInterchangeHook, IncompatibleCheckpoint
    best = dict(meta=dict(epoch=2, iter=14), state_dict={'w': torch.zeros(1)},
                message_hub={})
    runner = _HookRunner(_resume=True, _load_from='wd/best_tbx11k_TB_AP_all_epoch_2.pth')
    with pytest.raises(IncompatibleCheckpoint, match=r'best_tbx11k_TB_AP_all_epoch_2.pth holds no '
                       r'optimizer state .*load_from=wd/best_tbx11k_TB_AP_all_epoch_2.pth'):
        CheckpointInterchangeHook().after_load_checkpoint(runner, best)


def test_load_from_a_bare_state_dict_gets_a_state_dict_entry():
    """``--cfg-options load_from=`` a bare state dict crashed in mmengine's EMAHook with
    KeyError: 'state_dict'; the hook (which runs first) wraps it in place."""
    from tbx11k.engine import CheckpointInterchangeHook
    state = {'w': torch.zeros(1), 'module.b': torch.ones(2)}
    checkpoint = dict(state)
    CheckpointInterchangeHook().after_load_checkpoint(
        _HookRunner(_resume=False, _load_from='bare.pth'), checkpoint)
    assert list(checkpoint) == ['state_dict']
    wrapped = checkpoint['state_dict']
    assert list(wrapped) == list(state) and all(wrapped[k] is v for k, v in state.items())
    full = dict(meta={}, state_dict=dict(state))
    CheckpointInterchangeHook().after_load_checkpoint(
        _HookRunner(_resume=False, _load_from='full.pth'), full)
    assert set(full) == {'meta', 'state_dict'}
