"""Synthetic TBX11K generator: layout, json quirks, images, determinism."""
import hashlib
import importlib.util
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from tbx11k.datasets.synthetic import CATEGORIES, make_synthetic_tbx11k, xml_box_to_json

REPO = Path(__file__).resolve().parents[2]
JSONS = [
    'TBX11K_train', 'TBX11K_val', 'TBX11K_trainval', 'all_train', 'all_val',
    'all_trainval', 'all_test', 'TBX11K_train_only_tb', 'TBX11K_val_only_tb',
    'TBX11K_trainval_only_tb'
]
LISTS = [
    'TBX11K_train', 'TBX11K_val', 'TBX11K_trainval', 'all_train', 'all_val',
    'all_trainval', 'all_test'
]
IMAGE_KEYS = {
    'id', 'file_name', 'width', 'height', 'date_captured', 'license',
    'coco_url', 'flickr_url'
}
ANN_KEYS = {
    'id', 'image_id', 'category_id', 'iscrowd', 'area', 'bbox', 'width',
    'height'
}


def load(root, name):
    with open(Path(root) / 'annotations/json' / f'{name}.json') as f:
        return json.load(f)


def tree_digest(root):
    out = {}
    for p in sorted(Path(root).rglob('*')):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.md5(
                p.read_bytes()).hexdigest()
    return out


def test_layout(synthetic_root):
    for folder in ('health', 'sick', 'tb', 'test'):
        assert list((synthetic_root / 'imgs' / folder).glob('*.png'))
    extra = {p.parent.name for p in
             (synthetic_root / 'imgs/extra').rglob('*.png')}
    assert extra == {'da', 'db', 'montgomery', 'shenzhen'}
    for name in JSONS:
        assert (synthetic_root / f'annotations/json/{name}.json').is_file()
    for name in LISTS:
        files = (synthetic_root / f'lists/{name}.txt').read_text().split()
        assert files == [i['file_name'] for i in load(synthetic_root,
                                                       name)['images']]
        assert all((synthetic_root / 'imgs' / f).is_file() for f in files)
    assert list((synthetic_root / 'annotations/xml').glob('tb*.xml'))


def test_json_quirks(synthetic_root, synthetic_tbx11k):
    for name in JSONS:
        d = load(synthetic_root, name)
        assert isinstance(d['info'], list), name
        assert d['categories'] == CATEGORIES
        assert [i['id'] for i in d['images']] == list(
            range(1, len(d['images']) + 1))
        assert [a['id'] for a in d['annotations']] == list(
            range(1, len(d['annotations']) + 1))
        for img in d['images']:
            assert set(img) == IMAGE_KEYS
            assert (img['width'], img['height']) == (128, 128)
            assert not img['file_name'].startswith('imgs/')
        for a in d['annotations']:
            assert set(a) == ANN_KEYS  # no 'segmentation'
            assert a['iscrowd'] == 0 and (a['width'], a['height']) == (128,
                                                                       128)
            assert a['category_id'] in (1, 2)  # category 3 unused
            assert isinstance(a['area'], int) and a['area'] >= 20
            x, y, w, h = a['bbox']
            assert x >= -1 and y >= -1 and x + w <= 127 + 1e-4
            assert y + h <= 127 + 1e-4
    train = load(synthetic_root, 'TBX11K_train')
    assert any(min(a['bbox'][:2]) == -1.0 for a in train['annotations'])
    per_img = Counter(a['image_id'] for a in train['annotations'])
    cats = {}
    for a in train['annotations']:
        cats.setdefault(a['image_id'], set()).add(a['category_id'])
    assert 1 in per_img.values() and max(per_img.values()) >= 3
    assert max(per_img.values()) <= 5
    assert any(c == {1, 2} for c in cats.values())
    assert any(c == {2} for c in cats.values())
    names = [i['file_name'] for i in train['images']]
    folders = Counter(n.split('/')[0] for n in names)
    assert folders == {'health': 4, 'sick': 4, 'tb': 8}
    tb_without = [i for i in train['images'] if i['file_name'].startswith(
        'tb/') and i['id'] not in per_img]
    assert len(tb_without) == 1  # like tb1199.png
    test = load(synthetic_root, 'all_test')
    assert test['images'] and test['annotations'] == []
    assert any('extra/' in i['file_name'] for i in test['images'])
    only = load(synthetic_root, 'TBX11K_train_only_tb')
    assert len(only['images']) == len(per_img)
    assert len(only['annotations']) == len(train['annotations'])
    # summary matches the files
    st = synthetic_tbx11k['splits']['train']
    assert st['boxes'] == {
        'ActiveTuberculosis': sum(a['category_id'] == 1
                                  for a in train['annotations']),
        'ObsoletePulmonaryTuberculosis': sum(a['category_id'] == 2
                                             for a in train['annotations'])
    }
    assert st['edge_boxes'] >= 1 and st['tb_without_boxes'] == 1
    assert synthetic_tbx11k['json_files']['TBX11K_val.json']['images'] == 8


def test_xml_matches_json(synthetic_root):
    """The json boxes are the VOC boxes converted like make_json_anno.py."""
    train = load(synthetic_root, 'TBX11K_train')
    img = next(i for i in train['images'] if i['file_name'].startswith('tb/')
               and any(a['image_id'] == i['id']
                       for a in train['annotations']))
    stem = Path(img['file_name']).stem
    root = ET.parse(synthetic_root / f'annotations/xml/{stem}.xml').getroot()
    w = int(root.find('size/width').text)
    h = int(root.find('size/height').text)
    assert w > 128 and h > 128  # original resolution
    boxes = []
    for obj in root.findall('object'):
        if int(obj.find('difficult').text):
            continue
        xml_box = [int(obj.find(f'bndbox/{k}').text)
                   for k in ('xmin', 'ymin', 'xmax', 'ymax')]
        boxes.append(xml_box_to_json(xml_box, w, h, 128)[0])
    anns = [a['bbox'] for a in train['annotations']
            if a['image_id'] == img['id']]
    assert anns == boxes


def test_images_and_duplicates(synthetic_root, synthetic_tbx11k):
    png = cv2.imread(str(synthetic_root / 'imgs/health/h0001.png'),
                     cv2.IMREAD_UNCHANGED)
    assert png.shape == (128, 128, 3) and png.dtype == np.uint8
    assert 20 < png.mean() < 200 and png.std() > 20
    pairs = synthetic_tbx11k['duplicate_pairs']
    assert len(pairs) == 1
    a, b = pairs[0]
    assert a.startswith('sick/') and b.startswith('sick/') and a != b
    assert (synthetic_root / 'imgs' / a).read_bytes() == (
        synthetic_root / 'imgs' / b).read_bytes()
    train = {i['file_name'] for i in load(synthetic_root,
                                          'TBX11K_train')['images']}
    val = {i['file_name'] for i in load(synthetic_root,
                                        'TBX11K_val')['images']}
    assert a in train and b in val


def test_lesions_are_visible_and_classes_differ(synthetic_root):
    """Boxes hold brighter texture; latent lesions are compact and denser."""
    peak = {1: [], 2: []}
    for split in ('TBX11K_train', 'TBX11K_val'):
        d = load(synthetic_root, split)
        files = {i['id']: i['file_name'] for i in d['images']}
        for a in d['annotations']:
            img = cv2.imread(str(synthetic_root / 'imgs' /
                                 files[a['image_id']]), 0).astype(float)
            x, y, w, h = (int(round(v)) for v in a['bbox'])
            patch = img[max(y, 0):y + h, max(x, 0):x + w]
            assert np.percentile(patch, 90) - np.median(patch) > 10
            peak[a['category_id']].append(
                (patch.max() - np.median(patch)) / (w * h)**0.5)
    assert np.mean(peak[2]) > np.mean(peak[1])


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(num_train=4, num_val=4, num_test=2, num_extra=2,
              image_size=64)
    make_synthetic_tbx11k(tmp_path / 'a', seed=3, **kw)
    make_synthetic_tbx11k(tmp_path / 'b', seed=3, **kw)
    make_synthetic_tbx11k(tmp_path / 'c', seed=4, **kw)
    da, db, dc = (tree_digest(tmp_path / n) for n in 'abc')
    assert da == db
    assert da.keys() == dc.keys() and da != dc
    with pytest.raises(FileExistsError):
        make_synthetic_tbx11k(tmp_path / 'a', seed=3, **kw)
    make_synthetic_tbx11k(tmp_path / 'a', seed=4, overwrite=True, **kw)
    assert tree_digest(tmp_path / 'a') == dc


def test_cli_help_explains_every_option_with_its_default(capsys):
    """Most options had no help text and no default in --help."""
    spec = importlib.util.spec_from_file_location(
        'make_synthetic_tbx11k', REPO / 'tools/make_synthetic_tbx11k.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as stop:
        mod.parse_args(['--help'])
    assert stop.value.code == 0
    text = ' '.join(capsys.readouterr().out.split())  # argparse wraps lines
    options = re.findall(r'\[(--[a-z-]+) [A-Z_]+\]', text)
    assert len(options) == 12, options  # those with a value; --overwrite and --json are switches
    for option in options:
        assert re.search(re.escape(option) + r' [A-Z_]+ [a-z][^\[]*?\(default: [^)]+\)',
                         text), option
    assert '--num-train NUM_TRAIN images of TBX11K_train.json (default: 24)' in text


def test_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        'make_synthetic_tbx11k', REPO / 'tools/make_synthetic_tbx11k.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main([str(tmp_path / 'd'), '--num-train', '8', '--num-val', '4',
                   '--num-test', '2', '--seed', '1', '--size', '64'])
    assert rc == 0
    out = capsys.readouterr().out
    assert 'train:    8 images' in out and 'TBX11K_train.json' in out
    assert len(load(tmp_path / 'd', 'TBX11K_train')['images']) == 8
    assert mod.main([str(tmp_path / 'd'), '--size', '64']) == 2  # exists
    capsys.readouterr()
    assert mod.main([str(tmp_path / 'e'), '--num-train', '4', '--num-val', '4', '--num-test', '0',
                     '--num-extra', '0', '--size', '32', '--duplicate-pairs', '50']) == 0
    assert 'warning: --duplicate-pairs 50: made ' in capsys.readouterr().err


def test_scales_to_hundreds(tmp_path):
    import time
    t = time.time()
    s = make_synthetic_tbx11k(tmp_path / 'big', num_train=200, num_val=0,
                              num_test=0, num_extra=0, image_size=64)
    assert s['splits']['train']['images'] == 200
    assert time.time() - t < 20
