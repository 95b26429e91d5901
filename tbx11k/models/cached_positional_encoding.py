"""DINO's sine positional encoding, computed once per feature-map shape.

For a batch without padding (always the case with batch 1, and for TBX11K's equal-size films)
mmdet's ``DeformableDETR.pre_transformer`` calls ``SinePositionalEncoding(None, input=feat)``,
whose result depends only on the feature map's shape and device: ~30 ops per level and step
(~120 per micro-batch for DINO's 4 levels). :class:`CachedSinePositionalEncoding` keeps the last
results; padded batches (``mask`` given) are computed as in mmdet.
"""
from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor

from mmdet.models.layers import SinePositionalEncoding

#: feature-map shapes kept per module (multi-scale training sees a handful)
CACHE_SIZE = 32


class CachedSinePositionalEncoding(SinePositionalEncoding):
    """``SinePositionalEncoding`` that reuses its mask-free results (no new state in the
    state dict; the returned tensor is shared, and mmdet only reads it)."""

    def forward(self, mask: Optional[Tensor], input: Optional[Tensor] = None) -> Tensor:
        if mask is not None or input is None:
            return super().forward(mask, input)
        cache = self.__dict__.setdefault('_mask_free_cache', OrderedDict())
        # tensors made under inference_mode cannot be used by autograd later: kept apart
        key = (tuple(input.shape[:1]) + tuple(input.shape[2:]), input.device,
               torch.is_inference_mode_enabled())
        pos = cache.get(key)
        if pos is None:
            pos = super().forward(None, input=input)
            cache[key] = pos
            while len(cache) > CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return pos
