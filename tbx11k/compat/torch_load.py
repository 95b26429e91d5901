"""Upstream fix: resuming mmengine 0.10.7 checkpoints on torch >= 2.6.

Upstream: open-mmlab/mmengine#1655 (the bug), open-mmlab/mmengine#1650 (the fix, not in a release).
Applies to: mmengine <= 0.10.7 with torch >= 2.6. Remove when the lowest supported mmengine passes
``weights_only`` to ``torch.load`` itself.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine 0.10.7 calls
``torch.load`` without the argument, so loading a checkpoint that holds a ``MessageHub``
(``HistoryBuffer``, numpy scalars) fails with "Unsupported global" (open-mmlab/mmengine#1655, fixed
after 0.10.7). We re-register mmengine's loader for local paths to pass ``weights_only=False``.
Checkpoints are pickles: load only files you trust (your own work dirs), as before torch 2.6.
"""
import inspect
import os.path as osp
from typing import Callable, Optional, Union

import torch
from mmengine.runner.checkpoint import CheckpointLoader

_SUPPORTS_WEIGHTS_ONLY = 'weights_only' in inspect.signature(torch.load).parameters


def load_local_checkpoint(filename: str,
                          map_location: Optional[Union[str, Callable]] = None,
                          logger=None) -> dict:
    """Load a local checkpoint file with full unpickling (mmengine's local loader, fixed)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    kwargs = dict(weights_only=False) if _SUPPORTS_WEIGHTS_ONLY else {}
    return torch.load(filename, map_location=map_location, **kwargs)


def load_checkpoint_mmapped(filename: str) -> dict:
    """Load a local checkpoint with its tensors mmapped, not read (cheap for a look at its meta
    or a check that it loads); a legacy (non-zip) file, which cannot be mmapped, is read whole."""
    kwargs = dict(weights_only=False) if _SUPPORTS_WEIGHTS_ONLY else {}
    try:
        return torch.load(filename, map_location='cpu', mmap=True, **kwargs)
    except RuntimeError as error:
        if 'mmap' not in str(error):
            raise
        return torch.load(filename, map_location='cpu', **kwargs)


def install() -> None:
    """Register :func:`load_local_checkpoint` as mmengine's loader of local paths (idempotent)."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
