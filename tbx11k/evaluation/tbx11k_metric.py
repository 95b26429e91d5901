"""The TBX11K evaluation protocol as an mmengine metric."""
import datetime
import gc
import json
import logging
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MessageHub, MMLogger, print_log

from mmdet.registry import METRICS

from ..datasets.validation import MIN_BOX_SIZE, TBX11KDataError, read_json, summarize_ids
from . import functional as F
from . import report as R

#: short names used in metric keys and tables
SHORT_NAMES = {
    'ActiveTuberculosis': 'ActiveTB',
    'ObsoletePulmonaryTuberculosis': 'LatentTB',
    'PulmonaryTuberculosis': 'UncertainTB',
}

CLS_TASK = ('Image-level task: TB vs non-TB. An image is TB when its ground '
            'truth has at least one TB box; healthy and sick-but-non-TB '
            'images both count as non-TB (boxes cannot tell them apart). '
            'Image score = highest box score of the image (0 without '
            'boxes); an image is called TB when score >= threshold.')

FROC_RULE = ('FROC rule: category-agnostic, ALL images. Per image, '
             'predictions are taken in descending score order; a prediction '
             'is a hit when its IoU with a not-yet-matched GT box is >= '
             '{iou:g} (it takes the unmatched box of highest IoU, as COCO '
             'matching does), otherwise a false positive. Sensitivity at F = '
             'hits / GT boxes at the lowest score threshold whose false '
             'positives / images <= F (no interpolation); FROC_mean is the '
             'mean over the 7 points. Every prediction is used (no maxDets '
             'cap). iscrowd=1 boxes are ignored regions (as in COCOeval): '
             'not counted as GT boxes, and a prediction that is not a hit '
             'but lies >= {iou:g} inside one (intersection over the '
             "prediction's own area, COCOeval's overlap with a crowd box) "
             'is left out (neither hit nor false positive). Among unmatched '
             'GT boxes of equal IoU a prediction takes the last one, as '
             'pycocotools does.')


def _get(obj, key):
    """``obj[key]`` for dicts, ``getattr`` for data elements."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _same_file(path: str, file_name: str) -> bool:
    """Whether image path ``path`` (data root + prefix + file_name) is ``file_name``."""
    path = osp.normpath(path).replace('\\', '/')
    file_name = osp.normpath(file_name).replace('\\', '/').lstrip('/')
    return path == file_name or path.endswith('/' + file_name)


def _np(x) -> np.ndarray:
    if x is None:
        return None
    if hasattr(x, 'detach'):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _crowd_ignored(pred_img: np.ndarray, pred_boxes: np.ndarray,
                   hit: np.ndarray, crowd_img: np.ndarray,
                   crowd_boxes: np.ndarray, iou_thr: float) -> np.ndarray:
    """Predictions to leave out of the FROC: not a hit, and overlapping an
    ``iscrowd=1`` box of their image by >= ``iou_thr``, the overlap being
    COCOeval's for crowd boxes: intersection over the prediction's own area
    (any number of predictions may fall on one crowd region, as in
    COCOeval)."""
    ign = np.zeros(pred_img.shape[0], dtype=bool)
    for i in np.unique(crowd_img):
        p = np.flatnonzero((pred_img == i) & ~hit)
        if p.size:
            ioa = F.box_ioa_xyxy(pred_boxes[p], crowd_boxes[crowd_img == i])
            ign[p] = (ioa >= iou_thr).any(axis=1)
    return ign


def short_name(name: str) -> str:
    """The short name of a class in tables and plots.

    Args:
        name (str): The class name.

    Returns:
        str: Its short name (``SHORT_NAMES``), else its letters and digits.
    """
    return SHORT_NAMES.get(name, ''.join(ch for ch in name if ch.isalnum()))


@METRICS.register_module()
class TBX11KMetric(BaseMetric):
    """TBX11K detection + classification protocol (official tables, FROC).

    Subclasses :class:`mmengine.evaluator.BaseMetric` rather than mmdet's
    ``CocoMetric``: the only parts of CocoMetric this needs are its
    ``process`` (a few lines) and pycocotools, which is used directly; its
    ``compute_metrics`` evaluates one COCOeval per metric type and would have
    to be replaced entirely, and its proposal/segm arguments do not apply.

    Configure as ``val_evaluator = dict(type='TBX11KMetric',
    ann_file='data/TBX11K/annotations/json/TBX11K_val.json')``. Predictions
    are mmdet ``DetDataSample`` s (``pred_instances.bboxes`` xyxy in the
    original image, ``scores``, ``labels``; ``img_id``). Label ``i`` is
    mapped to the json category whose *name* is ``dataset_meta['classes'][i]``
    (2 classes by default, 3 if the model was trained with
    PulmonaryTuberculosis). The evaluated images are those the dataloader
    served: every image of ``ann_file`` normally, a subset when the dataset
    leaves some out (``tb_only=True``, ``indices``, ``filter_cfg`` outside
    ``test_mode``); the others are left out of every figure (counting them as
    images without detections would call them all non-TB and score them),
    and the report says how many (``num_images_not_served``). An image served
    with no box predicted is an image without detections. ``format_only``
    writes a line for every image of ``ann_file`` (the server expects them
    all); the ones not served get no detections and a warning.

    What one evaluation reports (fractions in [0, 1] in the returned dict,
    percentages in the tables). The returned keys are prefixed with
    ``tbx11k/`` (``prefix`` argument):

    * ``bbox_mAP``, ``bbox_mAP_50``, ``bbox_mAP_75``: COCO bbox AP over the
      evaluated classes on ALL images, identical to pycocotools'
      ``stats[0:3]`` with ``maxDets[-1] = max_dets``; ``*_tbonly`` variants
      on TB-only images (images with >= 1 TB box in the GT). With
      ``official_max_dets=True`` every AP is at 100 detections per image and
      every AP50 / AP75 at 1000, as the official code reports them.
    * ``TB_AP_all``, ``TB_AP50_all``, ``TB_AP75_all``, ``TB_AP_tbonly``,
      ``TB_AP50_tbonly``, ``TB_AP75_tbonly``: category-agnostic TB (all GT
      boxes and all predictions relabelled to one category, COCOeval rerun;
      ``max_dets`` then caps the predictions per image, not per class).
    * ``<cls>_AP_all``, ``<cls>_AP50_all``, ``<cls>_AP75_all`` and the
      ``_tbonly`` variants for each evaluated class, ``<cls>`` being
      ``ActiveTB``, ``LatentTB`` (ObsoletePulmonaryTuberculosis) and
      ``UncertainTB`` (PulmonaryTuberculosis).
    * ``FROC@0.125`` ... ``FROC@8`` and ``FROC_mean``: lesion sensitivity at
      0.125, 0.25, 0.5, 1, 2, 4, 8 false positives per image, ALL images,
      category-agnostic; rule: per image, predictions in descending score
      order; a prediction is a hit when its IoU with a not-yet-matched GT
      box is >= 0.5 (greedy, the matched box is the unmatched one of highest
      IoU, as in COCO matching), otherwise a false positive; the
      sensitivity at F is the one at the lowest score threshold with
      FP/image <= F, no interpolation; every prediction is used.
      ``iscrowd=1`` boxes are ignored regions, as in COCOeval: they are not
      lesions to find, and a prediction that hits no lesion but has IoU >=
      0.5 inside a crowd box (intersection over the prediction's own area,
      COCOeval's overlap with crowd boxes: a small prediction inside a
      crowd region is covered by it) is neither a hit nor a false positive.
      Among unmatched lesions of equal IoU a prediction takes the last one
      of its image, as pycocotools' matching does.
    * ``AUC``, ``sensitivity``, ``specificity``, ``binary_accuracy``,
      ``cls_threshold``: image-level TB vs non-TB (TB = >= 1 TB box in the
      GT; healthy and sick-non-TB cannot be told apart from boxes, both are
      non-TB). Image score = highest box score (0 without boxes); AUC by
      Mann-Whitney with average ranks for ties; TB iff score >=
      threshold, the threshold being ``cls_threshold`` or, when that is
      None, the Youden-J optimum *chosen on the evaluated set itself*
      (reported as such: optimistic on val). ``binary_accuracy`` is the
      two-class accuracy (TB vs non-TB); it is not the official tables'
      3-class Accuracy (healthy / sick-non-TB / TB), which needs a
      healthy-vs-sick decision that boxes cannot give.

    A value that is undefined (a class without GT boxes, AUC without
    positive or negative images, ...) is n/a: ``None`` in ``metrics.json``,
    ``n/a`` in the tables and *absent* from the returned dict (loggers and
    checkpoint selection need numbers); it is never averaged in as -1.

    Files. ``outfile_prefix='a/b/name'`` writes ``a/b/name.bbox.json``
    (COCO results: image_id, category_id, bbox xywh, score, every
    prediction) and the image-level probability files (see
    ``format_only``). The report (``metrics.json``, ``metrics.md``,
    ``froc.png``, ``pr_curves.png``, ``score_hist.png`` and one appended
    line in ``metrics_history.jsonl``) goes to ``out_dir``, else to the
    folder of ``outfile_prefix``, else to ``<runner log dir>/tbx11k_eval``
    when the metric runs inside a Runner; the same table is printed to the
    log in all cases.

    ``format_only=True`` (the unlabelled test split: images, no
    annotations) writes the challenge submission and computes nothing:
    ``name.bbox.json`` and ``name.cls.txt``, the latter in the official
    code's format (yun-liu/Tuberculosis ``tools/test.py --txt``): one line
    per image, in the order of ``images`` in ``ann_file`` (= the dataset
    order), three space-separated probabilities ``p_healthy p_sick_non_tb
    p_tb`` and no file name. ``name.cls.csv`` has the same numbers with
    ``file_name`` and ``image_id`` for people. A detector has no healthy vs
    sick signal, so ``p_tb`` comes from the image score s and the rest is
    split evenly: with ``cls_threshold=None``, ``p_tb = s``; with a
    threshold t, s is mapped monotonically (piecewise linear) so that
    ``p_tb > 1/3`` (the arg-max is TB) exactly when ``s >= t``: the
    server's arg-max decision then equals ours, and AUC (rank based) is
    unchanged. Pass the threshold chosen on val.

    Args:
        ann_file (str): COCO json of the evaluated split (TBX11K format).
        max_dets (int): maxDets of the COCO AP (default 100, pycocotools'
            standard): the detections per image (per class for the
            per-class AP) kept for AP, AP50 and AP75.
        official_max_dets (bool): report AP (@[.50:.95]) at 100 detections
            per image but AP50 and AP75 at 1000, as the official TBX11K code
            (and mmdet's CocoMetric) does: both run pycocotools with
            ``maxDets=[100, 300, 1000]``, whose ``summarize()`` gives AP at
            100 and AP50/AP75 at the last entry. Needs ``max_dets=100``.
            Defaults to False (every figure at ``max_dets``).
        froc_iou_thr (float): IoU for a FROC hit. Defaults to 0.5.
        cls_threshold (float, optional): image-level threshold; None =
            Youden's J on the evaluated set.
        format_only (bool): write the submission files only.
        outfile_prefix (str, optional): prefix of the result files.
        out_dir (str, optional): folder of the report files.
        save_plots (bool): write the PNG plots. Defaults to True.
        weights_tag (str, optional): free text recorded in the report (e.g.
            "EMA"); can also be set as an attribute before evaluation.
        backend_args (dict, optional): for reading ``ann_file``.
        collect_device (str): See ``BaseMetric``. Defaults to 'cpu'.
        prefix (str, optional): See ``BaseMetric``.
        collect_dir (str, optional): See ``BaseMetric``.
    """
    default_prefix: Optional[str] = 'tbx11k'

    def __init__(self,
                 ann_file: str,
                 max_dets: int = 100,
                 official_max_dets: bool = False,
                 froc_iou_thr: float = 0.5,
                 cls_threshold: Optional[float] = None,
                 format_only: bool = False,
                 outfile_prefix: Optional[str] = None,
                 out_dir: Optional[str] = None,
                 save_plots: bool = True,
                 weights_tag: Optional[str] = None,
                 backend_args: Optional[dict] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 collect_dir: Optional[str] = None) -> None:
        super().__init__(
            collect_device=collect_device,
            prefix=prefix,
            collect_dir=collect_dir)
        if ann_file is None:
            raise ValueError('TBX11KMetric needs ann_file (the COCO json '
                             'of the evaluated split)')
        if format_only and outfile_prefix is None:
            raise ValueError('format_only=True needs outfile_prefix (where '
                             'the submission files are written)')
        self.ann_file = ann_file
        self.max_dets = int(max_dets)
        if official_max_dets and self.max_dets != 100:
            raise ValueError(
                f'TBX11KMetric: official_max_dets=True reports AP at 100 and '
                f'AP50/AP75 at 1000 detections per image; it cannot be '
                f'combined with max_dets={max_dets} (leave max_dets at 100, '
                'or drop official_max_dets)')
        self.official_max_dets = bool(official_max_dets)
        self.froc_iou_thr = float(froc_iou_thr)
        self.cls_threshold = cls_threshold
        self.format_only = format_only
        self.outfile_prefix = outfile_prefix
        self.out_dir = out_dir
        self.save_plots = save_plots
        self.weights_tag = weights_tag
        self.backend_args = backend_args
        # read_json: errors name the file, and a UTF-8 byte-order mark (which the dataset reads)
        # is read here too (json.load on text failed on it with a bare JSONDecodeError)
        self._gt_json = read_json(ann_file, backend_args=backend_args)
        if not isinstance(self._gt_json, dict):
            raise TBX11KDataError(f'{ann_file}: the top level is a {type(self._gt_json).__name__}, '
                                  "not a COCO object with 'images' and 'annotations'")
        images = self._gt_json.get('images') or []
        unlabelled_test = (not self._gt_json.get('annotations') and bool(images) and all(
            str(im.get('file_name', '')).replace('\\', '/').lstrip('./').startswith('test/')
            for im in images))  # TBX11K's test split: imgs/test/, labels on the server
        if not format_only and ('annotations' not in self._gt_json or unlabelled_test):
            raise TBX11KDataError(
                f"{ann_file}: no 'annotations' or no box on images of test/ only (an "
                "image-info file such as "
                'all_test.json, whose labels the challenge server holds): '
                'there is nothing to evaluate against. Write the submission '
                'files instead: format_only=True (tools/test.py --format-only)')
        if not format_only and not self._gt_json['annotations']:
            print_log(
                f'TBX11KMetric: {ann_file} has no box: detection AP and '
                'sensitivity are n/a and every image counts as non-TB. If '
                'these are unlabelled test images, write the submission '
                'files instead: format_only=True (tools/test.py '
                '--format-only)',
                logger='current',
                level=logging.WARNING)
        self._gt = None  # lazily built caches
        self.last_report: Optional[dict] = None

    # ------------------------------------------------------------------
    # mmengine interface
    # ------------------------------------------------------------------
    def process(self, data_batch, data_samples: Sequence) -> None:
        """Keep image id and predicted boxes / scores / labels (numpy)."""
        for ds in data_samples:
            pred = _get(ds, 'pred_instances')
            img_id = _get(ds, 'img_id')
            if pred is None:
                boxes = np.zeros((0, 4), np.float32)
                scores = np.zeros(0, np.float32)
                labels = np.zeros(0, np.int64)
            else:
                boxes = _np(_get(pred, 'bboxes'))
                scores = _np(_get(pred, 'scores'))
                labels = _np(_get(pred, 'labels'))
            img_path = _get(ds, 'img_path')
            self.results.append(
                dict(
                    img_id=int(img_id),
                    img_path=img_path if isinstance(img_path, str) else None,
                    bboxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                    scores=np.asarray(scores, np.float32).reshape(-1),
                    labels=np.asarray(labels, np.int64).reshape(-1)))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        full_gt = self._gt_index()
        classes = self._classes()
        cat_ids = self._cat_ids(classes)
        preds = self._gather(results, full_gt, cat_ids)
        served = np.unique(np.array([r['img_id'] for r in results],
                                    dtype=np.int64))
        n_not_served = len(full_gt['img_ids']) - served.size
        gt = full_gt
        if n_not_served and not self.format_only and served.size:
            gt = self._served_gt(served)
            print_log(
                f'TBX11KMetric: evaluating the {served.size} images the '
                f'dataloader served; {n_not_served} of the '
                f'{len(full_gt["img_ids"])} images of {self.ann_file} were '
                'not served (tb_only, indices or filter_cfg of the dataset) '
                'and are not in any figure',
                logger='current')
        elif n_not_served:
            print_log(
                f'TBX11KMetric: {n_not_served} of {len(full_gt["img_ids"])} '
                f'images of {self.ann_file} got no result; they are '
                + ('written as images without detections (the submission '
                   'has a line per image)' if self.format_only else
                   'evaluated as images without detections'),
                logger='current',
                level=logging.WARNING)
        preds['img_pos'] = self._positions(gt, preds['img_ids'])

        if self.outfile_prefix is not None:
            self._write_bbox_json(preds, f'{self.outfile_prefix}.bbox.json')
        img_score = F.image_scores(preds['img_pos'], preds['scores'],
                                   len(gt['img_ids']))
        if self.format_only:
            files = self._write_cls_files(img_score, gt, self.outfile_prefix)
            print_log(
                'TBX11KMetric format_only: wrote '
                f'{self.outfile_prefix}.bbox.json, ' + ', '.join(files),
                logger='current')
            if self.cls_threshold is None:
                print_log(
                    'TBX11KMetric format_only without cls_threshold: the '
                    'image-level file calls an image TB when its top TB score '
                    'is above 1/3 (p_tb = score). Pass the threshold chosen on '
                    'val (--cfg-options test_evaluator.cls_threshold=T; '
                    "tools/test.py on val reports it as 'threshold')",
                    logger='current', level=logging.WARNING)
            return {}

        # hundreds of thousands of small dicts for COCOeval: pausing the
        # cyclic GC (nothing here creates cycles) saves ~30 % of the time
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            report, curves = self._evaluate(preds, gt, classes, cat_ids,
                                            img_score)
        finally:
            if gc_was_enabled:
                gc.enable()
        report['num_images_not_served'] = int(n_not_served) \
            if gt is not full_gt else 0
        if gt is not full_gt:
            report['notes'].append(
                f'{n_not_served} images of the ann_file were not served by '
                'the dataloader (tb_only, indices or filter_cfg) and are not '
                'evaluated.')
        self.last_report = report
        print_log('\n' + R.log_tables(report), logger='current')
        if self.outfile_prefix is not None:
            self._write_cls_files(img_score, gt, self.outfile_prefix)
        out_dir = self._report_dir()
        if out_dir is not None:
            self._write_report(out_dir, report, curves)
        return {
            k: float(v)
            for k, v in report['metrics'].items() if v is not None
        }

    # ------------------------------------------------------------------
    # ground truth and predictions
    # ------------------------------------------------------------------
    def _gt_index(self) -> dict:
        """GT arrays of every image of ``ann_file`` (built once)."""
        if self._gt is None:
            self._gt = self._build_gt(self._gt_json)
        return self._gt

    def _served_gt(self, img_ids: np.ndarray) -> dict:
        """GT arrays of the images ``img_ids`` only."""
        keep = set(img_ids.tolist())
        d = self._gt_json
        return self._build_gt(
            dict(d,
                 images=[im for im in d.get('images', [])
                         if im['id'] in keep],
                 annotations=[a for a in d.get('annotations', []) or []
                              if a['image_id'] in keep]))

    @staticmethod
    def _positions(gt: dict, img_ids: np.ndarray) -> np.ndarray:
        """Index in ``gt['img_ids']`` of each of ``img_ids``."""
        if not img_ids.size:
            return img_ids
        sorted_ids = gt['img_ids'][gt['sorter']]
        return gt['sorter'][np.searchsorted(sorted_ids, img_ids)]

    def _build_gt(self, d: dict) -> dict:
        """GT arrays of json ``d``; ``ann_crowd`` flags ``iscrowd=1`` boxes."""
        images = d.get('images', [])
        anns = d.get('annotations', []) or []
        img_ids = np.array([im['id'] for im in images], dtype=np.int64)
        if np.unique(img_ids).size != img_ids.size:
            raise ValueError(f'duplicate image ids in {self.ann_file}')
        ann_img = np.array([a['image_id'] for a in anns], dtype=np.int64)
        ann_cat = np.array([a['category_id'] for a in anns], dtype=np.int64)
        ann_crowd = np.array([bool(a.get('iscrowd', 0)) for a in anns],
                             dtype=bool)
        xywh = np.array([a['bbox'] for a in anns],
                        dtype=np.float64).reshape(-1, 4)
        ann_xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]],
                                  axis=1)
        # size after clipping to the image, as TBX11KDataset clips before dropping < 1 px
        size_of = {im['id']: (im.get('width', np.inf), im.get('height', np.inf))
                   for im in images}
        wh = np.array([size_of.get(i, (np.inf, np.inf)) for i in ann_img.tolist()],
                      dtype=np.float64).reshape(-1, 2)
        clipped = np.minimum(np.maximum(ann_xyxy, 0), np.tile(wh, 2))
        ann_tiny = ((clipped[:, 2:] - clipped[:, :2]) < MIN_BOX_SIZE).any(axis=1)
        pos = np.searchsorted(np.sort(img_ids), ann_img)
        sorter = np.argsort(img_ids)
        return dict(
            json=d,
            img_ids=img_ids,
            sorter=sorter,
            file_names=[im.get('file_name', '') for im in images],
            ann_img=ann_img,
            ann_img_pos=sorter[pos] if ann_img.size else pos,
            ann_cat=ann_cat,
            ann_crowd=ann_crowd,
            ann_tiny=ann_tiny,
            ann_ids=[a.get('id') for a in anns],
            ann_xyxy=ann_xyxy,
            categories=d.get('categories', []),
            coco=None,
            coco_agnostic=None)

    def _coco(self, gt: dict, agnostic: bool):
        """pycocotools COCO objects for the GT ``gt`` (built once)."""
        key = 'coco_agnostic' if agnostic else 'coco'
        if gt[key] is None:
            d = gt['json']
            anns = d.get('annotations', []) or []
            # COCOeval reads 'iscrowd', which COCO json may leave out (= 0)
            anns = [dict(a, iscrowd=a.get('iscrowd', 0)) for a in anns]
            if agnostic:
                anns = [dict(a, category_id=1) for a in anns]
                cats = [dict(id=1, name='TB', supercategory='Tuberculosis')]
            else:
                cats = d.get('categories', [])
            gt[key] = F.coco_from_dict(
                dict(images=d.get('images', []),
                     annotations=anns,
                     categories=cats))
        return gt[key]

    def _classes(self) -> List[str]:
        meta = self.dataset_meta or {}
        classes = meta.get('classes')
        if not classes:
            raise ValueError(
                'TBX11KMetric needs dataset_meta["classes"] (set by the '
                'Evaluator from the dataset metainfo) to map labels to '
                f'category names of {self.ann_file}')
        return list(classes)

    def _cat_ids(self, classes: List[str]) -> List[int]:
        by_name = {c['name']: c['id'] for c in self._gt['categories']}
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise ValueError(
                f'classes {missing} are not categories of {self.ann_file} '
                f'(it has {sorted(by_name)}): labels would match nothing')
        return [int(by_name[c]) for c in classes]

    def _check_file_names(self, results: list, gt: dict) -> None:
        """Image ids are numbered per json file (1, 2, ... in each): an evaluator ann_file other
        than the dataloader's json can share every id and silently score the predictions of one
        image against the boxes of another. The image path must end with the GT file_name."""
        name_of = dict(zip(gt['img_ids'].tolist(), gt['file_names']))
        wrong = []
        for r in results:
            path, name = r.get('img_path'), name_of.get(r['img_id'])
            if path and name and not _same_file(path, name):
                wrong.append((r['img_id'], path, name))
        if wrong:
            img_id, path, name = wrong[0]
            raise ValueError(
                f'TBX11KMetric: {len(wrong)} of {len(results)} predicted images are other '
                f'images than the ones with the same id in the ann_file {self.ann_file!r}, e.g. '
                f'image id={img_id}: the dataloader read {path!r}, the ann_file has '
                f'file_name={name!r}. The evaluator\'s ann_file must be the json the dataloader '
                'reads (set both; tools/train.py and tools/test.py keep a metric on its '
                "dataloader's json through --data-root and --cfg-options).")

    def _gather(self, results: list, gt: dict, cat_ids: List[int]) -> dict:
        """Concatenate per-image results into flat arrays."""
        seen, keep = set(), []
        dup = 0
        for r in results:
            if r['img_id'] in seen:
                dup += 1
                continue
            seen.add(r['img_id'])
            keep.append(r)
        if dup:
            print_log(
                f'TBX11KMetric: {dup} duplicated image result(s) ignored',
                logger='current',
                level=logging.WARNING)
        known = set(gt['img_ids'].tolist())
        unknown = sorted(i for i in seen if i not in known)
        if unknown:
            raise ValueError(
                f'TBX11KMetric: {len(unknown)} predicted image id(s) are not '
                f'in the ann_file {self.ann_file!r}: {unknown[:10]}'
                f"{' ...' if len(unknown) > 10 else ''}. The evaluator's "
                'ann_file must be the json the dataloader reads.')
        self._check_file_names(keep, gt)
        counts = np.array([r['scores'].size for r in keep], dtype=np.int64)
        img_of = np.repeat(
            np.array([r['img_id'] for r in keep], dtype=np.int64), counts)
        if keep:
            boxes = np.concatenate([r['bboxes'] for r in keep])
            scores = np.concatenate([r['scores'] for r in keep])
            labels = np.concatenate([r['labels'] for r in keep])
        else:
            boxes = np.zeros((0, 4), np.float32)
            scores = np.zeros(0, np.float32)
            labels = np.zeros(0, np.int64)
        bad = (labels < 0) | (labels >= len(cat_ids))
        if bad.any():
            raise ValueError(
                f'TBX11KMetric: predicted labels {np.unique(labels[bad])} '
                f'outside the {len(cat_ids)} dataset classes')
        return dict(
            img_ids=img_of,
            boxes=boxes,
            scores=scores,
            labels=labels,
            cat_ids=np.asarray(cat_ids, dtype=np.int64)[labels])

    # ------------------------------------------------------------------
    # evaluation
    # ------------------------------------------------------------------
    def _evaluate(self, preds: dict, gt: dict, classes: List[str],
                  cat_ids: List[int], img_score: np.ndarray):
        n_img = len(gt['img_ids'])
        all_ids = np.sort(gt['img_ids']).tolist()
        tb_ids = np.unique(gt['ann_img']).tolist()
        metrics: Dict[str, Optional[float]] = {}
        notes = []

        # --- per-class COCO AP, ALL and TB-only images -----------------
        # the maxDets evaluated, and the index of the one each figure uses
        # (one entry; or official: AP at the first, AP50 / AP75 at the last)
        max_dets = self.max_dets_evaluated
        m_of = {None: 0, .5: len(max_dets) - 1, .75: len(max_dets) - 1}
        coco_gt = self._coco(gt, agnostic=False)
        grp = preds['img_ids'] * (int(max(cat_ids)) + 1) + preds['cat_ids']
        keep = F.topk_per_group(grp, preds['scores'], max_dets[-1])
        coco_dt = F.coco_from_dict(
            dict(
                images=gt['json'].get('images', []),
                categories=gt['categories'],
                annotations=F.dets_to_coco_anns(
                    preds['img_ids'][keep], preds['cat_ids'][keep],
                    preds['boxes'][keep], preds['scores'][keep])))
        ev_all = F.run_cocoeval(coco_gt, coco_dt, cat_ids, all_ids,
                                max_dets)
        iou_thrs = ev_all.params.iouThrs
        # COCOeval sorts its category ids; find each class' column
        col = {c: i for i, c in enumerate(ev_all.params.catIds)}
        evs = {'all': ev_all}
        evs['tbonly'] = F.subset_cocoeval(ev_all, tb_ids) if tb_ids else None
        class_keys = [short_name(c) for c in classes]
        for split, ev in evs.items():
            sfx = '' if split == 'all' else '_tbonly'
            p = ev.eval['precision'] if ev is not None else None
            for key, iou in (('bbox_mAP', None), ('bbox_mAP_50', .5),
                             ('bbox_mAP_75', .75)):
                metrics[key + sfx] = None if p is None else \
                    F.ap_from_precision(p, iou_thrs, iou, m=m_of[iou])
            for short, cid in zip(class_keys, cat_ids):
                for key, iou in (('AP', None), ('AP50', .5), ('AP75', .75)):
                    metrics[f'{short}_{key}_{split}'] = None if p is None \
                        else F.ap_from_precision(p, iou_thrs, iou, col[cid],
                                                 m=m_of[iou])

        # --- category-agnostic TB ---------------------------------------
        coco_gt_a = self._coco(gt, agnostic=True)
        keep_a = F.topk_per_group(preds['img_ids'], preds['scores'],
                                  max_dets[-1])
        coco_dt_a = F.coco_from_dict(
            dict(
                images=gt['json'].get('images', []),
                categories=[dict(id=1, name='TB')],
                annotations=F.dets_to_coco_anns(
                    preds['img_ids'][keep_a],
                    np.ones(keep_a.size, dtype=np.int64),
                    preds['boxes'][keep_a], preds['scores'][keep_a])))
        ev_a = F.run_cocoeval(coco_gt_a, coco_dt_a, [1], all_ids,
                              max_dets)
        ev_a_tb = F.subset_cocoeval(ev_a, tb_ids) if tb_ids else None
        for split, ev in (('all', ev_a), ('tbonly', ev_a_tb)):
            p = ev.eval['precision'] if ev is not None else None
            for key, iou in (('AP', None), ('AP50', .5), ('AP75', .75)):
                metrics[f'TB_{key}_{split}'] = None if p is None else \
                    F.ap_from_precision(p, iou_thrs, iou, m=m_of[iou])

        # --- FROC (all predictions, agnostic, ALL images) ---------------
        # iscrowd=1 boxes are ignored regions, as in COCOeval
        crowd = gt['ann_crowd']
        n_gt = int((~crowd).sum())
        n_crowd = int(crowd.sum())
        hit = F.greedy_match(preds['img_ids'], preds['boxes'],
                             preds['scores'], gt['ann_img'][~crowd],
                             gt['ann_xyxy'][~crowd], self.froc_iou_thr)
        used = ~_crowd_ignored(preds['img_ids'], preds['boxes'], hit,
                               gt['ann_img'][crowd], gt['ann_xyxy'][crowd],
                               self.froc_iou_thr)
        froc_fppi, froc_sens, _ = F.froc_curve(preds['scores'][used],
                                               hit[used], n_gt, n_img)
        if n_gt:
            sens = F.froc_at(froc_fppi, froc_sens)
            froc_mean = float(np.mean(sens))
        else:
            sens, froc_mean = [None] * len(F.FROC_FPPI), None
        for r, s in zip(F.FROC_FPPI, sens):
            metrics[f'FROC@{r:g}'] = s
        metrics['FROC_mean'] = froc_mean

        # --- image-level TB vs non-TB -----------------------------------
        labels = np.zeros(n_img, dtype=bool)
        labels[gt['ann_img_pos']] = True
        auc = F.auc_mann_whitney(img_score, labels)
        if self.cls_threshold is not None:
            thr = float(self.cls_threshold)
            thr_src = 'given (cls_threshold)'
        else:
            thr = F.youden_threshold(img_score, labels)
            thr_src = 'Youden J, chosen on the evaluated set'
        bs = F.binary_stats(img_score, labels, thr)
        metrics.update(
            AUC=auc,
            sensitivity=bs['sensitivity'],
            specificity=bs['specificity'],
            binary_accuracy=bs['binary_accuracy'],
            cls_threshold=thr)

        # --- report -------------------------------------------------------
        n_box = {
            short: int(np.sum((gt['ann_cat'] == cid) & ~crowd))
            for short, cid in zip(class_keys, cat_ids)
        }
        n_box['TB (all categories)'] = n_gt
        if n_crowd:
            notes.append(
                f'{n_crowd} GT boxes have iscrowd=1 (not in the GT box '
                'counts): ignored regions for the COCO AP and the FROC '
                f'({int((~used).sum())} predictions on them left out of the '
                'FROC); their images still count as TB images.')
        tiny = gt['ann_tiny'] & ~crowd
        if tiny.any():
            ids = [i for i, t in zip(gt['ann_ids'], tiny) if t]
            notes.append(
                f'{len(ids)} GT boxes are under {MIN_BOX_SIZE:g} px once clipped to the image '
                f'(annotation ids {summarize_ids(ids)}): TBX11KDataset does not train on them, '
                'the evaluation counts them as the json has them.')
            print_log(f'TBX11KMetric: {notes[-1]}', logger='current', level=logging.WARNING)
        for short, cid in zip(class_keys, cat_ids):
            if n_box[short] == 0:
                notes.append(f'{short} has no GT box in this split: its AP '
                             'is n/a and is not part of the class mean.')
        if preds['scores'].size == 0:
            notes.append('No predictions at all.')
        other = sorted(
            set(gt['ann_cat'].tolist()) - set(cat_ids))
        if other:
            names = {c['id']: c['name'] for c in gt['categories']}
            notes.append(
                'GT boxes of categories not predicted by the model '
                f'({[names.get(c, c) for c in other]}) count for the '
                'category-agnostic TB AP, FROC, TB-only images and the '
                'image labels only.')
        step = {}
        hub = MessageHub.get_current_instance()
        for k in ('epoch', 'iter'):
            v = hub.get_info(k)
            if v is not None:
                step[k] = int(v)
        report = dict(
            weights_tag=self.weights_tag,
            ann_file=str(self.ann_file),
            classes=classes,
            class_keys=class_keys,
            num_images=n_img,
            num_tb_images=len(tb_ids),
            num_predictions=int(preds['scores'].size),
            num_gt_boxes=n_box,
            num_crowd_boxes=n_crowd,
            max_dets=self.max_dets,
            max_dets_ap50_ap75=max_dets[-1],
            step=step,
            time=datetime.datetime.now().isoformat(timespec='seconds'),
            metrics=metrics,
            froc=dict(
                fppi=list(F.FROC_FPPI),
                sensitivity=sens,
                mean=froc_mean,
                iou_thr=self.froc_iou_thr,
                rule=FROC_RULE.format(iou=self.froc_iou_thr)),
            classification=dict(
                task=CLS_TASK,
                auc=auc,
                threshold=thr,
                threshold_source=thr_src,
                num_tb_images=int(labels.sum()),
                num_non_tb_images=int((~labels).sum()),
                **bs),
            notes=notes)
        rec_thrs = ev_all.params.recThrs
        t50 = np.where(.5 == iou_thrs)[0][0]
        pr = []
        for short, cid in zip(class_keys, cat_ids):
            prec = ev_all.eval['precision'][t50, :, col[cid], 0, -1]
            pr.append((short, None if (prec < 0).all() else prec,
                       metrics[f'{short}_AP50_all']))
        prec = ev_a.eval['precision'][t50, :, 0, 0, -1]
        pr.insert(0, ('TB agnostic', None if (prec < 0).all() else prec,
                      metrics['TB_AP50_all']))
        curves = dict(
            froc_fppi=froc_fppi,
            froc_sens=froc_sens,
            rec_thrs=rec_thrs,
            pr=pr,
            img_scores=img_score,
            img_labels=labels)
        return report, curves

    # ------------------------------------------------------------------
    # files
    # ------------------------------------------------------------------
    @property
    def max_dets_evaluated(self) -> List[int]:
        """The maxDets COCOeval runs with: ``[max_dets]``, or ``[100, 1000]``
        with ``official_max_dets`` (AP at the first, AP50/AP75 at the last)."""
        return [100, 1000] if self.official_max_dets else [self.max_dets]

    def _report_dir(self) -> Optional[str]:
        if self.out_dir is not None:
            return self.out_dir
        if self.outfile_prefix is not None:
            return osp.dirname(osp.abspath(self.outfile_prefix))
        log_file = getattr(MMLogger.get_current_instance(), 'log_file', None)
        if log_file:
            return osp.join(osp.dirname(log_file), 'tbx11k_eval')
        return None

    def _write_report(self, out_dir: str, report: dict,
                      curves: dict) -> None:
        os.makedirs(out_dir, exist_ok=True)
        with open(osp.join(out_dir, 'metrics.json'), 'w') as f:
            json.dump(report, f, indent=1)
        with open(osp.join(out_dir, 'metrics_history.jsonl'), 'a') as f:
            f.write(
                json.dumps(
                    dict(
                        step=report['step'],
                        time=report['time'],
                        weights_tag=report['weights_tag'],
                        metrics=report['metrics'])) + '\n')
        with open(osp.join(out_dir, 'metrics.md'), 'w') as f:
            f.write(R.markdown(report))
        written = ['metrics.json', 'metrics.md']
        if self.save_plots:
            R.write_plots(out_dir, report, curves)
            written += ['froc.png', 'pr_curves.png', 'score_hist.png']
        print_log(
            f'TBX11KMetric: wrote {", ".join(written)} to {out_dir}',
            logger='current')

    def _write_bbox_json(self, preds: dict, path: str) -> None:
        d = osp.dirname(osp.abspath(path))
        os.makedirs(d, exist_ok=True)
        b = preds['boxes'].astype(np.float64)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        res = [
            dict(image_id=i, category_id=c, bbox=bb, score=s)
            for i, c, bb, s in zip(preds['img_ids'].tolist(),
                                   preds['cat_ids'].tolist(), xywh.tolist(),
                                   preds['scores'].astype(
                                       np.float64).tolist())
        ]
        with open(path, 'w') as f:
            json.dump(res, f)

    def _submission_probs(self, img_score: np.ndarray) -> np.ndarray:
        """(N, 3) rows p_healthy, p_sick_non_tb, p_tb (see class doc)."""
        s = np.clip(img_score.astype(np.float64), 0.0, 1.0)
        t = self.cls_threshold
        if t is None:
            p_tb = s
        else:
            t = float(np.clip(t, 1e-6, 1.0))
            eps = 1e-4  # survives the 6 decimals of the txt
            below = s / t * (1.0 / 3.0 - eps)
            above = (1.0 / 3.0 + eps) + (s - t) / max(1.0 - t, 1e-12) * (
                2.0 / 3.0 - eps)
            p_tb = np.where(s >= t, np.minimum(above, 1.0), below)
        rest = (1.0 - p_tb) / 2.0
        return np.stack([rest, rest, p_tb], axis=1)

    def _write_cls_files(self, img_score: np.ndarray, gt: dict,
                         prefix: str) -> List[str]:
        os.makedirs(osp.dirname(osp.abspath(prefix)), exist_ok=True)
        probs = self._submission_probs(img_score)
        txt, csv = f'{prefix}.cls.txt', f'{prefix}.cls.csv'
        with open(txt, 'w') as f:
            for p in probs:
                f.write(' '.join(f'{v:.6f}' for v in p) + '\n')
        with open(csv, 'w') as f:
            f.write('file_name,image_id,p_healthy,p_sick_non_tb,p_tb,'
                    'image_score\n')
            for name, iid, p, s in zip(gt['file_names'],
                                       gt['img_ids'].tolist(), probs,
                                       img_score):
                f.write(f'{name},{iid},{p[0]:.6f},{p[1]:.6f},{p[2]:.6f},'
                        f'{s:.6f}\n')
        return [txt, csv]
