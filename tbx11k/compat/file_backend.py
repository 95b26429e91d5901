"""Upstream patch: atomic writes for local files through mmengine's file backend.

Upstream: mmengine's ``LocalBackend.put``/``put_text`` (mmengine/fileio/backends/local_backend.py)
open the final path and write into it, so a process killed while writing a checkpoint leaves a
truncated file under the final name (no upstream issue). Applies to: mmengine 0.10.x (0.10.7
checked). Remove when mmengine's local backend writes through a temporary file and a rename.

:func:`install` registers :class:`AtomicLocalBackend` for local paths (the ``''`` prefix) with
``force=True`` in place of mmengine's ``LocalBackend``: every ``get_file_backend(local_path)``
then returns it, so ``save_checkpoint``, ``mmengine.dump`` and the rest write atomically
(:mod:`tbx11k.utils.atomic_io`).
"""
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio import io as _mmengine_io

from ..utils.atomic_io import atomic_write_bytes, atomic_write_text


class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put``/``put_text`` replace files atomically."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        """Write ``obj`` to ``filepath`` atomically.

        Args:
            obj (bytes): The data.
            filepath (str | Path): The file to write.
        """
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        """Write ``obj`` to ``filepath`` atomically.

        Args:
            obj (str): The text.
            filepath (str | Path): The file to write.
            encoding (str): The text encoding. Defaults to 'utf-8'.
        """
        atomic_write_text(obj, filepath, encoding)


def install() -> None:
    """Make :class:`AtomicLocalBackend` the backend of local paths (idempotent)."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    # get_file_backend(..., enable_singleton=True) caches instances: drop stock local ones
    for key, backend in list(_mmengine_io.backend_instances.items()):
        if type(backend) is LocalBackend:
            del _mmengine_io.backend_instances[key]
