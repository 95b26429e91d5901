"""Upstream fix: mmengine 0.10.7's checkpoint loaders on torch >= 2.6, loading safely.

Upstream: open-mmlab/mmengine#1655 (the bug), open-mmlab/mmengine#1650 (the fix, not in a release).
Applies to: mmengine <= 0.10.7 with torch >= 2.6. Remove when the lowest supported mmengine passes
``weights_only`` to ``torch.load`` itself.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine 0.10.7 calls
``torch.load`` without the argument, so loading a checkpoint that holds a ``MessageHub``
(``HistoryBuffer``, numpy scalars) fails with "Unsupported global" (open-mmlab/mmengine#1655,
fixed after 0.10.7); its URL loaders (``http(s)://``, ``torchvision://``, ``open-mmlab://``,
``mmcls://``) go through ``torch.hub``, which unpickles fully. We re-register mmengine's loaders
for local paths, URLs and its model-zoo schemes to load with
:func:`~tbx11k.utils.safe_checkpoint.load_checkpoint_safely`: ``weights_only=True`` and the
globals that mmengine, mmdet and torch write into checkpoints; any other global is refused unless
the user trusts the file (``--trust-checkpoint``, ``TBX11K_TRUST_CHECKPOINTS=1``).
"""
import io
import os
import os.path as osp
import zipfile
from tempfile import TemporaryDirectory
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from ..utils.safe_checkpoint import load_checkpoint_safely


def load_local_checkpoint(filename: str, map_location: Any = None, logger=None) -> Any:
    """Load a local checkpoint file safely (mmengine's local loader, fixed)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_checkpoint_safely(filename, map_location=map_location)


def load_from_local(filename: str, map_location: Any = None) -> Any:
    """The loader registered for local paths (named as mmengine's: its log says "by local
    backend")."""
    return load_local_checkpoint(filename, map_location=map_location)


def load_checkpoint_mmapped(filename: str) -> Any:
    """Load a local checkpoint safely with its tensors mmapped, not read (cheap for a look at its
    meta or a check that it loads); a legacy (non-zip) file, which cannot be mmapped, is read
    whole."""
    try:
        return load_checkpoint_safely(filename, map_location='cpu', mmap=True)
    except RuntimeError as error:
        if 'mmap' not in str(error):
            raise
        return load_checkpoint_safely(filename, map_location='cpu')


def _download(url: str, model_dir: Optional[str], progress: bool) -> str:
    """The local copy of ``url`` in torch.hub's cache (``model_dir``), downloaded if missing; a
    legacy (torch < 1.6) zip of one file is extracted, as ``torch.hub`` does."""
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))
    if not osp.exists(cached):
        torch.hub.download_url_to_file(url, cached, None, progress=progress)
    if zipfile.is_zipfile(cached):
        with zipfile.ZipFile(cached) as archive:
            members = archive.infolist()
            if len(members) == 1 and not members[0].is_dir():  # not a torch zip checkpoint
                archive.extractall(model_dir)
                return osp.join(model_dir, members[0].filename)
    return cached


def load_from_http(filename: str, map_location: Any = None,
                         model_dir: Optional[str] = None,
                         progress: bool = os.isatty(0)) -> Any:
    """Download a checkpoint (rank 0 first, as mmengine's loader) and load it safely."""
    rank, world_size = get_dist_info()
    if rank == 0:
        checkpoint = load_checkpoint_safely(_download(filename, model_dir, progress),
                                            map_location=map_location, source=filename)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = load_checkpoint_safely(_download(filename, model_dir, progress),
                                                map_location=map_location, source=filename)
    return checkpoint


def load_from_torchvision(filename: str, map_location: Any = None) -> Any:
    """``torchvision://NAME`` (``modelzoo://NAME``): torchvision's weights for NAME, safely."""
    prefix = 'modelzoo://' if filename.startswith('modelzoo://') else 'torchvision://'
    urls = mmengine_checkpoint.get_torchvision_models()
    return load_from_http(urls[filename[len(prefix):]], map_location=map_location)


def load_from_openmmlab(filename: str, map_location: Any = None) -> Any:
    """``open-mmlab://NAME`` (``openmmlab://NAME``): OpenMMLab's weights for NAME, safely."""
    prefix = 'open-mmlab://' if filename.startswith('open-mmlab://') else 'openmmlab://'
    name = filename[len(prefix):]
    name = mmengine_checkpoint.get_deprecated_model_names().get(name, name)
    url = mmengine_checkpoint.get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location=map_location)
    return load_local_checkpoint(osp.join(mmengine_checkpoint._get_mmengine_home(), url),
                                 map_location=map_location)


def load_from_mmcls(filename: str, map_location: Any = None) -> Any:
    """``mmcls://NAME``: MMClassification's weights for NAME, safely."""
    url = mmengine_checkpoint.get_mmcls_models()[filename[len('mmcls://'):]]
    checkpoint = load_from_http(url, map_location=map_location)
    return mmengine_checkpoint._process_mmcls_checkpoint(checkpoint)


def load_from_ceph(filename: str, map_location: Any = None, backend: str = 'petrel') -> Any:
    """``s3://`` / ``petrel://``: read through mmengine's file backend, loaded safely."""
    from mmengine.fileio import get_file_backend
    file_backend = get_file_backend(filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        return load_checkpoint_safely(buffer, map_location=map_location, source=filename)


def load_from_pavi(filename: str, map_location: Any = None) -> Any:
    """``pavi://``: downloaded from PAVI's model cloud, loaded safely."""
    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError('Please install pavi to load checkpoint from modelcloud.')
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        downloaded = osp.join(tmp_dir, model.name)
        model.download(downloaded)
        return load_checkpoint_safely(downloaded, map_location=map_location, source=filename)


def install() -> None:
    """Register the safe loaders as mmengine's loaders of local paths, URLs and its model-zoo
    schemes (idempotent)."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=load_from_http,
                                     force=True)
    CheckpointLoader.register_scheme(prefixes=('modelzoo://', 'torchvision://'),
                                     loader=load_from_torchvision, force=True)
    CheckpointLoader.register_scheme(prefixes=('open-mmlab://', 'openmmlab://'),
                                     loader=load_from_openmmlab, force=True)
    CheckpointLoader.register_scheme(prefixes='mmcls://', loader=load_from_mmcls, force=True)
    CheckpointLoader.register_scheme(prefixes=[r'(\S+\:)?s3://', r'(\S+\:)?petrel://'],
                                     loader=load_from_ceph, force=True)
    CheckpointLoader.register_scheme(prefixes='pavi://', loader=load_from_pavi, force=True)
