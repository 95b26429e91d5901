"""The synthetic set's difficulty options (what tools/demo.sh uses to make an easy set): lesion
size, lesion contrast and the number of lesions per TB film; the defaults change nothing."""
import json
from collections import Counter

import cv2
import numpy as np
import pytest

from tbx11k.datasets.synthetic import make_synthetic_tbx11k

SMALL = dict(num_train=12, num_val=0, num_test=0, num_extra=0, image_size=96, tb_fraction=1.0,
             healthy_fraction=0.0)


def boxes(root):
    with open(root / 'annotations' / 'json' / 'TBX11K_train.json') as f:
        coco = json.load(f)
    files = {i['id']: i['file_name'] for i in coco['images']}
    return [(files[a['image_id']], a['bbox']) for a in coco['annotations']]


def lesion_brightness(root, found):
    """Mean grey level inside the boxes, less that of the whole films."""
    inside, whole = [], []
    for name, (x, y, w, h) in found:
        img = cv2.imread(str(root / 'imgs' / name), cv2.IMREAD_GRAYSCALE).astype(float)
        x0, y0 = max(int(x), 0), max(int(y), 0)
        inside.append(img[y0:int(y + h) + 1, x0:int(x + w) + 1].mean())
        whole.append(img.mean())
    return np.mean(inside) - np.mean(whole)


def test_lesion_scale_contrast_and_count(tmp_path):
    make_synthetic_tbx11k(str(tmp_path / 'plain'), **SMALL)
    make_synthetic_tbx11k(str(tmp_path / 'default'), lesion_scale=1.0, lesion_contrast=1.0,
                          max_lesions=None, **SMALL)
    make_synthetic_tbx11k(str(tmp_path / 'easy'), lesion_scale=1.5, lesion_contrast=2.0,
                          max_lesions=1, **SMALL)
    plain, easy = boxes(tmp_path / 'plain'), boxes(tmp_path / 'easy')
    assert boxes(tmp_path / 'default') == plain  # the defaults are today's set, film for film
    assert (cv2.imread(str(tmp_path / 'default' / 'imgs' / plain[0][0])) ==
            cv2.imread(str(tmp_path / 'plain' / 'imgs' / plain[0][0]))).all()
    assert max(Counter(name for name, _ in plain).values()) >= 2
    assert max(Counter(name for name, _ in easy).values()) == 1
    area = [np.median([w * h for _, (_, _, w, h) in found]) for found in (plain, easy)]
    assert area[1] > 1.8 * area[0]  # 1.5 x the sides
    assert lesion_brightness(tmp_path / 'easy', easy) > \
        lesion_brightness(tmp_path / 'plain', plain) + 10


@pytest.mark.parametrize('option, value', [('lesion_scale', 0), ('lesion_contrast', -1),
                                           ('max_lesions', 0)])
def test_difficulty_options_refuse_nonsense(tmp_path, option, value):
    with pytest.raises(ValueError, match=option):
        make_synthetic_tbx11k(str(tmp_path), **{option: value}, **SMALL)
