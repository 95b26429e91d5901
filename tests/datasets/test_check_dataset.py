"""tools/check_dataset.py (tbx11k.datasets.check)."""
import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tbx11k.datasets.check import check_dataset, main, split_of

REPO = Path(__file__).resolve().parents[2]
TRAIN = 'annotations/json/TBX11K_train.json'


@pytest.fixture
def copy_root(synthetic_root, tmp_path):
    """A modifiable copy of the synthetic set (TBX11K_* json only)."""
    root = tmp_path / 'root'
    shutil.copytree(synthetic_root / 'imgs', root / 'imgs',
                    ignore=shutil.ignore_patterns('extra', 'test'))
    (root / 'annotations/json').mkdir(parents=True)
    for name in ('TBX11K_train.json', 'TBX11K_val.json'):
        shutil.copy(synthetic_root / 'annotations/json' / name,
                    root / 'annotations/json' / name)
    return root


def load(path):
    with open(path) as f:
        return json.load(f)


def test_clean_synthetic_set_passes_with_warnings(synthetic_root, capsys):
    report = check_dataset(synthetic_root)
    assert report.ok, report.format()
    names = [Path(f.ann_file).name for f in report.files]
    assert names == sorted(p.name for p in (
        synthetic_root / 'annotations/json').glob('TBX11K_*.json'))
    train = next(f for f in report.files if f.ann_file.endswith(
        'TBX11K_train.json'))
    raw = load(synthetic_root / TRAIN)
    assert train.split == 'train'
    assert train.num_images == len(raw['images'])
    assert train.images_per_folder == {'health': 4, 'sick': 4, 'tb': 8}
    assert train.num_annotations == len(raw['annotations'])
    assert train.annotations_per_class['PulmonaryTuberculosis'] == 0
    assert sum(train.annotations_per_class.values()) == len(
        raw['annotations'])
    assert train.num_clipped >= 1
    assert train.num_empty_images == len(raw['images']) - len(
        {a['image_id'] for a in raw['annotations']})
    # the byte-identical sick pair between train and val is a warning
    assert len(report.split_overlaps['train/val']) == 1
    kinds = {w.kind for w in report.all_warnings()}
    assert {'split_overlap', 'tb_image_without_boxes'} <= kinds
    # CLI: exit 0 with warnings only, counts in the printed report
    assert main([str(synthetic_root)]) == 0
    out = capsys.readouterr().out
    assert 'RESULT: OK' in out and 'TBX11K_train.json' in out
    assert 'between train and val (sick: 1)' in out


def test_all_files_and_test_json(synthetic_root):
    report = check_dataset(synthetic_root, [
        'annotations/json/all_train.json', 'annotations/json/all_val.json',
        'annotations/json/all_test.json'
    ])
    assert report.ok, report.format()
    test = report.files[2]
    assert test.split == 'test' and test.num_annotations == 0
    assert test.num_images == test.num_empty_images > 0


def test_corrupt_png(copy_root, capsys):
    raw = load(copy_root / TRAIN)
    img = raw['images'][3]
    path = copy_root / 'imgs' / img['file_name']
    path.write_bytes(path.read_bytes()[:60])  # truncated PNG
    report = check_dataset(copy_root)
    assert not report.ok
    errs = [e for e in report.all_errors() if e.kind == 'undecodable_image']
    assert len(errs) == 1
    assert str(copy_root / TRAIN) in errs[0].message
    assert f"id={img['id']}" in errs[0].message
    assert img['file_name'] in errs[0].message
    assert main([str(copy_root)]) == 1
    assert 'RESULT: FAILED' in capsys.readouterr().out


def test_image_size_mismatch(copy_root):
    raw = load(copy_root / TRAIN)
    img = raw['images'][0]
    path = copy_root / 'imgs' / img['file_name']
    cv2.imwrite(str(path), np.zeros((100, 128, 3), np.uint8))
    report = check_dataset(copy_root, [TRAIN])
    errs = [e for e in report.all_errors()
            if e.kind == 'image_size_mismatch']
    assert len(errs) == 1
    assert img['file_name'] in errs[0].message
    assert str(copy_root / TRAIN) in errs[0].message
    assert 'the file is 128x100 but the json says 128x128' in errs[
        0].message
    # --no-decode still reads the header
    report = check_dataset(copy_root, [TRAIN], decode=False)
    assert [e.kind for e in report.all_errors()] == ['image_size_mismatch']


@pytest.mark.parametrize('decode', [True, False])
def test_empty_image_file_is_an_error(copy_root, decode):
    raw = load(copy_root / TRAIN)
    img = raw['images'][2]
    (copy_root / 'imgs' / img['file_name']).write_bytes(b'')
    report = check_dataset(copy_root, [TRAIN], decode=decode)
    errs = report.all_errors()
    assert [e.kind for e in errs] == ['empty_image'], report.format()
    assert img['file_name'] in errs[0].message and '0 bytes' in errs[0].message


def test_json_without_images_is_an_error(copy_root):
    raw = load(copy_root / TRAIN)
    (copy_root / TRAIN).write_text(json.dumps(dict(raw, images=[],
                                                   annotations=[])))
    report = check_dataset(copy_root, [TRAIN])
    assert [e.kind for e in report.all_errors()] == ['no_images']
    assert 'RESULT: FAILED' in report.format()


def test_extra_images_without_boxes_are_a_warning(synthetic_root):
    report = check_dataset(synthetic_root,
                           ['annotations/json/all_train.json', TRAIN])
    assert report.ok
    all_train, train = report.files
    assert 'extra_images_without_boxes' in {w.kind for w in all_train.warnings}
    assert 'extra_images_without_boxes' not in {w.kind for w in train.warnings}


def test_missing_image_and_json_errors_are_all_collected(copy_root):
    raw = load(copy_root / TRAIN)
    with_boxes = {a['image_id'] for a in raw['annotations']}
    missing = next(i for i in raw['images'] if i['id'] not in with_boxes)
    (copy_root / 'imgs' / missing['file_name']).unlink()
    raw['annotations'][0]['bbox'] = [1.0, float('nan'), 3.0, 3.0]
    raw['annotations'][1]['category_id'] = 9
    raw['annotations'][2]['id'] = raw['annotations'][3]['id']
    (copy_root / TRAIN).write_text(json.dumps(raw))
    report = check_dataset(copy_root, [TRAIN])
    kinds = sorted(e.kind for e in report.all_errors())
    assert kinds == sorted([
        'missing_image', 'bbox_nonfinite', 'unknown_category',
        'duplicate_annotation_id'
    ])
    text = report.format()
    assert 'RESULT: FAILED (4 errors' in text
    assert missing['file_name'] in text


def test_invalid_json_reported(copy_root):
    (copy_root / TRAIN).write_text('{"images": [')
    report = check_dataset(copy_root)
    errs = report.all_errors()
    assert [e.kind for e in errs] == ['bad_json']
    assert str(copy_root / TRAIN) in errs[0].message
    assert not report.files[1].errors
    assert report.files[1].num_images > 0  # val still checked


def test_grayscale_image_is_a_warning(copy_root):
    raw = load(copy_root / TRAIN)
    path = copy_root / 'imgs' / raw['images'][0]['file_name']
    cv2.imwrite(str(path), np.zeros((128, 128), np.uint8))
    report = check_dataset(copy_root, [TRAIN])
    assert report.ok
    assert 'image_format' in {w.kind for w in report.all_warnings()}


def test_16_bit_image_warning_says_how_it_loads(copy_root):
    raw = load(copy_root / TRAIN)
    path = copy_root / 'imgs' / raw['images'][1]['file_name']
    cv2.imwrite(str(path), np.full((128, 128), 3744, np.uint16))
    report = check_dataset(copy_root, [TRAIN])
    assert report.ok
    msg = [w.message for w in report.all_warnings()
           if w.kind == 'image_format']
    assert len(msg) == 1 and 'uint16' in msg[0]
    assert 'maximum 3744 becomes 14 (nearly black)' in msg[0]


@pytest.mark.parametrize('decode', [True, False])
def test_exif_oriented_jpeg_is_a_warning(copy_root, decode):
    """A square JPEG with an EXIF rotation loads turned (cv2), and the size check cannot see it;
    the dataset warned at load time, check_dataset said nothing."""
    from tbx11k.testing import json_entries_as_oriented_jpegs
    raw = load(copy_root / TRAIN)
    json_entries_as_oriented_jpegs(copy_root, raw, {0: 6, 1: 1})
    (copy_root / TRAIN).write_text(json.dumps(raw))
    report = check_dataset(copy_root, [TRAIN], decode=decode)
    assert report.ok
    warned = [w for w in report.all_warnings() if w.kind == 'exif_orientation']
    assert len(warned) == 1, report.all_warnings()
    assert raw['images'][0]['file_name'] in warned[0].message
    assert 'EXIF orientation 6' in warned[0].message


def test_within_file_duplicates(copy_root):
    raw = load(copy_root / TRAIN)
    a, b = raw['images'][0], raw['images'][1]
    shutil.copy(copy_root / 'imgs' / a['file_name'],
                copy_root / 'imgs' / b['file_name'])
    report = check_dataset(copy_root, [TRAIN])
    assert report.ok
    assert report.files[0].duplicate_groups == [
        sorted([a['file_name'], b['file_name']])
    ]


def test_no_json_found(tmp_path):
    report = check_dataset(tmp_path)
    assert not report.ok and report.errors[0].kind == 'no_json'
    assert main([str(tmp_path / 'nope')]) == 1


def test_split_of():
    assert split_of('x/TBX11K_train.json') == 'train'
    assert split_of('TBX11K_val_only_tb.json') == 'val'
    assert split_of('all_test.json') == 'test'
    assert split_of('TBX11K_trainval.json') is None


def test_tool_script_runs(synthetic_root, capsys):
    spec = importlib.util.spec_from_file_location(
        'check_dataset_tool', REPO / 'tools/check_dataset.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # __main__ guard: only imports
    assert mod.main([str(synthetic_root), TRAIN, '--no-decode']) == 0
    assert 'RESULT: OK' in capsys.readouterr().out


@pytest.mark.parametrize('change,expected', [
    (lambda cats: cats.reverse(), 'refuses this file (labels map to categories'),
    (lambda cats: cats[0].update(name='ActiveTB'),
     "no category named ['ActiveTuberculosis']")])
def test_categories_the_default_classes_refuse_are_a_warning(copy_root, change, expected):
    """The check said OK while tools/train.py then refused the file (TBX11KDataError)."""
    raw = load(copy_root / TRAIN)
    change(raw['categories'])
    (copy_root / TRAIN).write_text(json.dumps(raw))
    report = check_dataset(copy_root, [TRAIN])
    warnings = [w for w in report.all_warnings() if w.kind == 'default_classes']
    assert len(warnings) == 1 and expected in warnings[0].message
    assert warnings[0].message.startswith(str(copy_root / TRAIN))
