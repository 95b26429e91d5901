"""DINO's denoising self-attention mask in a constant number of tensor ops.

mmdet's ``CdnQueryGenerator.generate_dn_mask`` fills the mask with two slice assignments per
denoising group (2 x up to 100 groups, each a kernel launch and a host-to-device scalar copy on a
GPU); :func:`denoising_attention_mask` builds the same boolean mask with < 10 ops whatever the
number of groups. :class:`WindowNormalizedDINO` uses it; tests/models/test_dn_attention_mask.py
compares it with mmdet's mask.
"""
import torch
from torch import Tensor

from mmdet.models.layers import CdnQueryGenerator


def denoising_attention_mask(max_num_target: int, num_groups: int, num_matching_queries: int,
                             device) -> Tensor:
    """Boolean (total, total) mask, True = cannot attend, equal to mmdet's ``generate_dn_mask``.

    Queries ``[0, num_dn)`` form ``num_groups`` denoising groups of ``2 * max_num_target``; a
    denoising query sees its own group and the matching queries, a matching query sees only the
    matching queries.
    """
    group_size = 2 * int(max_num_target)
    num_denoising = group_size * int(num_groups)
    total = num_denoising + int(num_matching_queries)
    index = torch.arange(total, device=device)
    group = torch.div(index, max(group_size, 1), rounding_mode='floor')
    # a matching query's ``group`` is >= num_groups: it differs from every denoising key's
    return (index < num_denoising)[None, :] & (group[:, None] != group[None, :])


class VectorizedDnMaskQueryGenerator(CdnQueryGenerator):
    """``CdnQueryGenerator`` whose attention mask is :func:`denoising_attention_mask`."""

    def generate_dn_mask(self, max_num_target: int, num_groups: int, device) -> Tensor:
        return denoising_attention_mask(max_num_target, num_groups, self.num_matching_queries,
                                        device)
