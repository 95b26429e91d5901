"""Pretrained weights that a model's ``init_cfg`` names: find them, and check before building.

mmengine fetches an ``init_cfg=dict(type='Pretrained', checkpoint=URL)`` when it initialises the
weights, after the model, the data and the hooks are built; on a machine without network (Slurm
compute nodes often are) that ends in a long ``URLError`` traceback.
:func:`check_pretrained_weights` finds out first, in about a second, and says what to do.
"""
import os.path as osp
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse

#: the config key of the backbone's pretrained checkpoint (tools/train.py --backbone-checkpoint)
BACKBONE_CHECKPOINT_KEY = 'model.backbone.init_cfg.checkpoint'


class PretrainedWeightsUnavailable(RuntimeError):
    """A pretrained checkpoint named by an ``init_cfg`` cannot be downloaded or read."""


def pretrained_checkpoints(model_cfg: Any, prefix: str = 'model') -> List[Tuple[str, str]]:
    """(config key, checkpoint) of every ``init_cfg`` of type ``Pretrained`` in a model config.

    Args:
        model_cfg (Any): the ``model`` config (dicts and lists, nested).
        prefix (str): the key of ``model_cfg`` in the whole config.

    Returns:
        list[tuple[str, str]]: e.g. ``[('model.backbone.init_cfg.checkpoint', 'https://...')]``.
    """
    found = []
    if isinstance(model_cfg, dict):
        for key, value in model_cfg.items():
            path = f'{prefix}.{key}'
            if key == 'init_cfg':
                inits = value if isinstance(value, (list, tuple)) else [value]
                for i, init in enumerate(inits):
                    if (isinstance(init, dict) and init.get('type') == 'Pretrained'
                            and isinstance(init.get('checkpoint'), str)):
                        where = path if inits is not value else f'{path}.{i}'
                        found.append((f'{where}.checkpoint', init['checkpoint']))
            else:
                found += pretrained_checkpoints(value, path)
    elif isinstance(model_cfg, (list, tuple)):
        for i, value in enumerate(model_cfg):
            found += pretrained_checkpoints(value, f'{prefix}.{i}')
    return found


def hub_cache_path(url: str) -> str:
    """Where torch's hub cache (mmengine's ``load_url``) keeps the download of ``url``."""
    import torch.hub
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(url).path))


def _option_for(key: str) -> str:
    if key == BACKBONE_CHECKPOINT_KEY:
        return f'--backbone-checkpoint PATH (the same as --cfg-options {key}=PATH)'
    return f'--cfg-options {key}=PATH'


def check_url_reachable(url: str, timeout: float) -> Optional[str]:
    """None when a download of ``url`` starts (the response headers arrive), else why not.

    Opens the URL as torch's hub download does and closes it without reading the body."""
    import socket
    from urllib.error import URLError
    from urllib.request import Request, urlopen
    try:
        with urlopen(Request(url, headers={'User-Agent': 'torch.hub'}), timeout=timeout):
            return None
    except (URLError, OSError, socket.timeout, ValueError) as error:
        return f'{type(error).__name__}: {error}'


def check_pretrained_weights(model_cfg: Any, sources: Optional[Dict[str, str]] = None,
                             timeout: float = 20.0) -> None:
    """Raise :class:`PretrainedWeightsUnavailable` when a ``Pretrained`` checkpoint of
    ``model_cfg`` will not load: a local file that is missing or not a torch file, or a URL that
    is neither in torch's hub cache nor downloadable now. Other schemes (``torchvision://``,
    ``open-mmlab://``, ...) are left to mmengine.

    Args:
        model_cfg (Any): the ``model`` config.
        sources (dict[str, str], optional): the URL each key held in the config file before the
            command-line options: named as where to get a file that a local path misses.
        timeout (float): seconds to wait for a download to start.
    """
    from ..compat.torch_load import load_checkpoint_mmapped
    sources = sources or {}
    for key, checkpoint in pretrained_checkpoints(model_cfg):
        if checkpoint.startswith(('http://', 'https://')):
            cached = hub_cache_path(checkpoint)
            if osp.isfile(cached):
                continue
            why = check_url_reachable(checkpoint, timeout)
            if why is not None:
                raise PretrainedWeightsUnavailable(
                    f'cannot download the pretrained weights {key}={checkpoint} ({why}). '
                    f'Without network: download that file where there is network and give its '
                    f'path with {_option_for(key)}, or put it in torch\'s hub cache as '
                    f'{cached}.')
        elif '://' not in checkpoint:
            path = osp.expanduser(checkpoint)
            source = sources.get(key)
            what_to_do = (f'Download the config\'s file {source} and give its path with '
                          if source and '://' in source else 'Give the path of the file with ')
            what_to_do += _option_for(key)
            if not osp.isfile(path):
                raise PretrainedWeightsUnavailable(
                    f'the pretrained weights {key}={checkpoint}: no such file. {what_to_do}')
            try:
                load_checkpoint_mmapped(path)
            except Exception as error:  # unpickling, zip, EOF: all mean the file is unusable
                raise PretrainedWeightsUnavailable(
                    f'the pretrained weights {key}={checkpoint}: cannot load it '
                    f'({type(error).__name__}: {error}); a truncated file, or not a torch '
                    f'checkpoint. {what_to_do}') from error
