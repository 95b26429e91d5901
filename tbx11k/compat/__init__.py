"""Patches of upstream behaviour applied when ``tbx11k`` is imported, one module per patch.

Each module's header names the upstream issue, the versions it applies to and when it can be
removed; :func:`install` applies them all (idempotent; ``tbx11k/__init__.py`` calls it once):

- :mod:`.torch_load`: mmengine's checkpoint loaders (local, URLs, model zoos) on torch >= 2.6,
  loading with ``weights_only=True`` and an allowlist;
- :mod:`.file_backend`: atomic writes for mmengine's local file backend;
- :mod:`.mmcv_cuda_fallback`: PyTorch fallbacks (and bf16) for mmcv's two CUDA kernels DINO uses.
"""
from . import file_backend, mmcv_cuda_fallback, torch_load


def install() -> None:
    """Apply every upstream patch of this package (idempotent)."""
    torch_load.install()
    file_backend.install()
    mmcv_cuda_fallback.install()


__all__ = ['install']
