"""Deformable DETR's per-token grids (encoder reference points, two-stage proposals) without
per-level loops or host reads.

mmdet builds both grids level by level from the level shapes, which it reads from the
``spatial_shapes`` tensor on the host (``torch.linspace(0, H - 1, H)``, ``memory_mask[:, cur:cur +
H * W]``): for 4 levels ~320 dispatched ops and ~30 host syncs per micro-batch on a GPU (each
one drains the queue), and code ``torch.compile`` cannot trace. Here every token's level, row and
column come
from tensor ops on ``spatial_shapes`` and the token count (a shape, known on the host), so the
grids take a constant number of ops, no host read, and are traceable. The values are mmdet's
bit for bit (the same float operations on the same integers; tests/models/test_token_grid.py).

- :class:`TokenGridDeformableDetrTransformerEncoder`: the encoder with
  :func:`encoder_reference_points`;
- :func:`encoder_output_proposals`: the grid of ``DeformableDETR.gen_encoder_output_proposals``,
  which :class:`~tbx11k.models.window_normalized_dino.WindowNormalizedDINO` uses.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from mmdet.models.layers import DeformableDetrTransformerEncoder


def token_grid(spatial_shapes: Tensor, num_tokens: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(level, row, column) of each of the ``num_tokens`` flattened tokens.

    Levels come one after the other, each row-major.

    Args:
        spatial_shapes (Tensor): ``(L, 2)`` ``(h, w)`` of each level.
        num_tokens (int): The token count (a shape, known on the host).

    Returns:
        Tuple[Tensor, Tensor, Tensor]: int64 level, row and column, on ``spatial_shapes``'
        device.
    """
    shapes = spatial_shapes.long()
    ends = (shapes[:, 0] * shapes[:, 1]).cumsum(0)
    token = torch.arange(num_tokens, device=shapes.device)
    level = torch.searchsorted(ends, token, right=True)
    level_shapes = shapes[level]
    local = token - (ends - shapes[:, 0] * shapes[:, 1])[level]
    width = level_shapes[:, 1]
    return level, torch.div(local, width, rounding_mode='floor'), local % width


def encoder_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor,
                             num_tokens: int) -> Tensor:
    """``DeformableDetrTransformerEncoder.get_encoder_reference_points`` without per-level loops.

    Args:
        spatial_shapes (Tensor): ``(L, 2)`` ``(h, w)`` of each level.
        valid_ratios (Tensor): ``(bs, L, 2)`` valid (unpadded) width and height ratios.
        num_tokens (int): The token count.

    Returns:
        Tensor: ``(bs, tokens, levels, 2)`` normalised ``(x, y)`` of every token's cell centre,
        per level's valid ratios.
    """
    level, row, col = token_grid(spatial_shapes, num_tokens)
    shapes = spatial_shapes.long()[level]
    ratios = valid_ratios[:, level]  # (bs, tokens, 2) as (w, h)
    # mmdet: linspace(0.5, H - 0.5, H) / (valid_ratio_h * H); row + 0.5 is that linspace exactly
    ref_y = (row.float() + 0.5)[None] / (ratios[..., 1] * shapes[:, 0])
    ref_x = (col.float() + 0.5)[None] / (ratios[..., 0] * shapes[:, 1])
    reference_points = torch.stack((ref_x, ref_y), -1)
    return reference_points[:, :, None] * valid_ratios[:, None]


def encoder_output_proposals(memory_mask: Optional[Tensor], spatial_shapes: Tensor,
                             batch_size: int, num_tokens: int) -> Tensor:
    """The proposals of ``DeformableDETR.gen_encoder_output_proposals`` before its validity check
    and inverse sigmoid.

    Args:
        memory_mask (Tensor, optional): ``(bs, tokens)``, True where padded.
        spatial_shapes (Tensor): ``(L, 2)`` ``(h, w)`` of each level.
        batch_size (int): Images in the batch.
        num_tokens (int): The token count.

    Returns:
        Tensor: ``(bs, tokens, 4)`` ``(cx, cy, w, h)``: the cell centre over the level's valid
        (unpadded) width and height, and ``0.05 * 2 ** level`` as width and height.
    """
    level, row, col = token_grid(spatial_shapes, num_tokens)
    shapes = spatial_shapes.long()
    if memory_mask is not None:
        # mmdet: valid_H = unmasked tokens in the level's first column, valid_W in its first row
        valid = ~memory_mask
        num_levels = shapes.size(0)
        valid_h = valid.new_zeros(batch_size, num_levels, dtype=torch.long).index_add_(
            1, level, (valid & (col == 0)).long())
        valid_w = valid.new_zeros(batch_size, num_levels, dtype=torch.long).index_add_(
            1, level, (valid & (row == 0)).long())
        scale_x, scale_y = valid_w[:, level], valid_h[:, level]
    else:
        scale_x, scale_y = shapes[level, 1][None], shapes[level, 0][None]
    # mmdet: (linspace(0, W - 1, W) + 0.5) / scale; the linspace holds the integers exactly
    cx = (col.float() + 0.5)[None] / scale_x
    cy = (row.float() + 0.5)[None] / scale_y
    size = torch.ones_like(col, dtype=torch.float32) * 0.05 * torch.pow(2, level).float()
    size = size[None].expand(batch_size, -1)
    return torch.stack([cx.expand(batch_size, -1), cy.expand(batch_size, -1), size, size], -1)


class TokenGridDeformableDetrTransformerEncoder(DeformableDetrTransformerEncoder):
    """mmdet's encoder with its reference points from :func:`encoder_reference_points`."""

    def forward(self, query: Tensor, query_pos: Tensor, key_padding_mask: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, valid_ratios: Tensor,
                **kwargs) -> Tensor:
        reference_points = encoder_reference_points(spatial_shapes, valid_ratios,
                                                    query.size(1))
        for layer in self.layers:  # as mmdet's forward
            query = layer(query=query, query_pos=query_pos, key_padding_mask=key_padding_mask,
                          spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                          valid_ratios=valid_ratios, reference_points=reference_points,
                          **kwargs)
        return query
