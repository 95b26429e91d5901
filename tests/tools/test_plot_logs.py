"""tools/analysis_tools/plot_logs.py on the logs of a real tiny training run; merging of resumed
sessions; the TensorBoard switch."""
import glob
import json
import os
import os.path as osp
import sys
import types
import uuid

import cv2
import pytest

from tbx11k.apis.log_plots import load_training_log, loss_term, plot_logs
from tbx11k.testing import REPO_ROOT, TINY_1GPU, run
from tbx11k.testing.tools import RUN_EPOCHS, load_tool

PLOT = osp.join(REPO_ROOT, 'tools', 'analysis_tools', 'plot_logs.py')
STEPS = 7 * RUN_EPOCHS  # 13 images, windows of 2 -> 7 optimizer steps per epoch


def assert_real_png(path, min_side=200):
    assert osp.getsize(path) > 5000, path
    image = cv2.imread(path)
    assert image is not None and min(image.shape[:2]) >= min_side, path
    assert image.std() > 5, f'{path} looks blank'


def test_plots_of_a_real_training_run(tiny_run, tmp_path):
    out = tmp_path / 'plots'
    proc = run([sys.executable, PLOT, tiny_run['work_dir'], '--out', str(out)], timeout=120)
    names = sorted(os.listdir(out))
    assert names == ['losses.png', 'lr.png', 'overview.png', 'val_metrics.png']
    for name in names:
        assert_real_png(str(out / name))
    assert f'optimizer steps 1..{STEPS}' in proc.stdout
    assert f'val at epochs {list(range(1, RUN_EPOCHS + 1))}' in proc.stdout

    log = load_training_log(tiny_run['work_dir'])
    assert [r['step'] for r in log.train] == list(range(1, STEPS + 1))
    steps, lrs = log.series('lr')
    assert steps == list(range(1, STEPS + 1))
    assert lrs[0] < lrs[-1]  # the 1-epoch linear warm-up, per optimizer step
    assert log.epoch_ends() == [7.5]
    val_steps, ap = log.series('tbx11k/TB_AP50_all', val=True)
    assert val_steps == list(range(1, RUN_EPOCHS + 1)) and all(0 <= v <= 1 for v in ap)
    assert {'loss_cls', 'enc_loss_cls', 'dn_loss_cls', 'd0.loss_bbox'} <= set(log.keys())


def test_default_output_folder_and_all_layers(tiny_run):
    summary = plot_logs(tiny_run['work_dir'], all_layers=True)
    assert all(p.startswith(osp.join(tiny_run['work_dir'], 'plots')) for p in summary['files'])
    assert len(summary['files']) == 4
    # a scalars.json given instead of a folder: the plots go next to it (crashed: '<file>/plots')
    scalars = glob.glob(osp.join(tiny_run['work_dir'], '*', 'vis_data', 'scalars.json'))[0]
    summary = plot_logs(scalars)
    assert all(p.startswith(osp.join(osp.dirname(scalars), 'plots')) for p in summary['files'])
    # --metrics matching nothing: said, not an empty plot labelled "no validation records"
    with pytest.raises(ValueError, match=r"no logged val metric matches \['nomatch\*'\]"):
        plot_logs(tiny_run['work_dir'], metrics=['nomatch*'])


def write_session(work_dir, name, records):
    folder = work_dir / name / 'vis_data'
    folder.mkdir(parents=True)
    with open(folder / 'scalars.json', 'w') as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + '\n')


def train_record(step, epoch, loss):
    return dict(lr=1e-4, loss=loss, loss_cls=loss / 2, epoch=epoch, iter=step, step=step)


def test_resumed_sessions_merge_and_the_later_one_wins(tmp_path):
    # session A: epochs 1-3 (5 steps each), val after 1, 2, 3; crashed after step 13
    a = [train_record(s, (s - 1) // 5 + 1, 10.0) for s in range(1, 14)]
    a[5:5] = [dict(**{'coco/bbox_mAP': 0.1}, time=1, step=1)]
    a += [dict(**{'coco/bbox_mAP': 0.2}, step=2), dict(**{'coco/bbox_mAP': 0.3}, step=3)]
    write_session(tmp_path, '20240101_000000', a)
    # session B resumed from epoch_1.pth: steps 6.., epochs 2..4, and a line cut by a crash
    b = [train_record(s, (s - 1) // 5 + 1, 5.0) for s in range(6, 21)]
    b += [dict(**{'coco/bbox_mAP': 0.5}, step=2), dict(**{'coco/bbox_mAP': 0.6}, step=4),
          '{"lr": 0.0001, "loss": 1.0, "st']
    write_session(tmp_path, '20240102_000000', b)
    write_session(tmp_path, '20240103_000000', [])  # a session that crashed at start

    log = load_training_log(str(tmp_path))
    assert [s.name for s in log.sessions] == ['20240101_000000', '20240102_000000']
    assert [r['step'] for r in log.train] == list(range(1, 21))
    assert [r['loss'] for r in log.train] == [10.0] * 5 + [5.0] * 15
    # val of epoch 1 from A; A's epochs 2 and 3 were retrained by B: B's epochs 2, 4 only
    assert log.series('coco/bbox_mAP', val=True) == ([1, 2, 4], [0.1, 0.5, 0.6])
    summary = plot_logs(str(tmp_path), str(tmp_path / 'plots'))
    assert summary['bad_lines'] == 1 and summary['val_epochs'] == [1, 2, 4]
    for path in summary['files']:
        assert_real_png(path)


def test_a_resumed_session_with_another_logging_interval_drops_the_retrained_records(tmp_path):
    """Resumed at step 10 with interval 5 after a session logging every step: its first record is
    at step 15, and the earlier session's records of the retrained steps 11-14 were kept."""
    write_session(tmp_path, '20240101_000000',
                  [train_record(s, (s - 1) // 10 + 1, 10.0) for s in range(1, 15)]
                  + [dict(**{'coco/bbox_mAP': 0.1}, step=1)])
    write_session(tmp_path, '20240102_000000',
                  [train_record(s, (s - 1) // 10 + 1, 5.0) for s in (15, 20)])
    (tmp_path / '20240102_000000' / '20240102_000000.log').write_text(
        '2024/01/02 00:00:01 - mmengine - INFO - resumed epoch: 1, iter: 10\n')
    log = load_training_log(str(tmp_path))
    assert log.sessions[1].resumed_at == (1, 10)
    assert [r['step'] for r in log.train] == list(range(1, 11)) + [15, 20]
    assert log.series('coco/bbox_mAP', val=True) == ([1], [0.1])  # epoch 1 finished before
    # a session that resumed inside epoch 1 drops that epoch's validation too
    (tmp_path / '20240102_000000' / '20240102_000000.log').write_text('resumed epoch: 0, iter: 4')
    log = load_training_log(str(tmp_path))
    assert [r['step'] for r in log.train] == [1, 2, 3, 4, 15, 20]
    assert log.val == []


def test_missing_logs_are_a_clear_error(tmp_path, capsys):
    tool = load_tool('analysis_tools/plot_logs')
    assert tool.main([str(tmp_path)]) == 2
    assert 'no <timestamp>/vis_data/scalars.json' in capsys.readouterr().err
    # --out naming a file: a FileExistsError traceback
    write_session(tmp_path, '20240101_000000', [train_record(1, 1, 1.0)])
    (tmp_path / 'afile').write_text('x')
    assert tool.main([str(tmp_path), '--out', str(tmp_path / 'afile')]) == 2
    assert f'error: --out {tmp_path / "afile"} is a file' in capsys.readouterr().err


@pytest.mark.slow
def test_missing_work_dir_is_named_as_a_missing_folder(tmp_path, capsys):
    """A typo in the work dir said "no <timestamp>/vis_data/scalars.json", as if the run had
    written no log."""
    missing = tmp_path / 'work_dirs' / 'dino_tbx11k_1gpu'
    proc = run([sys.executable, PLOT, str(missing)], check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f'error: no such folder: {missing}'


def test_loss_term_names():
    assert loss_term('d1.dn_loss_cls') == ('loss_cls', 'denoising', 1)
    assert loss_term('enc_loss_iou') == ('loss_iou', 'encoder', None)
    assert loss_term('loss_bbox') == ('loss_bbox', 'final', None)


# ---- TensorBoard switch ------------------------------------------------------------------------
TENSORBOARD_OPTION = {'visualizer.vis_backends.0.type': 'LocalAndTensorboardVisBackend'}


def build_visualizer(save_dir):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmdet.registry import VISUALIZERS
    cfg = Config.fromfile(TINY_1GPU)
    cfg.merge_from_dict(TENSORBOARD_OPTION)  # what --cfg-options does
    init_default_scope('mmdet')
    return VISUALIZERS.build(dict(cfg.visualizer, save_dir=str(save_dir),
                                  name=f'tensorboard_test_{uuid.uuid4().hex}'))


def test_tensorboard_switch_writes_both_logs(tmp_path, monkeypatch):
    calls = []

    class SummaryWriter:  # stands in for torch.utils.tensorboard (tensorboard not installed)
        def __init__(self, log_dir):
            calls.append(('init', log_dir))

        def add_scalar(self, name, value, step):
            calls.append((name, value, step))

        def add_text(self, *args):
            pass

        def close(self):
            calls.append(('close',))

    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard',
                        types.SimpleNamespace(SummaryWriter=SummaryWriter))
    visualizer = build_visualizer(tmp_path)
    visualizer.add_scalars({'loss': 1.5, 'lr': 1e-4}, step=3)
    visualizer.close()
    assert ('loss', 1.5, 3) in calls and ('lr', 1e-4, 3) in calls
    assert calls[0] == ('init', str(tmp_path / 'vis_data'))
    with open(tmp_path / 'vis_data' / 'scalars.json') as f:
        assert json.loads(f.readline()) == {'loss': 1.5, 'lr': 1e-4, 'step': 3}


def test_tensorboard_switch_without_tensorboard_says_what_to_install(tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip('tensorboard is installed here')
    except ImportError:
        pass
    with pytest.raises(ImportError, match='pip install tensorboard'):
        build_visualizer(tmp_path)
