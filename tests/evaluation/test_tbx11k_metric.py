"""Tests of the TBX11K evaluation protocol (tbx11k.evaluation).

Every expected figure is computed independently: by pycocotools run
directly on json files written here, or by hand (FROC, AUC, thresholds).
Boxes and scores are multiples of 1/4 and 1/64 so that float32 tensors,
json floats and float64 arithmetic all hold the same values (and score
ties exercise the tie-breaking rules).
"""
import codecs
import contextlib
import io
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmdet.registry import METRICS
from mmdet.structures import DetDataSample

from tbx11k.datasets.validation import TBX11KDataError
from tbx11k.evaluation import FastCOCOeval, TBX11KMetric, greedy_match

CATS = [
    dict(id=1, name='ActiveTuberculosis', supercategory='Tuberculosis'),
    dict(id=2, name='ObsoletePulmonaryTuberculosis',
         supercategory='Tuberculosis'),
    dict(id=3, name='PulmonaryTuberculosis', supercategory='Tuberculosis'),
]
TWO = ('ActiveTuberculosis', 'ObsoletePulmonaryTuberculosis')
THREE = TWO + ('PulmonaryTuberculosis', )


# ---------------------------------------------------------------- helpers
def write_gt(path, img_ids, anns, with_annotations=True):
    """TBX11K-style json: info is a list, no segmentation key."""
    images = [
        dict(
            id=int(i),
            file_name=f'x/{int(i):04d}.png',
            width=512,
            height=512,
            date_captured='',
            license=1,
            coco_url='',
            flickr_url='') for i in img_ids
    ]
    d = dict(info=[dict(description='test')], images=images,
             categories=CATS)
    if with_annotations:
        d['annotations'] = [
            dict(
                id=n + 1,
                image_id=int(i),
                category_id=int(c),
                iscrowd=0,
                area=float(b[2] * b[3]),
                bbox=[float(v) for v in b],
                width=512,
                height=512) for n, (i, c, b) in enumerate(anns)
        ]
    with open(path, 'w') as f:
        json.dump(d, f)
    return str(path)


def sample(img_id, boxes=(), scores=(), labels=(), as_dict=False):
    ds = DetDataSample(metainfo=dict(img_id=img_id, ori_shape=(512, 512)))
    inst = InstanceData()
    inst.bboxes = torch.tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    inst.scores = torch.tensor(np.asarray(scores, np.float32).reshape(-1))
    inst.labels = torch.tensor(np.asarray(labels, np.int64).reshape(-1))
    ds.pred_instances = inst
    return ds.to_dict() if as_dict else ds


def run(ann, samples, classes=TWO, **kw):
    m = TBX11KMetric(ann_file=ann, **kw)
    m.dataset_meta = dict(classes=classes)
    for i in range(0, len(samples), 3):
        m.process({}, samples[i:i + 3])
    return m.evaluate(len(samples)), m


def quiet(fn, *a):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a)


def cocoeval_stats(gt_json, dets, cat_ids, img_ids=None, max_dets=None):
    """pycocotools run directly on files: stats[0:3] (or, for max_dets,
    pycocotools' own accumulate + the _summarize rule at that maxDet)."""
    gt = quiet(COCO, gt_json)
    dt = quiet(gt.loadRes, [dict(d) for d in dets])
    ev = COCOeval(gt, dt, 'bbox')
    ev.params.catIds = list(cat_ids)
    if img_ids is not None:
        ev.params.imgIds = list(img_ids)
    if max_dets is None:
        quiet(ev.evaluate)
        quiet(ev.accumulate)
        quiet(ev.summarize)
        return [float(x) for x in ev.stats[:3]]
    ev.params.maxDets = [max_dets]
    quiet(ev.evaluate)
    quiet(ev.accumulate)  # pycocotools' own accumulate (plain COCOeval)
    p = ev.eval['precision'][:, :, :, 0, 0]
    out = []
    for t in (slice(None), [0], [5]):
        s = p[t]
        out.append(float(np.mean(s[s > -1])) if (s > -1).any() else -1.0)
    return out


def random_case(tmp_path, seed=0, n_img=24, n_tb=9):
    """GT on n_tb images (cats 1/2, 1-3 boxes) and 0-40 predictions per
    image, two near each GT box (one with the right class); image 1 gets 130
    predictions of one class whose only hit has the lowest score (maxDets
    matters)."""
    rng = np.random.default_rng(seed)
    img_ids = list(range(1, n_img + 1))
    tb = [int(i) for i in rng.choice(img_ids[1:], n_tb, replace=False)] + [1]
    anns = []
    for i in tb:
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.integers(0, 300, 2) / 4 * 4
            w, h = rng.integers(80, 480, 2) / 4
            anns.append((i, int(rng.choice([1, 2])), [x, y, w, h]))
    ann = write_gt(tmp_path / 'gt.json', img_ids, anns)
    by_img = {}
    for i, c, b in anns:
        by_img.setdefault(i, []).append((c, b))
    samples, dets = [], []
    for i in img_ids:
        n = 130 if i == 1 else int(rng.integers(0, 40))
        boxes = rng.integers(0, 1800, (n, 2)) / 4
        boxes = np.concatenate(
            [boxes, boxes + rng.integers(40, 500, (n, 2)) / 4], 1)
        scores = rng.integers(1, 64, n) / 64
        labels = np.zeros(n, np.int64) if i == 1 else rng.integers(0, 2, n)
        for k, (c, b) in enumerate(by_img.get(i, []) if i != 1 else []):
            for j in range(min(2, n)):
                jit = rng.integers(-12, 13, 4) / 4
                boxes[(2 * k + j) % n] = [
                    b[0] + jit[0], b[1] + jit[1], b[0] + b[2] + jit[2],
                    b[1] + b[3] + jit[3]
                ]
                labels[(2 * k + j) % n] = c - 1 if j == 0 else 2 - c
        if i == 1:  # a hit beyond the 100 best of image 1
            c, b = by_img[1][0]
            boxes[-1] = [b[0], b[1], b[0] + b[2], b[1] + b[3]]
            labels[:] = c - 1
            scores[-1] = 0.5 / 64
        samples.append(sample(i, boxes, scores, labels, as_dict=i % 2 == 0))
        for bb, s, lab in zip(boxes, scores, labels):
            dets.append(
                dict(
                    image_id=i,
                    category_id=int(lab) + 1,
                    bbox=[
                        float(bb[0]),
                        float(bb[1]),
                        float(bb[2] - bb[0]),
                        float(bb[3] - bb[1])
                    ],
                    score=float(s)))
    return ann, samples, dets, sorted(set(tb)), anns


# ------------------------------------------------------------------ tests
def test_coco_ap_equals_pycocotools(tmp_path):
    ann, samples, dets, tb, _ = random_case(tmp_path)
    res, _ = run(ann, samples, outfile_prefix=str(tmp_path / 'out' / 'r'),
                 save_plots=False)
    ref = cocoeval_stats(ann, dets, [1, 2])
    got = [res[f'tbx11k/bbox_mAP{s}'] for s in ('', '_50', '_75')]
    assert got == pytest.approx(ref, abs=1e-12)
    assert ref[0] > 0
    # per class = a single-category pycocotools run
    for cid, short in ((1, 'ActiveTB'), (2, 'LatentTB')):
        ref = cocoeval_stats(ann, dets, [cid])
        got = [res[f'tbx11k/{short}_{k}_all'] for k in ('AP', 'AP50', 'AP75')]
        assert got == pytest.approx(ref, abs=1e-12)
        ref = cocoeval_stats(ann, dets, [cid], img_ids=tb)
        got = [
            res[f'tbx11k/{short}_{k}_tbonly'] for k in ('AP', 'AP50', 'AP75')
        ]
        assert got == pytest.approx(ref, abs=1e-12)
    # TB-only images
    ref = cocoeval_stats(ann, dets, [1, 2], img_ids=tb)
    got = [res[f'tbx11k/bbox_mAP{s}_tbonly'] for s in ('', '_50', '_75')]
    assert got == pytest.approx(ref, abs=1e-12)
    # the metric's own results json gives the same numbers in pycocotools
    with open(tmp_path / 'out' / 'r.bbox.json') as f:
        own = json.load(f)
    assert len(own) == len(dets)
    assert cocoeval_stats(ann, own, [1, 2]) == pytest.approx(
        [res[f'tbx11k/bbox_mAP{s}'] for s in ('', '_50', '_75')], abs=1e-12)


def test_max_dets_1000_equals_pycocotools(tmp_path):
    ann, samples, dets, _, _ = random_case(tmp_path)
    r100, _ = run(ann, samples, save_plots=False)
    r1000, _ = run(ann, samples, max_dets=1000, save_plots=False)
    ref = cocoeval_stats(ann, dets, [1, 2], max_dets=1000)
    got = [r1000[f'tbx11k/bbox_mAP{s}'] for s in ('', '_50', '_75')]
    assert got == pytest.approx(ref, abs=1e-12)
    # image 1 has a hit at rank 130: the cap changes the AP
    assert r1000['tbx11k/bbox_mAP_50'] > r100['tbx11k/bbox_mAP_50']


def test_official_max_dets_ap_at_100_ap50_ap75_at_1000(tmp_path):
    """official_max_dets: pycocotools with maxDets=[100, 300, 1000] (the
    official code's setting), whose summarize() gives AP at 100 detections
    per image and AP50 / AP75 at 1000."""
    ann, samples, dets, _, _ = random_case(tmp_path)
    official, _ = run(ann, samples, official_max_dets=True, save_plots=False)
    gt = quiet(COCO, ann)
    ev = COCOeval(gt, quiet(gt.loadRes, [dict(d) for d in dets]), 'bbox')
    ev.params.catIds = [1, 2]
    ev.params.maxDets = [100, 300, 1000]
    for step in (ev.evaluate, ev.accumulate, ev.summarize):
        quiet(step)
    got = [official[f'tbx11k/bbox_mAP{s}'] for s in ('', '_50', '_75')]
    assert got == pytest.approx([float(x) for x in ev.stats[:3]], abs=1e-12)
    r100, _ = run(ann, samples, save_plots=False)
    r1000, _ = run(ann, samples, max_dets=1000, save_plots=False)
    for key in ('bbox_mAP', 'TB_AP_all', 'ActiveTB_AP_all', 'LatentTB_AP_tbonly'):
        assert official[f'tbx11k/{key}'] == r100[f'tbx11k/{key}'], key
    for key in ('bbox_mAP_50', 'bbox_mAP_75', 'TB_AP50_all', 'TB_AP75_tbonly',
                'ActiveTB_AP50_all', 'LatentTB_AP75_tbonly'):
        assert official[f'tbx11k/{key}'] == r1000[f'tbx11k/{key}'], key
    # the hit at rank 130 of image 1 counts for AP50 only
    assert official['tbx11k/bbox_mAP_50'] > r100['tbx11k/bbox_mAP_50']
    with pytest.raises(ValueError, match='max_dets=300'):
        TBX11KMetric(ann_file=ann, official_max_dets=True, max_dets=300)


def test_fast_accumulate_equals_pycocotools(tmp_path):
    ann, _, dets, _, _ = random_case(tmp_path, seed=3)
    gt = quiet(COCO, ann)
    out = []
    for cls in (COCOeval, FastCOCOeval):
        ev = cls(gt, quiet(gt.loadRes, [dict(d) for d in dets]), 'bbox')
        ev.params.catIds = [1, 2, 3]
        quiet(ev.evaluate)
        quiet(ev.accumulate)
        out.append(ev.eval)
    for k in ('precision', 'recall', 'scores'):
        np.testing.assert_array_equal(out[0][k], out[1][k])


def test_agnostic_ap_vs_merged_json(tmp_path):
    ann, samples, dets, tb, anns = random_case(tmp_path, seed=1)
    res, _ = run(ann, samples, save_plots=False)
    merged = write_gt(tmp_path / 'merged.json', range(1, 25),
                      [(i, 1, b) for i, _, b in anns])
    mdets = [dict(d, category_id=1) for d in dets]
    ref = cocoeval_stats(merged, mdets, [1])
    got = [res[f'tbx11k/TB_{k}_all'] for k in ('AP', 'AP50', 'AP75')]
    assert got == pytest.approx(ref, abs=1e-12)
    ref = cocoeval_stats(merged, mdets, [1], img_ids=tb)
    got = [res[f'tbx11k/TB_{k}_tbonly'] for k in ('AP', 'AP50', 'AP75')]
    assert got == pytest.approx(ref, abs=1e-12)


def test_merged_ap_differs_when_classes_confused(tmp_path):
    # perfect boxes, swapped classes: per class nothing is right, but every
    # lesion is found
    ann = write_gt(tmp_path / 'gt.json', [1, 2, 3],
                   [(1, 1, [10, 10, 100, 100]), (2, 2, [50, 50, 80, 60])])
    samples = [
        sample(1, [[10, 10, 110, 110]], [0.9], [1]),
        sample(2, [[50, 50, 130, 110]], [0.8], [0]),
        sample(3)
    ]
    res, _ = run(ann, samples, save_plots=False)
    assert res['tbx11k/TB_AP50_all'] == pytest.approx(1.0)
    assert res['tbx11k/TB_AP_all'] == pytest.approx(1.0)
    assert res['tbx11k/bbox_mAP_50'] == 0.0
    assert res['tbx11k/ActiveTB_AP50_all'] == 0.0
    assert res['tbx11k/LatentTB_AP50_all'] == 0.0


def test_tbonly_vs_all_by_hand(tmp_path):
    # one lesion on image 1; a false positive with a higher score on the
    # non-TB image 2. ALL: ranked FP, TP -> precision 1/2 at every recall
    # level -> AP50 = 0.5. TB-only (image 1 only): AP50 = 1.
    ann = write_gt(tmp_path / 'gt.json', [1, 2], [(1, 1, [0, 0, 100, 100])])
    samples = [
        sample(1, [[0, 0, 100, 100]], [0.8], [0]),
        sample(2, [[0, 0, 100, 100]], [0.9], [0])
    ]
    res, _ = run(ann, samples, save_plots=False)
    assert res['tbx11k/TB_AP50_all'] == pytest.approx(0.5)
    assert res['tbx11k/TB_AP50_tbonly'] == pytest.approx(1.0)
    assert res['tbx11k/ActiveTB_AP50_all'] == pytest.approx(0.5)
    assert res['tbx11k/ActiveTB_AP50_tbonly'] == pytest.approx(1.0)


def test_froc_by_hand(tmp_path):
    # GT: image 1 has G1, G2; image 2 has G3; images 3, 4 none.
    ann = write_gt(tmp_path / 'gt.json', [1, 2, 3, 4], [
        (1, 1, [0, 0, 100, 100]),
        (1, 2, [200, 200, 100, 100]),
        (2, 1, [0, 0, 100, 100]),
    ])
    samples = [
        sample(
            1,
            [
                [0, 0, 100, 100],  # 0.9 hits G1 (IoU 1)
                [0, 0, 100, 80],  # 0.8 IoU .8 with G1, already taken: FP
                [200, 200, 300, 280],  # 0.3 hits G2 (IoU .8)
            ],
            [0.9, 0.8, 0.3],
            [0, 0, 1]),
        sample(
            2,
            [
                [300, 300, 400, 400],  # 0.7 FP
                [0, 0, 100, 60],  # 0.6 hits G3 (IoU .6)
            ],
            [0.7, 0.6],
            [0, 1]),
        sample(3, [[0, 0, 50, 50]], [0.85], [0]),  # FP
        sample(4, [[0, 0, 50, 50], [60, 60, 90, 90]], [0.5, 0.2], [1, 0]),
    ]
    # by score: .9 TP, .85 FP, .8 FP, .7 FP, .6 TP, .5 FP, .3 TP, .2 FP
    # (FP/img, sens): (0,1/3) (.25,1/3) (.5,1/3) (.75,1/3) (.75,2/3)
    #                 (1,2/3) (1,1) (1.25,1)
    expected = {0.125: 1 / 3, 0.25: 1 / 3, 0.5: 1 / 3, 1: 1.0, 2: 1.0,
                4: 1.0, 8: 1.0}
    res, _ = run(ann, samples, save_plots=False)
    for r, s in expected.items():
        assert res[f'tbx11k/FROC@{r:g}'] == pytest.approx(s), r
    assert res['tbx11k/FROC_mean'] == pytest.approx(5 / 7)


def test_froc_greedy_takes_best_unmatched_box():
    # Ga=[0,0,10,10], Gb=[4,0,14,10]
    # P1 .9 [3,0,13,10]:    IoU Ga 70/130=.54, Gb 90/110=.82 -> Gb
    # P4 .85 [2.5,0,12.5,10]: Ga 75/125=.6, Gb 85/115=.74 (taken) -> Ga
    # P2 .8 = Gb: Gb taken, Ga 60/140=.43 -> FP
    # P3 .7 [1,0,11,10]: Ga 90/110=.82 but taken, Gb .43 -> FP
    gt = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], float)
    pred = np.array([[4, 0, 14, 10], [1, 0, 11, 10], [3, 0, 13, 10],
                     [2.5, 0, 12.5, 10]])
    scores = np.array([0.8, 0.7, 0.9, 0.85])
    hit = greedy_match(np.ones(4, int), pred, scores, np.ones(2, int), gt)
    assert hit.tolist() == [False, False, True, True]
    # a prediction on another image never matches
    hit = greedy_match(np.array([2, 1, 1, 1]), pred, scores, np.ones(2, int),
                       gt)
    assert hit.tolist() == [False, False, True, True]


def test_froc_equal_iou_ties_go_to_the_last_lesion_as_pycocotools(tmp_path):
    """P1 overlaps lesions A and B with the same IoU (2/3); P2 overlaps only
    A. pycocotools gives P1 the last of the tied boxes (B), so P2 finds A:
    2 of 2 lesions. Giving P1 the first (A) leaves P2 a false positive."""
    ann = write_gt(tmp_path / 'gt.json', [1], [
        (1, 1, [0, 0, 100, 100]),  # A
        (1, 1, [40, 0, 100, 100]),  # B
    ])
    samples = [sample(1, [[20, 0, 120, 100], [0, 0, 100, 100]], [0.9, 0.8],
                      [0, 0])]
    res, _ = run(ann, samples, save_plots=False)
    for r in (0.125, 0.25, 0.5, 1, 2, 4, 8):
        assert res[f'tbx11k/FROC@{r:g}'] == pytest.approx(1.0), r
    # pycocotools' own matching of the same case finds both lesions too
    dets = [dict(image_id=1, category_id=1, bbox=[20, 0, 100, 100], score=.9),
            dict(image_id=1, category_id=1, bbox=[0, 0, 100, 100], score=.8)]
    assert cocoeval_stats(ann, dets, [1])[1] == pytest.approx(1.0)
    assert res['tbx11k/TB_AP50_all'] == pytest.approx(1.0)


def test_froc_small_prediction_inside_a_crowd_region_is_ignored(tmp_path):
    """COCOeval's overlap with an iscrowd=1 box is intersection over the
    prediction's own area: a small prediction inside a large crowd region
    (IoU 1/16 with it) lies fully in it and is ignored, not a false
    positive."""
    ann = write_gt(tmp_path / 'gt.json', [1, 2], [
        (1, 1, [0, 0, 100, 100]),  # lesion
        (1, 1, [200, 200, 200, 200]),  # crowd region
    ])
    data = json.load(open(ann))
    data['annotations'][1]['iscrowd'] = 1
    json.dump(data, open(ann, 'w'))
    samples = [
        sample(1, [[250, 250, 300, 300], [0, 0, 100, 100]], [0.9, 0.6],
               [0, 0]),
        sample(2),
    ]
    # counted as a false positive: 1 FP on 2 images before the hit, so
    # FROC@0.125 and @0.25 would be 0
    out = tmp_path / 'report'
    res, _ = run(ann, samples, out_dir=str(out), save_plots=False)
    for r in (0.125, 0.25, 0.5, 1, 2, 4, 8):
        assert res[f'tbx11k/FROC@{r:g}'] == pytest.approx(1.0), r
    rep = json.load(open(out / 'metrics.json'))
    assert '1 predictions on them left out of the FROC' in ' '.join(rep['notes'])
    # as in pycocotools: the prediction in the crowd region does not lower AP
    dets = [dict(image_id=1, category_id=1, bbox=[250, 250, 50, 50], score=.9),
            dict(image_id=1, category_id=1, bbox=[0, 0, 100, 100], score=.6)]
    assert cocoeval_stats(ann, dets, [1])[1] == pytest.approx(1.0)
    assert res['tbx11k/TB_AP50_all'] == pytest.approx(1.0)


def _cls_case(tmp_path):
    # TB images 1, 2, 3; non-TB 4..7. Image scores (highest box score):
    # 1: .9, 2: .5, 3: none -> 0, 4: .5, 5: .2, 6: none -> 0, 7: .4
    ann = write_gt(tmp_path / 'gt.json', range(1, 8),
                   [(i, 1, [300, 300, 50, 50]) for i in (1, 2, 3)])
    samples = [
        sample(1, [[0, 0, 10, 10], [0, 0, 20, 20]], [0.25, 0.9], [0, 1]),
        sample(2, [[0, 0, 10, 10]], [0.5], [0]),
        sample(3),
        sample(4, [[0, 0, 10, 10], [5, 5, 9, 9]], [0.5, 0.125], [1, 1]),
        sample(5, [[0, 0, 10, 10]], [0.2], [0]),
        sample(6),
        sample(7, [[0, 0, 10, 10]], [0.4], [0]),
    ]
    return ann, samples


def test_auc_with_ties_and_threshold_by_hand(tmp_path):
    ann, samples = _cls_case(tmp_path)
    # pos .9 beats all 4 negatives: 4; pos .5: tie with .5 (1/2) + beats
    # .2, 0, .4: 3.5; pos 0: tie with 0: 0.5 -> 8 / 12
    res, _ = run(ann, samples, cls_threshold=0.5, save_plots=False)
    assert res['tbx11k/AUC'] == pytest.approx(8 / 12)
    # TB iff score >= .5: images 1, 2, 4 -> TP 2, FN 1, FP 1, TN 3
    assert res['tbx11k/sensitivity'] == pytest.approx(2 / 3)
    assert res['tbx11k/specificity'] == pytest.approx(3 / 4)
    assert res['tbx11k/binary_accuracy'] == pytest.approx(5 / 7)
    assert 'tbx11k/accuracy' not in res  # 2-class: not the official 3-class Accuracy
    assert res['tbx11k/cls_threshold'] == 0.5
    res, _ = run(ann, samples, cls_threshold=0.45, save_plots=False)
    assert res['tbx11k/specificity'] == pytest.approx(3 / 4)
    res, _ = run(ann, samples, cls_threshold=0.4, save_plots=False)
    assert res['tbx11k/specificity'] == pytest.approx(2 / 4)


def test_youden_threshold_chosen_on_set(tmp_path):
    ann, samples = _cls_case(tmp_path)
    # J: >.9: 0; .9: 1/3; .5: 2/3+3/4-1=.4167; .4: 1/6; .2: -1/12; 0: 0
    res, m = run(ann, samples, out_dir=str(tmp_path / 'rep'),
                 save_plots=False)
    assert res['tbx11k/cls_threshold'] == 0.5
    assert res['tbx11k/sensitivity'] == pytest.approx(2 / 3)
    src = m.last_report['classification']['threshold_source']
    assert 'chosen on the evaluated set' in src
    md = open(tmp_path / 'rep' / 'metrics.md').read()
    assert 'chosen on the evaluated set' in md
    assert 'TB vs non-TB' in md


def test_class_without_gt_is_na(tmp_path):
    ann, samples, dets, _, _ = random_case(tmp_path, seed=2)
    # add predictions of the third class; it has no GT box
    samples[-1] = sample(24, [[0, 0, 40, 40]], [0.9], [2])
    res, m = run(ann, samples, classes=THREE, out_dir=str(tmp_path / 'r'),
                 save_plots=False)
    assert 'tbx11k/UncertainTB_AP_all' not in res
    assert 'tbx11k/UncertainTB_AP50_tbonly' not in res
    assert res['tbx11k/ActiveTB_AP_all'] >= 0
    rep = json.load(open(tmp_path / 'r' / 'metrics.json'))
    assert rep['metrics']['UncertainTB_AP_all'] is None
    assert rep['metrics']['UncertainTB_AP50_all'] is None
    # mean over the two classes with GT, as pycocotools does
    a, lat = res['tbx11k/ActiveTB_AP_all'], res['tbx11k/LatentTB_AP_all']
    assert res['tbx11k/bbox_mAP'] == pytest.approx((a + lat) / 2)
    md = open(tmp_path / 'r' / 'metrics.md').read()
    assert '| UncertainTB | n/a | n/a | n/a | n/a |' in md


def test_empty_predictions(tmp_path):
    ann = write_gt(tmp_path / 'gt.json', [1, 2, 3],
                   [(1, 1, [0, 0, 100, 100]), (2, 2, [0, 0, 50, 50])])
    res, _ = run(ann, [sample(i) for i in (1, 2, 3)],
                 out_dir=str(tmp_path / 'r'))
    assert res['tbx11k/bbox_mAP'] == 0.0
    assert res['tbx11k/TB_AP50_all'] == 0.0
    assert res['tbx11k/TB_AP_tbonly'] == 0.0
    assert res['tbx11k/FROC_mean'] == 0.0
    assert res['tbx11k/AUC'] == 0.5
    assert res['tbx11k/sensitivity'] == 0.0
    assert res['tbx11k/specificity'] == 1.0
    assert osp.getsize(tmp_path / 'r' / 'froc.png') > 0
    # no sample processed at all (all 3 images count as without detections)
    res, _ = run(ann, [], save_plots=False)
    assert res['tbx11k/TB_AP_all'] == 0.0
    # no GT at all: detection figures are n/a, nothing crashes
    ann = write_gt(tmp_path / 'nogt.json', [1, 2], [])
    res, _ = run(ann, [sample(1, [[0, 0, 9, 9]], [0.5], [0]), sample(2)],
                 out_dir=str(tmp_path / 'r2'))
    assert 'tbx11k/TB_AP_all' not in res and 'tbx11k/AUC' not in res
    assert res['tbx11k/specificity'] == pytest.approx(1.0)


def test_only_the_served_images_are_evaluated(tmp_path):
    """A dataset serving a subset (tb_only=True, indices) is evaluated on
    that subset: the other images of the json are neither non-TB images
    nor missed lesions."""
    # images 1, 2 TB; 3, 4 non-TB; image 2 (and its box) is not served
    ann = write_gt(tmp_path / 'gt.json', [1, 2, 3, 4],
                   [(1, 1, [0, 0, 100, 100]), (2, 2, [0, 0, 50, 50])])
    served = [sample(1, [[0, 0, 100, 100]], [0.75], [0]),
              sample(3, [[0, 0, 8, 8]], [0.5], [0]), sample(4)]
    res, m = run(ann, served, out_dir=str(tmp_path / 'r'))
    # by hand, on images 1, 3, 4: one lesion, found at the top score; one
    # false positive on 3 images = 1/3 FP per image from score 0.5 down
    assert res['tbx11k/FROC@0.125'] == 1.0 and res['tbx11k/FROC_mean'] == 1.0
    assert res['tbx11k/ActiveTB_AP50_all'] == pytest.approx(1.0)
    assert 'tbx11k/LatentTB_AP50_all' not in res  # its only box not served
    # image scores .75 (TB), .5, 0 (non-TB): perfect ranking
    assert res['tbx11k/AUC'] == 1.0 and res['tbx11k/specificity'] == 1.0
    rep = m.last_report
    assert rep['num_images'] == 3 and rep['num_images_not_served'] == 1
    assert rep['classification']['num_tb_images'] == 1
    assert any('not served' in n for n in rep['notes'])
    # the TB-only view: only TB images served; AUC is n/a, not 1.0 or 0.5
    res, m = run(ann, served[:1], save_plots=False)
    assert 'tbx11k/AUC' not in res and res['tbx11k/FROC_mean'] == 1.0
    assert m.last_report['num_images_not_served'] == 3
    # everything served: the figures of the whole json
    res, m = run(ann, served + [sample(2)], save_plots=False)
    assert m.last_report['num_images'] == 4
    assert m.last_report['num_images_not_served'] == 0
    assert res['tbx11k/FROC_mean'] == 0.5
    # a submission needs a line for every image of the json
    res, _ = run(ann, served, format_only=True,
                 outfile_prefix=str(tmp_path / 'sub' / 'x'))
    assert len(np.loadtxt(tmp_path / 'sub' / 'x.cls.txt')) == 4


def test_boxes_the_dataset_drops_as_too_small_are_scored_and_noted(tmp_path):
    """TBX11KDataset drops boxes under 1 px after clipping (logged); the evaluation keeps the
    json's boxes, as the official one does, and says which ones the model never trained on."""
    ann = write_gt(tmp_path / 'gt.json', [1, 2],
                   [(1, 1, [0, 0, 100, 100]), (2, 1, [511.5, 10, 2, 20]),
                    (2, 1, [5, 5, 0.5, 30])])
    res, m = run(ann, [sample(1, [[0, 0, 100, 100]], [0.75], [0]), sample(2)],
                 save_plots=False)
    assert m.last_report['num_gt_boxes']['ActiveTB'] == 3
    assert res['tbx11k/FROC_mean'] == pytest.approx(1 / 3)
    note = [n for n in m.last_report['notes'] if 'under 1 px' in n]
    assert len(note) == 1 and note[0].startswith('2 GT boxes') and 'ids 2, 3' in note[0]


def test_unknown_image_id_is_a_clear_error(tmp_path):
    ann = write_gt(tmp_path / 'gt.json', [1, 2], [(1, 1, [0, 0, 9, 9])])
    with pytest.raises(ValueError) as e:
        run(ann, [sample(1), sample(777, [[0, 0, 5, 5]], [0.5], [0])])
    assert '777' in str(e.value) and 'gt.json' in str(e.value)


def test_unknown_class_name_is_a_clear_error(tmp_path):
    ann = write_gt(tmp_path / 'gt.json', [1], [])
    with pytest.raises(ValueError, match='Nodule'):
        run(ann, [sample(1)], classes=('ActiveTuberculosis', 'Nodule'))


def test_format_only_submission(tmp_path, monkeypatch):
    import tbx11k.evaluation.tbx11k_metric as metric_module
    logged = []
    monkeypatch.setattr(metric_module, 'print_log', lambda msg, **kw: logged.append(msg))
    # unlabelled test json: images only, in a non-sorted order
    ann = write_gt(tmp_path / 'test.json', [3, 1, 2], [],
                   with_annotations=False)
    samples = [
        sample(1, [[10, 20, 110, 70]], [0.75], [0]),
        sample(2),
        sample(3, [[0, 0, 8, 4], [1, 1, 5, 5]], [0.25, 0.5], [1, 0]),
    ]
    prefix = tmp_path / 'sub' / 'tbx11k_test'
    # classes in a different order than the json ids: mapping is by name
    res, _ = run(ann, samples, classes=TWO[::-1], format_only=True,
                 outfile_prefix=str(prefix))
    assert res == {}
    dets = json.load(open(f'{prefix}.bbox.json'))
    assert sorted((d['image_id'], d['category_id'], d['bbox'], d['score'])
                  for d in dets) == [
                      (1, 2, [10.0, 20.0, 100.0, 50.0], 0.75),
                      (3, 1, [0.0, 0.0, 8.0, 4.0], 0.25),
                      (3, 2, [1.0, 1.0, 4.0, 4.0], 0.5),
                  ]
    # official format: one line per image in json order, 3 probabilities
    lines = open(f'{prefix}.cls.txt').read().splitlines()
    probs = np.array([[float(v) for v in ln.split()] for ln in lines])
    # json order is 3, 1, 2 -> TB scores .5, .75, 0; the rest split evenly
    np.testing.assert_allclose(
        probs, [[.25, .25, .5], [.125, .125, .75], [.5, .5, 0]], atol=1e-6)
    csv = open(f'{prefix}.cls.csv').read().splitlines()
    assert csv[0].startswith('file_name,image_id,p_healthy')
    assert csv[1].startswith('x/0003.png,3,0.250000,0.250000,0.500000')
    # no threshold: said (the protocol wants the one chosen on val)
    assert sum('format_only without cls_threshold' in m for m in logged) == 1, logged
    logged.clear()
    # with a threshold, arg-max is TB exactly when score >= threshold
    res, _ = run(ann, samples, classes=TWO, format_only=True,
                 outfile_prefix=str(prefix), cls_threshold=0.6)
    assert not any('without cls_threshold' in m for m in logged)
    probs = np.loadtxt(f'{prefix}.cls.txt')
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert probs.argmax(1).tolist() == [0, 2, 0]  # .5 < .6 <= .75
    assert probs[0, 2] < probs[1, 2]  # monotone
    res, _ = run(ann, samples, classes=TWO, format_only=True,
                 outfile_prefix=str(prefix), cls_threshold=0.5)
    assert np.loadtxt(f'{prefix}.cls.txt').argmax(1).tolist() == [2, 2, 0]


def test_reports_and_plots(tmp_path):
    ann, samples, _, _, _ = random_case(tmp_path, seed=4)
    out = tmp_path / 'report'
    res, m = run(ann, samples, out_dir=str(out), weights_tag='EMA')
    for name in ('froc.png', 'pr_curves.png', 'score_hist.png'):
        data = open(out / name, 'rb').read()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000, name
    rep = json.load(open(out / 'metrics.json'))
    assert rep['weights_tag'] == 'EMA'
    assert rep['metrics']['TB_AP50_all'] == res['tbx11k/TB_AP50_all']
    assert set(rep['metrics']) == {k.split('/', 1)[1] for k in res}
    md = open(out / 'metrics.md').read()
    assert 'EMA' in md and '| Category-agnostic TB |' in md
    assert f"{100 * res['tbx11k/TB_AP50_all']:.1f}" in md
    hist = open(out / 'metrics_history.jsonl').read().splitlines()
    assert len(hist) == 1
    expected = {
        'tbx11k/' + k
        for k in [
            'bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_tbonly',
            'TB_AP_all', 'TB_AP50_all', 'TB_AP75_all', 'TB_AP_tbonly',
            'TB_AP50_tbonly', 'ActiveTB_AP_all', 'ActiveTB_AP50_tbonly',
            'LatentTB_AP_all', 'LatentTB_AP50_all', 'FROC@0.125', 'FROC@8',
            'FROC_mean', 'AUC', 'sensitivity', 'specificity', 'binary_accuracy',
            'cls_threshold'
        ]
    }
    assert expected <= set(res)


def test_built_from_registry_through_evaluator(tmp_path):
    """The runner path: METRICS registry, Evaluator, DetDataSample."""
    ann, samples, _, _, _ = random_case(tmp_path, seed=5)
    direct, _ = run(ann, samples, save_plots=False)
    # the Runner builds evaluators with default_scope='mmdet'
    with DefaultScope.overwrite_default_scope('mmdet'):
        ev = Evaluator(metrics=dict(type='TBX11KMetric', ann_file=ann))
    assert isinstance(ev.metrics[0], METRICS.get('TBX11KMetric'))
    ev.dataset_meta = dict(classes=TWO)
    # Evaluator.process turns data elements into dicts itself; mixed
    # DetDataSample / dict input, in a different order than `run`
    for i in range(0, len(samples), 5)[::-1]:
        ev.process(samples[i:i + 5])
    res = ev.evaluate(len(samples))
    assert res == pytest.approx(direct)


def test_reports_go_to_the_runner_log_dir(tmp_path):
    """Without out_dir/outfile_prefix the report lands next to the log of
    the current MMLogger (the Runner's <work_dir>/<timestamp>/)."""
    from mmengine.logging import MMLogger
    ann, samples = _cls_case(tmp_path)
    log_dir = tmp_path / 'work' / '20240101_000000'
    log_dir.mkdir(parents=True)
    name = 'tbx11k_eval_test_logger'
    logger = MMLogger.get_instance(
        name, log_file=str(log_dir / '20240101_000000.log'))
    try:
        assert MMLogger.get_current_instance() is logger
        run(ann, samples, save_plots=False)
    finally:
        for h in list(logger.handlers):
            h.close()
            logger.removeHandler(h)
        MMLogger._instance_dict.pop(name, None)
    assert (log_dir / 'tbx11k_eval' / 'metrics.json').is_file()
    assert (log_dir / 'tbx11k_eval' / 'metrics.md').is_file()


def test_predictions_of_other_images_with_the_same_ids_are_refused(tmp_path):
    """Image ids restart at 1 in every json: a dataloader reading TBX11K_val_only_tb.json with the
    evaluator left on TBX11K_val.json shares every id and scored image X against image Y's GT."""
    ann = write_gt(tmp_path / 'gt.json', [1, 2], [(1, 1, [0, 0, 9, 9])])

    def at(img_id, path):
        ds = sample(img_id, [[0, 0, 9, 9]], [0.9], [0])
        ds.set_metainfo(dict(img_path=path))
        return ds

    res, _ = run(ann, [at(1, '/data/TBX11K/imgs/x/0001.png'), at(2, 'x/0002.png')],
              out_dir=str(tmp_path / 'ok'))
    assert res['tbx11k/TB_AP50_all'] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"1 of 2 predicted images .* image id=2: the dataloader "
                       r"read '/data/TBX11K/imgs/tb/tb0007.png', the ann_file has "
                       r"file_name='x/0002.png'"):
        run(ann, [at(1, '/data/TBX11K/imgs/x/0001.png'), at(2, '/data/TBX11K/imgs/tb/tb0007.png')],
            out_dir=str(tmp_path / 'bad'))


def test_boxes_without_iscrowd_evaluate_as_iscrowd_0(tmp_path):
    """COCO json may leave out 'iscrowd' (= 0); pycocotools' COCOeval reads
    it, so the metric fills it in rather than failing at evaluation."""
    ann, samples, _, _, _ = random_case(tmp_path)
    res, _ = run(ann, samples, save_plots=False)
    data = json.load(open(ann))
    for a in data['annotations']:
        del a['iscrowd']
    bare = tmp_path / 'no_iscrowd.json'
    bare.write_text(json.dumps(data))
    res_bare, _ = run(str(bare), samples, save_plots=False)
    assert res_bare == res
    assert res['tbx11k/TB_AP50_all'] > 0


def test_froc_ignores_crowd_boxes_as_cocoeval(tmp_path):
    """iscrowd=1 boxes are ignored regions (as in COCOeval): not lesions to
    find, and a prediction on one that hits no lesion is neither a hit nor
    a false positive. A crowd-only image stays a TB image."""
    # image 1: lesion G1 + crowd C1; image 2: crowd C2, C3 only; image 3: none
    ann = write_gt(tmp_path / 'gt.json', [1, 2, 3], [
        (1, 1, [0, 0, 100, 100]),
        (1, 1, [200, 200, 100, 100]),
        (2, 1, [0, 0, 100, 100]),
        (2, 1, [300, 300, 50, 50]),
    ])
    data = json.load(open(ann))
    for a in data['annotations'][1:]:
        a['iscrowd'] = 1
    json.dump(data, open(ann, 'w'))
    samples = [
        sample(
            1,
            [
                [200, 200, 300, 300],  # 0.9 on C1: ignored
                [0, 0, 100, 100],  # 0.6 hits G1
            ],
            [0.9, 0.6],
            [0, 0]),
        sample(2, [[0, 0, 100, 80]], [0.8], [0]),  # IoU .8 with C2: ignored
        sample(3, [[0, 0, 50, 50]], [0.5], [0]),  # FP
    ]
    # by score (ignored left out): .6 TP, .5 FP; (FP/img, sens) (0,1)
    # (1/3,1). Counting the crowd boxes gives sens <= 1/4 at every F;
    # counting the predictions on them as FPs gives 0 at F < 1 (mean 4/7).
    out = tmp_path / 'report'
    res, _ = run(ann, samples, out_dir=str(out), save_plots=False)
    for r in (0.125, 0.25, 0.5, 1, 2, 4, 8):
        assert res[f'tbx11k/FROC@{r:g}'] == pytest.approx(1.0), r
    assert res['tbx11k/FROC_mean'] == pytest.approx(1.0)
    dets = [
        dict(image_id=i, category_id=1, bbox=[x0, y0, x1 - x0, y1 - y0],
             score=s) for i, (x0, y0, x1, y1), s in [
                 (1, (200, 200, 300, 300), .9), (1, (0, 0, 100, 100), .6),
                 (2, (0, 0, 100, 80), .8), (3, (0, 0, 50, 50), .5)
             ]
    ]
    ap = cocoeval_stats(ann, dets, [1])
    assert res['tbx11k/ActiveTB_AP50_all'] == pytest.approx(ap[1])
    assert res['tbx11k/TB_AP_all'] == pytest.approx(ap[0])
    rep = json.load(open(out / 'metrics.json'))
    assert rep['num_gt_boxes']['TB (all categories)'] == 1
    assert rep['num_gt_boxes']['ActiveTB'] == 1
    assert rep['num_crowd_boxes'] == 3
    assert rep['num_tb_images'] == 2
    assert rep['classification']['num_tb_images'] == 2


def test_unlabelled_json_is_refused_unless_format_only(tmp_path):
    ann = write_gt(tmp_path / 'test.json', [1, 2], [], with_annotations=False)
    with pytest.raises(ValueError) as exc:
        TBX11KMetric(ann_file=ann)
    msg = str(exc.value)
    assert ann in msg and "no 'annotations'" in msg and 'format_only' in msg
    TBX11KMetric(ann_file=ann, format_only=True,
                 outfile_prefix=str(tmp_path / 'sub'))
    # all_test.json as shipped: "annotations": [] on images of test/ only (scored as all
    # non-TB it gave specificity and accuracy 1.0)
    d = json.load(open(ann))
    d['annotations'] = []
    for im in d['images']:
        im['file_name'] = 'test/' + im['file_name']
    with open(ann, 'w') as f:
        json.dump(d, f)
    with pytest.raises(ValueError, match='test/ only .*format_only'):
        TBX11KMetric(ann_file=ann)
    # images without boxes elsewhere are a labelled healthy set: evaluated (with a warning)
    d['images'][0]['file_name'] = 'health/h1.png'
    with open(ann, 'w') as f:
        json.dump(d, f)
    TBX11KMetric(ann_file=ann)


def test_json_with_a_byte_order_mark_and_broken_json_are_read_as_the_dataset_does(tmp_path):
    """A json saved with a UTF-8 BOM loads in TBX11KDataset; the metric's text-mode json.load
    failed on it with a bare JSONDecodeError. Broken files are named."""
    ann, samples, _, _, _ = random_case(tmp_path)
    plain, _ = quiet(run, ann, samples)
    bom = tmp_path / 'bom.json'
    bom.write_bytes(codecs.BOM_UTF8 + open(ann, 'rb').read())
    with_bom, _ = quiet(run, str(bom), samples)
    assert with_bom == plain and plain['tbx11k/bbox_mAP'] > 0
    bad = tmp_path / 'cut.json'
    bad.write_text(open(ann).read()[:100])
    with pytest.raises(TBX11KDataError, match=r'cut.json: not valid JSON'):
        TBX11KMetric(ann_file=str(bad))
    listed = tmp_path / 'list.json'
    listed.write_text('[]')
    with pytest.raises(TBX11KDataError, match=r"list.json: the top level is a list"):
        TBX11KMetric(ann_file=str(listed))


def test_labelled_json_without_boxes_warns(tmp_path, monkeypatch):
    import tbx11k.evaluation.tbx11k_metric as metric_module
    logged = []
    monkeypatch.setattr(metric_module, 'print_log',
                        lambda msg, **kw: logged.append(msg))
    ann = write_gt(tmp_path / 'healthy.json', [1, 2], [])
    TBX11KMetric(ann_file=ann)
    assert any(ann in m and 'no box' in m and 'format_only' in m
               for m in logged), logged
