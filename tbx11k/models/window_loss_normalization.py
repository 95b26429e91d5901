"""Upstream fix: DETR-family loss normalisers under gradient accumulation.

mmdet 3.3.0's ``DETRHead.loss_by_feat_single`` and ``DINOHead._loss_dn_single`` normalise every
loss term by ``reduce_mean(num_total_pos)``: the positive count averaged over the DDP ranks of *one*
forward pass. With 2 GPUs x 1 image that is ``(n_a + n_b) / 2``; with 1 GPU x 1 image x 2
accumulation steps it is ``n_a`` then ``n_b``, so the two trainings weight boxes differently
(per-box vs per-image; see the DETR paper's note on
distributed normalisation, facebookresearch/detr#354, and the same bug for token losses in
huggingface/transformers#34191). Exact equality needs the mean over the whole optimizer-step
*window*: all micro-batches on all ranks.

mmdet does not expose the normaliser, so :func:`window_reduce_mean` swaps the ``reduce_mean`` name
in the two mmdet modules for the duration of one ``loss()`` call and answers each call with the
window mean, after checking that the local value mmdet passes is the count we predicted. Outside
that context mmdet is untouched.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator

import torch

from mmdet.models.dense_heads import detr_head as _detr_head_module
from mmdet.models.dense_heads import dino_head as _dino_head_module

#: loss kinds and the mmdet module whose functions normalise by that kind's positive count
KIND_MODULES = {
    'match': _detr_head_module,  # decoder layers and the encoder (Hungarian matching)
    'dn': _dino_head_module,  # denoising queries
}
KINDS = tuple(KIND_MODULES)


class LossCountMismatch(RuntimeError):
    """The count mmdet normalised by differs from the one predicted for the window."""


@dataclass
class LossWindow:
    """Normalisers of one micro-batch inside an optimizer-step window.

    Attributes:
        window_mean: per kind, the positive count summed over the window (all micro-batches,
            all ranks) divided by the number of micro-batches in it (world_size x accumulation),
            i.e. what ``reduce_mean`` returns under DDP when the window is spread over ranks.
        local: per kind, the count this micro-batch is expected to pass to ``reduce_mean``.
    """
    window_mean: Dict[str, float]
    local: Dict[str, float]


@contextmanager
def window_reduce_mean(window: LossWindow, verify: bool = True) -> Iterator[None]:
    """Answer mmdet's ``reduce_mean`` calls in the DETR/DINO loss modules with window means.

    Args:
        window (LossWindow): The window's mean and local counts.
        verify (bool): Check the local count (a device-to-host read per call). Defaults to
            True.

    Yields:
        None: Inside the block.
    """
    originals = {kind: module.reduce_mean for kind, module in KIND_MODULES.items()}

    def make(kind: str):
        def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
            if not verify:
                return tensor.new_full(tensor.shape, window.window_mean[kind])
            local = float(tensor.detach().reshape(-1)[0])
            if local != window.local[kind]:
                raise LossCountMismatch(
                    f"the '{kind}' loss was normalised by a local count of {local}, but "
                    f'{window.local[kind]} was predicted from the ground truth; window loss '
                    'normalisation cannot be exact for this model (set '
                    "model.loss_normalization='micro_batch' to train with stock mmdet behaviour)")
            return tensor.new_full(tensor.shape, window.window_mean[kind])

        return reduce_mean

    for kind, module in KIND_MODULES.items():
        module.reduce_mean = make(kind)
    try:
        yield
    finally:
        for kind, module in KIND_MODULES.items():
            module.reduce_mean = originals[kind]
