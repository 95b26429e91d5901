"""Checkpoints are data: loading one never runs code, unless the user trusts the file.

A ``.pth`` file is a pickle, and unpickling with ``torch.load(weights_only=False)`` runs whatever
the file says. Every checkpoint the project reads is loaded with ``weights_only=True`` and, scoped
to that load (``torch.serialization.safe_globals``), an allowlist of exactly the Python objects
that torch, mmengine and mmdet write into checkpoints (:func:`checkpoint_safe_globals`):

- mmengine's ``HistoryBuffer`` (the message hub's logs) and, as ``builtins.getattr``, a getattr
  that only hands out ``HistoryBuffer``'s own statistics methods (the pickled history buffers
  name them; a general getattr would reach any attribute of the allowed objects);
- numpy arrays, dtypes, dtype classes and scalars (the message hub's values), under both the
  numpy 1.x (``numpy.core``) and 2.x (``numpy._core``) names of their reconstructors;
- what torch's weights-only unpickler allows by itself (tensors, storages, ``OrderedDict``,
  ``torch.device`` / dtypes, ``collections.Counter``, ...).

A checkpoint with any other global is refused before anything in it runs
(:class:`UntrustedCheckpointError`: one message naming the file, the globals and the opt-in).
A user who trusts such a file opts in with the tools' ``--trust-checkpoint`` flag
(:func:`trust_checkpoints`) or ``TBX11K_TRUST_CHECKPOINTS=1`` in the environment (Slurm jobs):
the file is then fully unpickled, with a warning naming it.
"""
import _compat_pickle
import argparse
import io
import logging
import os
import pickle
import pickletools
import zipfile
from typing import Any, BinaryIO, Callable, List, Optional, Set, Tuple, Union

import torch
from mmengine.logging import HistoryBuffer, print_log

#: environment variable that trusts every checkpoint a process loads (``1``, ``true``, ``yes``)
TRUST_ENV = 'TBX11K_TRUST_CHECKPOINTS'
#: the tools' command-line flag that does the same for one command
TRUST_FLAG = '--trust-checkpoint'
_TRUE_VALUES = ('1', 'true', 'yes', 'on')
_trusted_by_flag = False

FileOrPath = Union[str, os.PathLike, BinaryIO]


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint that needs Python objects outside the allowlist: refused, nothing in it ran.

    Args:
        source (str): the file (or URL) refused.
        unsafe_globals (list[str]): the globals it holds that are not allowed (may be empty when
            torch refused another construct, see ``detail``).
        detail (str): torch's reason, for the case no global is named.
    """

    def __init__(self, source: str, unsafe_globals: List[str], detail: str = '') -> None:
        self.source = source
        self.unsafe_globals = list(unsafe_globals)
        self.detail = detail
        if self.unsafe_globals:
            what = (f'it holds {", ".join(self.unsafe_globals)}: Python objects that '
                    'checkpoints of torch, mmengine and mmdet never hold')
        else:
            what = f'it needs what a weights-only load refuses ({detail.strip()})'
        super().__init__(
            f'refusing to load the checkpoint {source}: {what}; unpickling it could run code '
            f'(nothing in it was run). If you trust this file, load it with {TRUST_FLAG} (or '
            f'{TRUST_ENV}=1 in the environment, e.g. for Slurm jobs).')

    def __reduce__(self) -> Tuple[Callable, Tuple]:  # survives broadcast_object_list
        return type(self), (self.source, self.unsafe_globals, self.detail)


# ---- the opt-in --------------------------------------------------------------------------------
def trust_checkpoints(enabled: bool = True) -> None:
    """Trust every checkpoint this process loads from now on (the tools' ``--trust-checkpoint``).

    Args:
        enabled (bool): trust (True) or go back to refusing unknown globals (False).
    """
    global _trusted_by_flag
    _trusted_by_flag = bool(enabled)


def checkpoint_trust_source() -> Optional[str]:
    """How checkpoints are trusted in this process (``--trust-checkpoint`` or
    ``TBX11K_TRUST_CHECKPOINTS=...``), or None when they are not."""
    if _trusted_by_flag:
        return TRUST_FLAG
    value = os.environ.get(TRUST_ENV, '')
    if value.strip().lower() in _TRUE_VALUES:
        return f'{TRUST_ENV}={value}'
    return None


def add_trust_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--trust-checkpoint`` to a tool's parser (apply it with :func:`apply_trust_option`).

    Args:
        parser (argparse.ArgumentParser): the tool's parser.
    """
    parser.add_argument(
        TRUST_FLAG, action='store_true',
        help='fully unpickle checkpoints that hold Python objects besides weights and training '
        'state (refused by default: unpickling can run code). Only for files you trust; '
        f'{TRUST_ENV}=1 in the environment does the same')


def apply_trust_option(args: argparse.Namespace) -> None:
    """Trust checkpoints when the parsed ``args`` have ``--trust-checkpoint``.

    Args:
        args (argparse.Namespace): parsed arguments of a parser given
            :func:`add_trust_checkpoint_argument`.
    """
    if getattr(args, 'trust_checkpoint', False):
        trust_checkpoints()


# ---- the allowlist -----------------------------------------------------------------------------
#: HistoryBuffer methods that pickled history buffers name (its registered statistics)
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def history_buffer_getattr(owner: Any, name: Any) -> Callable:
    """``getattr`` as checkpoints use it, and no further: a ``HistoryBuffer`` statistics method.

    A pickle (protocol 2, torch's) names a method ``HistoryBuffer.min`` as
    ``getattr(HistoryBuffer, 'min')``; the message hub of every mmengine checkpoint holds these.

    Args:
        owner: the object whose attribute is asked for; must be ``HistoryBuffer``.
        name: the attribute; must be one of its statistics methods.

    Returns:
        Callable: the method.

    Raises:
        pickle.UnpicklingError: for anything else.
    """
    if owner is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'getattr({owner!r}, {name!r}) is not allowed in a checkpoint '
                                 '(only the statistics methods of mmengine\'s HistoryBuffer)')


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def checkpoint_safe_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """The globals allowed in a checkpoint besides torch's own (see the module doc).

    Returns:
        list: entries for ``torch.serialization.safe_globals``: objects, or ``(object, name)``
        where a checkpoint names the object otherwise than its module and qualified name.
    """
    import numpy as np
    multiarray = _numpy_multiarray()
    allowed: List[Union[Callable, Tuple[Callable, str]]] = [
        HistoryBuffer, np.ndarray, np.dtype, (history_buffer_getattr, 'builtins.getattr')]
    for numpy_core in ('numpy.core', 'numpy._core'):  # written by numpy 1.x / numpy 2.x
        allowed += [(multiarray._reconstruct, f'{numpy_core}.multiarray._reconstruct'),
                    (multiarray.scalar, f'{numpy_core}.multiarray.scalar')]
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25: a class per dtype
    if dtypes is not None:
        allowed += [(cls, f'numpy.dtypes.{name}') for name, cls in sorted(vars(dtypes).items())
                    if name.endswith('DType') and isinstance(cls, type)]
    return allowed


def _allowed_global_names() -> Set[str]:
    names = set()
    for entry in checkpoint_safe_globals():
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f'{entry.__module__}.{entry.__qualname__}')
    try:  # torch's own allowlist (private, but stable since torch 2.4): only for the message
        from torch import _weights_only_unpickler
        names.update(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):
        pass
    return names


# ---- what a checkpoint holds, statically ------------------------------------------------------
def _globals_in_pickle(stream: BinaryIO) -> Set[str]:
    """Globals one pickle names, read opcode by opcode (nothing is built, nothing runs)."""
    found, strings = set(), []
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name in ('GLOBAL', 'INST'):
            module, name = arg.split(' ', 1)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            else:
                module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            found.add(f'{module}.{name}')
        elif opcode.name == 'STACK_GLOBAL':
            found.add('.'.join(strings[-2:]) if len(strings) >= 2 else
                      '(a global named by strings on the pickle stack)')
        elif isinstance(arg, str) and 'UNICODE' in opcode.name:
            strings.append(arg)
    return found


def globals_in_checkpoint(f: FileOrPath) -> Set[str]:
    """All globals the pickle of a ``torch.save`` file names (zip or legacy format), statically.

    Args:
        f: a path or a seekable binary file object.

    Returns:
        set[str]: ``module.name`` of every global.
    """
    opened = open(f, 'rb') if isinstance(f, (str, os.PathLike)) else f
    try:
        opened.seek(0)
        if zipfile.is_zipfile(opened):
            opened.seek(0)
            with zipfile.ZipFile(opened) as archive:
                records = [n for n in archive.namelist()
                           if n == 'data.pkl' or n.endswith('/data.pkl')]
                return set().union(*(_globals_in_pickle(io.BytesIO(archive.read(n)))
                                     for n in records))
        opened.seek(0)
        found: Set[str] = set()
        for _ in range(4):  # legacy format: magic number, protocol, sys info, the object
            found |= _globals_in_pickle(opened)
        return found
    finally:
        if opened is not f:
            opened.close()


def _refusal(source: str, f: FileOrPath, error: pickle.UnpicklingError
             ) -> Optional[UntrustedCheckpointError]:
    """The refusal a weights-only load failure means, or None when the file is just broken."""
    detail = str(error).split('WeightsUnpickler error:')[-1].strip().split('\n')[0]
    try:
        unsafe = sorted(globals_in_checkpoint(f) - _allowed_global_names())
    except Exception:  # not a well-formed pickle (a text file, a truncated one): not a refusal
        return None
    refused = ('Unsupported global', 'Unsupported operand', 'unrecognized function',
               'Can only build', 'Can only create new object', 'not allowed in a checkpoint',
               'is blocked')
    if unsafe or any(reason in detail for reason in refused):
        return UntrustedCheckpointError(source, unsafe, detail)
    return None


# ---- loading -----------------------------------------------------------------------------------
def load_checkpoint_safely(f: FileOrPath, map_location: Any = None, *,
                           source: Optional[str] = None, mmap: Optional[bool] = None) -> Any:
    """``torch.load`` that never runs code from the file unless checkpoints are trusted.

    The file is loaded with ``weights_only=True`` and the allowlist
    (:func:`checkpoint_safe_globals`), scoped to this load. A file that needs other globals is
    refused (:class:`UntrustedCheckpointError`), or, when the user trusts checkpoints
    (``--trust-checkpoint``, ``TBX11K_TRUST_CHECKPOINTS=1``), fully unpickled with a warning
    naming it.

    Args:
        f: a path or a seekable binary file object.
        map_location: as for ``torch.load``.
        source (str, optional): how to name the file in messages (default: the path).
        mmap (bool, optional): as for ``torch.load`` (mmap the tensors of a zip-format file).

    Returns:
        The unpickled object.

    Raises:
        UntrustedCheckpointError: the file holds other globals and checkpoints are not trusted.
    """
    source = source or (os.fspath(f) if isinstance(f, (str, os.PathLike)) else repr(f))
    mmap_kwargs = {} if mmap is None else dict(mmap=mmap)
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(f, map_location=map_location, weights_only=True, **mmap_kwargs)
    except pickle.UnpicklingError as error:
        refusal = _refusal(source, f, error)
        if refusal is None:
            raise
    trusted_by = checkpoint_trust_source()
    if trusted_by is None:
        raise refusal
    what = ', '.join(refusal.unsafe_globals) or refusal.detail
    print_log(f'{source}: fully unpickling this checkpoint because checkpoints are trusted '
              f'({trusted_by}); it holds {what}, and code in it runs now', logger='current',
              level=logging.WARNING)
    if not isinstance(f, (str, os.PathLike)):
        f.seek(0)
    return torch.load(f, map_location=map_location, weights_only=False, **mmap_kwargs)
