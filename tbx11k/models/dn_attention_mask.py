"""DINO's denoising queries collated and masked in a constant number of tensor ops.

mmdet's ``CdnQueryGenerator`` spends ops per denoising group (up to 100 groups) in two places:

- ``generate_dn_mask`` fills the mask with two slice assignments per group (each a kernel launch
  and a host-to-device scalar copy on a GPU); :func:`denoising_attention_mask` builds the same
  boolean mask with < 10 ops whatever the number of groups;
- ``collate_dn_queries`` offsets the query index once per group and half-group (``index +
  max_num_target * i``: two ops each, 80 for 5 boxes) and counts each image's targets with a
  comparison and a host read; :meth:`VectorizedDnMaskQueryGenerator.collate_dn_queries` builds
  the same index on the host from the GT counts (known there) and copies it once.

:class:`WindowNormalizedDINO` uses both; tests/models/test_dn_attention_mask.py compares them
with mmdet's.
"""
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from mmdet.models.layers import CdnQueryGenerator

from .host_copy import host_to_device


def denoising_attention_mask(max_num_target: int, num_groups: int, num_matching_queries: int,
                             device) -> Tensor:
    """Boolean (total, total) mask, True = cannot attend, equal to mmdet's ``generate_dn_mask``.

    Queries ``[0, num_dn)`` form ``num_groups`` denoising groups of ``2 * max_num_target``; a
    denoising query sees its own group and the matching queries, a matching query sees only the
    matching queries.

    Args:
        max_num_target (int): The largest GT count of an image in the batch.
        num_groups (int): The denoising groups.
        num_matching_queries (int): The matching queries.
        device (torch.device | str): The mask's device.

    Returns:
        Tensor: The ``(total, total)`` bool mask.
    """
    group_size = 2 * int(max_num_target)
    num_denoising = group_size * int(num_groups)
    total = num_denoising + int(num_matching_queries)
    index = torch.arange(total, device=device)
    group = torch.div(index, max(group_size, 1), rounding_mode='floor')
    # a matching query's ``group`` is >= num_groups: it differs from every denoising key's
    return (index < num_denoising)[None, :] & (group[:, None] != group[None, :])


def padded_attention_mask(mask: Tensor, pad: int) -> Tensor:
    """``mask`` (True = cannot attend) with ``pad`` more queries at the end.

    No query sees them and they see only themselves (a query that sees nothing would make the
    softmax NaN, and a NaN value times a zero weight is NaN in every row).

    Args:
        mask (Tensor): A ``(total, total)`` bool mask.
        pad (int): The queries to add.

    Returns:
        Tensor: The ``(total + pad, total + pad)`` mask.
    """
    total = mask.size(0)
    index = torch.arange(total + pad, device=mask.device)
    padded = index[:, None] != index[None, :]
    padded[:total, :total] = mask
    return padded


def max_denoising_queries(generator: CdnQueryGenerator) -> Optional[int]:
    """The most denoising queries ``generator`` makes while every image has at most its
    ``num_dn_queries`` targets.

    Dynamic groups: ``2 * max_target * (num_dn_queries // max_target)``.

    Args:
        generator (CdnQueryGenerator): The detector's denoising query generator.

    Returns:
        int | None: The count, None for static groups, whose count grows with the targets.
    """
    if not generator.dynamic_dn_groups:
        return None
    return 2 * int(generator.num_dn_queries)


def denoising_query_index(num_targets: List[int], num_groups: int) -> np.ndarray:
    """(2, total) int64 ``(image, slot)`` of every denoising query, on the host.

    The same index as mmdet's ``collate_dn_queries`` (``mapper``): the noisy queries come in
    ``2 * num_groups`` half-groups (positive, negative) of all targets, image after image; the
    target ``k`` of an image goes to slot ``k + i * max_num_target`` of half-group ``i``.

    Args:
        num_targets (List[int]): Each image's GT count.
        num_groups (int): The denoising groups.

    Returns:
        np.ndarray: The ``(2, total)`` index.
    """
    max_num_target = max(num_targets, default=0)
    half_groups = 2 * int(num_groups)
    image = np.repeat(np.arange(len(num_targets), dtype=np.int64), num_targets)
    slot = np.concatenate([np.arange(n, dtype=np.int64) for n in num_targets] or
                          [np.zeros(0, dtype=np.int64)])
    offsets = max_num_target * np.arange(half_groups, dtype=np.int64)[:, None]
    return np.stack([np.tile(image, half_groups), (slot[None, :] + offsets).reshape(-1)])


class VectorizedDnMaskQueryGenerator(CdnQueryGenerator):
    """``CdnQueryGenerator`` whose attention mask is :func:`denoising_attention_mask` and whose
    query collation indexes with :func:`denoising_query_index` (same results as mmdet's)."""

    _num_targets: Optional[List[int]] = None  # GT counts of the call in progress

    def __call__(self, batch_data_samples: list) -> tuple:
        self._num_targets = [len(sample.gt_instances) for sample in batch_data_samples]
        try:
            return super().__call__(batch_data_samples)
        finally:
            self._num_targets = None

    def collate_dn_queries(self, input_label_query: Tensor, input_bbox_query: Tensor,
                           batch_idx: Tensor, batch_size: int,
                           num_groups: int) -> Tuple[Tensor, Tensor]:
        """mmdet's ``collate_dn_queries`` with one index built on the host (no per-group loop).

        Args:
            input_label_query (Tensor): ``(total, dim)`` noisy label queries.
            input_bbox_query (Tensor): ``(total, 4)`` noisy box queries.
            batch_idx (Tensor): ``(num_targets,)`` each target's image.
            batch_size (int): Images in the batch.
            num_groups (int): The denoising groups.

        Returns:
            Tuple[Tensor, Tensor]: The ``(bs, num_dn, dim)`` label and ``(bs, num_dn, 4)`` box
            queries.
        """
        num_targets = self._num_targets
        if num_targets is None or len(num_targets) != batch_size \
                or sum(num_targets) != batch_idx.numel():  # called on its own: one host read
            num_targets = torch.bincount(batch_idx, minlength=batch_size).tolist()
        device = input_label_query.device
        mapper = host_to_device(denoising_query_index(num_targets, num_groups), device).unbind(0)
        num_denoising_queries = int(max(num_targets, default=0) * 2 * num_groups)
        batched_label_query = input_label_query.new_zeros(
            batch_size, num_denoising_queries, self.embed_dims)
        batched_bbox_query = input_bbox_query.new_zeros(batch_size, num_denoising_queries, 4)
        batched_label_query[mapper] = input_label_query
        batched_bbox_query[mapper] = input_bbox_query
        return batched_label_query, batched_bbox_query

    def generate_dn_mask(self, max_num_target: int, num_groups: int, device) -> Tensor:
        """mmdet's ``generate_dn_mask`` in a few ops (:func:`denoising_attention_mask`).

        Args:
            max_num_target (int): The largest GT count of an image in the batch.
            num_groups (int): The denoising groups.
            device (torch.device | str): The mask's device.

        Returns:
            Tensor: The ``(total, total)`` bool mask, True = cannot attend.
        """
        return denoising_attention_mask(max_num_target, num_groups, self.num_matching_queries,
                                        device)
