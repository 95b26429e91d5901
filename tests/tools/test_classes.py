"""Another COCO-format detection set: one option (--classes, or the config's `classes`) sets the
classes of every dataset, the evaluators and the head, and tools/check_dataset.py refuses what
training refuses, in the same words."""
import glob
import json
import os
import os.path as osp
import shutil
import sys

import pytest

from tbx11k.testing import REPO_ROOT, TINY_1GPU, load_checkpoint, run, train_command
from tbx11k.testing.tools import load_tool

CHECK = osp.join(REPO_ROOT, 'tools', 'check_dataset.py')
CLASSES = ('cat', 'dog', 'bird')  # 3: the configs' head has 2


@pytest.fixture(scope='module')
def plain_coco_root(training_root, tmp_path_factory):
    """The training set's films and boxes as a plain COCO set: one flat image folder, categories
    cat, dog, bird, none of TBX11K's json quirks."""
    root = tmp_path_factory.mktemp('plain_coco')
    os.makedirs(root / 'imgs' / 'photos')
    os.makedirs(root / 'annotations' / 'json')
    for split in ('train', 'val'):
        name = f'annotations/json/TBX11K_{split}.json'
        with open(osp.join(training_root, name)) as f:
            tbx11k = json.load(f)
        images = []
        for image in tbx11k['images']:
            file_name = f"photos/{split}_{image['id']:04d}.png"
            shutil.copy(osp.join(training_root, 'imgs', image['file_name']),
                        root / 'imgs' / file_name)
            images.append(dict(id=image['id'], file_name=file_name, width=image['width'],
                               height=image['height']))
        annotations = []
        for a in tbx11k['annotations']:
            x, y, w, h = a['bbox']
            x, y = max(x, 0), max(y, 0)
            annotations.append(dict(id=a['id'], image_id=a['image_id'], iscrowd=0, area=w * h,
                                    category_id=a['category_id'], bbox=[x, y, w, h]))
        categories = [dict(id=i, name=name, supercategory='animal')
                      for i, name in enumerate(CLASSES, 1)]
        (root / name).write_text(json.dumps(dict(images=images, annotations=annotations,
                                                 categories=categories)))
    return str(root)


@pytest.mark.slow
def test_check_dataset_refuses_what_training_refuses_in_the_same_words(plain_coco_root, tmp_path):
    """check_dataset said "RESULT: OK" (exit 0) where training then stopped with a traceback."""
    check = run([sys.executable, CHECK, plain_coco_root], check=False, timeout=300)
    assert check.returncode == 1, check.stdout[-3000:]
    assert 'RESULT: FAILED' in check.stdout
    train_json = osp.join(plain_coco_root, 'annotations', 'json', 'TBX11K_train.json')
    check_errors = [line[len('  - '):] for line in check.stdout.splitlines()
                    if line.startswith(f'  - {train_json}: metainfo')]
    assert len(check_errors) == 1, check.stdout[-3000:]
    train = run(train_command(TINY_1GPU, str(tmp_path / 'work_dir'), 1, plain_coco_root),
                check=False, timeout=300)
    assert train.returncode == 1 and 'Traceback' not in train.stderr, train.stderr[-3000:]
    assert train.stderr.strip().splitlines()[-1] == f'error: {check_errors[0]}'
    assert ("metainfo['classes'] names ['ActiveTuberculosis', 'ObsoletePulmonaryTuberculosis'], "
            "which are not a category of this file (categories: ['cat', 'dog', 'bird'])"
            in check_errors[0])
    assert '--classes NAME' in check_errors[0]
    assert not (tmp_path / 'work_dir').exists()  # refused before anything was built
    # classes out of the file's order: refused too, by both, in the same words
    check = run([sys.executable, CHECK, plain_coco_root, '--classes', 'dog', 'cat'], check=False,
                timeout=300)
    assert check.returncode == 1
    assert "metainfo['classes'] ('dog', 'cat') must follow the file's category order" \
        in check.stdout


@pytest.mark.slow
def test_one_classes_option_trains_another_data_set(plain_coco_root, tmp_path):
    """Other classes took separate overrides of the train, val and test datasets and the head."""
    check = run([sys.executable, CHECK, plain_coco_root, '--classes', *CLASSES], timeout=300)
    assert 'RESULT: OK' in check.stdout
    work_dir = tmp_path / 'work_dir'
    run(train_command(TINY_1GPU, str(work_dir), 1, plain_coco_root,
                      {'train_cfg.max_epochs': 1}, ['--classes', *CLASSES]))
    checkpoint = load_checkpoint(str(work_dir / 'epoch_1.pth'))
    assert tuple(checkpoint['meta']['dataset_meta']['classes']) == CLASSES
    weights = checkpoint['state_dict']
    assert weights['bbox_head.cls_branches.0.weight'].shape[0] == len(CLASSES)  # num_classes
    assert weights['dn_query_generator.label_embedding.weight'].shape[0] == len(CLASSES)
    [report] = glob.glob(str(work_dir / '*' / 'tbx11k_eval' / 'metrics.json'))
    with open(report) as f:
        assert json.load(f)['classes'] == list(CLASSES)  # the val metric's classes


def test_the_classes_options_and_a_derived_config_say_the_same(tmp_path):
    """`--classes`, `--cfg-options classes=...` and `classes = (...)` in a config derived from a
    shipped one all reach every dataset and the head; explicit per-dataset options still win."""
    tool = load_tool('train')
    derived = tmp_path / 'derived.py'
    derived.write_text(f"_base_ = '{TINY_1GPU}'\nclasses = {CLASSES!r}\n")
    configs = [tool.build_config(tool.parse_args(args)) for args in (
        [TINY_1GPU, '--classes', *CLASSES],
        [TINY_1GPU, '--cfg-options', f'classes={list(CLASSES)}'],
        [TINY_1GPU, '--cfg-options', 'classes=' + ','.join(CLASSES)],
        [str(derived)])]
    for cfg in configs:
        assert tuple(cfg.classes) == CLASSES
        assert cfg.model.bbox_head.num_classes == len(CLASSES)
        for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            assert tuple(cfg[split].dataset.metainfo.classes) == CLASSES, split
    cfg = tool.build_config(tool.parse_args([TINY_1GPU, '--classes', *CLASSES, '--cfg-options',
                                             'test_dataloader.dataset.metainfo.classes=[cat]']))
    assert tuple(cfg.test_dataloader.dataset.metainfo.classes) == ('cat', )
    assert tuple(cfg.val_dataloader.dataset.metainfo.classes) == CLASSES
    # test.py takes the same flag
    test_tool = load_tool('test')
    cfg = test_tool.build_config(test_tool.parse_args([TINY_1GPU, 'x.pth', '--classes', 'cat']))
    assert cfg.model.bbox_head.num_classes == 1
    assert tuple(cfg.test_dataloader.dataset.metainfo.classes) == ('cat', )
