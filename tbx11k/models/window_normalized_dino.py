"""DINO whose losses are normalised over the whole optimizer-step window."""
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.utils import is_list_of

from mmdet.models.detectors import DINO
from mmdet.models.layers import DeformableDetrTransformerEncoder
from mmdet.registry import MODELS
from mmdet.structures import SampleList

from .cached_positional_encoding import CachedSinePositionalEncoding
from .dn_attention_mask import (
    VectorizedDnMaskQueryGenerator,
    max_denoising_queries,
    padded_attention_mask,
)
from .token_grid import TokenGridDeformableDetrTransformerEncoder, encoder_output_proposals
from .window_loss_normalization import KINDS, LossWindow, window_reduce_mean

LOSS_NORMALIZATIONS = ('window', 'micro_batch')


@MODELS.register_module()
class WindowNormalizedDINO(DINO):
    """mmdet's DINO with exact loss normalisation under gradient accumulation.

    With ``loss_normalization='window'`` every loss term is divided by the positive count of the
    whole window (all accumulation micro-batches on all ranks), exactly as DDP over that many
    GPUs does, so 1 GPU x N accumulation steps and N GPUs give the same gradient.
    :class:`~tbx11k.engine.loops.AccumulationEpochBasedTrainLoop` computes the window counts with
    :meth:`loss_counts` and sets them with :meth:`set_loss_window` before each micro-batch.
    ``'micro_batch'`` keeps stock mmdet (per forward pass) normalisation, for comparison.

    ``verify_loss_counts`` (default True) checks, in every normalising call, that the local count
    mmdet normalises by is the predicted one (one device-to-host read each, ~26 per DINO micro-batch
    on a GPU). False skips the check, not the normalisation: the same numbers, fewer host syncs;
    for GPU runs of a model already validated with the check on.

    These parts give mmdet's results with fewer ops and host syncs (host time on a GPU):
    :class:`~tbx11k.models.dn_attention_mask.VectorizedDnMaskQueryGenerator` (the denoising
    attention mask and query collation in a few ops instead of a few per denoising group),
    :class:`~tbx11k.models.cached_positional_encoding.CachedSinePositionalEncoding` (computed once
    per feature-map shape), :mod:`~tbx11k.models.token_grid` (the encoder's reference points and
    the two-stage proposals without per-level loops and host reads) and :meth:`parse_losses`
    (one stacked sum of DINO's 39 loss terms).

    ``pad_denoising_queries`` (default False) pads the decoder's queries in training with queries
    that no other query attends to, up to the most denoising queries there can be (True: ``2 *
    num_dn_queries`` of the dynamic denoising groups; an int: that many denoising queries); the
    head's branches run on them too and a forward hook on the head drops them from its outputs
    before the losses: decoder and head branches then see one query count per image size instead
    of one per (image size, GT count), so ``torch.compile`` does not recompile them for new GT
    counts and CUDA graphs (``mode='reduce-overhead'``) replay one graph per image size. The
    same losses and gradients up to float rounding (the padded rows get exactly zero weight and
    zero gradient; with decoder dropout > 0 the extra rows would shift the random stream), at
    the cost of computing the padded rows. A micro-batch with more denoising queries than that
    runs unpadded (one warning).

    ``torch_compile`` (default None: off) compiles backbone, neck, encoder, proposals, decoder,
    the head's branches and losses with ``torch.compile``: True, or a dict of :func:`compile_dino`
    arguments (``parts``, and ``torch.compile``'s, e.g. ``mode='reduce-overhead'``), see
    :mod:`tbx11k.models.compiled_dino`; parameters and state dicts are unchanged.

    Args:
        *args: As mmdet's ``DINO``.
        loss_normalization (str): 'window' or 'micro_batch'. Defaults to 'window'.
        verify_loss_counts (bool): Check the local counts. Defaults to True.
        pad_denoising_queries (bool | int): False, True or a number of denoising queries.
            Defaults to False.
        torch_compile (bool | dict, optional): None/False (off), True, or :func:`compile_dino`
            arguments. Defaults to None.
        **kwargs: As mmdet's ``DINO``.
    """

    def __init__(self, *args, loss_normalization: str = 'window', verify_loss_counts: bool = True,
                 pad_denoising_queries: Union[bool, int] = False,
                 torch_compile: Union[None, bool, Dict] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # DINO builds these two directly (no registry); the subclasses add no parameters, so
        # switching the class keeps the parameters, their initialisation and the state dict.
        self.dn_query_generator.__class__ = VectorizedDnMaskQueryGenerator
        self.positional_encoding.__class__ = CachedSinePositionalEncoding
        if type(self.encoder) is DeformableDetrTransformerEncoder:
            self.encoder.__class__ = TokenGridDeformableDetrTransformerEncoder
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f'loss_normalization must be one of {LOSS_NORMALIZATIONS}, '
                             f'got {loss_normalization!r}')
        if loss_normalization == 'window' and self.bbox_head.bg_cls_weight != 0:
            raise ValueError('window loss normalisation assumes bg_cls_weight == 0 '
                             f'(got {self.bbox_head.bg_cls_weight})')
        self.loss_normalization = loss_normalization
        self.verify_loss_counts = bool(verify_loss_counts)
        self._loss_window: Optional[LossWindow] = None
        self.padded_denoising_queries = self._padding_target(pad_denoising_queries)
        self._padding_warned = False
        self._head_padding = 0  # padding rows in the decoder call whose head forward comes next
        if self.padded_denoising_queries is not None:
            self.bbox_head.register_forward_hook(self._drop_head_padding)
        if torch_compile is not None and torch_compile is not False:
            from .compiled_dino import compile_dino, compile_options  # torch._dynamo: on demand
            compile_dino(self, **compile_options(torch_compile))

    def _padding_target(self, setting: Union[None, bool, int]) -> Optional[int]:
        """How many denoising queries ``pad_denoising_queries`` pads to (None: no padding)."""
        if setting is None or setting is False:
            return None
        if setting is True:
            target = max_denoising_queries(self.dn_query_generator)
            if target is None:
                raise ValueError(
                    'model.pad_denoising_queries=True needs dynamic denoising groups '
                    '(model.dn_cfg.group_cfg.dynamic=True): with static groups the number of '
                    'denoising queries grows with the GT count; give the number to pad to '
                    '(an int) instead')
            return target
        if isinstance(setting, int) and setting > 0:
            return setting
        raise ValueError('model.pad_denoising_queries must be True, False or a positive int '
                         f'(denoising queries to pad to), got {setting!r}')

    def forward_decoder(self, query: torch.Tensor, memory: torch.Tensor,
                        memory_mask: torch.Tensor, reference_points: torch.Tensor,
                        spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                        valid_ratios: torch.Tensor, dn_mask: Optional[torch.Tensor] = None,
                        **kwargs) -> Dict:
        """mmdet's ``DINO.forward_decoder``, with the queries padded to a fixed count in
        training where ``pad_denoising_queries`` says so (the outputs keep the padding: the
        head's branches run on it, :meth:`_drop_head_padding` drops it from their outputs)."""
        total = query.size(1)
        pad = self._head_padding = self._decoder_padding(total, dn_mask)
        if pad == 0:
            return super().forward_decoder(query, memory, memory_mask, reference_points,
                                           spatial_shapes, level_start_index, valid_ratios,
                                           dn_mask, **kwargs)
        batch_size = query.size(0)
        # zero content at the image centre: finite everywhere (their outputs are dropped)
        query = torch.cat([query, query.new_zeros(batch_size, pad, query.size(2))], 1)
        reference_points = torch.cat([reference_points, reference_points.new_full(
            (batch_size, pad, reference_points.size(2)), 0.5)], 1)
        return super().forward_decoder(query, memory, memory_mask, reference_points,
                                       spatial_shapes, level_start_index, valid_ratios,
                                       padded_attention_mask(dn_mask, pad), **kwargs)

    def _drop_head_padding(self, head: torch.nn.Module, args: tuple,
                           outputs: Tuple[torch.Tensor, ...]) -> Optional[tuple]:
        """Forward hook on the head: its outputs (each ``(layers, batch, queries, ...)``) without
        the padding rows of the decoder call before it, as mmdet's losses expect them."""
        pad, self._head_padding = self._head_padding, 0
        if not pad:
            return None
        return tuple(out[:, :, :out.size(2) - pad] for out in outputs)

    def _decoder_padding(self, total: int, dn_mask: Optional[torch.Tensor]) -> int:
        """Padding queries for a decoder call with ``total`` queries (0: none)."""
        if self.padded_denoising_queries is None or not self.training or dn_mask is None:
            return 0
        num_denoising = total - self.num_queries
        if num_denoising > self.padded_denoising_queries:
            if not self._padding_warned:
                self._padding_warned = True
                print_log(f'WindowNormalizedDINO: a micro-batch has {num_denoising} denoising '
                          f'queries, more than pad_denoising_queries pads to '
                          f'({self.padded_denoising_queries}): such micro-batches run unpadded '
                          '(a new decoder shape each); warned once', logger='current',
                          level=logging.WARNING)
            return 0
        return self.padded_denoising_queries - num_denoising

    @property
    def window_normalized(self) -> bool:
        return self.loss_normalization == 'window'

    def loss_counts(self, batch_data_samples: SampleList) -> List[float]:
        """Positive counts that the losses of this micro-batch normalise by, in ``KINDS`` order.

        'match': one-to-one Hungarian matching assigns every GT box once (capped by the queries);
        'dn': every GT box is a positive in each of the denoising groups, whose number mmdet's
        ``CdnQueryGenerator`` derives from the largest GT count in the micro-batch.

        Args:
            batch_data_samples (SampleList): The micro-batch's data samples (their GT boxes).

        Returns:
            List[float]: One count per kind of ``KINDS``.
        """
        num_gts = [len(sample.gt_instances) for sample in batch_data_samples]
        match = sum(min(n, self.num_queries) for n in num_gts)
        groups = self.dn_query_generator.get_num_groups(max(num_gts, default=0))
        counts = dict(match=float(match), dn=float(sum(num_gts) * groups))
        return [counts[kind] for kind in KINDS]

    def set_loss_window(self, window_mean: Optional[List[float]],
                        local: Optional[List[float]] = None) -> None:
        """Set (or clear with ``None``) the normalisers for the next ``loss()`` call.

        Args:
            window_mean (List[float], optional): The window's mean counts per kind (``KINDS``
                order); None clears them.
            local (List[float], optional): This micro-batch's counts, checked against mmdet's when
                ``verify_loss_counts``. Defaults to None.
        """
        if window_mean is None:
            self._loss_window = None
        else:
            self._loss_window = LossWindow(dict(zip(KINDS, window_mean)), dict(zip(KINDS, local)))

    #: :meth:`masked_memory_and_proposals` reads nothing on the host: torch.compile can trace it
    traceable_proposals = True

    def gen_encoder_output_proposals(self, memory: torch.Tensor,
                                     memory_mask: Optional[torch.Tensor],
                                     spatial_shapes: torch.Tensor
                                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """mmdet's ``DeformableDETR.gen_encoder_output_proposals``:
        :meth:`masked_memory_and_proposals`, then ``memory_trans_fc`` and ``memory_trans_norm`` on
        the memory."""
        output_memory, output_proposals = self.masked_memory_and_proposals(memory, memory_mask,
                                                                           spatial_shapes)
        output_memory = self.memory_trans_fc(output_memory)
        output_memory = self.memory_trans_norm(output_memory)
        return output_memory, output_proposals

    def masked_memory_and_proposals(self, memory: torch.Tensor,
                                    memory_mask: Optional[torch.Tensor],
                                    spatial_shapes: torch.Tensor
                                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The proposals and the memory zeroed where they are invalid, as mmdet computes them.

        The proposals (inverse-sigmoid cxcywh, ``inf`` where padded or invalid) and the memory
        zeroed there, as mmdet computes them before its memory transform, with the proposal grid
        from :func:`~tbx11k.models.token_grid.encoder_output_proposals` (no per-level loop, no host
        read). Tensor ops only: ``model.torch_compile`` part 'proposals' compiles it (compiled,
        the masked memory, which the top-k query selection's scores come from, stays
        bit-identical, the proposals' coordinates within float32 eps; the transform's LayerNorm
        would not, and the top-k selection after it turns last-bit differences into other
        queries).

        Args:
            memory (torch.Tensor): ``(bs, num_tokens, dim)`` encoder output.
            memory_mask (torch.Tensor, optional): ``(bs, num_tokens)``, True where padded.
            spatial_shapes (torch.Tensor): ``(levels, 2)``, each level's (height, width).

        Returns:
            Tuple[torch.Tensor, torch.Tensor]: The masked memory and the proposals.
        """
        output_proposals = encoder_output_proposals(memory_mask, spatial_shapes, memory.size(0),
                                                    memory.size(1))
        output_proposals_valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).sum(
            -1, keepdim=True) == output_proposals.shape[-1]
        output_proposals = torch.log(output_proposals / (1 - output_proposals))
        output_memory = memory
        if memory_mask is not None:
            output_proposals = output_proposals.masked_fill(memory_mask.unsqueeze(-1),
                                                            float('inf'))
            output_memory = output_memory.masked_fill(memory_mask.unsqueeze(-1), float(0))
        output_proposals = output_proposals.masked_fill(~output_proposals_valid, float('inf'))
        output_memory = output_memory.masked_fill(~output_proposals_valid, float(0))
        return output_memory, output_proposals

    def parse_losses(self, losses: Dict[str, torch.Tensor]
                     ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """mmengine's ``BaseModel.parse_losses`` in a constant number of ops.

        Same keys and order, same terms, the same gradient for every term: a one-element term is
        its own mean (a view, where ``mean()`` is a kernel and its backward another), and the total
        is one stacked sum instead of a chain of adds (its value may differ from the chain's in the
        last bits: another summation order).

        Args:
            losses (Dict[str, torch.Tensor]): The loss terms of ``loss()``.

        Returns:
            Tuple[torch.Tensor, Dict[str, torch.Tensor]]: The total loss and the terms to log.
        """
        log_vars = []
        for name, value in losses.items():
            if isinstance(value, torch.Tensor):
                log_vars.append([name, value.reshape(()) if value.numel() == 1 and
                                 value.is_floating_point() else value.mean()])
            elif is_list_of(value, torch.Tensor):
                log_vars.append([name, sum(term.mean() for term in value)])
            else:
                raise TypeError(f'{name} is not a tensor or list of tensors')
        terms = [value for name, value in log_vars if 'loss' in name]
        if len(terms) > 1 and all(isinstance(term, torch.Tensor) for term in terms) \
                and len({term.device for term in terms}) == 1:
            loss = torch.stack(terms).sum()  # mixed dtypes promote, as the chain of adds does
        else:
            loss = sum(terms)
        log_vars.insert(0, ['loss', loss])
        return loss, OrderedDict(log_vars)

    def loss(self, batch_inputs, batch_data_samples: SampleList) -> Dict:
        if self._loss_window is None or not self.window_normalized:
            return super().loss(batch_inputs, batch_data_samples)
        with window_reduce_mean(self._loss_window, verify=self.verify_loss_counts):
            return super().loss(batch_inputs, batch_data_samples)
