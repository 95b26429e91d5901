"""DINOHead whose losses are computed for all decoder layers at once (fewer ops, fewer host syncs).

mmdet 3.3.0's ``DINOHead.loss_by_feat`` loops over the decoder layers (``loss_by_feat_single``:
per layer and image a Hungarian matching with its own cost computation, ``.cpu()``,
``nonzero``/``unique`` and small host-to-device copies, then focal, L1 and GIoU losses with several
``.item()`` / ``torch.any`` reads), once more for the encoder proposals, and again per layer for
the denoising queries (``_loss_dn_single``). On a GPU that is ~3,200 dispatched ops in the loss
forward, ~5,400 in its backward and ~90 host syncs per micro-batch: host-bound.

:class:`BatchedLossDINOHead` computes the same losses (same keys, same values up to float summation
order, same gradients) with:

- matching: for each image the configured match costs (``self.assigner.match_costs``, called
  unchanged on the stacked predictions of every decoder layer and the encoder: those costs are
  row-wise, so the rows equal the per-layer ones) in one pass, ONE device-to-host copy for the
  batch, then ``linear_sum_assignment`` per layer on the host, as ``HungarianAssigner`` does;
- losses: one ``self.loss_cls`` call over the rows of all layers (matching, encoder and
  denoising), one ``self.loss_bbox`` and one ``self.loss_iou`` call over the positives of all
  layers, split into per-layer sums and divided by the normalisers as mmdet's
  ``weight_reduce_loss`` does (``sum / (avg_factor + eps)``), without reading them on the host;
- normalisers: mmdet's semantics (``sync_cls_avg_factor``, clamp(min=1)), with ``reduce_mean``
  looked up at call time in ``mmdet.models.dense_heads.detr_head`` (matching and encoder losses)
  and ``mmdet.models.dense_heads.dino_head`` (denoising losses), once per kind and ``loss()``,
  passing the same local count mmdet passes, so
  :func:`~tbx11k.models.window_loss_normalization.window_reduce_mean` keeps working.

Configurations it does not cover (another assigner, match cost or loss type, ``bg_cls_weight``,
an encoder with another number of queries, ignored instances, overridden target helpers) fall back
to the stock ``DINOHead.loss_by_feat`` with one warning.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from mmdet.models.dense_heads import DINOHead
from mmdet.models.losses import FocalLoss, GIoULoss, L1Loss
from mmdet.models.task_modules.assigners import (
    BBoxL1Cost,
    ClassificationCost,
    FocalLossCost,
    HungarianAssigner,
    IoUCost,
)
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmdet.utils import InstanceList, OptInstanceList

from ..compat.mmcv_cuda_fallback import kernel_dtype
from .host_copy import host_to_device
from .window_loss_normalization import KIND_MODULES

#: match costs whose (num_preds, num_gts) matrix is computed row by row (a row depends only on
#: its own prediction): computing them on stacked predictions gives the per-layer rows
ROW_WISE_MATCH_COSTS = (FocalLossCost, BBoxL1Cost, IoUCost, ClassificationCost)
#: target / loss helpers the batched path replaces: a subclass overriding one gets the stock path
REPLACED_METHODS = ('loss_by_feat_single', 'get_targets', '_get_targets_single', 'loss_dn',
                    '_loss_dn_single', 'get_dn_targets', '_get_dn_targets_single')
_EPS = torch.finfo(torch.float32).eps  # mmdet's weight_reduce_loss: sum / (avg_factor + eps)


@MODELS.register_module()
class BatchedLossDINOHead(DINOHead):
    """mmdet's DINOHead with the decoder, encoder and denoising losses batched over layers.

    A drop-in replacement (``model.bbox_head.type='BatchedLossDINOHead'``): same arguments,
    weights, loss keys and values. See the module docstring for what is batched and when the
    stock computation is used instead.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fallback_warned = False

    # ------------------------------------------------------------------------------------------
    # support checks
    # ------------------------------------------------------------------------------------------
    def unsupported_reason(self) -> Optional[str]:
        """Why the batched losses cannot reproduce stock mmdet for this configuration (or None)."""
        assigner = getattr(self, 'assigner', None)
        if type(assigner) is not HungarianAssigner:
            return f'assigner {type(assigner).__name__} is not HungarianAssigner'
        for cost in assigner.match_costs:
            if type(cost) not in ROW_WISE_MATCH_COSTS:
                return f'match cost {type(cost).__name__} is not supported'
            if isinstance(cost, FocalLossCost) and cost.binary_input:
                return 'FocalLossCost(binary_input=True) is not supported'
        if type(self.loss_cls) is not FocalLoss or not self.loss_cls.use_sigmoid \
                or self.loss_cls.activated:
            return f'loss_cls {type(self.loss_cls).__name__} is not a sigmoid FocalLoss on logits'
        if type(self.loss_bbox) is not L1Loss:
            return f'loss_bbox {type(self.loss_bbox).__name__} is not L1Loss'
        if type(self.loss_iou) is not GIoULoss:
            return f'loss_iou {type(self.loss_iou).__name__} is not GIoULoss'
        for name, loss in (('loss_cls', self.loss_cls), ('loss_bbox', self.loss_bbox),
                           ('loss_iou', self.loss_iou)):
            if loss.reduction != 'mean':
                return f"{name} reduction is {loss.reduction!r}, not 'mean'"
        if self.bg_cls_weight != 0:
            return f'bg_cls_weight is {self.bg_cls_weight}, not 0'
        for name in REPLACED_METHODS:
            if getattr(type(self), name) is not getattr(DINOHead, name):
                return f'{type(self).__name__} overrides {name}'
        return None

    def _warn_fallback(self, reason: str) -> None:
        if not self._fallback_warned:
            self._fallback_warned = True
            print_log(f'BatchedLossDINOHead: {reason}; computing the losses with the stock '
                      'DINOHead.loss_by_feat (layer by layer) instead.',
                      logger='current', level=logging.WARNING)

    # ------------------------------------------------------------------------------------------
    # losses
    # ------------------------------------------------------------------------------------------
    def loss_by_feat(self,
                     all_layers_cls_scores: Tensor,
                     all_layers_bbox_preds: Tensor,
                     enc_cls_scores: Optional[Tensor],
                     enc_bbox_preds: Optional[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     dn_meta: Dict[str, int],
                     batch_gt_instances_ignore: OptInstanceList = None) -> Dict[str, Tensor]:
        """The losses of ``DINOHead.loss_by_feat``, batched over the decoder layers."""
        reason = self.unsupported_reason()
        if reason is None:
            if batch_gt_instances_ignore is not None:
                reason = 'batch_gt_instances_ignore is set'
            elif dn_meta is None:
                reason = 'dn_meta is None'
            elif enc_cls_scores is not None and enc_cls_scores.shape[1] != \
                    all_layers_cls_scores.shape[2] - dn_meta['num_denoising_queries']:
                reason = 'the encoder proposals and the decoder have different query counts'
        if reason is not None:
            self._warn_fallback(reason)
            return super().loss_by_feat(all_layers_cls_scores, all_layers_bbox_preds,
                                        enc_cls_scores, enc_bbox_preds, batch_gt_instances,
                                        batch_img_metas, dn_meta, batch_gt_instances_ignore)
        return self._batched_loss_by_feat(all_layers_cls_scores, all_layers_bbox_preds,
                                          enc_cls_scores, enc_bbox_preds, batch_gt_instances,
                                          batch_img_metas, dn_meta)

    def match_all_layers(self, matching_cls_scores: Tensor, matching_bbox_preds: Tensor,
                         batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                         factors: Optional[Tensor] = None
                         ) -> List[List[Tuple[np.ndarray, np.ndarray]]]:
        """Hungarian matching of every layer (set) and image, one device-to-host copy in all.

        Args:
            matching_cls_scores (Tensor): ``(num_sets, bs, num_queries, cls_out_channels)``
                logits.
            matching_bbox_preds (Tensor): ``(num_sets, bs, num_queries, 4)`` normalised cxcywh
                boxes.
            batch_gt_instances (InstanceList): Each image's GT boxes and labels.
            batch_img_metas (List[dict]): Each image's meta information.
            factors (Tensor, optional): ``(bs, 4)`` ``[img_w, img_h, img_w, img_h]`` (made from
                the metas if None). Defaults to None.

        Returns:
            List[List[Tuple[np.ndarray, np.ndarray]]]: ``result[s][b] = (query_inds, gt_inds)``:
            ``HungarianAssigner``'s matches for set ``s`` and image ``b`` (query indices
            ascending, as ``linear_sum_assignment`` gives).
        """
        num_sets, num_imgs, num_queries, channels = matching_cls_scores.shape
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        result = [[empty] * num_imgs for _ in range(num_sets)]
        with_gts = [b for b, gt in enumerate(batch_gt_instances) if len(gt) > 0]
        if not with_gts or num_queries == 0:
            return result
        if factors is None:
            factors = matching_bbox_preds.new_tensor(
                [[m['img_shape'][1], m['img_shape'][0]] * 2 for m in batch_img_metas])
        costs = []
        with torch.no_grad():
            for b in with_gts:
                img_h, img_w = batch_img_metas[b]['img_shape'][:2]
                costs.append(self.image_match_costs(
                    matching_cls_scores[:, b].reshape(-1, channels),
                    matching_bbox_preds[:, b].reshape(-1, 4), factors[b],
                    batch_gt_instances[b].labels, batch_gt_instances[b].bboxes, img_h, img_w))
            host = (costs[0] if len(costs) == 1 else torch.cat(costs)).cpu().numpy()
        offset = 0
        for b in with_gts:
            num_gts = len(batch_gt_instances[b])
            size = num_sets * num_queries * num_gts
            cost = host[offset:offset + size].reshape(num_sets, num_queries, num_gts)
            offset += size
            for s in range(num_sets):
                rows, cols = linear_sum_assignment(cost[s])
                result[s][b] = (rows.astype(np.int64), cols.astype(np.int64))
        return result

    def image_match_costs(self, cls_scores: Tensor, bbox_preds: Tensor, factor: Tensor,
                          gt_labels: Tensor, gt_bboxes: Tensor, img_h: int,
                          img_w: int) -> Tensor:
        """``HungarianAssigner``'s cost matrix of one image, flattened.

        The sum of the configured match costs (called unchanged) of the predictions against the
        image's GT boxes. Tensor operations only: ``model.torch_compile`` compiles it (part
        'losses'; the image size is an argument, so it becomes dynamic after one recompilation).

        Args:
            cls_scores (Tensor): ``(num_preds, num_classes)`` logits.
            bbox_preds (Tensor): ``(num_preds, 4)`` normalised cxcywh boxes.
            factor (Tensor): ``[img_w, img_h, img_w, img_h]``.
            gt_labels (Tensor): ``(num_gts, )`` labels.
            gt_bboxes (Tensor): ``(num_gts, 4)`` xyxy boxes in pixels.
            img_h (int): The image height.
            img_w (int): The image width.

        Returns:
            Tensor: The flattened ``(num_preds * num_gts, )`` costs.
        """
        # as DETRHead._get_targets_single: normalised cxcywh -> absolute xyxy
        boxes = bbox_cxcywh_to_xyxy(bbox_preds) * factor.to(bbox_preds.dtype)
        preds = InstanceData(scores=cls_scores, bboxes=boxes)
        gts = InstanceData(labels=gt_labels, bboxes=gt_bboxes)
        img_meta = dict(img_shape=(img_h, img_w))  # what the supported costs read
        return torch.stack([cost(pred_instances=preds, gt_instances=gts, img_meta=img_meta)
                            for cost in self.assigner.match_costs]).sum(dim=0).reshape(-1)

    def _batched_loss_by_feat(self, all_layers_cls_scores: Tensor, all_layers_bbox_preds: Tensor,
                              enc_cls_scores: Optional[Tensor], enc_bbox_preds: Optional[Tensor],
                              batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                              dn_meta: Dict[str, int]) -> Dict[str, Tensor]:
        num_layers, num_imgs, num_total_queries, channels = all_layers_cls_scores.shape
        device = all_layers_cls_scores.device
        num_dn = dn_meta['num_denoising_queries']
        num_queries = num_total_queries - num_dn
        with_enc = enc_cls_scores is not None
        num_match_sets = num_layers + int(with_enc)  # decoder layers, then the encoder
        num_gts = [len(gt) for gt in batch_gt_instances]
        gt_offsets = np.cumsum([0] + num_gts[:-1]).tolist()

        # positive counts, known on the host before matching: one-to-one matching matches
        # min(num_queries, num_gts) per image and set; denoising: every GT in every group
        match_count = sum(min(n, num_queries) for n in num_gts)
        dn_groups = dn_meta['num_denoising_groups'] if num_dn > 0 else 0
        dn_count = sum(num_gts) * dn_groups
        # one host-to-device copy: counts, clamped local counts, per-image scale factors
        floats = np.array([match_count, dn_count, max(match_count, 1.0), max(dn_count, 1.0)] +
                          [v for m in batch_img_metas for v in
                           (m['img_shape'][1], m['img_shape'][0]) * 2], dtype=np.float32)
        floats = host_to_device(floats, device)
        factors = floats[4:].view(num_imgs, 4)

        # matching of all decoder layers and the encoder proposals
        matching_cls = all_layers_cls_scores[:, :, num_dn:].detach()
        matching_box = all_layers_bbox_preds[:, :, num_dn:].detach()
        if with_enc:
            matching_cls = torch.cat([matching_cls, enc_cls_scores.detach()[None]])
            matching_box = torch.cat([matching_box, enc_bbox_preds.detach()[None]])
        matches = self.match_all_layers(matching_cls, matching_box, batch_gt_instances,
                                        batch_img_metas, factors)

        # positives as rows of [all_layers (L, bs, num_total_queries), enc (bs, num_queries)]
        rows, gts, imgs = [], [], []
        layer_rows = num_imgs * num_total_queries
        for s in range(num_match_sets):
            for b in range(num_imgs):
                query_inds, gt_inds = matches[s][b]
                if s < num_layers:
                    base = s * layer_rows + b * num_total_queries + num_dn
                else:
                    base = num_layers * layer_rows + b * num_queries
                rows.append(base + query_inds)
                gts.append(gt_offsets[b] + gt_inds)
                imgs.append(np.full(len(query_inds), b, dtype=np.int64))
            assert sum(len(r) for r in rows[-num_imgs:]) == match_count
        if dn_count:  # as DINOHead._get_dn_targets_single
            per_group = num_dn // dn_groups
            for layer in range(num_layers):
                for b, n in enumerate(num_gts):
                    t = np.tile(np.arange(n, dtype=np.int64), dn_groups)
                    query_inds = np.repeat(np.arange(dn_groups, dtype=np.int64) * per_group,
                                           n) + t
                    rows.append(layer * layer_rows + b * num_total_queries + query_inds)
                    gts.append(gt_offsets[b] + t)
                    imgs.append(np.full(len(t), b, dtype=np.int64))
        num_pos = sum(len(r) for r in rows)
        pos = host_to_device(np.stack([np.concatenate(rows), np.concatenate(gts),
                                       np.concatenate(imgs)]) if num_pos else
                             np.zeros((3, 0), dtype=np.int64), device)
        if num_imgs == 1:
            gt_labels, gt_bboxes = batch_gt_instances[0].labels, batch_gt_instances[0].bboxes
        else:
            gt_labels = torch.cat([gt.labels for gt in batch_gt_instances])
            gt_bboxes = torch.cat([gt.bboxes for gt in batch_gt_instances])

        # normalisers: one reduce_mean per kind, on the local count mmdet passes
        cls_dtype = all_layers_cls_scores.dtype
        # looked up at call time: window_reduce_mean swaps these modules' reduce_mean
        match_pos = torch.clamp(KIND_MODULES['match'].reduce_mean(floats[0:1].to(cls_dtype)),
                                min=1)
        match_cls = match_pos if self.sync_cls_avg_factor else floats[2:3].to(cls_dtype)
        norm_pos = [match_pos.expand(num_match_sets)]
        norm_cls = [match_cls.expand(num_match_sets)]
        dn_pos = torch.clamp(KIND_MODULES['dn'].reduce_mean(floats[1:2].to(cls_dtype)), min=1)
        norm_pos.append(dn_pos.expand(num_layers))
        norm_cls.append((dn_pos if self.sync_cls_avg_factor else
                         floats[3:4].to(cls_dtype)).expand(num_layers))
        norm_pos = torch.cat(norm_pos) + _EPS
        norm_cls = torch.cat(norm_cls) + _EPS

        # (compiled, never under CUDA graphs: the terms outlive the micro-batch in the log)
        losses_cls, losses_bbox, losses_iou = self.loss_terms(
            all_layers_cls_scores, all_layers_bbox_preds, enc_cls_scores, enc_bbox_preds, pos,
            gt_labels, gt_bboxes, factors, norm_cls, norm_pos, num_dn, match_count)
        if self.sync_cls_avg_factor:
            # mmdet divides by the 1-element reduce_mean result (shape (1,)); when that result is
            # below 1 its python max(., 1) gives a 0-dim loss instead: same value, not replicated
            # (it would need a host read)
            losses_cls = losses_cls[:, None]
        return self._loss_dict(losses_cls.unbind(0), losses_bbox.unbind(0),
                               losses_iou.unbind(0), num_layers, with_enc, num_dn,
                               all_layers_cls_scores)

    def loss_terms(self, all_layers_cls_scores: Tensor, all_layers_bbox_preds: Tensor,
                   enc_cls_scores: Optional[Tensor], enc_bbox_preds: Optional[Tensor],
                   pos: Tensor, gt_labels: Tensor, gt_bboxes: Tensor, factors: Tensor,
                   norm_cls: Tensor, norm_pos: Tensor, num_dn: int, match_count: int
                   ) -> Tuple[Tensor, Tensor, Tensor]:
        """Every loss term from the matched positives.

        The classification, L1 and GIoU losses per set, each (num_sets, ) (decoder layers, the
        encoder if any, then the decoder layers' denoising queries), each divided by its
        normaliser. Tensor operations only (no host reads, no matching): ``model.torch_compile``
        compiles it (part 'losses').

        Args:
            all_layers_cls_scores (Tensor): ``(L, bs, Q, num_classes)`` decoder logits.
            all_layers_bbox_preds (Tensor): ``(L, bs, Q, 4)`` decoder boxes.
            enc_cls_scores (Tensor, optional): The encoder's proposal logits.
            enc_bbox_preds (Tensor, optional): The encoder's proposal boxes.
            pos (Tensor): ``(3, num_pos)`` ``(row, gt, image)`` of every positive: rows index
                ``[all_layers (L, bs, Q), enc (bs, Q - num_dn)]``, the ``match_count`` positives
                of each matching set first, then the denoising ones (the same number per layer).
            gt_labels (Tensor): The batch's GT labels, concatenated.
            gt_bboxes (Tensor): The batch's GT boxes, concatenated.
            factors (Tensor): ``(bs, 4)`` ``[img_w, img_h, img_w, img_h]``.
            norm_cls (Tensor): ``(num_sets, )`` normalisers of the classification losses.
            norm_pos (Tensor): ``(num_sets, )`` normalisers of the box losses.
            num_dn (int): Denoising queries per image.
            match_count (int): Positives of each matching set.

        Returns:
            Tuple[Tensor, Tensor, Tensor]: The classification, L1 and GIoU losses per set.
        """
        num_layers, num_imgs, num_total_queries, channels = all_layers_cls_scores.shape
        with_enc = enc_cls_scores is not None
        num_match_sets = num_layers + int(with_enc)
        layer_rows = num_imgs * num_total_queries
        pos_rows, pos_gts, pos_imgs = pos.unbind(0)

        # classification: one focal loss call over every row of every layer
        cls_rows = all_layers_cls_scores.reshape(-1, channels)
        if with_enc:
            cls_rows = torch.cat([cls_rows, enc_cls_scores.reshape(-1, channels)])
        labels = torch.full((cls_rows.size(0), ), self.num_classes, dtype=torch.long,
                            device=cls_rows.device)
        labels[pos_rows] = gt_labels[pos_gts]
        if torch.compiler.is_compiling():
            # one-hot targets take mmdet's FocalLoss down its PyTorch formula on every device
            # (traced and fused), not mmcv's CUDA kernel (an extension call dynamo cannot trace);
            # bf16 logits in float32, as that kernel computes them (float16 stays: autocast
            # runs the formula's BCE in float32 anyway)
            labels = F.one_hot(labels, num_classes=channels + 1)[:, :channels]
            cls_rows = cls_rows.to(kernel_dtype(cls_rows.dtype))
        loss_cls = self.loss_cls(cls_rows, labels, reduction_override='none')
        dec = loss_cls[:num_layers * layer_rows].view(num_layers, num_imgs, num_total_queries,
                                                     channels)
        cls_sums = [dec[:, :, num_dn:].sum((1, 2, 3))]
        if with_enc:
            cls_sums.append(loss_cls[num_layers * layer_rows:].sum().reshape(1))
        cls_sums.append(dec[:, :, :num_dn].sum((1, 2, 3)))
        losses_cls = torch.cat(cls_sums) / norm_cls

        # regression: one L1 and one GIoU call over the positives of every layer
        box_rows = all_layers_bbox_preds.reshape(-1, 4)
        if with_enc:
            box_rows = torch.cat([box_rows, enc_bbox_preds.reshape(-1, 4)])
        num_sets = num_match_sets + num_layers
        if pos.size(1) == 0:  # no GT box in the batch: mmdet's (pred * 0-weight).sum()
            zero = box_rows.sum() * 0
            losses_bbox = losses_iou = zero.expand(num_sets) / norm_pos
        else:
            pos_factors = factors[pos_imgs]
            pos_preds = box_rows[pos_rows]
            pos_targets = bbox_xyxy_to_cxcywh(gt_bboxes[pos_gts] / pos_factors)
            loss_bbox = self.loss_bbox(pos_preds, pos_targets, reduction_override='none')
            loss_iou = self.loss_iou(
                bbox_cxcywh_to_xyxy(pos_preds) * pos_factors.to(pos_preds.dtype),
                bbox_cxcywh_to_xyxy(pos_targets) * pos_factors, reduction_override='none')
            split = num_match_sets * match_count
            dn_per_layer = (pos.size(1) - split) // num_layers
            losses_bbox = torch.cat([
                loss_bbox[:split].reshape(num_match_sets, match_count * 4).sum(1),
                loss_bbox[split:].reshape(num_layers, dn_per_layer * 4).sum(1)]) / norm_pos
            losses_iou = torch.cat([
                loss_iou[:split].reshape(num_match_sets, match_count).sum(1),
                loss_iou[split:].reshape(num_layers, dn_per_layer).sum(1)]) / norm_pos
        return losses_cls, losses_bbox, losses_iou

    @staticmethod
    def _loss_dict(losses_cls: Sequence[Tensor], losses_bbox: Sequence[Tensor],
                   losses_iou: Sequence[Tensor], num_layers: int, with_enc: bool, num_dn: int,
                   cls_scores: Tensor) -> Dict[str, Tensor]:
        """Per-set values -> stock DINOHead's loss dict (same keys, same order)."""
        loss_dict = dict()
        last = num_layers - 1
        loss_dict['loss_cls'] = losses_cls[last]
        loss_dict['loss_bbox'] = losses_bbox[last]
        loss_dict['loss_iou'] = losses_iou[last]
        for i in range(last):
            loss_dict[f'd{i}.loss_cls'] = losses_cls[i]
            loss_dict[f'd{i}.loss_bbox'] = losses_bbox[i]
            loss_dict[f'd{i}.loss_iou'] = losses_iou[i]
        dn = num_layers
        if with_enc:
            loss_dict['enc_loss_cls'] = losses_cls[num_layers]
            loss_dict['enc_loss_bbox'] = losses_bbox[num_layers]
            loss_dict['enc_loss_iou'] = losses_iou[num_layers]
            dn += 1
        dn_cls = list(losses_cls[dn:])
        if num_dn == 0:  # mmdet's _loss_dn_single without denoising queries: zeros(1)
            dn_cls = list(torch.zeros(num_layers, 1, dtype=cls_scores.dtype,
                                      device=cls_scores.device).unbind(0))
        loss_dict['dn_loss_cls'] = dn_cls[last]
        loss_dict['dn_loss_bbox'] = losses_bbox[dn + last]
        loss_dict['dn_loss_iou'] = losses_iou[dn + last]
        for i in range(last):
            loss_dict[f'd{i}.dn_loss_cls'] = dn_cls[i]
            loss_dict[f'd{i}.dn_loss_bbox'] = losses_bbox[dn + i]
            loss_dict[f'd{i}.dn_loss_iou'] = losses_iou[dn + i]
        return loss_dict
