"""tools/test.py end to end: data -> model -> TBX11K metric -> files, on a hand-computed case."""
import json
import os.path as osp
import sys
import textwrap

import pytest
import torch

from tbx11k.testing import REPO_ROOT, TINY_1GPU, load_checkpoint, run
from tbx11k.testing.tools import load_tool


@pytest.fixture(scope='module')
def oracle(tmp_path_factory, training_root):
    """A config whose model returns the GT boxes except on one image, and its 'checkpoint'."""
    tmp = tmp_path_factory.mktemp('oracle')
    val = json.load(open(osp.join(training_root, 'annotations/json/TBX11K_val.json')))
    boxes_per_image = {}
    for ann in val['annotations']:
        boxes_per_image[ann['image_id']] = boxes_per_image.get(ann['image_id'], 0) + 1
    skipped_id = max(boxes_per_image, key=boxes_per_image.get)
    skipped = next(i for i in val['images'] if i['id'] == skipped_id)
    config = tmp / 'oracle.py'
    config.write_text(textwrap.dedent(f'''
        _base_ = {TINY_1GPU!r}
        custom_imports = dict(imports=['tbx11k', 'tbx11k.testing.oracle'],
                              allow_failed_imports=False)
        model = dict(_delete_=True, type='GTOracleDetector',
                     skip_files=[{osp.basename(skipped['file_name'])!r}],
                     data_preprocessor=dict(type='DetDataPreprocessor'))
        custom_hooks = []
    '''))
    checkpoint = tmp / 'oracle.pth'
    torch.save(dict(state_dict={'anchor': torch.zeros(1)}, meta={}), checkpoint)
    return config, checkpoint, val, skipped_id


def coco_ap_all_true_positives(found, total):
    """COCO's 101-point AP when every prediction is a true positive (precision 1) and they reach
    recall found/total: the share of the recall thresholds 0, .01, ..., 1 that are reached."""
    return sum(1 for t in range(101) if t / 100 <= found / total + 1e-12) / 101


@pytest.mark.slow
def test_metrics_equal_the_hand_computed_ap(oracle, tmp_path, training_root):
    config, checkpoint, val, skipped_id = oracle
    proc = run([sys.executable, osp.join(REPO_ROOT, 'tools', 'test.py'), str(config),
                str(checkpoint), '--data-root', training_root, '--work-dir', str(tmp_path)])
    metrics = json.load(open(tmp_path / 'metrics.json'))['metrics']
    anns = val['annotations']
    found = [a for a in anns if a['image_id'] != skipped_id]
    assert 0 < len(found) < len(anns)
    assert metrics['TB_AP_all'] == pytest.approx(coco_ap_all_true_positives(len(found), len(anns)))
    per_class = []
    for name, category in (('ActiveTB', 1), ('LatentTB', 2)):
        total = sum(a['category_id'] == category for a in anns)
        hits = sum(a['category_id'] == category for a in found)
        per_class.append(coco_ap_all_true_positives(hits, total))
        assert metrics[f'{name}_AP_all'] == pytest.approx(per_class[-1])
        assert metrics[f'{name}_AP50_all'] == pytest.approx(per_class[-1])
    assert metrics['bbox_mAP'] == pytest.approx(sum(per_class) / 2)
    assert osp.isfile(tmp_path / 'metrics.md') and osp.isfile(tmp_path / 'froc.png')
    log = proc.stdout + proc.stderr
    assert 'model weights (the checkpoint has no EMA)' in log


@pytest.mark.slow
def test_show_dir_drawings_keep_the_folders_of_films_of_the_same_name(oracle, tmp_path,
                                                                      training_root):
    """mmdet names --show-dir drawings by basename: a film named like one in another folder
    overwrote its drawing without a word (10 images, 9 drawings)."""
    import shutil
    config, checkpoint, val, _ = oracle
    root = tmp_path / 'data'
    shutil.copytree(osp.join(training_root, 'imgs'), root / 'imgs')
    (root / 'annotations' / 'json').mkdir(parents=True)
    first = val['images'][0]
    name = osp.basename(first['file_name'])
    (root / 'imgs' / 'other').mkdir()
    shutil.copy(root / 'imgs' / first['file_name'], root / 'imgs' / 'other' / name)
    val = dict(val, images=val['images'] + [dict(first, id=max(i['id'] for i in val['images']) + 1,
                                                 file_name=f'other/{name}')])
    (root / 'annotations' / 'json' / 'TBX11K_val.json').write_text(json.dumps(val))
    run([sys.executable, osp.join(REPO_ROOT, 'tools', 'test.py'), str(config), str(checkpoint),
         '--data-root', str(root), '--work-dir', str(tmp_path / 'w'), '--show-dir', 'vis'])
    drawn = sorted(osp.relpath(p, d) for d in (tmp_path / 'w').glob('*/vis')
                   for p in d.rglob('*.png'))
    assert drawn == sorted(i['file_name'] for i in val['images'])
    assert first['file_name'] in drawn and f'other/{name}' in drawn


@pytest.fixture(scope='module')
def submission(tiny_run, tmp_path_factory, synthetic_root):
    """tools/test.py --test-split --format-only with the short run's (EMA) checkpoint, on a set
    whose all_test.json lists an extra/ image, as the real one does."""
    work_dir = tmp_path_factory.mktemp('submission')
    proc = run([sys.executable, osp.join(REPO_ROOT, 'tools', 'test.py'), TINY_1GPU,
                tiny_run['checkpoint'], '--data-root', str(synthetic_root), '--work-dir',
                str(work_dir), '--test-split', '--format-only'])
    test_json = json.load(open(synthetic_root / 'annotations/json/all_test.json'))
    return dict(work_dir=work_dir, log=proc.stdout + proc.stderr, test_json=test_json)


def test_challenge_submission_on_the_unlabelled_test_split(submission):
    """--test-split --format-only: all_test.json has no annotations; the official two files."""
    tmp_path, test_json = submission['work_dir'], submission['test_json']
    lines = (tmp_path / 'submission.cls.txt').read_text().split('\n')
    lines = [line for line in lines if line.strip()]
    assert len(lines) == len(test_json['images'])
    for line in lines:
        probabilities = [float(p) for p in line.split()]
        assert len(probabilities) == 3 and sum(probabilities) == pytest.approx(1, abs=1e-4)
    results = json.load(open(tmp_path / 'submission.bbox.json'))
    image_ids = {image['id'] for image in test_json['images']}
    assert all(r['image_id'] in image_ids and len(r['bbox']) == 4 for r in results)


def test_submission_warns_only_about_what_applies(submission):
    """Writing the submission for all_test.json (no labels) evaluates nothing: no warning that
    its extra/ images would count as non-TB, no advice to evaluate on TBX11K_*.json. The advice
    to pass the threshold chosen on val applies and stays."""
    log, test_json = submission['log'], submission['test_json']
    assert any(i['file_name'].startswith('extra/') for i in test_json['images'])
    warnings = [line for line in log.splitlines() if 'WARNING' in line]
    assert not [line for line in warnings if 'extra/' in line], warnings
    assert 'TBX11K_*.json' not in log
    assert any('format_only without cls_threshold' in line for line in warnings), warnings


def test_test_says_when_the_ema_weights_are_too_young(submission, tiny_run):
    """The short run's EMA (decay 0.9998) has had a handful of updates: its weights are still
    the start's, which is why AP is 0; one WARNING line says so and what to use."""
    steps = int(torch.load(tiny_run['checkpoint'], weights_only=False)['ema_state_dict']['steps'])
    warned = [line for line in submission['log'].splitlines()
              if 'WARNING' in line and 'EMA weights have had' in line]
    assert len(warned) == 1, submission['log'][-3000:]
    assert f'{steps - 1} update(s) at decay 0.9998' in warned[0]
    assert '--weights raw' in warned[0] and 'about 3466 updates' in warned[0]


def test_out_that_is_not_a_pickle_is_refused_before_building(capsys):
    tool = load_tool('test')
    with pytest.raises(SystemExit):
        tool.parse_args([TINY_1GPU, 'x.pth', '--out', 'results.json'])
    assert '--out must be a .pkl or .pickle file' in capsys.readouterr().err
    assert tool.parse_args([TINY_1GPU, 'x.pth', '--out', 'r.pkl']).out == 'r.pkl'


def test_model_classes_that_do_not_fit_the_test_set_are_refused():
    from tbx11k.utils import check_num_classes
    tool = load_tool('test')
    cfg = tool.build_config(tool.parse_args(
        [TINY_1GPU, 'x.pth', '--cfg-options', 'model.bbox_head.num_classes=3']))
    with pytest.raises(SystemExit, match='test_dataloader.dataset has 2 classes'):
        check_num_classes(cfg, splits=('test_dataloader', ))


def test_cfg_options_data_root_reaches_the_test_set_and_evaluator():
    tool = load_tool('test')
    cfg = tool.build_config(tool.parse_args(
        [TINY_1GPU, 'x.pth', '--cfg-options', 'data_root=/data/TBX11K']))
    assert cfg.test_dataloader.dataset.data_root == '/data/TBX11K/'
    assert cfg.test_evaluator.ann_file == '/data/TBX11K/annotations/json/TBX11K_val.json'


def test_checkpoint_that_does_not_fit_the_model_is_refused():
    """A 2-class checkpoint tested with model.bbox_head.num_classes=3 loaded non-strictly (mmengine
    warns) and evaluated randomly initialised class heads with exit status 0."""
    tool = load_tool('test')
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    other_classes = torch.nn.Sequential(torch.nn.Linear(4, 2)).state_dict()
    with pytest.raises(SystemExit, match=r'c.pth does not fit the model of cfg.py .*\n.*'
                       r'shape \(2, 4\) in checkpoint vs \(3, 4\) in the model: 0.weight'):
        tool.check_weights_fit(other_classes, model, 'c.pth', 'cfg.py')
    tool.check_weights_fit(model.state_dict(), model, 'c.pth', 'cfg.py')
    tool.check_weights_fit({f'module.{k}': v for k, v in model.state_dict().items()}, model,
                           'c.pth', 'cfg.py')


def _val_json(config):
    """The val json under the data root of ``config``."""
    from mmengine.config import Config
    return Config.fromfile(config).data_root + 'annotations/json/TBX11K_val.json'


def _list_evaluator_config(tmp_path):
    """The tiny config with a list of two test metrics, both on the val json."""
    config = tmp_path / 'two_metrics.py'
    config.write_text(textwrap.dedent(f'''
        _base_ = {TINY_1GPU!r}
        test_evaluator = [
            dict(type='TBX11KMetric', ann_file={_val_json(TINY_1GPU)!r}),
            dict(type='CocoMetric', metric='bbox', ann_file={_val_json(TINY_1GPU)!r}),
        ]
        val_evaluator = test_evaluator
    '''))
    return str(config)


def test_a_list_of_test_metrics_is_configured_and_rerooted(tmp_path):
    tool = load_tool('test')
    config = _list_evaluator_config(tmp_path)
    cfg = tool.build_config(tool.parse_args(
        [config, 'x.pth', '--data-root', '/data/X', '--work-dir', str(tmp_path / 'w'),
         '--format-only']))
    tbx, coco = cfg.test_evaluator
    for metric in (tbx, coco):
        assert metric.ann_file == '/data/X/annotations/json/TBX11K_val.json'
        assert metric.format_only is True
    assert [tbx.outfile_prefix, coco.outfile_prefix] == [
        str(tmp_path / 'w' / 'submission'), str(tmp_path / 'w' / 'submission_1')]
    assert tbx.out_dir == str(tmp_path / 'w' / 'tbx11k_metric')
    assert cfg.val_evaluator[1].ann_file == '/data/X/annotations/json/TBX11K_val.json'


def test_explicit_cfg_options_win_over_the_data_root():
    tool = load_tool('test')
    cfg = tool.build_config(tool.parse_args(
        [TINY_1GPU, 'x.pth', '--cfg-options', 'data_root=/data/X',
         'test_evaluator.ann_file=/elsewhere/v.json',
         'test_dataloader.dataset.data_root=/elsewhere/']))
    assert cfg.test_evaluator.ann_file == '/elsewhere/v.json'
    assert cfg.test_dataloader.dataset.data_root == '/elsewhere/'
    assert cfg.val_dataloader.dataset.data_root == '/data/X/'
    assert cfg.val_evaluator.ann_file == '/data/X/annotations/json/TBX11K_val.json'


def test_missing_evaluator_ann_file_is_named_before_building(training_root, tmp_path):
    from tbx11k.utils import check_data_root
    tool = load_tool('test')
    cfg = tool.build_config(tool.parse_args(
        [TINY_1GPU, 'x.pth', '--data-root', training_root, '--cfg-options',
         f'test_evaluator.ann_file={tmp_path}/none.json']))
    with pytest.raises(SystemExit, match=r"test_evaluator \(TBX11KMetric\) ann_file .*none.json"):
        check_data_root(cfg, splits=('test_dataloader', ))


def test_test_split_without_format_only_is_refused(capsys):
    tool = load_tool('test')
    with pytest.raises(SystemExit):
        tool.parse_args([TINY_1GPU, 'x.pth', '--test-split'])
    assert 'add --format-only' in capsys.readouterr().err


def test_unusable_checkpoints_are_named(tmp_path):
    tool = load_tool('test')
    work_dir = str(tmp_path / 'w')
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'\x00not a torch file' * 8)
    listed = tmp_path / 'list.pth'
    torch.save([1, 2], listed)
    cases = [(tmp_path / 'missing.pth', 'does not exist'),
             (tmp_path, 'is a folder'),
             (garbage, 'cannot load checkpoint'),
             (listed, 'holds a list')]
    for path, expected in cases:
        with pytest.raises(SystemExit) as exc:
            tool.weights_to_load(str(path), 'ema', work_dir)
        assert str(exc.value).startswith('error: ') and str(path) in str(exc.value)
        assert expected in str(exc.value)


def test_bare_state_dict_and_raw_weights_are_written_as_checkpoints(tmp_path):
    tool = load_tool('test')
    weights = {'layer.weight': torch.ones(2, 2)}
    bare = tmp_path / 'bare.pth'
    torch.save(weights, bare)
    path, description, state, _ = tool.weights_to_load(str(bare), 'ema', str(tmp_path / 'w'))
    assert path == str(tmp_path / 'w' / 'weights.pth')
    assert load_checkpoint(path)['state_dict'].keys() == weights.keys()
    full = tmp_path / 'full.pth'
    torch.save(dict(meta={}, state_dict=weights), full)
    assert tool.weights_to_load(str(full), 'ema', str(tmp_path / 'w'))[0] == str(full)


@pytest.mark.slow
def test_raw_weights_written_by_two_ranks_at_once(tmp_path):
    """Every rank of `dist_test.sh ... --weights raw` writes WORK_DIR/raw_weights.pth: one shared
    temporary name made one rank's rename fail (FileNotFoundError)."""
    checkpoint = tmp_path / 'ema.pth'
    torch.save(dict(meta={}, state_dict={'w': torch.zeros(64, 64)},
                    ema_state_dict={'steps': torch.tensor(3), 'module.w': torch.ones(64, 64)}),
               checkpoint)
    script = textwrap.dedent(f'''
        import os, sys, time
        from tbx11k.testing.tools import load_tool
        tool = load_tool('test')
        open(os.path.join({str(tmp_path)!r}, 'ready_' + sys.argv[1]), 'w').close()
        while len([n for n in os.listdir({str(tmp_path)!r}) if n.startswith('ready_')]) < 2:
            time.sleep(0.001)  # both ranks write at the same time, as after a launch
        for _ in range(40):
            tool.weights_to_load({str(checkpoint)!r}, 'raw', {str(tmp_path / 'w')!r})
    ''')
    import subprocess
    procs = [subprocess.Popen([sys.executable, '-c', script, str(rank)], cwd=REPO_ROOT,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    raw = load_checkpoint(str(tmp_path / 'w' / 'raw_weights.pth'))['state_dict']
    assert torch.equal(raw['w'], torch.ones(64, 64))
    assert not list((tmp_path / 'w').glob('*.tmp'))


@pytest.mark.slow
def test_list_of_metrics_and_a_bare_state_dict_end_to_end(oracle, tmp_path, training_root):
    """test.py with a list of test metrics (TBX11K + COCO) and a checkpoint that is a bare state
    dict: both crashed (AttributeError on the list; KeyError 'state_dict' in the EMAHook)."""
    config, _, _, _ = oracle
    two = tmp_path / 'oracle_two_metrics.py'
    two.write_text(textwrap.dedent(f'''
        _base_ = {str(config)!r}
        test_evaluator = [
            dict(type='TBX11KMetric', ann_file={_val_json(str(config))!r}),
            dict(type='CocoMetric', metric='bbox', ann_file={_val_json(str(config))!r}),
        ]
    '''))
    bare = tmp_path / 'bare.pth'
    torch.save({'anchor': torch.zeros(1)}, bare)
    run([sys.executable, osp.join(REPO_ROOT, 'tools', 'test.py'), str(two), str(bare),
         '--data-root', training_root, '--work-dir', str(tmp_path / 'w')])
    metrics = json.load(open(tmp_path / 'w' / 'metrics.json'))['metrics']
    assert 0 < metrics['tbx11k/TB_AP50_all'] <= 1
    assert metrics['coco/bbox_mAP_50'] == pytest.approx(metrics['tbx11k/bbox_mAP_50'], abs=2e-3)
    assert osp.isfile(tmp_path / 'w' / 'tbx11k_metric' / 'metrics.md')


def test_a_metric_follows_its_dataloader_json_through_the_options():
    """--data-root plus another json for the test set: the metric read the old json."""
    tool = load_tool('test')
    tb_only = 'annotations/json/TBX11K_val_only_tb.json'
    cfg = tool.build_config(tool.parse_args(
        [TINY_1GPU, 'x.pth', '--data-root', '/data/X', '--cfg-options',
         f'test_dataloader.dataset.ann_file={tb_only}']))
    assert cfg.test_evaluator.ann_file == f'/data/X/{tb_only}'
    assert cfg.val_evaluator.ann_file == '/data/X/annotations/json/TBX11K_val.json'
    cfg = tool.build_config(tool.parse_args(
        [TINY_1GPU, 'x.pth', '--cfg-options', f'test_dataloader.dataset.ann_file={tb_only}',
         'test_dataloader.dataset.data_root=/data/Y/']))
    assert cfg.test_evaluator.ann_file == f'/data/Y/{tb_only}'


@pytest.mark.parametrize('tool_name, split', [('test', 'test'), ('train', 'val')])
def test_evaluator_reading_another_json_is_refused_before_anything_runs(tool_name, split,
                                                                       training_root, tmp_path):
    """TBX11KMetric found an evaluator ann_file other than its loader's json only after the whole
    inference (test.py) or the first training epoch (train.py)."""
    import shutil

    from tbx11k.utils import check_evaluators_read_their_loaders_json
    tool = load_tool(tool_name)
    train_json = osp.join(training_root, 'annotations', 'json', 'TBX11K_train.json')
    extra = [str(tmp_path / 'x.pth')] if tool_name == 'test' else []
    cfg = tool.build_config(tool.parse_args(
        [TINY_1GPU, *extra, '--data-root', training_root, '--work-dir', str(tmp_path / 'w'),
         '--cfg-options', f'{split}_evaluator.ann_file={train_json}']))
    with pytest.raises(SystemExit, match=rf'error: {split}_evaluator.ann_file .* is another json '
                       rf"than the one {split}_dataloader reads .*image id=\d+ is"):
        check_evaluators_read_their_loaders_json(cfg, splits=(f'{split}_dataloader', ))
    # a copy saved with a byte-order mark is read (it was skipped as unreadable)
    bom = tmp_path / 'bom.json'
    with open(train_json, 'rb') as f:
        bom.write_bytes(b'\xef\xbb\xbf' + f.read())
    cfg[f'{split}_evaluator'].ann_file = str(bom)
    with pytest.raises(SystemExit, match='is another json'):
        check_evaluators_read_their_loaders_json(cfg, splits=(f'{split}_dataloader', ))
    # a copy of the loader's json elsewhere is the same json
    copy = tmp_path / 'copy.json'
    shutil.copy(osp.join(training_root, 'annotations', 'json', 'TBX11K_val.json'), copy)
    cfg[f'{split}_evaluator'].ann_file = str(copy)
    check_evaluators_read_their_loaders_json(cfg, splits=(f'{split}_dataloader', ))
