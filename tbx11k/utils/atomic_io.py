"""Atomic writes for local files: a file is either its old complete version or its new one.

mmengine writes checkpoints (``mmengine.runner.save_checkpoint``), ``mmengine.dump`` output and
other files through the storage backend registered for local paths, whose ``put`` opens the final
path and writes into it: a process killed while writing (``kill -9``, the node losing power, a
Slurm job running out of its grace time) leaves a truncated file under the final name.
:func:`atomic_write_bytes` writes to ``PATH.tmp-<pid>`` in the same directory, flushes and
fsyncs it, and renames it over ``PATH`` (``os.replace`` is atomic on POSIX file systems), then
fsyncs the directory. A killed write leaves at most a ``*.tmp-<pid>`` file, never a partial
``PATH``.

Importing :mod:`tbx11k` registers :class:`tbx11k.compat.file_backend.AtomicLocalBackend` (whose
writes go through :func:`atomic_write_bytes`) for local paths in place of mmengine's
``LocalBackend``; every ``get_file_backend(local_path)`` then returns it.
"""
import glob
import os
import os.path as osp
from pathlib import Path
from typing import List, Union

TMP_MARK = '.tmp-'


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, filepath: Union[str, Path]) -> None:
    """Write ``data`` to ``filepath`` through ``filepath.tmp-<pid>`` + fsync + ``os.replace``.

    Args:
        data (bytes): The content.
        filepath (str | Path): The file to write; its folder is made when missing.
    """
    filepath = os.fspath(filepath)
    directory = osp.dirname(osp.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    tmp = f'{filepath}{TMP_MARK}{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_text(text: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
    """:func:`atomic_write_bytes` for text.

    Args:
        text (str): The content.
        filepath (str | Path): The file to write; its folder is made when missing.
        encoding (str): The text encoding. Defaults to 'utf-8'.
    """
    atomic_write_bytes(text.encode(encoding), filepath)


def stale_temporaries(directory: Union[str, Path]) -> List[str]:
    """``*.tmp-<pid>`` files left in ``directory`` by writes that were killed.

    Args:
        directory (str | Path): The folder to look in.

    Returns:
        List[str]: Their paths, sorted.
    """
    return sorted(p for p in glob.glob(osp.join(os.fspath(directory), f'*{TMP_MARK}*'))
                  if p.rsplit(TMP_MARK, 1)[-1].isdigit())
