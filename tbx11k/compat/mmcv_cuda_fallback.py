"""Upstream fix: DINO's two mmcv CUDA kernels on a GPU whose mmcv cannot run them (and in bf16).

Upstream: open-mmlab/mmcv#2878 (``ms_deform_attn`` has no bf16 kernel; open); mmcv has no PyTorch
fallback on a GPU for a build without CUDA or for other GPU architectures (no upstream issue).
Applies to: mmcv 2.1.0 with mmdet 3.3.0 (``FocalLoss`` calls mmcv's ``sigmoid_focal_loss`` for CUDA
predictions). Remove when the lowest supported mmcv falls back to PyTorch on such GPUs and
computes bf16 inputs itself.

mmcv 2.1.0 calls a compiled CUDA kernel for two things DINO does on the GPU, and has no fallback:

- ``MultiScaleDeformableAttention.forward`` calls ``MultiScaleDeformableAttnFunction.apply`` (the
  ``ms_deform_attn`` kernel) whenever ``value.is_cuda`` and torch sees a GPU;
- mmdet 3.3.0's ``FocalLoss`` calls ``sigmoid_focal_loss`` (mmcv's kernel) for CUDA predictions.

With an mmcv built without CUDA (``get_compiling_cuda_version() == 'not available'``: a CPU wheel on
a GPU machine), or built for other GPU architectures, both raise. Both kernels are compiled for
float32 and float16 only, so bf16 autocast raises too.

:func:`install` (run by ``tbx11k.compat.install`` when ``tbx11k`` is imported) replaces the two
names that those functions look
up at call time, ``mmcv.ops.multi_scale_deform_attn.MultiScaleDeformableAttnFunction`` and
``mmdet.models.losses.focal_loss.sigmoid_focal_loss``, by dispatchers. On their first CUDA call
the dispatchers check the kernels once (compiled with CUDA? a tiny call on the device); when a
kernel is missing they use the PyTorch implementation mmcv / mmdet use on the CPU
(``multi_scale_deformable_attn_pytorch``; one-hot + ``py_sigmoid_focal_loss``) and log ONE warning.
bf16 inputs of a working kernel are computed in float32 and cast back. Nothing changes on the CPU
(mmcv and mmdet never reach these names there) or when the kernels work (same call, same numbers).

``TBX11K_MMCV_KERNELS=off`` (or :func:`set_kernel_mode`) makes a GPU behave as one without the
kernels (PyTorch paths, the same single warning): to measure what the kernels bring
(``tools/analysis_tools/benchmark.py --variants no_mmcv_kernels``) and to check the fallback on a
GPU.
``tbx11k.benchmark.kernel_check.compare_with_kernels`` compares both paths (outputs and gradients)
on a GPU that has them.
"""
import logging
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

import mmcv.ops.multi_scale_deform_attn as _msda_module
import mmdet.models.losses.focal_loss as _focal_module

KERNEL_MODES = ('auto', 'off')
KERNEL_MSDA = 'ms_deform_attn'
KERNEL_FOCAL = 'sigmoid_focal_loss'

_ORIGINAL_MSDA_FUNCTION = _msda_module.MultiScaleDeformableAttnFunction
_ORIGINAL_SIGMOID_FOCAL_LOSS = _focal_module.sigmoid_focal_loss
#: dtypes mmcv 2.1.0's two CUDA kernels are compiled for (AT_DISPATCH_FLOATING_TYPES_AND_HALF)
KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16)


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype mmcv's kernels compute ``dtype`` inputs in: as is, or float32 (bf16).

    Args:
        dtype (torch.dtype): The dtype of the inputs.

    Returns:
        torch.dtype: ``dtype`` when the kernels are compiled for it, else ``torch.float32``.
    """
    return dtype if dtype in KERNEL_DTYPES else torch.float32


class _State:
    mode: str = os.environ.get('TBX11K_MMCV_KERNELS', 'auto')
    #: kernel name -> (usable, reason), decided once per process on the first CUDA call
    kernels: Dict[str, Tuple[bool, str]] = {}
    warned: bool = False
    warned_off: bool = False


def set_kernel_mode(mode: str) -> None:
    """Choose how DINO's two mmcv CUDA kernels are used from now on.

    Args:
        mode (str): 'auto': mmcv's CUDA kernels when they work, else PyTorch; 'off': always
            PyTorch.
    """
    if mode not in KERNEL_MODES:
        raise ValueError(f'kernel mode must be one of {KERNEL_MODES}, got {mode!r}')
    _State.mode = mode


def kernel_mode() -> str:
    return _State.mode


def reset_state() -> None:
    """Forget the kernel checks and the warnings (tests)."""
    _State.kernels = {}
    _State.warned = False
    _State.warned_off = False


def mmcv_compiled_with_cuda() -> bool:
    """Whether mmcv's ``_ext`` was compiled with CUDA (without touching a GPU)."""
    try:
        from mmcv.ops import get_compiling_cuda_version
        return get_compiling_cuda_version() not in ('not available', '', None)
    except Exception:  # noqa: BLE001  (no _ext at all)
        return False


def _probe_msda(device: torch.device) -> None:
    value = torch.zeros(1, 2, 1, 2, device=device)
    shapes = torch.tensor([[1, 2]], dtype=torch.long, device=device)
    start = torch.zeros(1, dtype=torch.long, device=device)
    loc = torch.full((1, 1, 1, 1, 1, 2), 0.5, device=device)
    weights = torch.ones(1, 1, 1, 1, 1, device=device)
    _ORIGINAL_MSDA_FUNCTION.apply(value, shapes, start, loc, weights, 64)


def _probe_focal(device: torch.device) -> None:
    from mmcv.ops import sigmoid_focal_loss as mmcv_sigmoid_focal_loss
    pred = torch.zeros(2, 2, device=device)
    target = torch.tensor([0, 2], dtype=torch.long, device=device)
    mmcv_sigmoid_focal_loss(pred, target, 2.0, 0.25, None, 'none')


PROBES = {KERNEL_MSDA: _probe_msda, KERNEL_FOCAL: _probe_focal}
_SWITCHED_OFF = {name: (False, 'switched off (TBX11K_MMCV_KERNELS=off)') for name in PROBES}


def check_kernels(device: torch.device) -> Dict[str, Tuple[bool, str]]:
    """Check mmcv's CUDA kernels on ``device``, once per process.

    The check runs on the first call; a warning names the unusable kernels.

    Args:
        device (torch.device): The CUDA device to check on.

    Returns:
        Dict[str, Tuple[bool, str]]: ``{kernel: (usable, reason)}``.
    """
    if _State.mode == 'off':
        if not _State.warned_off:
            _State.warned_off = True
            _warn(device, _SWITCHED_OFF)
        return _SWITCHED_OFF
    if not _State.kernels:
        compiled = mmcv_compiled_with_cuda()
        kernels = {}
        for name, probe in PROBES.items():
            if not compiled:
                kernels[name] = (False, 'mmcv was compiled without CUDA')
                continue
            try:
                probe(device)
                torch.cuda.synchronize(device)
                kernels[name] = (True, 'mmcv CUDA kernel')
            except Exception as error:  # noqa: BLE001  (not implemented / no kernel image / ...)
                first_line = (str(error).strip().splitlines() or [''])[0][:200]
                kernels[name] = (False, f'a test call failed: {type(error).__name__}: {first_line}')
        _State.kernels = kernels
        if not _State.warned:
            _State.warned = True
            _warn(device, kernels)
    return _State.kernels


def check_kernel(name: str, device: torch.device) -> Tuple[bool, str]:
    """Whether mmcv's CUDA kernel ``name`` is usable on ``device``.

    Args:
        name (str): ``'ms_deform_attn'`` or ``'sigmoid_focal_loss'``.
        device (torch.device): The CUDA device.

    Returns:
        Tuple[bool, str]: ``(usable, reason)``.
    """
    return check_kernels(device)[name]


def _warn(device: torch.device, kernels: Dict[str, Tuple[bool, str]]) -> None:
    missing = {k: reason for k, (ok, reason) in kernels.items() if not ok}
    if not missing:
        return
    what = '; '.join(f'{k}: {reason}' for k, reason in missing.items())
    print_log(
        f"mmcv's CUDA kernels are not used on {device} ({what}). Using the PyTorch "
        'implementations instead (multi_scale_deformable_attn_pytorch for '
        'MultiScaleDeformableAttention, py_sigmoid_focal_loss for FocalLoss): the same results, '
        'slower training. Install an mmcv 2.1.0 built with CUDA for this GPU to use the kernels.',
        logger='current', level=logging.WARNING)


def msda_uses_kernel(device: torch.device) -> bool:
    """Whether MultiScaleDeformableAttention on ``device`` runs mmcv's CUDA kernel.

    Args:
        device (torch.device): The device of the attention's inputs.

    Returns:
        bool: True when the kernel runs, False when the PyTorch implementation does.
    """
    return device.type == 'cuda' and check_kernels(device)[KERNEL_MSDA][0]


def describe_msda_path(device) -> str:
    """One line for reports: which MultiScaleDeformableAttention implementation runs.

    Args:
        device (torch.device | str): The device of the attention's inputs.

    Returns:
        str: The implementation and, for a fallback, the reason.
    """
    device = torch.device(device)
    if device.type != 'cuda':
        return f'PyTorch (multi_scale_deformable_attn_pytorch; {device.type}, as mmcv does there)'
    ok, reason = check_kernel(KERNEL_MSDA, device)
    return 'mmcv CUDA kernel (ms_deform_attn)' if ok else \
        f'PyTorch (multi_scale_deformable_attn_pytorch): {reason}'


def msda_pytorch(value: torch.Tensor, spatial_shapes: torch.Tensor,
                 sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """mmcv's PyTorch MSDA in float32, returned in the value's dtype as the kernel does.

    Under AMP, half-precision sampling locations would be off by up to 1/4 pixel on a 64-pixel
    level in bf16: the computation is done in float32.

    Args:
        value (torch.Tensor): ``(bs, num_value, heads, dim)``.
        spatial_shapes (torch.Tensor): ``(levels, 2)``, each level's (height, width).
        sampling_locations (torch.Tensor): ``(bs, queries, heads, levels, points, 2)``.
        attention_weights (torch.Tensor): ``(bs, queries, heads, levels, points)``.

    Returns:
        torch.Tensor: ``(bs, queries, heads * dim)`` in ``value``'s dtype.
    """
    return _msda_module.multi_scale_deformable_attn_pytorch(
        value.float(), spatial_shapes, sampling_locations.float(),
        attention_weights.float()).to(value.dtype)


class MultiScaleDeformableAttnDispatch:
    """Stands in for ``MultiScaleDeformableAttnFunction`` inside mmcv's attention forward."""

    @staticmethod
    def apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
              im2col_step):
        if not msda_uses_kernel(value.device):
            return msda_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
        if kernel_dtype(value.dtype) != value.dtype:  # bf16 autocast: no bf16 build
            out = _ORIGINAL_MSDA_FUNCTION.apply(value.float(), spatial_shapes, level_start_index,
                                                sampling_locations.float(),
                                                attention_weights.float(), im2col_step)
            return out.to(value.dtype)
        return _ORIGINAL_MSDA_FUNCTION.apply(value, spatial_shapes, level_start_index,
                                             sampling_locations, attention_weights, im2col_step)


def focal_uses_kernel(pred: torch.Tensor) -> bool:
    """Whether mmcv's sigmoid_focal_loss kernel can take ``pred``.

    mmdet calls the kernel for CUDA predictions only.

    Args:
        pred (torch.Tensor): The classification scores.

    Returns:
        bool: True when the kernel is used.
    """
    return not pred.is_cuda or check_kernels(pred.device)[KERNEL_FOCAL][0]


def sigmoid_focal_loss_pytorch(pred, target, weight=None, gamma=2.0, alpha=0.25,
                               reduction='mean', avg_factor=None):
    """mmdet's CPU branch of ``FocalLoss.forward`` (class-index targets, background = C).

    Args:
        pred (torch.Tensor): ``(N, C)`` scores.
        target (torch.Tensor): ``(N,)`` class indices, ``C`` for the background.
        weight (torch.Tensor, optional): Per-sample weights. Defaults to None.
        gamma (float): The focusing parameter. Defaults to 2.0.
        alpha (float): The positive-class weight. Defaults to 0.25.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
        avg_factor (float, optional): The divisor of the mean. Defaults to None.

    Returns:
        torch.Tensor: The loss.
    """
    num_classes = pred.size(1)
    one_hot = F.one_hot(target, num_classes=num_classes + 1)[:, :num_classes]
    return _focal_module.py_sigmoid_focal_loss(pred, one_hot, weight, gamma=gamma, alpha=alpha,
                                               reduction=reduction, avg_factor=avg_factor)


def sigmoid_focal_loss_dispatch(pred, target, weight=None, gamma=2.0, alpha=0.25,
                                reduction='mean', avg_factor=None):
    """Stands in for mmdet's ``sigmoid_focal_loss`` (mmcv kernel), with a PyTorch fallback.

    bf16 predictions of a working kernel are computed in float32.

    Args:
        pred (torch.Tensor): ``(N, C)`` scores.
        target (torch.Tensor): ``(N,)`` class indices, ``C`` for the background.
        weight (torch.Tensor, optional): Per-sample weights. Defaults to None.
        gamma (float): The focusing parameter. Defaults to 2.0.
        alpha (float): The positive-class weight. Defaults to 0.25.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
        avg_factor (float, optional): The divisor of the mean. Defaults to None.

    Returns:
        torch.Tensor: The loss.
    """
    if not focal_uses_kernel(pred):
        return sigmoid_focal_loss_pytorch(pred, target, weight, gamma=gamma, alpha=alpha,
                                          reduction=reduction, avg_factor=avg_factor)
    if kernel_dtype(pred.dtype) != pred.dtype:
        pred = pred.float()
    return _ORIGINAL_SIGMOID_FOCAL_LOSS(pred, target, weight, gamma=gamma, alpha=alpha,
                                        reduction=reduction, avg_factor=avg_factor)


def install() -> None:
    """Put the dispatchers in place (idempotent)."""
    _msda_module.MultiScaleDeformableAttnFunction = MultiScaleDeformableAttnDispatch
    _focal_module.sigmoid_focal_loss = sigmoid_focal_loss_dispatch


def uninstall() -> None:
    _msda_module.MultiScaleDeformableAttnFunction = _ORIGINAL_MSDA_FUNCTION
    _focal_module.sigmoid_focal_loss = _ORIGINAL_SIGMOID_FOCAL_LOSS


def installed() -> bool:
    return _msda_module.MultiScaleDeformableAttnFunction is MultiScaleDeformableAttnDispatch


def kernel_report(device: Optional[torch.device] = None) -> Dict[str, str]:
    """Which implementation each of the two kernels' callers uses, for reports.

    Checks the CUDA kernels when ``device`` is a GPU.

    Args:
        device (torch.device, optional): The device the model runs on. Defaults to None (the
            CPU).

    Returns:
        Dict[str, str]: ``{'ms_deform_attn': ..., 'sigmoid_focal_loss': ...}``.
    """
    if device is None or torch.device(device).type != 'cuda':
        return {KERNEL_MSDA: describe_msda_path(device or 'cpu'),
                KERNEL_FOCAL: 'PyTorch (py_sigmoid_focal_loss; CPU, as mmdet does there)'}
    ok, reason = check_kernel(KERNEL_FOCAL, torch.device(device))
    return {KERNEL_MSDA: describe_msda_path(device),
            KERNEL_FOCAL: 'mmcv CUDA kernel' if ok else
            f'PyTorch (py_sigmoid_focal_loss): {reason}'}
