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
    (lambda cats: cats.reverse(), "must follow the file's category order"),
    (lambda cats: cats[0].update(name='ActiveTB'),
     "metainfo['classes'] names ['ActiveTuberculosis'], which is not a category of this file")])
def test_categories_the_classes_refuse_are_an_error(copy_root, change, expected):
    """The check said OK (a warning) while tools/train.py then refused the file."""
    raw = load(copy_root / TRAIN)
    change(raw['categories'])
    (copy_root / TRAIN).write_text(json.dumps(raw))
    report = check_dataset(copy_root, [TRAIN])
    errors = [e for e in report.all_errors() if e.kind == 'classes']
    assert not report.ok and len(errors) == 1 and expected in errors[0].message
    assert errors[0].message.startswith(str(copy_root / TRAIN))
    # the classes of that file, in its order, pass
    names = [c['name'] for c in raw['categories']][:2]
    assert check_dataset(copy_root, [TRAIN], classes=names).ok
    assert main([str(copy_root), TRAIN, '--no-decode', '--classes', *names]) == 0


class _CountingList(list):
    """A list that counts how often it is iterated over."""
    iterations = 0

    def __iter__(self):
        type(self).iterations += 1
        return super().__iter__()


def test_annotations_of_missing_images_do_not_rescan_the_images(copy_root):
    """Each annotation of an image that failed rescanned all images: 57 s for 20k images."""
    from tbx11k.datasets.validation import validate_coco
    raw = load(copy_root / TRAIN)
    raw['images'] = _CountingList(raw['images'])
    _CountingList.iterations = 0
    val = validate_coco(raw, 'x.json', img_prefix=str(copy_root / 'nope'),
                        raise_errors=False)
    assert val.issues.count()['missing_image'] == len(raw['images'])
    assert 'unknown_image_id' not in val.issues.count()
    assert len(raw['annotations']) > 2 and _CountingList.iterations <= 2


@pytest.mark.parametrize('img_dir, kind, expected', [
    ('nope', 'missing_image_folder', 'does not exist: none of the 16 images'),
    ('imgs/health', 'no_image_found', 'none of the 16 images exists under')])
def test_wrong_image_folder_is_said_in_one_line_first(copy_root, img_dir, kind, expected):
    report = check_dataset(copy_root, [TRAIN], img_dir=img_dir)
    errs = report.all_errors()
    assert errs[0].kind == kind, errs[:2]
    assert errs[0].message.startswith(str(copy_root / TRAIN))
    assert expected in errs[0].message and str(copy_root / img_dir) in errs[0].message
    assert [e.kind for e in errs[1:]] == ['missing_image'] * 16
    assert sum(e.kind == kind for e in errs) == 1


def test_one_missing_image_gives_no_folder_line(copy_root):
    raw = load(copy_root / TRAIN)
    (copy_root / 'imgs' / raw['images'][0]['file_name']).unlink()
    assert [e.kind for e in check_dataset(copy_root, [TRAIN]).all_errors()] == [
        'missing_image']


def test_relative_ann_file_is_under_data_root_first(copy_root, tmp_path, monkeypatch, capsys):
    """A json of the same relative name in the current folder was checked instead, and the
    report printed only the relative name."""
    cwd = tmp_path / 'cwd'
    (cwd / 'annotations/json').mkdir(parents=True)
    raw = load(copy_root / TRAIN)
    (cwd / TRAIN).write_text(json.dumps(dict(raw, images=[], annotations=[])))
    monkeypatch.chdir(cwd)
    report = check_dataset(copy_root, [TRAIN])
    assert report.ok, report.format()
    assert report.files[0].ann_file == str(copy_root / TRAIN)
    assert main([str(copy_root), TRAIN]) == 0
    assert f'\n{copy_root / TRAIN}  [train]\n' in capsys.readouterr().out
    # a json only in the current folder is still found, and printed absolute
    (cwd / 'mine_train.json').write_text(json.dumps(raw))
    report = check_dataset(copy_root, ['mine_train.json'])
    assert report.ok and report.files[0].ann_file == str(cwd / 'mine_train.json')
    assert f'\n{cwd / "mine_train.json"}  [train]\n' in report.format()


@pytest.mark.parametrize('value', ['nan', '-1', 'inf'])
def test_bbox_tolerance_must_be_finite_and_not_negative(copy_root, value, capsys):
    """NaN clipped a box wholly outside the image to nothing and dropped it silently."""
    with pytest.raises(SystemExit) as exc:
        main([str(copy_root), TRAIN, '--bbox-tolerance', value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert '--bbox-tolerance' in err and 'finite number >= 0' in err
    with pytest.raises(ValueError, match='bbox_tolerance must be a finite number >= 0'):
        check_dataset(copy_root, [TRAIN], bbox_tolerance=float(value))
    assert main([str(copy_root), TRAIN, '--bbox-tolerance', '0', '--no-decode']) == 1
    assert 'bbox_outside' in capsys.readouterr().out  # the box at -1


def test_dotted_and_absolute_file_names_count_in_their_folder(copy_root):
    """./tb/x.png counted under '.', an absolute name under '', and the tb/ warning missed
    them; the files are still read from the names as given."""
    raw = load(copy_root / TRAIN)
    with_boxes = {a['image_id'] for a in raw['annotations']}
    tb_empty = next(i for i in raw['images']
                    if i['file_name'].startswith('tb/') and i['id'] not in with_boxes)
    tb_empty['file_name'] = './' + tb_empty['file_name']
    health = next(i for i in raw['images'] if i['file_name'].startswith('health/'))
    health['file_name'] = str(copy_root / 'imgs' / health['file_name'])
    (copy_root / TRAIN).write_text(json.dumps(raw))
    report = check_dataset(copy_root, [TRAIN])
    assert report.ok, report.format()
    assert report.files[0].images_per_folder == {'health': 4, 'sick': 4, 'tb': 8}
    warned = [w for w in report.all_warnings() if w.kind == 'tb_image_without_boxes']
    assert len(warned) == 1 and tb_empty['file_name'] in warned[0].message


def test_dotted_file_name_of_another_image_is_a_duplicate(copy_root):
    raw = load(copy_root / TRAIN)
    first = raw['images'][0]
    raw['images'].append(dict(first, id=9999, file_name='./' + first['file_name']))
    (copy_root / TRAIN).write_text(json.dumps(raw))
    report = check_dataset(copy_root, [TRAIN])
    warned = [w for w in report.all_warnings() if w.kind == 'duplicate_file_name']
    assert len(warned) == 1, report.all_warnings()
    assert 'id=9999' in warned[0].message and f"image id {first['id']}" in warned[0].message


def test_dotted_extra_file_names_are_warned_about(synthetic_root, tmp_path):
    raw = load(synthetic_root / 'annotations/json/all_train.json')
    for img in raw['images']:
        if img['file_name'].startswith('extra/'):
            img['file_name'] = './' + img['file_name']
    ann_file = tmp_path / 'all_train.json'
    ann_file.write_text(json.dumps(raw))
    report = check_dataset(synthetic_root, [str(ann_file)])
    assert report.ok, report.format()
    assert 'extra_images_without_boxes' in {w.kind for w in report.all_warnings()}
    assert '.' not in report.files[0].images_per_folder
    assert report.files[0].images_per_folder['extra'] > 0


def test_training_json_without_boxes_is_a_warning(copy_root):
    """TBX11KDataset warned that the detector would learn background only; the check did not."""
    from tbx11k.datasets.check import DEFAULT_CLASSES
    from tbx11k.datasets.validation import background_only_warning
    for name in ('TBX11K_train.json', 'TBX11K_val.json'):
        path = copy_root / 'annotations/json' / name
        raw = load(path)
        path.write_text(json.dumps(dict(raw, annotations=[])))
    report = check_dataset(copy_root)
    assert report.ok
    train, val = report.files
    warned = [w for w in train.warnings if w.kind == 'no_training_boxes']
    assert [w.message for w in warned] == [background_only_warning(
        str(copy_root / TRAIN), DEFAULT_CLASSES, train.num_images, 0)]
    assert 'would learn background only' in warned[0].message
    assert 'no_training_boxes' not in {w.kind for w in val.warnings}


def test_area_far_from_the_box_is_a_warning(copy_root):
    """area > 1e10 puts a box outside COCOeval's 'all' range: every AP n/a, check said OK."""
    raw = load(copy_root / TRAIN)
    a, b = raw['annotations'][0], raw['annotations'][1]
    a['area'] = 1e11
    b['area'] = b['bbox'][2] * b['bbox'][3] / 10
    (copy_root / TRAIN).write_text(json.dumps(raw))
    report = check_dataset(copy_root, [TRAIN])
    assert report.ok
    warned = [w for w in report.all_warnings() if w.kind == 'area_mismatch']
    assert len(warned) == 1, report.all_warnings()
    msg = warned[0].message
    assert msg.startswith(str(copy_root / TRAIN)) and '2 annotation(s)' in msg
    assert f"annotation ids {a['id']}, {b['id']}" in msg
    assert "COCO AP uses the json's area" in msg


def test_synthetic_areas_give_no_warning(synthetic_root):
    files = sorted(str(p) for p in (synthetic_root / 'annotations/json').glob('*.json'))
    report = check_dataset(synthetic_root, files, decode=False)
    assert report.files and not [w for w in report.all_warnings()
                                 if w.kind == 'area_mismatch']
