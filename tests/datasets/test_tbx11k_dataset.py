"""TBX11KDataset: every TBX11K quirk, mmdet pipelines, malformed data."""
import copy
import json
import math
import shutil

import numpy as np
import pytest

from tbx11k.datasets import TBX11KDataError, TBX11KDataset, TBX11KMissingFileError
from tbx11k.datasets import tbx11k as tbx11k_module

TRAIN = 'annotations/json/TBX11K_train.json'
ACTIVE, LATENT, UNCERTAIN = TBX11KDataset.CLASSES_3


def load_json(path):
    with open(path) as f:
        return json.load(f)


def make(root, ann_file=TRAIN, **kwargs):
    kwargs.setdefault('pipeline', [])
    return TBX11KDataset(
        data_root=str(root),
        ann_file=str(ann_file),
        data_prefix=dict(img='imgs/'),
        **kwargs)


@pytest.fixture
def logs(monkeypatch):
    """Messages the dataset logs through mmengine's print_log."""
    records = []

    def fake_print_log(msg, logger=None, level=None):
        records.append(msg)

    monkeypatch.setattr(tbx11k_module, 'print_log', fake_print_log)
    return records


# ---------------------------------------------------------------------------
# quirks of the real data, on the synthetic set
# ---------------------------------------------------------------------------
def test_loads_official_json_with_all_quirks(synthetic_root, logs):
    raw = load_json(synthetic_root / TRAIN)
    assert isinstance(raw['info'], list)
    assert all('segmentation' not in a for a in raw['annotations'])
    assert all({'width', 'height'} <= set(a) for a in raw['annotations'])
    assert any(a['bbox'][0] == -1.0 or a['bbox'][1] == -1.0
               for a in raw['annotations'])

    ds = make(synthetic_root)
    assert len(ds) == len(raw['images'])
    n_boxes = sum(1 for a in raw['annotations'] if a['category_id'] in (1, 2))
    assert sum(len(ds.get_data_info(i)['instances'])
               for i in range(len(ds))) == n_boxes
    stats = ds.load_stats
    assert stats['num_instances'] == n_boxes
    per_class = {
        ACTIVE: sum(a['category_id'] == 1 for a in raw['annotations']),
        LATENT: sum(a['category_id'] == 2 for a in raw['annotations']),
    }
    assert stats['instances_per_class'] == per_class
    with_boxes = {a['image_id'] for a in raw['annotations']}
    assert stats['num_images_without_boxes'] == len(raw['images']) - len(
        with_boxes)
    assert ds.metainfo['classes'] == TBX11KDataset.CLASSES_2
    assert len(ds.metainfo['palette']) == 2
    assert any(str(synthetic_root / TRAIN) in m and 'images' in m
               for m in logs)


def test_box_at_minus_one_is_clipped_and_counted(synthetic_root, logs):
    raw = load_json(synthetic_root / TRAIN)
    edge = [a for a in raw['annotations']
            if a['bbox'][0] < 0 or a['bbox'][1] < 0]
    assert edge and all(min(a['bbox'][:2]) == -1.0 for a in edge)
    ds = make(synthetic_root)
    assert ds.load_stats['num_clipped'] == len(edge)
    ann = edge[0]
    info = next(ds.get_data_info(i) for i in range(len(ds))
                if ds.get_data_info(i)['img_id'] == ann['image_id'])
    x, y, w, h = ann['bbox']
    expected = [max(x, 0), max(y, 0), x + w, y + h]
    assert any(np.allclose(inst['bbox'], expected)
               for inst in info['instances'])
    for i in range(len(ds)):
        for inst in ds.get_data_info(i)['instances']:
            assert min(inst['bbox']) >= 0
            assert inst['bbox'][2] <= 128 and inst['bbox'][3] <= 128
    assert any('clipped' in m and str(len(edge)) in m for m in logs)


def test_negatives_kept_by_default_and_filtered_on_request(synthetic_root):
    raw = load_json(synthetic_root / TRAIN)
    with_boxes = {a['image_id'] for a in raw['annotations']}
    assert len(make(synthetic_root)) == len(raw['images'])
    kept = make(synthetic_root, filter_cfg=dict(filter_empty_gt=False))
    assert len(kept) == len(raw['images'])
    filtered = make(synthetic_root, filter_cfg=dict(filter_empty_gt=True))
    assert len(filtered) == len(with_boxes)
    assert all(filtered.get_data_info(i)['instances']
               for i in range(len(filtered)))
    # test_mode never filters (like CocoDataset)
    test = make(synthetic_root, filter_cfg=dict(filter_empty_gt=True),
                test_mode=True)
    assert len(test) == len(raw['images'])


def test_tb_folder_image_without_boxes_is_a_negative(synthetic_root):
    raw = load_json(synthetic_root / TRAIN)
    with_boxes = {a['image_id'] for a in raw['annotations']}
    tb_empty = [i for i in raw['images']
                if i['file_name'].startswith('tb/') and i['id'] not in with_boxes]
    assert len(tb_empty) == 1  # like tb/tb1199.png
    ds = make(synthetic_root)
    info = next(ds.get_data_info(i) for i in range(len(ds))
                if ds.get_data_info(i)['img_id'] == tb_empty[0]['id'])
    assert info['instances'] == []


def test_tb_only_view(synthetic_root, logs):
    raw = load_json(synthetic_root / TRAIN)
    with_boxes = {a['image_id'] for a in raw['annotations']}
    ds = make(synthetic_root, tb_only=True, test_mode=True)
    assert len(ds) == len(with_boxes)
    assert {ds.get_data_info(i)['img_id']
            for i in range(len(ds))} == with_boxes
    only_tb = load_json(synthetic_root /
                        'annotations/json/TBX11K_train_only_tb.json')
    assert len(ds) == len(only_tb['images'])
    assert ds.load_stats['num_images_dropped_not_tb'] == len(
        raw['images']) - len(with_boxes)
    assert any('tb_only' in m for m in logs)


def test_three_classes(synthetic_root):
    ds = make(synthetic_root, metainfo=dict(classes=TBX11KDataset.CLASSES_3))
    assert ds.metainfo['classes'] == TBX11KDataset.CLASSES_3
    assert len(ds.metainfo['palette']) == 3
    assert ds.cat_ids == [1, 2, 3]
    labels = {inst['bbox_label'] for i in range(len(ds))
              for inst in ds.get_data_info(i)['instances']}
    assert labels == {0, 1}  # category 3 unused in train
    assert ds.load_stats['instances_per_class'][UNCERTAIN] == 0


def test_category3_boxes_excluded_in_2_class_mode_are_logged(
        synthetic_root, tmp_path, logs):
    raw = load_json(synthetic_root / TRAIN)
    raw['annotations'][0]['category_id'] = 3
    raw['annotations'][1]['category_id'] = 3
    ann_file = tmp_path / 'with_cat3.json'
    ann_file.write_text(json.dumps(raw))
    n = len(raw['annotations'])

    two = make(synthetic_root, ann_file)
    assert two.load_stats['num_instances'] == n - 2
    assert two.load_stats['num_excluded_not_in_classes'] == {UNCERTAIN: 2}
    assert any('excluded, not in classes' in m and UNCERTAIN in m
               for m in logs)

    three = make(synthetic_root, ann_file,
                 metainfo=dict(classes=TBX11KDataset.CLASSES_3))
    assert three.load_stats['num_instances'] == n
    assert three.load_stats['instances_per_class'][UNCERTAIN] == 2
    # tb_only counts an image whose only boxes are category 3 as TB
    img3 = raw['annotations'][0]['image_id']
    for a in raw['annotations']:
        if a['image_id'] == img3:
            a['category_id'] = 3
    ann_file.write_text(json.dumps(raw))
    view = make(synthetic_root, ann_file, tb_only=True)
    assert img3 in {view.get_data_info(i)['img_id'] for i in range(len(view))}


def test_single_class_subset(synthetic_root):
    ds = make(synthetic_root, metainfo=dict(classes=(LATENT, )))
    raw = load_json(synthetic_root / TRAIN)
    assert ds.cat_ids == [2]
    assert ds.load_stats['num_instances'] == sum(
        a['category_id'] == 2 for a in raw['annotations'])
    assert ds.load_stats['num_excluded_not_in_classes'][ACTIVE] > 0


def test_all_test_json_images_without_annotations(synthetic_root, tmp_path):
    ann = 'annotations/json/all_test.json'
    raw = load_json(synthetic_root / ann)
    assert raw['images'] and raw['annotations'] == []
    ds = make(synthetic_root, ann, test_mode=True)
    assert len(ds) == len(raw['images'])
    assert ds.load_stats['num_instances'] == 0
    # an image-info json without the key loads in test_mode only
    del raw['annotations']
    del raw['info']
    path = tmp_path / 'image_info_test.json'
    path.write_text(json.dumps(raw))
    assert len(make(synthetic_root, path, test_mode=True)) == len(
        raw['images'])
    with pytest.raises(TBX11KDataError, match="missing key 'annotations'"):
        make(synthetic_root, path)


def test_all_train_extra_images_are_negatives(synthetic_root):
    ds = make(synthetic_root, 'annotations/json/all_train.json')
    extra = [ds.get_data_info(i) for i in range(len(ds))
             if '/extra/' in ds.get_data_info(i)['img_path']]
    assert extra and all(d['instances'] == [] for d in extra)


def test_mmdet_pipeline_and_registry_build(synthetic_root):
    from mmengine.registry import DefaultScope

    from mmdet.registry import DATASETS
    from mmdet.structures import DetDataSample
    with DefaultScope.overwrite_default_scope('mmdet'):
        cfg = dict(
            type='TBX11KDataset',
            data_root=str(synthetic_root),
            ann_file='annotations/json/TBX11K_train.json',
            data_prefix=dict(img='imgs/'),
            filter_cfg=dict(filter_empty_gt=True),
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True),
                dict(type='Resize', scale=(96, 96), keep_ratio=True),
                dict(type='PackDetInputs'),
            ])
        ds = DATASETS.build(cfg)
        assert isinstance(ds, TBX11KDataset)
        idx = max(range(len(ds)),
                  key=lambda i: len(ds.get_data_info(i)['instances']))
        info = ds.get_data_info(idx)
        sample = ds[idx]
        assert tuple(sample['inputs'].shape) == (3, 96, 96)
        ds_sample = sample['data_samples']
        assert isinstance(ds_sample, DetDataSample)
        gt = ds_sample.gt_instances
        assert len(gt) == len(info['instances']) >= 2
        assert gt.labels.tolist() == [
            i['bbox_label'] for i in info['instances']
        ]
        expected = np.array([i['bbox'] for i in info['instances']]) * 0.75
        assert np.allclose(gt.bboxes.tensor.numpy(), expected, atol=1e-3)
        assert ds_sample.metainfo['img_id'] == info['img_id']
        assert ds_sample.metainfo['ori_shape'] == (128, 128)


def test_image_size_is_checked_by_default(synthetic_root, tmp_path):
    raw = load_json(synthetic_root / TRAIN)
    raw['images'][2]['width'] = 130
    ann_file = tmp_path / 'size.json'
    ann_file.write_text(json.dumps(raw))
    with pytest.raises(TBX11KDataError) as exc:
        make(synthetic_root, ann_file)
    msg = str(exc.value)
    assert msg.startswith(str(ann_file))
    assert raw['images'][2]['file_name'] in msg and '128x128' in msg
    assert "json says 130x128" in msg
    # opting out loads it
    assert len(make(synthetic_root, ann_file,
                    check_image_size=False)) == len(raw['images'])


def test_image_size_of_a_jpeg_is_checked(broken_copy):
    from PIL import Image
    root, ann_file, data = broken_copy()
    img = data['images'][3]
    png = root / 'imgs' / img['file_name']
    jpg = png.with_suffix('.jpg')
    Image.open(png).convert('RGB').resize((100, 128)).save(jpg)
    img['file_name'] = img['file_name'][:-4] + '.jpg'
    ann_file.write_text(json.dumps(data))
    with pytest.raises(TBX11KDataError, match=r"the file is 100x128 but the "
                       r"json says 128x128") as exc:
        make(root, ann_file)
    assert img['file_name'] in str(exc.value)
    Image.open(png).convert('RGB').save(jpg)  # right size: loads
    assert len(make(root, ann_file)) == len(data['images'])


@pytest.mark.parametrize('content, expected', [
    (b'', 'empty (0 bytes)'),
    (b'this is no image', 'not an image file'),
    (b'\x89PNG\r\n\x1a\n\x00\x00', 'truncated header'),
])
def test_unreadable_image_file_is_refused_at_load(broken_copy, content, expected):
    root, ann_file, data = broken_copy()
    img = data['images'][4]
    (root / 'imgs' / img['file_name']).write_bytes(content)
    ann_file.write_text(json.dumps(data))
    with pytest.raises(TBX11KDataError) as exc:
        make(root, ann_file)
    msg = str(exc.value)
    assert msg.startswith(str(ann_file)), msg
    assert f"id={img['id']}" in msg and img['file_name'] in msg, msg
    assert expected in msg, msg
    if not content:  # an empty file is refused even without the header check
        with pytest.raises(TBX11KDataError, match='empty'):
            make(root, ann_file, check_image_size=False)


def test_exif_oriented_jpegs_are_counted_and_logged(broken_copy, logs):
    """cv2 turns a JPEG by its EXIF orientation when decoding; on a square film the size check
    cannot see it, and the boxes may be in the other frame."""
    from tbx11k.testing import json_entries_as_oriented_jpegs
    root, ann_file, data = broken_copy()
    json_entries_as_oriented_jpegs(root, data, {3: 6, 5: 1})
    ann_file.write_text(json.dumps(data))
    assert len(make(root, ann_file)) == len(data['images'])  # square: sizes still match
    warned = [m for m in logs if 'EXIF orientation' in m]
    assert len(warned) == 1 and '1 JPEG images' in warned[0], logs
    assert data['images'][3]['file_name'] in warned[0]


def test_an_image_that_fails_to_decode_names_the_json_entry(broken_copy):
    """A PNG truncated after its header passes the load-time check; mmcv then fails with a bare
    assertion naming the file only."""
    root, ann_file, data = broken_copy()
    ann_file.write_text(json.dumps(data))
    ds = make(root, ann_file, pipeline=[dict(type='LoadImageFromFile')])
    info = ds.get_data_info(1)
    with open(info['img_path'], 'rb') as f:
        head = f.read(60)
    with open(info['img_path'], 'wb') as f:
        f.write(head)
    with pytest.raises(TBX11KDataError) as exc:
        ds[1]
    msg = str(exc.value)
    assert msg.startswith(str(ann_file)) and f"id={info['img_id']}" in msg
    assert info['img_path'] in msg and 'check_dataset.py' in msg
    assert ds[0]['img'].shape[:2] == (128, 128)  # the others still load


def test_16_bit_images_are_counted_and_logged(broken_copy, logs):
    import cv2
    root, ann_file, data = broken_copy()
    img = data['images'][0]
    film = np.full((128, 128), 3744, np.uint16)  # 12-bit values in 16 bits
    cv2.imwrite(str(root / 'imgs' / img['file_name']), film)
    ann_file.write_text(json.dumps(data))
    assert len(make(root, ann_file)) == len(data['images'])
    deep = [m for m in logs if 'more than 8 bits' in m]
    assert len(deep) == 1 and '1 images' in deep[0], logs
    assert img['file_name'] in deep[0]


def test_data_that_leaves_no_image_is_refused(broken_copy):
    root, ann_file, data = broken_copy()
    empty = dict(data, images=[], annotations=[])
    ann_file.write_text(json.dumps(empty))
    for test_mode in (False, True):
        with pytest.raises(TBX11KDataError, match="'images' is empty") as exc:
            make(root, ann_file, test_mode=test_mode)
        assert str(ann_file) in str(exc.value)
    no_box = dict(data, annotations=[])
    ann_file.write_text(json.dumps(no_box))
    with pytest.raises(TBX11KDataError,
                       match='tb_only=True left no image') as exc:
        make(root, ann_file, tb_only=True, test_mode=True)
    assert str(ann_file) in str(exc.value)
    with pytest.raises(TBX11KDataError, match='left no image') as exc:
        make(root, ann_file, filter_cfg=dict(filter_empty_gt=True))
    msg = str(exc.value)
    assert str(ann_file) in msg and f"{len(data['images'])} have no box" in msg


def test_extra_images_without_boxes_are_a_warning(synthetic_root, logs):
    ds = make(synthetic_root, 'annotations/json/all_train.json')
    n_extra = sum('/extra/' in ds.get_data_info(i)['img_path']
                  for i in range(len(ds)))
    warned = [m for m in logs if 'from extra/' in m]
    assert n_extra and len(warned) == 1, logs
    assert f'{n_extra} images' in warned[0]
    assert 'teach the detector that TB is background' in warned[0]
    logs.clear()
    make(synthetic_root, 'annotations/json/all_val.json', test_mode=True)
    assert any('from extra/' in m and 'count every one of them as non-TB' in m
               for m in logs), logs
    logs.clear()
    make(synthetic_root, TRAIN)
    assert not [m for m in logs if 'extra/' in m]


# ---------------------------------------------------------------------------
# malformed data: each case builds a broken copy and checks type + message
# ---------------------------------------------------------------------------
@pytest.fixture
def broken_copy(synthetic_root, tmp_path):
    """Copy of the train json and its images into tmp_path; returns
    (root, ann_file, data) with data the parsed json to mutate and save."""

    def _make():
        root = tmp_path / 'root'
        shutil.copytree(synthetic_root / 'imgs', root / 'imgs',
                        ignore=shutil.ignore_patterns('extra', 'test'))
        ann_file = root / TRAIN
        ann_file.parent.mkdir(parents=True)
        return root, ann_file, load_json(synthetic_root / TRAIN)

    return _make


def _tb_ann(data):
    """First annotation and its image."""
    ann = data['annotations'][0]
    img = next(i for i in data['images'] if i['id'] == ann['image_id'])
    return ann, img


def _set_bbox(bbox):

    def mutate(data):
        ann, _ = _tb_ann(data)
        ann['bbox'] = bbox
        return f"annotation id={ann['id']}"

    return mutate


def _mut_missing_images_key(data):
    del data['images']
    return "'images'"


def _mut_annotations_not_list(data):
    data['annotations'] = {'1': data['annotations'][0]}
    return "'annotations' must be a list"


def _mut_top_level_list(data):
    data.clear()
    return 'top level'


def _mut_unknown_category(data):
    ann, _ = _tb_ann(data)
    ann['category_id'] = 7
    return f"annotation id={ann['id']}"


def _mut_duplicate_image_id(data):
    data['images'][3]['id'] = data['images'][2]['id']
    return f"file_name={data['images'][3]['file_name']!r}"


def _mut_duplicate_ann_id(data):
    data['annotations'][4]['id'] = data['annotations'][1]['id']
    return f"annotation id={data['annotations'][1]['id']}"


def _mut_unknown_image_id(data):
    ann, _ = _tb_ann(data)
    ann['image_id'] = 999
    return f"annotation id={ann['id']} (image_id=999)"


def _mut_missing_area(data):
    ann, _ = _tb_ann(data)
    del ann['area']
    return f"annotation id={ann['id']}"


def _mut_bad_image_width(data):
    data['images'][1]['width'] = 0
    return f"file_name={data['images'][1]['file_name']!r}"


def _mut_image_id_not_int(data):
    data['images'][1]['id'] = '2'
    return f"file_name={data['images'][1]['file_name']!r}"


def _mut_duplicate_category(data):
    data['categories'].append(dict(data['categories'][0], name='Other'))
    return 'category id=1'


MALFORMED = {
    'bbox_nan': (_set_bbox([10.0, math.nan, 5.0, 5.0]), 'non-finite'),
    'bbox_inf': (_set_bbox([10.0, 10.0, math.inf, 5.0]), 'non-finite'),
    'bbox_negative_width': (_set_bbox([40.0, 40.0, -3.0, 5.0]),
                            'width must be positive'),
    'bbox_zero_height': (_set_bbox([40.0, 40.0, 5.0, 0.0]),
                         'height must be positive'),
    'bbox_three_numbers': (_set_bbox([40.0, 40.0, 5.0]), '4 numbers'),
    'bbox_strings': (_set_bbox(['40', 40, 5, 5]), '4 numbers'),
    'bbox_far_outside_left': (_set_bbox([-10.0, 40.0, 20.0, 5.0]),
                              'outside the 128x128 image'),
    'bbox_beyond_right_edge': (_set_bbox([120.0, 40.0, 13.0, 5.0]),
                               'outside the 128x128 image'),
    'unknown_category': (_mut_unknown_category, 'unknown category_id=7'),
    'duplicate_image_id': (_mut_duplicate_image_id, 'duplicate image id'),
    'duplicate_annotation_id': (_mut_duplicate_ann_id,
                                'duplicate annotation id'),
    'unknown_image_id': (_mut_unknown_image_id, "not in 'images'"),
    'missing_images_key': (_mut_missing_images_key, 'missing key'),
    'annotations_not_list': (_mut_annotations_not_list, 'must be a list'),
    'top_level_not_object': (_mut_top_level_list, 'not a COCO'),
    'missing_area': (_mut_missing_area, "missing 'area'"),
    'image_width_zero': (_mut_bad_image_width, "'width' must be a positive"),
    'image_id_not_int': (_mut_image_id_not_int, "'id' must be an integer"),
    'duplicate_category_id': (_mut_duplicate_category,
                              'duplicate category id'),
}


@pytest.mark.parametrize('case', sorted(MALFORMED))
def test_malformed_json_raises_naming_file_and_entry(case, broken_copy):
    root, ann_file, data = broken_copy()
    mutate, expected = MALFORMED[case]
    entry = mutate(data)
    if case == 'top_level_not_object':
        data = []
    ann_file.write_text(json.dumps(data))  # NaN/Infinity written as in JS
    with pytest.raises(TBX11KDataError) as exc:
        make(root, ann_file)
    msg = str(exc.value)
    assert msg.startswith(str(ann_file)), msg
    assert entry in msg, msg
    assert expected in msg, msg


def test_missing_image_file(broken_copy):
    root, ann_file, data = broken_copy()
    img = data['images'][5]
    (root / 'imgs' / img['file_name']).unlink()
    ann_file.write_text(json.dumps(data))
    with pytest.raises(TBX11KMissingFileError) as exc:
        make(root, ann_file)
    assert isinstance(exc.value, FileNotFoundError)
    msg = str(exc.value)
    assert str(ann_file) in msg
    assert f"id={img['id']}" in msg and img['file_name'] in msg
    # check_files=False defers the problem to the pipeline
    assert len(make(root, ann_file, check_files=False)) == len(data['images'])


def test_truncated_json(broken_copy):
    root, ann_file, data = broken_copy()
    text = json.dumps(data)
    ann_file.write_text(text[:len(text) // 2])
    with pytest.raises(TBX11KDataError) as exc:
        make(root, ann_file)
    assert str(ann_file) in str(exc.value)
    assert 'not valid JSON' in str(exc.value)
    assert 'truncated' in str(exc.value)


def test_missing_json_file(broken_copy):
    root, ann_file, _ = broken_copy()
    with pytest.raises(TBX11KMissingFileError, match='annotation file not'):
        make(root, ann_file)


@pytest.mark.parametrize('classes, expected', [
    (('ActiveTB', LATENT), "['ActiveTB']"),
    ((ACTIVE, 'Healthy', 'Sick'), "['Healthy', 'Sick']"),
    ((LATENT, ACTIVE), "category order"),
    ((ACTIVE, ACTIVE), 'more than once'),
    (ACTIVE, 'must be a tuple'),
])
def test_metainfo_classes_errors(synthetic_root, classes, expected):
    with pytest.raises(TBX11KDataError) as exc:
        make(synthetic_root, metainfo=dict(classes=classes))
    msg = str(exc.value)
    assert str(synthetic_root / TRAIN) in msg
    assert expected in msg, msg


def test_small_outside_tolerance_is_configurable(broken_copy):
    root, ann_file, data = broken_copy()
    ann, _ = _tb_ann(data)
    ann['bbox'] = [-1.9, 30.0, 20.0, 10.0]
    ann2 = data['annotations'][1]
    ann2['bbox'] = [10.0, 20.0, 0.5, 10.0]  # thinner than 1 px: dropped
    ann_file.write_text(json.dumps(data))
    ds = make(root, ann_file)
    assert ds.load_stats['num_clipped'] >= 1
    assert ds.load_stats['num_dropped_small'] == 1
    assert ds.load_stats['num_instances'] == len(data['annotations']) - 1
    with pytest.raises(TBX11KDataError, match='1px tolerance'):
        make(root, ann_file, bbox_clip_tolerance=1.0)


def test_iscrowd_becomes_ignore_flag(broken_copy, logs):
    root, ann_file, data = broken_copy()
    ann, _ = _tb_ann(data)
    ann['iscrowd'] = 1
    ann_file.write_text(json.dumps(data))
    ds = make(root, ann_file)
    info = next(ds.get_data_info(i) for i in range(len(ds))
                if ds.get_data_info(i)['img_id'] == ann['image_id'])
    assert sorted(i['ignore_flag'] for i in info['instances'])[-1] == 1
    # not trained on as an object: counted and logged, not silent
    assert ds.load_stats['num_crowd'] == 1
    assert any('1 boxes have iscrowd=1' in m and f"ids {ann['id']})" in m for m in logs)


def test_dataset_is_picklable_and_subsettable(synthetic_root):
    import pickle
    ds = make(synthetic_root)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert len(ds2) == len(ds)
    sub = ds.get_subset([0, 1])
    assert len(sub) == 2
    assert copy.deepcopy(ds).load_stats == ds.load_stats


def test_training_set_without_any_box_is_a_warning(broken_copy, logs):
    root, ann_file, data = broken_copy()
    data['annotations'] = []
    ann_file.write_text(json.dumps(data))
    ds = make(root, ann_file)
    assert len(ds) == len(data['images']) and ds.load_stats['num_instances'] == 0
    assert any('no box of the classes' in m for m in logs)
    logs.clear()
    make(root, ann_file, test_mode=True)  # evaluating a set without boxes is legitimate
    assert not any('no box of the classes' in m for m in logs)


@pytest.mark.parametrize('orientation', [1, 3, 6, 8])
def test_image_header_size_is_the_size_mmcv_loads(tmp_path, orientation):
    """A JPEG's EXIF orientation 5-8 turns it by 90 degrees when cv2 (mmcv) decodes it."""
    import mmcv

    from tbx11k.datasets.validation import read_image_header
    from tbx11k.testing import save_jpeg_with_orientation
    path = tmp_path / 'film.jpg'
    save_jpeg_with_orientation(path, orientation, size=(100, 128))
    loaded = mmcv.imfrombytes(path.read_bytes(), flag='color', backend='cv2')
    header = read_image_header(str(path))
    assert (header.height, header.width) == loaded.shape[:2]
    assert (header.width, header.height) == ((128, 100) if orientation >= 5 else (100, 128))


@pytest.mark.parametrize('value', [float('nan'), -1.0, float('inf')])
def test_bbox_clip_tolerance_must_be_finite_and_not_negative(synthetic_root, value):
    """NaN clipped a box wholly outside the image to nothing and dropped it silently."""
    with pytest.raises(ValueError, match='bbox_clip_tolerance must be a finite number >= 0'):
        make(synthetic_root, bbox_clip_tolerance=value)


def test_missing_image_folder_is_named(broken_copy):
    root, ann_file, data = broken_copy()
    ann_file.write_text(json.dumps(data))
    with pytest.raises(TBX11KMissingFileError, match=r'\(the image folder .*nope/ does not exist'):
        TBX11KDataset(data_root=str(root), ann_file=str(ann_file), pipeline=[],
                      data_prefix=dict(img='nope/'))


def test_is_extra_image_normalises_the_path():
    assert tbx11k_module.is_extra_image('./extra/da/a.png')
    assert tbx11k_module.is_extra_image('tb/../extra/da/a.png')
    assert not tbx11k_module.is_extra_image('extra_tb/a.png')
