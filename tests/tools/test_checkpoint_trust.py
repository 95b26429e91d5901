"""Checkpoints are data: a crafted checkpoint never runs code through any entry point (the
loaders, the URL and model-zoo schemes, tools/train.py, test.py, infer.py,
convert_coco_checkpoint.py, auto-resume), is refused with one message naming the file, the global
and the opt-in; with the opt-in a trusted file loads, with a warning; every legitimate kind of
checkpoint loads without it."""
import logging
import os
import os.path as osp
import pickle
import sys
from collections import OrderedDict

import pytest
import torch
from mmengine.runner.checkpoint import CheckpointLoader

from tbx11k.compat.torch_load import load_checkpoint_mmapped
from tbx11k.engine.exit_codes import EXIT_UNTRUSTED_CHECKPOINT
from tbx11k.testing import REPO_ROOT, TINY_1GPU, TINY_2GPU, free_port, run, train_command
from tbx11k.testing.checkpoint_payloads import (
    KINDS,
    PLACES,
    as_written_on_a_gpu,
    serve_directory,
    training_checkpoint,
    trusted_unknown_checkpoint,
    write_crafted_checkpoint,
)
from tbx11k.testing.tools import load_tool
from tbx11k.utils import safe_checkpoint
from tbx11k.utils.safe_checkpoint import (
    UntrustedCheckpointError,
    history_buffer_getattr,
    load_checkpoint_safely,
    trust_checkpoints,
)

GLOBAL_OF = {'os.system': 'posix.system' if os.name == 'posix' else 'nt.system',
             'exec': 'builtins.exec'}


@pytest.fixture(autouse=True)
def untrusted(monkeypatch):
    """Every test starts without the opt-in (and leaves none behind)."""
    monkeypatch.delenv(safe_checkpoint.TRUST_ENV, raising=False)
    trust_checkpoints(False)
    yield
    trust_checkpoints(False)


@pytest.fixture
def warnings_logged():
    """Messages of WARNING and above that mmengine's current logger gets during the test."""
    from mmengine.logging import MMLogger

    class Recorder(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    messages, handler = [], Recorder(logging.WARNING)
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def assert_refusal(text: str, path: str, global_name: str) -> None:
    assert 'refusing to load the checkpoint' in text and str(path) in text, text
    assert global_name in text and '--trust-checkpoint' in text, text
    assert 'TBX11K_TRUST_CHECKPOINTS=1' in text, text


# ---- the loaders -------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('place', PLACES)
def test_crafted_checkpoint_is_refused_by_every_local_loader(tmp_path, place, kind):
    for legacy in (False, True):  # torch's zip format and its legacy (pre-1.6) format
        path = str(tmp_path / f'crafted_{legacy}.pth')
        marker = write_crafted_checkpoint(path, place, kind, legacy=legacy)
        for load in (lambda: CheckpointLoader.load_checkpoint(path, map_location='cpu'),
                     lambda: load_checkpoint_mmapped(path)):
            with pytest.raises(UntrustedCheckpointError) as error:
                load()
            assert_refusal(str(error.value), path, GLOBAL_OF[kind])
            assert error.value.unsafe_globals == [GLOBAL_OF[kind]]
        assert not osp.exists(marker)


def test_getattr_only_reaches_the_history_buffer_statistics(tmp_path):
    from mmengine.logging import HistoryBuffer

    class Escape:  # what a general getattr would hand out: any attribute of an allowed object
        def __reduce__(self):
            return getattr, (HistoryBuffer, '__init__')

    assert history_buffer_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    with pytest.raises(pickle.UnpicklingError):
        history_buffer_getattr(HistoryBuffer, '__init__')
    path = str(tmp_path / 'escape.pth')
    torch.save(dict(meta=dict(x=Escape())), path)
    with pytest.raises(UntrustedCheckpointError, match='only the statistics methods'):
        load_checkpoint_safely(path)


def test_refusal_survives_a_broadcast():  # rank 0's auto-resume refusal reaches every rank
    error = UntrustedCheckpointError('/x/iter_4.pth', ['posix.system'])
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.unsafe_globals == ['posix.system']


def test_opt_in_loads_a_trusted_file_and_says_so(tmp_path, monkeypatch, warnings_logged):
    path = str(tmp_path / 'dated.pth')
    torch.save(trusted_unknown_checkpoint(), path)
    with pytest.raises(UntrustedCheckpointError, match='datetime.date'):
        load_checkpoint_safely(path)
    monkeypatch.setenv(safe_checkpoint.TRUST_ENV, '0')  # not an opt-in
    with pytest.raises(UntrustedCheckpointError):
        load_checkpoint_safely(path)
    for opt_in in ('environment', 'flag'):
        if opt_in == 'environment':
            monkeypatch.setenv(safe_checkpoint.TRUST_ENV, '1')
        else:
            monkeypatch.delenv(safe_checkpoint.TRUST_ENV)
            trust_checkpoints()
        assert load_checkpoint_mmapped(path)['meta']['created'].year == 2024
        log = warnings_logged.pop()
        assert path in log and 'datetime.date' in log, log
        assert ('--trust-checkpoint' if opt_in == 'flag' else 'TBX11K_TRUST_CHECKPOINTS') in log


# ---- remote checkpoints: http(s)://, torchvision://, open-mmlab:// -----------------------------
@pytest.fixture(scope='module')
def served(tmp_path_factory):
    """A crafted checkpoint and a torchvision-style ResNet-50 state dict (a bare OrderedDict of
    tensors, torch's legacy format as old model-zoo files) served over HTTP."""
    from mmdet.models.backbones import ResNet
    folder = tmp_path_factory.mktemp('served')
    marker = write_crafted_checkpoint(str(folder / 'crafted.pth'), 'message_hub',
                                      marker=str(folder.parent / 'served_crafted.ran'))
    resnet = OrderedDict(ResNet(depth=50).state_dict())
    torch.save(resnet, str(folder / 'resnet50-0676ba61.pth'), _use_new_zipfile_serialization=False)
    with serve_directory(str(folder)) as url:
        yield dict(url=url, marker=marker, resnet_keys=list(resnet))


def test_urls_and_model_zoo_names_load_safely(served, tmp_path, monkeypatch):
    from mmengine.runner import checkpoint as mmengine_checkpoint
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))  # the download cache
    url = served['url']
    monkeypatch.setattr(mmengine_checkpoint, 'get_torchvision_models',
                        lambda: dict(resnet50=f'{url}/resnet50-0676ba61.pth'))
    monkeypatch.setattr(mmengine_checkpoint, 'get_external_models',
                        lambda: dict(crafted=f'{url}/crafted.pth'))
    for name in (f'{url}/resnet50-0676ba61.pth', 'torchvision://resnet50'):
        weights = CheckpointLoader.load_checkpoint(name, map_location='cpu')
        assert list(weights) == served['resnet_keys']
    for name in (f'{url}/crafted.pth', 'open-mmlab://crafted'):
        with pytest.raises(UntrustedCheckpointError) as error:
            CheckpointLoader.load_checkpoint(name, map_location='cpu')
        assert_refusal(str(error.value), f'{url}/crafted.pth', 'posix.system')
    assert not osp.exists(served['marker'])


# ---- the tools ---------------------------------------------------------------------------------
def test_train_refuses_resume_and_load_from_before_building(tmp_path, capsys):
    train = load_tool('train')
    path = str(tmp_path / 'crafted.pth')
    marker = write_crafted_checkpoint(path, 'optimizer_state')
    for argv in ([TINY_1GPU, '--resume', path],
                 [TINY_1GPU, '--cfg-options', f'load_from={path}']):
        with pytest.raises(SystemExit) as stop:
            train.build_config(train.parse_args(argv + ['--work-dir', str(tmp_path / 'w')]))
        assert stop.value.code == EXIT_UNTRUSTED_CHECKPOINT
        assert_refusal(capsys.readouterr().err, path, 'posix.system')
    assert not osp.exists(marker)
    trusted = str(tmp_path / 'dated.pth')
    torch.save(trusted_unknown_checkpoint(), trusted)
    cfg = train.build_config(train.parse_args([TINY_1GPU, '--resume', trusted,
                                               '--trust-checkpoint', '--work-dir',
                                               str(tmp_path / 'w')]))
    assert cfg.load_from == trusted and cfg.resume


@pytest.mark.slow
def test_dist_train_exits_7_when_every_rank_refuses(tmp_path):
    path = str(tmp_path / 'crafted.pth')
    marker = write_crafted_checkpoint(path, 'whole', 'exec')
    proc = run(['bash', osp.join(REPO_ROOT, 'tools', 'dist_train.sh'), TINY_2GPU, '2',
                '--resume', path, '--work-dir', str(tmp_path / 'w')], check=False, timeout=300,
               env={'PYTHON': sys.executable, 'PORT': str(free_port())})
    assert proc.returncode == EXIT_UNTRUSTED_CHECKPOINT, proc.stderr[-3000:]
    assert_refusal(proc.stderr, path, 'builtins.exec')
    assert not osp.exists(marker)


@pytest.mark.slow
def test_auto_resume_refuses_a_crafted_checkpoint_in_the_work_dir(tmp_path, training_root):
    """tools/train.py --resume (as Slurm sessions run it): the work dir's latest checkpoint is
    crafted; the run stops with status 8 (not an older checkpoint, not from scratch)."""
    from tbx11k.engine.hooks.atomic_checkpoint import find_resumable_checkpoint
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    path = str(work_dir / 'iter_2.pth')
    marker = write_crafted_checkpoint(path, 'message_hub', 'exec')
    (work_dir / 'last_checkpoint').write_text(path)
    with pytest.raises(UntrustedCheckpointError):
        find_resumable_checkpoint(str(work_dir))
    proc = run(train_command(TINY_1GPU, str(work_dir), data_root=training_root,
                             extra=['--resume']), check=False, timeout=300)
    assert proc.returncode == EXIT_UNTRUSTED_CHECKPOINT, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_refusal(proc.stdout + proc.stderr, path, 'builtins.exec')
    assert not osp.exists(marker)


def test_test_tool_refuses_a_crafted_checkpoint(tmp_path, training_root, capsys):
    path = str(tmp_path / 'crafted.pth')
    marker = write_crafted_checkpoint(path, 'whole')
    with pytest.raises(SystemExit) as stop:
        load_tool('test').main([TINY_1GPU, path, '--data-root', training_root, '--work-dir',
                                str(tmp_path / 'w')])
    assert stop.value.code == EXIT_UNTRUSTED_CHECKPOINT
    assert_refusal(capsys.readouterr().err, path, 'posix.system')
    assert not osp.exists(marker)


def test_infer_refuses_a_crafted_checkpoint_file_or_url(tmp_path, served, synthetic_root, capsys,
                                                         monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    image = str(next((synthetic_root / 'imgs').rglob('*.png')))
    path = str(tmp_path / 'crafted.pth')
    marker = write_crafted_checkpoint(path, 'meta', 'exec')
    for checkpoint, name in ((path, 'builtins.exec'),
                             (f'{served["url"]}/crafted.pth', 'posix.system')):
        code = load_tool('infer').main([TINY_1GPU, checkpoint, image, '--out',
                                        str(tmp_path / 'out'), '--device', 'cpu'])
        assert code == EXIT_UNTRUSTED_CHECKPOINT
        assert_refusal(capsys.readouterr().err, checkpoint, name)
    assert not osp.exists(marker) and not osp.exists(served['marker'])
    assert not osp.exists(tmp_path / 'out' / 'detections.json')


def test_convert_refuses_a_crafted_checkpoint_and_trusts_with_the_flag(
        tmp_path, coco_like_tiny_checkpoint, capsys, warnings_logged):
    tool = load_tool('model_converters/convert_coco_checkpoint')
    path = str(tmp_path / 'crafted.pth')
    coco = torch.load(coco_like_tiny_checkpoint, weights_only=True)
    marker = write_crafted_checkpoint(path, 'meta', base=coco)
    assert tool.main([path, str(tmp_path / 'out.pth')]) == EXIT_UNTRUSTED_CHECKPOINT
    assert_refusal(capsys.readouterr().err, path, 'posix.system')
    assert not osp.exists(marker) and not osp.exists(tmp_path / 'out.pth')
    dated = str(tmp_path / 'dated.pth')
    torch.save(trusted_unknown_checkpoint(coco), dated)
    assert tool.main([dated, str(tmp_path / 'out.pth')]) == EXIT_UNTRUSTED_CHECKPOINT
    assert tool.main([dated, str(tmp_path / 'out.pth'), '--trust-checkpoint']) == 0
    assert dated in warnings_logged[-1]
    assert 'state_dict' in load_checkpoint_safely(str(tmp_path / 'out.pth'))


# ---- nothing legitimate breaks -----------------------------------------------------------------
@pytest.fixture(scope='module')
def stock_mmengine_checkpoints(tmp_path_factory):
    """Checkpoints of stock mmengine loops (EpochBasedTrainLoop, IterBasedTrainLoop) with EMA,
    accumulation, gradient clipping and LR/momentum schedulers, on a toy model."""
    code = '''
import sys, torch
from mmengine.model import BaseModel
from mmengine.runner import Runner

class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.bn, self.linear = torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 1)
    def forward(self, x, y, mode='loss'):
        return dict(loss=((self.linear(self.bn(x)) - y) ** 2).mean())

data = [dict(x=torch.randn(2), y=torch.randn(1)) for _ in range(4)]
for loop in ('epoch', 'iter'):
    by_epoch = loop == 'epoch'
    Runner(model=Toy(), work_dir=f'{sys.argv[1]}/{loop}', randomness=dict(seed=0),
           train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler'), batch_size=2,
                                 collate_fn=dict(type='default_collate')),
           optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01), accumulative_counts=2,
                              clip_grad=dict(max_norm=1.0)),
           param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=2),
                            dict(type='MultiStepLR', milestones=[1], by_epoch=by_epoch),
                            dict(type='CosineAnnealingMomentum', T_max=4, by_epoch=False,
                                 eta_min=0.8)],
           train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=1) if by_epoch
           else dict(type='IterBasedTrainLoop', max_iters=2),
           default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=by_epoch)),
           custom_hooks=[dict(type='EMAHook')]).train()
'''
    folder = tmp_path_factory.mktemp('stock_mmengine')
    run([sys.executable, '-c', code, str(folder)], timeout=300)
    return [str(folder / 'epoch' / 'epoch_1.pth'), str(folder / 'iter' / 'iter_2.pth')]


def test_legitimate_checkpoints_load_without_the_opt_in(tiny_run, converted_tiny,
                                                        coco_like_tiny_checkpoint,
                                                        stock_mmengine_checkpoints, tmp_path):
    bare = str(tmp_path / 'bare_state_dict.pth')
    torch.save(training_checkpoint()['state_dict'], bare)
    on_gpu = str(tmp_path / 'written_on_a_gpu.pth')  # CUDA storages: map_location takes them
    assert as_written_on_a_gpu(tiny_run['checkpoint'], on_gpu)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='CUDA'):  # its storages are on cuda:0 indeed
            load_checkpoint_safely(on_gpu)
    runner_written = [tiny_run['checkpoint'], on_gpu, *stock_mmengine_checkpoints]
    for path in runner_written + [converted_tiny[0], coco_like_tiny_checkpoint, bare]:
        checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
        assert load_checkpoint_mmapped(path).keys() == checkpoint.keys()
    for path in runner_written:  # message hub (HistoryBuffer, numpy), optimizer, schedulers, EMA
        checkpoint = load_checkpoint_safely(path, map_location='cpu')
        assert {'message_hub', 'optimizer', 'param_schedulers', 'ema_state_dict'} <= set(
            checkpoint)
        buffers = checkpoint['message_hub']['log_scalars']
        assert buffers and all(b.statistics('mean') is not None for b in buffers.values())


@pytest.mark.parametrize('name, argv', [
    ('train', [TINY_1GPU]), ('test', [TINY_1GPU, 'x.pth']),
    ('infer', [TINY_1GPU, 'x.pth', 'a.png']),
    ('model_converters/convert_coco_checkpoint', ['a.pth', 'b.pth'])])
def test_tools_take_the_trust_flag(name, argv):
    assert not load_tool(name).parse_args(argv).trust_checkpoint
    assert load_tool(name).parse_args(argv + ['--trust-checkpoint']).trust_checkpoint
