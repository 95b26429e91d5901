"""``torch.compile`` for DINO: fewer kernel launches and less Python per training step.

On a GPU, stock DINO is host-bound (measured on an H100: the same 0.234 s per micro-batch for one
image or two, ~8,500 kernel launches). Most launches are small ops of the backbone (frozen BN, ReLU,
residual adds), the encoder and decoder (projections, softmax, sampling-location arithmetic,
norms, FFNs, the decoder's reference-point updates) and the head's per-layer branches, which
inductor fuses (and, with ``mode='reduce-overhead'``, replays as CUDA graphs). Two things stop
``torch.compile`` in stock mmcv's deformable attention:

- ``MultiScaleDeformableAttention.forward`` calls mmcv's ``MultiScaleDeformableAttnFunction``
  (an ``autograd.Function`` around a pybind kernel dynamo cannot trace) on a GPU, and on the CPU
  ``multi_scale_deformable_attn_pytorch``, which splits by level shapes read from a tensor;
- it asserts ``(spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum() == num_value``: a host sync
  per attention call and a data-dependent branch for dynamo.

:func:`ms_deform_attn` is the attention core as a ``torch.library`` custom op (opaque to dynamo,
with a fake implementation for tracing and a registered backward): mmcv's CUDA kernel where
:mod:`~tbx11k.compat.mmcv_cuda_fallback` finds it usable, mmcv's PyTorch implementation
otherwise, in float32 for dtypes the kernel lacks (bf16), as that module does.
:class:`TraceableMultiScaleDeformableAttention` is mmcv's forward with that op and without the
assert (the level shapes come from DINO's own ``pre_transformer``; same parameters, same results).

:func:`compile_dino` switches the attention modules to it and the chosen parts' classes to
subclasses with a compiled ``forward`` (and the batched head's ``image_match_costs`` and
``loss_terms``, never under CUDA graphs: :func:`without_cudagraphs`; :func:`compiled_class`):
nothing is wrapped, so parameter names, state dicts and checkpoints stay as they are, and deep
copies (mmengine's EMA model) run their own weights.
``WindowNormalizedDINO(torch_compile=True or dict(parts=..., mode=...))`` turns it on; off by
default until the GPU benchmark (``--variants torch_compile``) has measured it. Results equal
eager up to float rounding (tests/models/test_compiled_dino.py). ``mode='reduce-overhead'``
(CUDA graphs) needs mmcv's CUDA kernel: the PyTorch path reads the level shapes on the host,
which a graph capture does not allow.
"""
import contextlib
import inspect
from collections.abc import Mapping
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch._dynamo
from torch import Tensor
from torch._C import DispatchKey

import mmcv.ops.multi_scale_deform_attn as _msda_module
from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttention

from ..compat import mmcv_cuda_fallback
from .token_grid import TokenGridDeformableDetrTransformerEncoder


def _ext():
    """mmcv's compiled ops (the kernels' Python bindings)."""
    return _msda_module.ext_module


def _use_kernel(value: Tensor) -> bool:
    return value.is_cuda and mmcv_cuda_fallback.msda_uses_kernel(value.device)


@contextlib.contextmanager
def _autograd_inside_custom_op() -> Iterator[None]:
    """Autograd back on inside a custom op's implementation (which runs below the autograd
    dispatch keys): the PyTorch path's backward is computed by autograd."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (DispatchKey.AutogradOther, DispatchKey.AutogradNestedTensor,
                DispatchKey.AutogradFunctionality):
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), \
            torch.enable_grad():
        yield


@torch.library.custom_op('tbx11k::ms_deform_attn', mutates_args=())
def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor,
                   im2col_step: int) -> Tensor:
    """Deformable attention core: (bs, keys, heads, dims) -> (bs, queries, heads * dims).

    Args:
        value (Tensor): ``(bs, keys, heads, dims)``.
        spatial_shapes (Tensor): ``(levels, 2)``, each level's (height, width).
        level_start_index (Tensor): ``(levels,)``, each level's first key.
        sampling_locations (Tensor): ``(bs, queries, heads, levels, points, 2)``, normalised.
        attention_weights (Tensor): ``(bs, queries, heads, levels, points)``.
        im2col_step (int): mmcv's kernel's im2col step.

    Returns:
        Tensor: ``(bs, queries, heads * dims)``.
    """
    if not _use_kernel(value):
        if value.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "model.torch_compile with mode='reduce-overhead' (CUDA graphs) needs mmcv's CUDA "
                'kernel for MultiScaleDeformableAttention: its PyTorch path reads the level '
                'shapes on the host, which a CUDA graph capture does not allow (kernel: '
                f'{mmcv_cuda_fallback.describe_msda_path(value.device)})')
        return mmcv_cuda_fallback.msda_pytorch(value, spatial_shapes, sampling_locations,
                                               attention_weights)
    dtype = mmcv_cuda_fallback.kernel_dtype(value.dtype)
    out = _ext().ms_deform_attn_forward(
        value.to(dtype).contiguous(), spatial_shapes, level_start_index,
        sampling_locations.to(dtype).contiguous(), attention_weights.to(dtype).contiguous(),
        im2col_step=im2col_step)
    return out.to(value.dtype)


@ms_deform_attn.register_fake
def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations,
                         attention_weights, im2col_step):
    bs, _, heads, dims = value.shape
    return value.new_empty(bs, sampling_locations.shape[1], heads * dims)


@torch.library.custom_op('tbx11k::ms_deform_attn_backward', mutates_args=())
def ms_deform_attn_backward(grad_output: Tensor, value: Tensor, spatial_shapes: Tensor,
                            level_start_index: Tensor, sampling_locations: Tensor,
                            attention_weights: Tensor,
                            im2col_step: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`ms_deform_attn` for value, sampling locations, attention weights.

    Args:
        grad_output (Tensor): ``(bs, queries, heads * dims)``.
        value (Tensor): ``(bs, keys, heads, dims)``.
        spatial_shapes (Tensor): ``(levels, 2)``, each level's (height, width).
        level_start_index (Tensor): ``(levels,)``, each level's first key.
        sampling_locations (Tensor): ``(bs, queries, heads, levels, points, 2)``, normalised.
        attention_weights (Tensor): ``(bs, queries, heads, levels, points)``.
        im2col_step (int): mmcv's kernel's im2col step.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: The gradients of ``value``, ``sampling_locations`` and
        ``attention_weights``.
    """
    if not _use_kernel(value):
        with _autograd_inside_custom_op():
            inputs = [t.detach().requires_grad_() for t in
                      (value, sampling_locations, attention_weights)]
            out = mmcv_cuda_fallback.msda_pytorch(inputs[0], spatial_shapes, inputs[1], inputs[2])
            grads = torch.autograd.grad(out, inputs, grad_output)
        return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, inputs))
    dtype = mmcv_cuda_fallback.kernel_dtype(value.dtype)
    value_k, loc_k, weights_k = (t.to(dtype).contiguous()
                                 for t in (value, sampling_locations, attention_weights))
    grad_value, grad_loc, grad_weights = (torch.zeros_like(t) for t in (value_k, loc_k, weights_k))
    _ext().ms_deform_attn_backward(
        value_k, spatial_shapes, level_start_index, loc_k, weights_k,
        grad_output.to(dtype).contiguous(), grad_value, grad_loc, grad_weights,
        im2col_step=im2col_step)
    return tuple(g.to(t.dtype).contiguous() for g, t in zip(
        (grad_value, grad_loc, grad_weights), (value, sampling_locations, attention_weights)))


@ms_deform_attn_backward.register_fake
def _ms_deform_attn_backward_fake(grad_output, value, spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights, im2col_step):
    # contiguous, as both implementations return them
    return tuple(t.new_empty(t.shape) for t in (value, sampling_locations, attention_weights))


def _setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, step = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                          attention_weights)
    ctx.im2col_step = step


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = \
        ctx.saved_tensors
    grad_value, grad_loc, grad_weights = ms_deform_attn_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights, ctx.im2col_step)
    return grad_value, None, None, grad_loc, grad_weights, None


ms_deform_attn.register_autograd(_backward, setup_context=_setup_context)


class TraceableMultiScaleDeformableAttention(MultiScaleDeformableAttention):
    """mmcv's ``MultiScaleDeformableAttention`` computing its core with :func:`ms_deform_attn`
    and without the shape assert (a host sync); the same parameters and results."""

    def forward(self, query: Tensor, key: Optional[Tensor] = None,
                value: Optional[Tensor] = None, identity: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None,
                reference_points: Optional[Tensor] = None,
                spatial_shapes: Optional[Tensor] = None,
                level_start_index: Optional[Tensor] = None, **kwargs) -> Tensor:
        # Upstream fix (kept to this one method): mmcv 2.1.0's MultiScaleDeformableAttention.forward
        # with the core through the traceable op and without the shape assert, which dynamo cannot
        # trace (open-mmlab/mmcv#3290 "Did mmcv support torch.compile?"; the assert:
        # open-mmlab/mmcv#3126, unmerged). A subclass cannot reuse the parent's forward around
        # those two lines.
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.permute(1, 0, 2)
            value = value.permute(1, 0, 2)
        bs, num_query, _ = query.shape
        bs, num_value, _ = value.shape
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)
        sampling_offsets = self.sampling_offsets(query).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points, 2)
        attention_weights = self.attention_weights(query).view(
            bs, num_query, self.num_heads, self.num_levels * self.num_points)
        attention_weights = attention_weights.softmax(-1).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points)
        if reference_points.shape[-1] == 2:
            offset_normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            sampling_locations = reference_points[:, :, None, :, None, :] \
                + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            sampling_locations = reference_points[:, :, None, :, None, :2] \
                + sampling_offsets / self.num_points \
                * reference_points[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError('Last dim of reference_points must be 2 or 4, but get '
                             f'{reference_points.shape[-1]} instead.')
        output = ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, self.im2col_step)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity


def make_attention_traceable(module: torch.nn.Module) -> int:
    """Switch every mmcv ``MultiScaleDeformableAttention`` under ``module`` to
    :class:`TraceableMultiScaleDeformableAttention`.

    Args:
        module (torch.nn.Module): The module, changed in place.

    Returns:
        int: How many were switched.
    """
    count = 0
    for sub in module.modules():
        if type(sub) is MultiScaleDeformableAttention:
            sub.__class__ = TraceableMultiScaleDeformableAttention
            count += 1
    return count


_COMPILED_CLASSES: Dict[Tuple[type, str], type] = {}


def compiled_class(cls: type, methods: Mapping[str, Mapping[str, Any]]) -> type:
    """A subclass of the module class ``cls`` whose methods are ``torch.compile``-d.

    Switching an instance's class (rather than ``nn.Module.compile``, which stores a compiled
    bound method on the instance) keeps ``copy.deepcopy`` right: mmengine's EMA model is a deep
    copy of the model, and its layers must run their own weights. The classes are made at run
    time, so a compiled model cannot be pickled whole (``torch.save(model)``); checkpoints hold
    state dicts, which are unchanged.

    Args:
        cls (type): The module class.
        methods (Mapping[str, Mapping[str, Any]]): Each method name to its ``torch.compile``
            arguments (the names are in ``compiled_methods``).

    Returns:
        type: The subclass.
    """
    names = tuple(sorted(methods))
    key = (cls, repr([(name, sorted(methods[name].items())) for name in names]))
    if key not in _COMPILED_CLASSES:
        namespace = {name: torch.compile(getattr(cls, name), **methods[name]) for name in names}
        _COMPILED_CLASSES[key] = type(f'Compiled{cls.__name__}', (cls,), dict(
            namespace, compiled_methods=names, __module__=__name__,
            __doc__=f"{cls.__name__} with torch.compile-d {', '.join(names)}."))
    return _COMPILED_CLASSES[key]


#: dynamo's limit of compiled versions per function, at least: with automatic dynamic shapes
#: each part compiles a few versions in training (static, then dynamic sizes; a micro-batch
#: without boxes has no denoising queries; the losses specialise one-box and no-box micro-batches:
#: up to 5) and more for validation (no grad, other sizes); past the limit torch would silently
#: run the part eagerly
RECOMPILE_LIMIT = 32

#: what part 'losses' compiles: the batched head's matching costs and loss terms
LOSS_METHODS = ('image_match_costs', 'loss_terms')
#: the parts :func:`compile_dino` can compile (see there)
COMPILE_PARTS = ('backbone', 'neck', 'encoder', 'proposals', 'decoder', 'bbox_head', 'losses')


def compile_options(setting: Union[bool, Mapping]) -> Dict[str, Any]:
    """:func:`compile_dino` keyword arguments from a config's ``model.torch_compile``.

    Args:
        setting (bool | Mapping): True, or a dict of ``parts`` and ``torch.compile`` arguments.

    Returns:
        Dict[str, Any]: The keyword arguments.

    Raises:
        TypeError: For a setting of another type.
        ValueError: For unknown keys or parts, naming the known ones.
    """
    if setting is True:
        return {}
    if not isinstance(setting, Mapping):
        raise TypeError('model.torch_compile must be True, False, None or a dict of '
                        f"'parts' and torch.compile arguments, got {setting!r}")
    options = dict(setting)
    allowed = {'parts'} | (set(inspect.signature(torch.compile).parameters) - {'model'})
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f'model.torch_compile: unknown keys {unknown}; known: parts, '
                         f"{', '.join(sorted(allowed - {'parts'}))}")
    parts = options.get('parts', COMPILE_PARTS)
    if isinstance(parts, str) or not all(isinstance(p, str) for p in parts):
        raise ValueError(f'model.torch_compile.parts must be a list of names out of '
                         f'{list(COMPILE_PARTS)}, got {parts!r}')
    return options


def without_cudagraphs(compile_kwargs: Mapping) -> Dict[str, Any]:
    """``torch.compile`` arguments like ``compile_kwargs`` minus CUDA graphs, for the losses.

    Their sizes change with every micro-batch's GT counts (a CUDA graph per size), the matching
    costs run without grad in the middle of the forward, and the loss terms outlive the
    micro-batch in the window's log (a graph's outputs are overwritten at its next replay).

    Args:
        compile_kwargs (Mapping): ``torch.compile`` arguments.

    Returns:
        Dict[str, Any]: The arguments without CUDA graphs.
    """
    kwargs = dict(compile_kwargs)
    mode = kwargs.get('mode')
    if mode == 'reduce-overhead':
        kwargs.pop('mode')
    elif mode == 'max-autotune':
        kwargs['mode'] = 'max-autotune-no-cudagraphs'
    if kwargs.get('options'):
        kwargs['options'] = {**kwargs['options'], 'triton.cudagraphs': False}
    return kwargs


def compile_dino(detector: torch.nn.Module, parts: Optional[Sequence[str]] = None,
                 **compile_kwargs: Any) -> Dict[str, Any]:
    """Compile parts of a DINO in place (lazily: on their first call).

    ``parts`` (see :data:`COMPILE_PARTS`; default: all that apply): 'encoder' compiles the
    encoder's forward if it is
    :class:`~tbx11k.models.token_grid.TokenGridDeformableDetrTransformerEncoder`
    (WindowNormalizedDINO's), else each encoder layer (mmdet's forward builds its reference
    points from level shapes read on the host); 'proposals' the two-stage proposals
    (WindowNormalizedDINO's ``masked_memory_and_proposals``; needs ``traceable_proposals``;
    skipped without it unless named; the detector's class is switched); 'bbox_head' the head's
    forward (the per-layer classification / regression branches); 'losses' the batched head's
    matching costs and loss terms (:data:`LOSS_METHODS` of
    :class:`~tbx11k.models.batched_loss_dino_head.BatchedLossDINOHead`; the Hungarian matching
    itself runs on the host; needs that head, skipped without it unless named); the others the
    module's whole forward. ``compile_kwargs`` go to ``torch.compile`` (default ``dynamic=None``:
    a size that changes between calls, such as the token count under multi-scale training or the
    number of denoising queries, is recompiled once as dynamic; the detector's
    ``pad_denoising_queries`` keeps the query count of the decoder and the head's branches fixed).

    Args:
        detector (torch.nn.Module): The DINO, changed in place.
        parts (Sequence[str], optional): The parts to compile. Defaults to None (all that
            apply).
        **compile_kwargs: ``torch.compile`` arguments.

    Returns:
        Dict[str, Any]: What was done: ``parts``, ``compiled_modules``,
        ``traceable_attention_modules`` and ``compile_kwargs``.
    """
    head = getattr(detector, 'bbox_head', None)
    applies = dict(losses=all(hasattr(head, name) for name in LOSS_METHODS),
                   proposals=getattr(detector, 'traceable_proposals', False))
    if parts is None:
        parts = [p for p in COMPILE_PARTS if applies.get(p, True)]
    unknown = set(parts) - set(COMPILE_PARTS)
    if unknown:
        raise ValueError(f'unknown parts to compile {sorted(unknown)}; known: '
                         f'{list(COMPILE_PARTS)}')
    if 'losses' in parts and not applies['losses']:
        raise ValueError("model.torch_compile part 'losses' needs "
                         "model.bbox_head.type='BatchedLossDINOHead', got "
                         f'{type(detector.bbox_head).__name__}')
    if 'proposals' in parts and not applies['proposals']:
        raise ValueError("model.torch_compile part 'proposals' needs a detector with traceable "
                         f'proposals (WindowNormalizedDINO), got {type(detector).__name__}')
    # module -> {method: torch.compile arguments}, insertion-ordered
    methods: Dict[torch.nn.Module, Dict[str, Dict[str, Any]]] = {}
    for part in COMPILE_PARTS:  # fixed order
        if part not in parts:
            continue
        if part == 'losses':
            methods.setdefault(detector.bbox_head, {}).update(
                (name, without_cudagraphs(compile_kwargs)) for name in LOSS_METHODS)
            continue
        if part == 'proposals':
            methods.setdefault(detector, {})['masked_memory_and_proposals'] = dict(
                compile_kwargs)
            continue
        module = getattr(detector, part)
        # mmdet's encoder reads the level shapes on the host (its reference points): its layers
        # are compiled one by one; the token-grid encoder is traceable and compiled whole
        per_layer = part == 'encoder' and not isinstance(
            module, TokenGridDeformableDetrTransformerEncoder)
        for sub in (list(module.layers) if per_layer else [module]):
            methods.setdefault(sub, {})['forward'] = dict(compile_kwargs)
    attention = 0
    if 'encoder' in parts:
        attention += make_attention_traceable(detector.encoder)
    if 'decoder' in parts:
        attention += make_attention_traceable(detector.decoder)
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    for module, compiled in methods.items():
        if getattr(type(module), 'compiled_methods', None) is not None:
            raise ValueError(f'{type(module).__name__} is compiled already')
        module.__class__ = compiled_class(type(module), compiled)
    return dict(parts=[p for p in COMPILE_PARTS if p in parts], compiled_modules=len(methods),
                traceable_attention_modules=attention, compile_kwargs=compile_kwargs)
