"""tools/infer.py: predictions drawn onto the X-rays where the model puts boxes, and a json of
detections that round-trips. Uses the short real training run of conftest.py (tiny model)."""
import json
import os
import os.path as osp
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch

from tbx11k.apis.inference import (
    collect_images,
    draw_detections,
    drawing_names,
    load_detections,
    load_detector,
    run_inference,
    select_weights,
)
from tbx11k.testing import REPO_ROOT, TINY_1GPU, load_checkpoint, run

INFER = osp.join(REPO_ROOT, 'tools', 'infer.py')


def ring(shape, bbox, width=0):
    """Mask of the box outline (as drawn: rounded, clipped corners), ``width`` px each side."""
    h, w = shape[:2]
    x1, y1, x2, y2 = [int(round(v)) for v in bbox]
    x1, x2 = np.clip([x1, x2], 0, w - 1)
    y1, y2 = np.clip([y1, y2], 0, h - 1)
    mask = np.zeros((h, w), bool)
    for x in (x1, x2):
        mask[y1:y2 + 1, max(0, x - width):x + width + 1] = True
    for y in (y1, y2):
        mask[max(0, y - width):y + width + 1, x1:x2 + 1] = True
    return mask


def test_draw_changes_only_the_box_and_its_label(training_root):
    path = osp.join(training_root, 'imgs', 'tb', 'tb0001.png')
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    det = dict(bbox=[60.4, 80.0, 150.0, 170.6], score=0.87, label=0,
               class_name='ActiveTuberculosis')
    drawn = draw_detections(image, [det])
    assert drawn.shape == image.shape and not np.shares_memory(drawn, image)
    changed = (drawn != image).any(axis=2)
    assert changed[ring(image.shape, det['bbox'])].mean() > 0.9
    ys, xs = np.nonzero(changed)
    # outline + the label above the box (its text may reach right of the box)
    assert ys.min() >= 80 - 25 and ys.max() <= 171 + 2 and xs.min() >= 60 - 2
    assert not changed[85:166, 65:146].any(), 'the inside of the box is left as it was'
    # class colours: red-ish for ActiveTB, another for LatentTB
    other = draw_detections(image, [dict(det, label=1, class_name='ObsoletePulmonaryTuberculosis')])
    assert not np.array_equal(other[ring(image.shape, det['bbox'])],
                              drawn[ring(image.shape, det['bbox'])])


@pytest.fixture(scope='module')
def folder_run(tiny_run, tmp_path_factory):
    """tools/infer.py on the synthetic val + tb folders with --score-thr 0 (the briefly trained
    tiny model scores low, so every query's box is drawn)."""
    out = tmp_path_factory.mktemp('infer')
    imgs = osp.join(tiny_run['data_root'], 'imgs')
    proc = run([sys.executable, INFER, TINY_1GPU, tiny_run['checkpoint'], osp.join(imgs, 'tb'),
                '--out', str(out), '--score-thr', '0', '--device', 'cpu'], timeout=300)
    return dict(out=str(out), imgs=imgs, proc=proc, result=load_detections(
        osp.join(str(out), 'detections.json')))


def test_infer_says_when_the_ema_weights_are_too_young(folder_run, tiny_run):
    """A short run's EMA (14 optimizer steps, decay 0.9998) is still the weights it started
    from: one warning line says so and names --weights raw; the raw weights get none."""
    warned = [line for line in folder_run['proc'].stderr.splitlines()
              if 'EMA weights have had' in line]
    assert len(warned) == 1 and warned[0].startswith('warning: '), folder_run['proc'].stderr
    assert 'at decay 0.9998' in warned[0] and '--weights raw' in warned[0]
    assert load_detector(TINY_1GPU, tiny_run['checkpoint'], 'cpu',
                         weights='raw').weights_warning is None


def test_young_ema_rule():
    """EMA weights are too young while the trained steps make up under half of them:
    1 - decay**updates < 0.5, the first update being a copy; decay and interval come from the
    config's EMAHook."""
    from mmengine.config import Config

    from tbx11k.apis.inference import EMASettings, ema_settings, young_ema_warning
    ema = ema_settings(Config.fromfile(TINY_1GPU))
    assert ema == EMASettings(momentum=0.0002, interval=1)

    def checkpoint(steps):
        return dict(state_dict={}, ema_state_dict={'steps': torch.tensor(steps)})
    assert young_ema_warning(checkpoint(3466), ema) is not None  # 3465 updates: 49.997 %
    assert young_ema_warning(checkpoint(3467), ema) is None  # 3466 updates: 50.004 %
    assert young_ema_warning(checkpoint(15), EMASettings(momentum=0.1)) is None
    assert young_ema_warning(checkpoint(2 * 3466), EMASettings(0.0002, interval=2)) is not None
    assert young_ema_warning(dict(state_dict={}), ema) is None  # no EMA in the checkpoint
    annealed = Config(dict(custom_hooks=[dict(type='EMAHook', ema_type='MomentumAnnealingEMA')]))
    assert ema_settings(annealed) is None


def test_infer_folder_draws_boxes_where_predicted(folder_run):
    result, out = folder_run['result'], folder_run['out']
    tb = sorted(os.listdir(osp.join(folder_run['imgs'], 'tb')))
    assert [r['file_name'] for r in result['images']] == tb
    assert 'task/s' in folder_run['proc'].stderr, 'a progress bar on folders'
    assert result['classes'] == ['ActiveTuberculosis', 'ObsoletePulmonaryTuberculosis']
    assert result['weights'].startswith('EMA weights')
    total = 0
    for record in result['images']:
        original = cv2.imread(osp.join(folder_run['imgs'], 'tb', record['file_name']))
        drawn = cv2.imread(osp.join(out, record['vis']))
        assert record['vis'] == 'vis/' + record['file_name']
        assert drawn.shape == original.shape == (record['height'], record['width'], 3)
        dets = record['detections']
        assert len(dets) == 30  # num_queries = max_per_img of the tiny config, thr 0 keeps all
        assert [d['score'] for d in dets] == sorted((d['score'] for d in dets), reverse=True)
        changed = (drawn != original).any(axis=2)
        for d in dets:
            x1, y1, x2, y2 = d['bbox']
            assert -0.01 <= x1 <= x2 <= record['width'] + 0.01
            assert -0.01 <= y1 <= y2 <= record['height'] + 0.01
            assert d['class_name'] == result['classes'][d['label']]
            # the outline of every detection is drawn (by it, or over it by another box/label)
            assert changed[ring(original.shape, d['bbox'])].mean() > 0.9, d
        total += len(dets)
    assert total > 0


def test_json_round_trips_and_matches_the_model(folder_run, tiny_run):
    path = osp.join(folder_run['out'], 'detections.json')
    loaded = load_detections(path)
    assert json.loads(json.dumps(loaded)) == loaded
    with open(path) as f:
        text = f.read()
    again = osp.join(folder_run['out'], 'again.json')
    from tbx11k.apis.inference import write_detections
    write_detections(again, loaded)
    with open(again) as f:
        assert f.read() == text
    # the json holds what the model predicts, in original pixels
    detector = load_detector(TINY_1GPU, tiny_run['checkpoint'], 'cpu')
    first = loaded['images'][0]
    pred = detector.predict(osp.join(folder_run['imgs'], 'tb', first['file_name']))
    assert pred['detections'] == first['detections']
    assert (pred['width'], pred['height']) == (first['width'], first['height'])


def test_no_boxes_above_threshold_leaves_the_image_untouched(tiny_run, tmp_path):
    detector = load_detector(TINY_1GPU, tiny_run['checkpoint'], 'cpu', weights='raw')
    assert detector.weights.startswith('raw')
    images = collect_images([osp.join(tiny_run['data_root'], 'lists', 'TBX11K_val.txt')])
    result = run_inference(detector, images[:3], str(tmp_path), score_thr=1.01)
    for (path, name), record in zip(images, result['images']):
        assert record['file_name'] == name and record['detections'] == []
        assert np.array_equal(cv2.imread(osp.join(str(tmp_path), record['vis'])),
                              cv2.imread(path))
    assert load_detections(osp.join(str(tmp_path), 'detections.json')) == result


def test_ema_and_raw_weights(tiny_run):
    checkpoint = load_checkpoint(tiny_run['checkpoint'])
    ema, what = select_weights(checkpoint, 'ema')
    raw, what_raw = select_weights(checkpoint, 'raw')
    assert ema is checkpoint['state_dict'] and what.startswith('EMA weights (')
    assert set(raw) == set(ema)
    key = 'bbox_head.cls_branches.0.weight'
    assert not np.array_equal(raw[key].numpy(), ema[key].numpy())


def test_unconverted_coco_checkpoint_is_refused(coco_like_tiny_checkpoint):
    with pytest.raises(ValueError, match='convert_coco_checkpoint'):
        load_detector(TINY_1GPU, coco_like_tiny_checkpoint, 'cpu')


def test_collect_images(training_root, tmp_path):
    imgs = osp.join(training_root, 'imgs')
    # a TBX11K list names files relative to imgs/
    listed = collect_images([osp.join(training_root, 'lists', 'TBX11K_val.txt')])
    assert listed and all(osp.isfile(p) for p, _ in listed)
    assert all(osp.normpath(p) == osp.normpath(osp.join(imgs, n)) for p, n in listed)
    one = osp.join(imgs, 'tb', 'tb0001.png')
    # a folder (recursive, relative names), an image twice: names as they are
    names = [n for _, n in collect_images([imgs, one, one])]
    assert 'tb/tb0001.png' in names and 'health/h0001.png' in names
    assert names[-2:] == ['tb0001.png', 'tb0001.png']
    # one drawing per input: a.jpg and a.png both draw to vis/a.png, and a renamed a_1 must
    # not take the drawing of an input already called a_1
    for folder, name in (('u1', 'a_1.png'), ('u2', 'a.png'), ('u3', 'a.png'), ('u4', 'a.jpg')):
        (tmp_path / folder).mkdir()
        shutil.copy(one, tmp_path / folder / name)
    names = [n for _, n in collect_images([str(tmp_path / f'u{k}') for k in (1, 2, 3, 4)])]
    assert names == ['a_1.png', 'a.png', 'a.png', 'a.jpg']
    assert drawing_names(names) == ['a_1', 'a', 'a_2', 'a_3']
    # the output folder inside an input folder: its drawings are not read back as inputs
    (tmp_path / 'u2' / 'out' / 'vis').mkdir(parents=True)
    shutil.copy(one, tmp_path / 'u2' / 'out' / 'vis' / 'a.png')
    assert len(collect_images([str(tmp_path / 'u2')])) == 2
    out = str(tmp_path / 'u2' / 'out')
    assert [n for _, n in collect_images([str(tmp_path / 'u2')], skip=out)] == ['a.png']
    bad = tmp_path / 'list.txt'
    bad.write_text('tb/tb0001.png\nnot/there.png\n')
    with pytest.raises(FileNotFoundError, match='not/there.png'):
        collect_images([str(bad)])


def test_inputs_that_are_no_image_list_are_named(tmp_path):
    scan = tmp_path / 'scan.dcm'  # DICOM: binary, not an image format mmcv reads
    scan.write_bytes(bytes(128) + b'DICM' + bytes(range(256)) * 4)
    with pytest.raises(FileNotFoundError, match=r'scan.dcm is neither an image .*not text'):
        collect_images([str(scan)])
    ann = tmp_path / 'TBX11K_val.json'
    ann.write_text('{"images": [{"id": 1, "file_name": "tb/tb0001.png"}]}\n')
    with pytest.raises(FileNotFoundError,
                       match=r'TBX11K_val.json is neither .*none of its 1 line\(s\) names an '
                             r'image'):
        collect_images([str(ann)])


@pytest.mark.parametrize('encoding', ['utf-8-sig', 'utf-16'])
def test_list_files_with_a_byte_order_mark(training_root, tmp_path, encoding):
    """Notepad's UTF-8 (a BOM) made the first line a name no file has; PowerShell's `>` writes
    UTF-16, which was refused as 'not text'."""
    lines = ['tb/tb0001.png', 'health/h0001.png']
    (tmp_path / 'lists').mkdir()
    listed = tmp_path / 'lists' / 'list.txt'  # names relative to ../imgs/, as TBX11K's lists
    listed.write_text('\r\n'.join(lines) + '\r\n', encoding=encoding)
    shutil.copytree(osp.join(training_root, 'imgs'), tmp_path / 'imgs')
    assert [n for _, n in collect_images([str(listed)])] == lines


def test_list_lines_with_parent_folders_stay_under_vis(training_root, tmp_path):
    """A list naming '../imgs/tb/tb0001.png' drew to OUT/vis/../imgs/... = OUT/imgs/... (with
    --out at the data root: over the X-ray itself)."""
    lists = tmp_path / 'lists'
    lists.mkdir()
    listed = lists / 'mine.txt'
    second = osp.relpath(osp.join(training_root, 'imgs', 'tb', 'tb0002.png'), lists)
    listed.write_text(f'{osp.join(training_root, "imgs", "tb", "tb0001.png")}\n{second}\n')
    names = [n for _, n in collect_images([str(listed)])]
    assert len(names) == 2
    for name in names:
        assert not name.startswith(('/', '..')) and '/../' not in name
        assert name.endswith(('tb/tb0001.png', 'tb/tb0002.png'))


def test_unreadable_image_is_named(tmp_path, training_root):
    good = osp.join(training_root, 'imgs', 'tb', 'tb0001.png')
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not a png')

    class LoaderAsserts:  # what mmcv's LoadImageFromFile does with such a file
        def predict(self, path):
            raise AssertionError(f'failed to load image: {path}')

    # files that are no image are refused before anything is predicted or drawn
    with pytest.raises(OSError, match=r'1 of the 2 inputs are not readable images.*broken.png'):
        run_inference(LoaderAsserts(), [(good, 'good.png'), (str(broken), 'broken.png')],
                      str(tmp_path / 'out'))
    assert not (tmp_path / 'out' / 'vis').exists()
    # a PNG truncated after a readable header fails in the loader: named too
    with open(good, 'rb') as f:
        broken.write_bytes(f.read(60))
    with pytest.raises(OSError, match=r'broken.png: not a readable image'):
        run_inference(LoaderAsserts(), [(str(broken), 'broken.png')], str(tmp_path / 'out'))


def test_inputs_of_the_same_name_keep_their_names_and_paths_in_the_json(tmp_path, training_root):
    """a/x.png and b/x.png: the json called the second 'x_1.png', a file that does not exist, and
    had no path; x.jpg and x.png in one folder: the real x.png was listed as 'x_1.png'."""
    one = osp.join(training_root, 'imgs', 'tb', 'tb0001.png')
    for folder, name in (('a', 'x.png'), ('b', 'x.png'), ('c', 'y.jpg'), ('c', 'y.png')):
        (tmp_path / folder).mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / folder / name), cv2.imread(one))

    class NoBoxes:  # a stand-in detector
        config, checkpoint, weights, classes = 'c.py', 'w.pth', 'ema', ('A', 'B')

        def predict(self, path):
            return dict(width=512, height=512, detections=[])

    images = collect_images([str(tmp_path / f) for f in 'abc'])
    result = run_inference(NoBoxes(), images, str(tmp_path / 'out'))
    records = result['images']
    assert [r['file_name'] for r in records] == ['x.png', 'x.png', 'y.jpg', 'y.png']
    assert [r['path'] for r in records] == [str(tmp_path / f / n) for f, n in
                                            (('a', 'x.png'), ('b', 'x.png'), ('c', 'y.jpg'),
                                             ('c', 'y.png'))]
    assert [r['vis'] for r in records] == ['vis/x.png', 'vis/x_1.png', 'vis/y.png', 'vis/y_1.png']
    assert all((tmp_path / 'out' / r['vis']).is_file() for r in records)


def test_images_deeper_than_8_bits_are_warned_about(tmp_path, capsys):
    """infer ran silently on 16-bit films, which mmcv loads nearly black (the dataset warns)."""
    from mmengine.logging import MMLogger

    from tbx11k.apis.inference import check_input_images
    deep, plain = str(tmp_path / 'deep.png'), str(tmp_path / 'plain.png')
    cv2.imwrite(deep, np.full((16, 16), 3000, np.uint16))
    cv2.imwrite(plain, np.full((16, 16), 200, np.uint8))
    MMLogger.get_instance('tbx11k_infer_test')  # print_log's 'current' logger
    assert check_input_images([(plain, 'plain.png')]) == []
    assert 'bits per sample' not in capsys.readouterr().out
    assert check_input_images([(plain, 'plain.png'), (deep, 'deep.png')]) == [deep]
    assert f'infer: 1 images have more than 8 bits per sample (e.g. {deep})' in \
        capsys.readouterr().out


def test_exif_oriented_jpegs_are_warned_about(tmp_path, capsys):
    """mmcv decodes a JPEG turned by its EXIF orientation: the boxes and drawings are in that
    frame; the dataset warned, infer did not."""
    from mmengine.logging import MMLogger

    from tbx11k.apis.inference import check_input_images
    from tbx11k.testing import save_jpeg_with_orientation
    turned = save_jpeg_with_orientation(tmp_path / 'turned.jpg', 6)
    upright = save_jpeg_with_orientation(tmp_path / 'upright.jpg', 1)
    MMLogger.get_instance('tbx11k_infer_exif_test')  # print_log's 'current' logger
    assert check_input_images([(upright, 'upright.jpg')]) == []
    assert 'EXIF' not in capsys.readouterr().out
    assert check_input_images([(upright, 'upright.jpg'), (turned, 'turned.jpg')]) == []
    assert f'infer: 1 JPEG images carry an EXIF orientation other than 1 (e.g. {turned})' in \
        capsys.readouterr().out


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='checks the CPU-only refusal')
def test_cuda_device_without_a_gpu_is_refused_with_a_message(training_root, tmp_path, capsys):
    from tbx11k.testing.tools import load_tool
    image = osp.join(training_root, 'imgs', 'tb', 'tb0001.png')
    code = load_tool('infer').main([TINY_1GPU, str(tmp_path / 'x.pth'), image, '--out',
                                    str(tmp_path / 'out'), '--device', 'cuda:0'])
    assert code == 2
    assert 'error: --device cuda:0, but this torch sees no CUDA GPU' in capsys.readouterr().err


@pytest.mark.parametrize('option, says', [
    (['--device', 'foo'], 'error: --device foo is not a torch device'),
    (['--score-thr', '30'],
     "argument --score-thr: must be a score from 0 to 1 (e.g. 0.3), not '30'"),
    (['--score-thr', 'nan'], 'argument --score-thr: must be a score from 0 to 1'),
])
def test_bad_device_and_score_threshold_are_usage_errors(training_root, tmp_path, capsys, option,
                                                         says):
    """--device foo ended in torch's RuntimeError traceback; --score-thr 30 (a percentage) or nan
    was accepted and kept nothing or everything."""
    from tbx11k.testing.tools import load_tool
    image = osp.join(training_root, 'imgs', 'tb', 'tb0001.png')
    try:
        code = load_tool('infer').main([TINY_1GPU, str(tmp_path / 'x.pth'), image, '--out',
                                        str(tmp_path / 'out'), *option])
    except SystemExit as exit:  # argparse
        code = exit.code
    assert code == 2
    assert says in capsys.readouterr().err
