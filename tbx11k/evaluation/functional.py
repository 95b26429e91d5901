"""Numerical building blocks of the TBX11K evaluation protocol.

Pure numpy / pycocotools; no mmengine. Everything here is vectorised over
images where possible; the only per-image Python loop left is the greedy
FROC matching, and it only visits images that have ground truth and, inside
them, predictions that overlap a ground-truth box with IoU >= the threshold.
"""
import contextlib
import copy
import io
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

#: false positives per image at which FROC sensitivities are reported
FROC_FPPI = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


# --------------------------------------------------------------------------
# COCO helpers
# --------------------------------------------------------------------------
class FastCOCOeval(COCOeval):
    """``pycocotools.cocoeval.COCOeval`` with a vectorised ``accumulate``.

    ``evaluate`` is pycocotools' own. ``accumulate`` computes exactly the
    same arrays as pycocotools (the same mergesort, cumsum and
    ``searchsorted``; only the Python loop that makes precision monotone is
    replaced by ``np.maximum.accumulate``, which is exact). It only supports
    the bbox/segm case with ``useCats`` and evaluation params equal to the
    params used at ``evaluate`` time (what this package does); anything
    else falls back to pycocotools' implementation.
    """

    def accumulate(self, p=None):
        """pycocotools' ``accumulate``, vectorised (see the class docstring).

        Args:
            p (Params, optional): Evaluation params; anything but None falls back to pycocotools.
                Defaults to None.
        """
        if p is not None or not self.params.useCats:
            return super().accumulate(p)
        p = self.params
        pe = self._paramsEval
        if (list(p.catIds) != list(pe.catIds)
                or list(p.imgIds) != list(pe.imgIds)
                or list(p.maxDets) != list(pe.maxDets)
                or [tuple(a) for a in p.areaRng]
                != [tuple(a) for a in pe.areaRng]):
            return super().accumulate(p)
        T, R = len(p.iouThrs), len(p.recThrs)
        K, A, M = len(p.catIds), len(p.areaRng), len(p.maxDets)
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        scores = -np.ones((T, R, K, A, M))
        I0, A0 = len(pe.imgIds), len(pe.areaRng)
        rec_thrs = np.asarray(p.recThrs)
        for k in range(K):
            for a in range(A):
                E = self.evalImgs[k * A0 * I0 + a * I0:k * A0 * I0 +
                                  (a + 1) * I0]
                E = [e for e in E if e is not None]
                if not E:
                    continue
                for m, max_det in enumerate(p.maxDets):
                    dt_scores = np.concatenate(
                        [e['dtScores'][0:max_det] for e in E])
                    inds = np.argsort(-dt_scores, kind='mergesort')
                    dt_scores_sorted = dt_scores[inds]
                    dtm = np.concatenate(
                        [e['dtMatches'][:, 0:max_det] for e in E],
                        axis=1)[:, inds]
                    dt_ig = np.concatenate(
                        [e['dtIgnore'][:, 0:max_det] for e in E],
                        axis=1)[:, inds]
                    gt_ig = np.concatenate([e['gtIgnore'] for e in E])
                    npig = np.count_nonzero(gt_ig == 0)
                    if npig == 0:
                        continue
                    tps = np.logical_and(dtm, np.logical_not(dt_ig))
                    fps = np.logical_and(
                        np.logical_not(dtm), np.logical_not(dt_ig))
                    tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
                    fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
                    nd = tp_sum.shape[1]
                    for t in range(T):
                        tp, fp = tp_sum[t], fp_sum[t]
                        rc = tp / npig
                        pr = tp / (fp + tp + np.spacing(1))
                        recall[t, k, a, m] = rc[-1] if nd else 0
                        q = np.zeros((R, ))
                        ss = np.zeros((R, ))
                        if nd:
                            # monotone precision envelope (exact)
                            pr = np.maximum.accumulate(pr[::-1])[::-1]
                            ri = np.searchsorted(rc, rec_thrs, side='left')
                            # pycocotools fills q until the first index
                            # that falls off the end and leaves zeros after
                            valid = ri < nd
                            n_ok = R if valid.all() else int(
                                np.argmin(valid))
                            q[:n_ok] = pr[ri[:n_ok]]
                            ss[:n_ok] = dt_scores_sorted[ri[:n_ok]]
                        precision[t, :, k, a, m] = q
                        scores[t, :, k, a, m] = ss
        self.eval = {
            'params': p,
            'counts': [T, R, K, A, M],
            'precision': precision,
            'recall': recall,
            'scores': scores,
        }


def quiet(fn, *args, **kwargs):
    """Call ``fn`` with pycocotools' prints swallowed.

    Args:
        fn (Callable): The function.
        *args: Its positional arguments.
        **kwargs: Its keyword arguments.

    Returns:
        Any: What ``fn`` returns.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def coco_from_dict(dataset: dict) -> COCO:
    """Build a pycocotools ``COCO`` from an in-memory dict (no file I/O).

    Args:
        dataset (dict): A COCO-format dict.

    Returns:
        COCO: The indexed dataset.
    """
    coco = COCO()
    coco.dataset = dataset
    quiet(coco.createIndex)
    return coco


def topk_per_group(group: np.ndarray, scores: np.ndarray,
                   k: int) -> np.ndarray:
    """Indices of the ``k`` highest-scored items of every group.

    Within a group, ties keep the input order (stable sort, as the
    ``mergesort`` pycocotools uses). The returned indices are sorted by
    group, then by descending score, then by input position, so feeding
    them to COCOeval keeps exactly the detections and the order that
    COCOeval would have kept from the untruncated list.

    Args:
        group (np.ndarray): Each item's group.
        scores (np.ndarray): Each item's score.
        k (int): Items kept per group.

    Returns:
        np.ndarray: The kept indices.
    """
    if group.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-scores.astype(np.float64), group))
    g_sorted = group[order]
    starts = np.r_[0, np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1]
    sizes = np.diff(np.r_[starts, g_sorted.size])
    rank = np.arange(g_sorted.size) - np.repeat(starts, sizes)
    return order[rank < k]


def dets_to_coco_anns(img_ids: np.ndarray, cat_ids: np.ndarray,
                      boxes_xyxy: np.ndarray,
                      scores: np.ndarray) -> List[dict]:
    """Detection annotations as ``COCO.loadRes`` would produce them.

    ``loadRes`` sets ``area = w * h``, ``id = position + 1`` and
    ``iscrowd = 0``; the polygon it adds for bbox results is not used by
    bbox evaluation and is omitted.

    Args:
        img_ids (np.ndarray): Each detection's image id.
        cat_ids (np.ndarray): Each detection's category id.
        boxes_xyxy (np.ndarray): ``(N, 4)`` boxes.
        scores (np.ndarray): Each detection's score.

    Returns:
        List[dict]: The annotations.
    """
    b = boxes_xyxy.astype(np.float64)
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    area = (xywh[:, 2] * xywh[:, 3]).tolist()
    return [
        dict(
            image_id=i,
            category_id=c,
            bbox=bb,
            score=s,
            area=a,
            id=n + 1,
            iscrowd=0) for n, (i, c, bb, s, a) in enumerate(
                zip(img_ids.tolist(), cat_ids.tolist(), xywh.tolist(),
                    scores.astype(np.float64).tolist(), area))
    ]


def run_cocoeval(coco_gt: COCO, coco_dt: COCO, cat_ids: Sequence[int],
                 img_ids: Sequence[int],
                 max_dets: Union[int, Sequence[int]]) -> FastCOCOeval:
    """COCOeval restricted to what the protocol needs.

    Only the ``all`` area range and the given ``maxDets`` (one value, or an
    increasing sequence) are evaluated: AP, AP50 and AP75 at ``maxDets=m``
    are then identical to pycocotools' figures of a default run at that
    ``m`` (pycocotools evaluates every area range independently and each
    maxDet by truncation of the same score-sorted lists).

    Args:
        coco_gt (COCO): The ground truth.
        coco_dt (COCO): The detections.
        cat_ids (Sequence[int]): The categories evaluated.
        img_ids (Sequence[int]): The images evaluated.
        max_dets (int | Sequence[int]): Detections per image: one value, or an increasing
            sequence.

    Returns:
        FastCOCOeval: The evaluated and accumulated COCOeval.
    """
    ev = FastCOCOeval(coco_gt, coco_dt, 'bbox')
    ev.params.catIds = list(cat_ids)
    ev.params.imgIds = list(img_ids)
    ev.params.maxDets = ([int(max_dets)] if isinstance(max_dets, (int, np.integer))
                         else [int(m) for m in max_dets])
    ev.params.areaRng = [ev.params.areaRng[0]]
    ev.params.areaRngLbl = ['all']
    quiet(ev.evaluate)
    quiet(ev.accumulate)
    return ev


def subset_cocoeval(ev: FastCOCOeval,
                    img_ids: Sequence[int]) -> FastCOCOeval:
    """Re-accumulate an evaluated COCOeval on a subset of its images.

    ``evaluate`` is per image (and per category), so the result equals a
    fresh COCOeval run with ``params.imgIds = img_ids``; only the
    accumulation is repeated. Image order is the sorted order pycocotools
    uses, which also keeps its tie-breaking in the score sort identical.

    Args:
        ev (FastCOCOeval): An evaluated COCOeval.
        img_ids (Sequence[int]): The subset's images.

    Returns:
        FastCOCOeval: A COCOeval accumulated on the subset.
    """
    pe = ev._paramsEval
    sub_ids = [i for i in np.unique(np.asarray(img_ids, dtype=np.int64))]
    pos = {int(i): n for n, i in enumerate(pe.imgIds)}
    missing = [i for i in sub_ids if int(i) not in pos]
    if missing:
        raise KeyError(f'images {missing[:10]} were not evaluated')
    idx = np.array([pos[int(i)] for i in sub_ids], dtype=np.int64)
    I0, A0 = len(pe.imgIds), len(pe.areaRng)
    sub = copy.copy(ev)
    sub.params = copy.deepcopy(ev.params)
    sub._paramsEval = copy.deepcopy(pe)
    sub.params.imgIds = list(sub_ids)
    sub._paramsEval.imgIds = list(sub_ids)
    sub.evalImgs = [
        ev.evalImgs[k * A0 * I0 + a * I0 + i]
        for k in range(len(pe.catIds)) for a in range(A0) for i in idx
    ]
    quiet(sub.accumulate)
    return sub


def ap_from_precision(precision: np.ndarray,
                      iou_thrs: np.ndarray,
                      iou: Optional[float] = None,
                      k: Optional[int] = None,
                      m: int = -1) -> Optional[float]:
    """pycocotools' ``_summarize`` on ``eval['precision']`` (T,R,K,A,M).

    Mean over the entries that are not -1 (categories without ground
    truth are -1 everywhere and therefore left out, never averaged in);
    ``None`` when nothing is left (pycocotools would print -1). ``m`` is the
    index of the maxDets entry (default: the last).

    Args:
        precision (np.ndarray): ``eval['precision']``.
        iou_thrs (np.ndarray): The IoU thresholds of its first axis.
        iou (float, optional): One IoU threshold; None averages them all. Defaults to None.
        k (int, optional): One category index; None averages them all. Defaults to None.
        m (int): The index of the maxDets entry. Defaults to -1 (the last).

    Returns:
        float | None: The AP, None when nothing is left (pycocotools would print -1).
    """
    s = precision
    if iou is not None:
        s = s[np.where(iou == iou_thrs)[0]]
    if k is not None:
        s = s[:, :, k:k + 1]
    s = s[:, :, :, 0, m]
    s = s[s > -1]
    return float(np.mean(s)) if s.size else None


# --------------------------------------------------------------------------
# FROC
# --------------------------------------------------------------------------
def _intersection_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas of float64 boxes ``a`` (N, 4) and ``b`` (M, 4): (N, M)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(
        a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(
        a[:, None, 1], b[None, :, 1])
    return np.clip(iw, 0, None) * np.clip(ih, 0, None)


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix; areas are w*h as in pycocotools.

    Args:
        a (np.ndarray): ``(N, 4)`` boxes.
        b (np.ndarray): ``(M, 4)`` boxes.

    Returns:
        np.ndarray: ``(N, M)`` IoUs.
    """
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    inter = _intersection_xyxy(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def box_ioa_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the area of ``a``, matrix (len(a), len(b)).

    This is the overlap pycocotools' COCOeval uses between a detection
    ``a`` and an ``iscrowd=1`` box ``b`` (its ``iou`` with the crowd flag):
    a detection lying inside a crowd region overlaps it fully, however
    small it is. Areas are w*h; a detection of zero area overlaps nothing.
    """
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    inter = _intersection_xyxy(a, b)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(area_a > 0, inter / area_a, 0.0)


def greedy_match(pred_img: np.ndarray,
                 pred_boxes: np.ndarray,
                 pred_scores: np.ndarray,
                 gt_img: np.ndarray,
                 gt_boxes: np.ndarray,
                 iou_thr: float = 0.5) -> np.ndarray:
    """Mark each prediction as hit (True) or false positive (False).

    Per image, predictions are visited in descending score order (ties: in
    input order); a prediction is a hit when it has IoU >= ``iou_thr``
    with a ground-truth box not matched yet, and it takes the unmatched box
    with the highest IoU (the COCO matching rule, class-agnostic); among
    unmatched boxes of equal IoU it takes the last one of the image in
    input order, as pycocotools' ``evaluateImg`` does (it keeps a later box
    whose IoU is not below the best so far). Every other prediction,
    including a second hit on an already matched box, is a false positive.

    Args:
        pred_img (np.ndarray): Each prediction's image.
        pred_boxes (np.ndarray): ``(N, 4)`` predicted boxes.
        pred_scores (np.ndarray): Their scores.
        gt_img (np.ndarray): Each GT box's image.
        gt_boxes (np.ndarray): ``(M, 4)`` GT boxes.
        iou_thr (float): The IoU of a hit. Defaults to 0.5.

    Returns:
        np.ndarray: ``(N,)`` bool, True for a hit.
    """
    hit = np.zeros(pred_img.shape[0], dtype=bool)
    if gt_img.size == 0 or pred_img.size == 0:
        return hit
    gt_order = np.argsort(gt_img, kind='stable')
    g_img_sorted = gt_img[gt_order]
    uniq_gt_imgs, g_start = np.unique(g_img_sorted, return_index=True)
    g_end = np.r_[g_start[1:], g_img_sorted.size]
    # predictions grouped by image, descending score inside an image
    p_order = np.lexsort((-pred_scores.astype(np.float64), pred_img))
    p_img_sorted = pred_img[p_order]
    p_lo = np.searchsorted(p_img_sorted, uniq_gt_imgs, side='left')
    p_hi = np.searchsorted(p_img_sorted, uniq_gt_imgs, side='right')
    for gs, ge, ps, pe in zip(g_start, g_end, p_lo, p_hi):
        if pe == ps:
            continue
        p_idx = p_order[ps:pe]
        g = gt_boxes[gt_order[gs:ge]]
        iou = box_iou_xyxy(pred_boxes[p_idx], g)
        cand = np.flatnonzero((iou >= iou_thr).any(axis=1))
        if cand.size == 0:
            continue
        free = np.ones(g.shape[0], dtype=bool)
        for c in cand:  # already in descending score order
            row = np.where(free & (iou[c] >= iou_thr), iou[c], -1.0)
            j = row.size - 1 - int(np.argmax(row[::-1]))  # ties: the last
            if row[j] < 0:
                continue
            free[j] = False
            hit[p_idx[c]] = True
            if not free.any():
                break
    return hit


def froc_curve(scores: np.ndarray, hit: np.ndarray, num_gt: int,
               num_images: int) -> Tuple[np.ndarray, np.ndarray,
                                         np.ndarray]:
    """Operating points of a FROC curve.

    One point per distinct score (keeping every prediction with score >= threshold; tied scores
    cannot be separated), preceded by the empty operating point (0, 0, +inf).

    Args:
        scores (np.ndarray): Each prediction's score.
        hit (np.ndarray): Each prediction's hit flag (:func:`greedy_match`).
        num_gt (int): GT boxes.
        num_images (int): Images.

    Returns:
        Tuple[np.ndarray, np.ndarray, np.ndarray]: ``(fppi, sensitivity, thresholds)``.
    """
    order = np.argsort(-scores.astype(np.float64), kind='mergesort')
    s = scores[order].astype(np.float64)
    tp = np.cumsum(hit[order])
    fp = np.cumsum(~hit[order])
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1] \
        if s.size else np.zeros(0, dtype=np.int64)
    fppi = np.r_[0.0, fp[last] / max(num_images, 1)]
    sens = np.r_[0.0, tp[last] / num_gt] if num_gt > 0 else np.r_[0.0,
                                                                  0 * last]
    thr = np.r_[np.inf, s[last]]
    return fppi, sens, thr


def froc_at(fppi: np.ndarray, sens: np.ndarray,
            rates: Sequence[float] = FROC_FPPI) -> List[float]:
    """Highest sensitivity reached at an average number of false positives per image <= each
    rate (no interpolation).

    Args:
        fppi (np.ndarray): The curve's false positives per image.
        sens (np.ndarray): The curve's sensitivities.
        rates (Sequence[float]): The rates. Defaults to ``FROC_FPPI``.

    Returns:
        List[float]: One sensitivity per rate.
    """
    out = []
    for r in rates:
        ok = fppi <= r + 1e-12
        out.append(float(sens[ok].max()) if ok.any() else 0.0)
    return out


# --------------------------------------------------------------------------
# image-level classification
# --------------------------------------------------------------------------
def rank_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the average of the ranks they span.

    Args:
        x (np.ndarray): The values.

    Returns:
        np.ndarray: Their ranks.
    """
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    return ((ends - counts + 1 + ends) / 2.0)[inv.reshape(-1)]


def auc_mann_whitney(scores: np.ndarray,
                     labels: np.ndarray) -> Optional[float]:
    """ROC AUC = P(s_pos > s_neg) + 0.5 P(s_pos == s_neg).

    Mann-Whitney U with average ranks for ties.

    Args:
        scores (np.ndarray): Each image's score.
        labels (np.ndarray): Each image's label (1 positive).

    Returns:
        float | None: The AUC, None when one of the two classes is absent.
    """
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    r = rank_average(scores.astype(np.float64))
    u = r[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_stats(scores: np.ndarray, labels: np.ndarray,
                 thr: float) -> Dict[str, Optional[float]]:
    """Sensitivity, specificity and binary accuracy (TB vs non-TB, two
    classes) for "TB iff score >= thr".

    Args:
        scores (np.ndarray): Each image's score.
        labels (np.ndarray): Each image's label (1 TB).
        thr (float): The threshold.

    Returns:
        Dict[str, Optional[float]]: The statistics (None where undefined).
    """
    labels = labels.astype(bool)
    pred = scores >= thr
    tp = int(np.sum(pred & labels))
    tn = int(np.sum(~pred & ~labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    n = labels.size
    return dict(
        sensitivity=tp / (tp + fn) if tp + fn else None,
        specificity=tn / (tn + fp) if tn + fp else None,
        binary_accuracy=(tp + tn) / n if n else None,
        tp=tp,
        tn=tn,
        fp=fp,
        fn=fn)


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising J = sensitivity + specificity - 1.

    Candidates are the distinct image scores (rule "TB iff score >= t")
    plus one just above the highest score ("nothing is TB"); among equal J
    the highest threshold wins (fewest positive calls).

    Args:
        scores (np.ndarray): Each image's score.
        labels (np.ndarray): Each image's label (1 TB).

    Returns:
        float: The threshold.
    """
    labels = labels.astype(bool)
    s = scores.astype(np.float64)
    n_pos = max(int(labels.sum()), 1)
    n_neg = max(int((~labels).sum()), 1)
    top = float(s.max()) if s.size else 0.0
    above = top + max(1e-6, abs(top) * 1e-6)
    cand = np.r_[above, np.unique(s)[::-1]]  # descending
    # counts of positives / negatives with score >= each candidate
    order = np.argsort(-s, kind='mergesort')
    s_sorted = s[order]
    cum_pos = np.r_[0, np.cumsum(labels[order])]
    cum_neg = np.r_[0, np.cumsum(~labels[order])]
    n_ge = np.searchsorted(-s_sorted, -cand, side='right')
    j = cum_pos[n_ge] / n_pos + (n_neg - cum_neg[n_ge]) / n_neg - 1.0
    return float(cand[int(np.argmax(j))])  # argmax: first = highest


def image_scores(pred_img_pos: np.ndarray, pred_scores: np.ndarray,
                 num_images: int) -> np.ndarray:
    """Highest prediction score per image, 0 for images without any.

    Args:
        pred_img_pos (np.ndarray): Each prediction's image position.
        pred_scores (np.ndarray): Each prediction's score.
        num_images (int): Images.

    Returns:
        np.ndarray: ``(num_images,)`` scores.
    """
    out = np.zeros(num_images, dtype=np.float64)
    if pred_img_pos.size:
        np.maximum.at(out, pred_img_pos, pred_scores.astype(np.float64))
    return out
