"""Time the full TBX11K evaluation on a synthetic val-sized split.

Builds a ground-truth json shaped like TBX11K_val.json (1,800 512x512
images, 200 of them TB with 1-3 boxes, ~80 % ActiveTuberculosis; the TBX11K
json quirks: ``info`` is a list, no ``segmentation``) and 300 predictions
per image, as DINO outputs them (a few boxes near the lesions on TB images,
the rest random with low scores), then runs ``TBX11KMetric.process`` +
``evaluate`` and prints the time. Target: < 10 s on 2 CPU cores.

    python tools/analysis_tools/benchmark_eval.py [--out-dir DIR] [--no-plots] [--repeat N]
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile
import time

import numpy as np
import torch

# this repo's tbx11k: tools/<folder>/<tool>.py is three levels below the repo root
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

CLASSES = ('ActiveTuberculosis', 'ObsoletePulmonaryTuberculosis')
CATEGORIES = [
    dict(id=1, name='ActiveTuberculosis', supercategory='Tuberculosis'),
    dict(id=2, name='ObsoletePulmonaryTuberculosis',
         supercategory='Tuberculosis'),
    dict(id=3, name='PulmonaryTuberculosis', supercategory='Tuberculosis'),
]


def make_gt(n_img=1800, n_tb=200, seed=0):
    rng = np.random.default_rng(seed)
    folders = ['health'] * 800 + ['sick'] * 800 + ['tb'] * n_tb
    folders = (folders + ['sick'] * n_img)[:n_img]
    images = [
        dict(
            id=i + 1,
            file_name=f'{f}/{f[0]}{i:04d}.png',
            width=512,
            height=512,
            date_captured='',
            license=1,
            coco_url='',
            flickr_url='') for i, f in enumerate(folders)
    ]
    anns = []
    tb_ids = [im['id'] for im in images if im['file_name'].startswith('tb')]
    for iid in tb_ids:
        for _ in range(int(rng.integers(1, 4))):
            w, h = rng.uniform(25, 140, 2)
            x, y = rng.uniform(-1, 511 - w), rng.uniform(-1, 511 - h)
            anns.append(
                dict(
                    id=len(anns) + 1,
                    image_id=iid,
                    category_id=int(rng.choice([1, 2], p=[.8, .2])),
                    iscrowd=0,
                    area=float(w * h),
                    bbox=[float(x), float(y),
                          float(w), float(h)],
                    width=512,
                    height=512))
    return dict(
        info=[dict(description='synthetic TBX11K val')],
        licenses=[],
        images=images,
        annotations=anns,
        categories=CATEGORIES)


def make_preds(gt, n_pred=300, seed=1):
    """One dict per image, like mmdet DetDataSample.to_dict() output."""
    rng = np.random.default_rng(seed)
    by_img = {}
    for a in gt['annotations']:
        by_img.setdefault(a['image_id'], []).append(a)
    out = []
    for im in gt['images']:
        xy = rng.uniform(0, 440, (n_pred, 2))
        wh = rng.uniform(15, 150, (n_pred, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, 512)], 1)
        scores = rng.random(n_pred)**6 * 0.5
        labels = rng.integers(0, 2, n_pred)
        k = 0
        for a in by_img.get(im['id'], []):
            for _ in range(3):  # a few jittered boxes per lesion
                x, y, w, h = a['bbox']
                j = rng.normal(0, 0.12, 4) * [w, h, w, h]
                boxes[k] = [x + j[0], y + j[1], x + w + j[2], y + h + j[3]]
                scores[k] = rng.uniform(0.2, 0.9)
                labels[k] = a['category_id'] - 1 if rng.random() < .8 \
                    else 1 - (a['category_id'] - 1)
                k += 1
        order = np.argsort(-scores)
        out.append(
            dict(
                img_id=im['id'],
                ori_shape=(512, 512),
                pred_instances=dict(
                    bboxes=torch.from_numpy(boxes[order].astype(np.float32)),
                    scores=torch.from_numpy(scores[order].astype(np.float32)),
                    labels=torch.from_numpy(labels[order]))))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out-dir', help='also write the report files here')
    ap.add_argument('--no-plots', action='store_true')
    ap.add_argument('--repeat', type=int, default=1)
    ap.add_argument('--images', type=int, default=1800)
    ap.add_argument('--preds', type=int, default=300)
    args = ap.parse_args()

    from tbx11k.evaluation import TBX11KMetric
    gt = make_gt(args.images, min(200, args.images))
    preds = make_preds(gt, args.preds)
    n_det = sum(p['pred_instances']['scores'].numel() for p in preds)
    with tempfile.TemporaryDirectory() as tmp:
        ann = osp.join(tmp, 'TBX11K_val.json')
        with open(ann, 'w') as f:
            json.dump(gt, f)
        times = []
        for _ in range(args.repeat):
            metric = TBX11KMetric(
                ann_file=ann,
                out_dir=args.out_dir,
                save_plots=not args.no_plots,
                weights_tag='synthetic benchmark')
            metric.dataset_meta = dict(classes=CLASSES)
            t0 = time.perf_counter()
            for i in range(0, len(preds), 8):
                metric.process({}, preds[i:i + 8])
            t1 = time.perf_counter()
            res = metric.evaluate(len(preds))
            t2 = time.perf_counter()
            times.append((t1 - t0, t2 - t1))
    for k in ('tbx11k/bbox_mAP', 'tbx11k/TB_AP50_all', 'tbx11k/TB_AP_tbonly',
              'tbx11k/FROC_mean', 'tbx11k/AUC'):
        print(f'{k:24s} {res.get(k)}')
    best = min(times, key=sum)
    print(f'{len(preds)} images x {args.preds} predictions ({n_det} boxes, '
          f'{len(gt["annotations"])} GT boxes), {os.cpu_count()} CPUs'
          f'{", report files + plots written" if args.out_dir else ""}')
    print('runs (process + evaluate): ' +
          ', '.join(f'{a:.2f} + {b:.2f} = {a + b:.2f} s' for a, b in times))
    print(f'full evaluation: first run {sum(times[0]):.2f} s, best '
          f'{sum(best):.2f} s (target < 10 s)')


if __name__ == '__main__':
    main()
