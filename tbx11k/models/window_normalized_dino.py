"""DINO whose losses are normalised over the whole optimizer-step window."""
from typing import Dict, List, Optional, Union

from mmdet.models.detectors import DINO
from mmdet.registry import MODELS
from mmdet.structures import SampleList

from .cached_positional_encoding import CachedSinePositionalEncoding
from .dn_attention_mask import VectorizedDnMaskQueryGenerator
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

    Two parts give mmdet's results with fewer ops (host time on a GPU):
    :class:`~tbx11k.models.dn_attention_mask.VectorizedDnMaskQueryGenerator` (the denoising
    attention mask in ~10 ops instead of two per denoising group) and
    :class:`~tbx11k.models.cached_positional_encoding.CachedSinePositionalEncoding` (computed once
    per feature-map shape).

    ``torch_compile`` (default None: off) compiles backbone, neck, encoder layers, decoder and the
    head's branches with ``torch.compile``: True, or a dict of :func:`compile_dino` arguments
    (``parts``, and ``torch.compile``'s, e.g. ``mode='reduce-overhead'``), see
    :mod:`tbx11k.models.compiled_dino`; parameters and state dicts are unchanged.
    """

    def __init__(self, *args, loss_normalization: str = 'window', verify_loss_counts: bool = True,
                 torch_compile: Union[None, bool, Dict] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # DINO builds these two directly (no registry); the subclasses add no parameters, so
        # switching the class keeps the parameters, their initialisation and the state dict.
        self.dn_query_generator.__class__ = VectorizedDnMaskQueryGenerator
        self.positional_encoding.__class__ = CachedSinePositionalEncoding
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f'loss_normalization must be one of {LOSS_NORMALIZATIONS}, '
                             f'got {loss_normalization!r}')
        if loss_normalization == 'window' and self.bbox_head.bg_cls_weight != 0:
            raise ValueError('window loss normalisation assumes bg_cls_weight == 0 '
                             f'(got {self.bbox_head.bg_cls_weight})')
        self.loss_normalization = loss_normalization
        self.verify_loss_counts = bool(verify_loss_counts)
        self._loss_window: Optional[LossWindow] = None
        if torch_compile is not None and torch_compile is not False:
            from .compiled_dino import compile_dino, compile_options  # torch._dynamo: on demand
            compile_dino(self, **compile_options(torch_compile))

    @property
    def window_normalized(self) -> bool:
        return self.loss_normalization == 'window'

    def loss_counts(self, batch_data_samples: SampleList) -> List[float]:
        """Positive counts that the losses of this micro-batch normalise by, in ``KINDS`` order.

        'match': one-to-one Hungarian matching assigns every GT box once (capped by the queries);
        'dn': every GT box is a positive in each of the denoising groups, whose number mmdet's
        ``CdnQueryGenerator`` derives from the largest GT count in the micro-batch.
        """
        num_gts = [len(sample.gt_instances) for sample in batch_data_samples]
        match = sum(min(n, self.num_queries) for n in num_gts)
        groups = self.dn_query_generator.get_num_groups(max(num_gts, default=0))
        counts = dict(match=float(match), dn=float(sum(num_gts) * groups))
        return [counts[kind] for kind in KINDS]

    def set_loss_window(self, window_mean: Optional[List[float]],
                        local: Optional[List[float]] = None) -> None:
        """Set (or clear with ``None``) the normalisers for the next ``loss()`` call."""
        if window_mean is None:
            self._loss_window = None
        else:
            self._loss_window = LossWindow(dict(zip(KINDS, window_mean)), dict(zip(KINDS, local)))

    def loss(self, batch_inputs, batch_data_samples: SampleList) -> Dict:
        if self._loss_window is None or not self.window_normalized:
            return super().loss(batch_inputs, batch_data_samples)
        with window_reduce_mean(self._loss_window, verify=self.verify_loss_counts):
            return super().loss(batch_inputs, batch_data_samples)
