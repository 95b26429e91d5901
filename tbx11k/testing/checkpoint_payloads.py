"""Crafted checkpoints for the safe-loading tests: payloads that would create a marker file when
unpickled, placed where a checkpoint hides them, and a local HTTP server to serve them."""
import contextlib
import datetime
import functools
import http.server
import os
import shlex
import threading
import zipfile
from typing import Dict, Iterator, Optional

import torch

#: where a payload sits in a checkpoint
PLACES = ('meta', 'message_hub', 'whole', 'optimizer_state')
#: what the payload calls when unpickled
KINDS = ('os.system', 'exec')


class ShellPayload:
    """Unpickled, runs ``touch MARKER`` through ``os.system``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(self.marker)}', )


class ExecPayload:
    """Unpickled, creates MARKER through ``exec`` of Python source."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").close()', )


def payload(kind: str, marker: str):
    return {'os.system': ShellPayload, 'exec': ExecPayload}[kind](marker)


def training_checkpoint(**meta) -> Dict:
    """A small checkpoint shaped as a Runner writes it (meta, weights, optimizer, message hub)."""
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    return dict(
        meta=dict(epoch=1, iter=2, dataset_meta=dict(classes=('ActiveTuberculosis', )), **meta),
        state_dict={'linear.weight': weight},
        optimizer=dict(state={0: dict(step=torch.tensor(2.0), exp_avg=torch.zeros(2, 3))},
                       param_groups=[dict(lr=1e-4, betas=(0.9, 0.999), params=[0])]),
        message_hub=dict(log_scalars={}, runtime_info=dict(epoch=1, iter=2), resumed_keys={}))


def crafted_checkpoint(place: str, marker: str, kind: str = 'os.system',
                       base: Optional[Dict] = None):
    """``base`` (default: :func:`training_checkpoint`) with a payload at ``place``."""
    evil = payload(kind, marker)
    if place == 'whole':
        return evil
    checkpoint = dict(base or training_checkpoint())
    if place == 'meta':
        checkpoint['meta'] = dict(checkpoint.get('meta', {}), note=evil)
    elif place == 'message_hub':
        hub = dict(checkpoint.get('message_hub', {}))
        hub['runtime_info'] = dict(hub.get('runtime_info', {}), note=evil)
        checkpoint['message_hub'] = hub
    elif place == 'optimizer_state':
        optimizer = dict(checkpoint['optimizer'])
        optimizer['state'] = {0: dict(optimizer['state'][0], note=evil)}
        checkpoint['optimizer'] = optimizer
    else:
        raise ValueError(place)
    return checkpoint


def write_crafted_checkpoint(path: str, place: str = 'meta', kind: str = 'os.system',
                             marker: Optional[str] = None, base: Optional[Dict] = None,
                             legacy: bool = False) -> str:
    """Save a crafted checkpoint to ``path`` (zip format, or torch's legacy format); its payload
    creates ``marker`` (default ``path + '.ran'``). Returns the marker's path."""
    marker = marker or f'{path}.ran'
    torch.save(crafted_checkpoint(place, marker, kind, base), str(path),
               _use_new_zipfile_serialization=not legacy)
    return marker


def trusted_unknown_checkpoint(base: Optional[Dict] = None) -> Dict:
    """A legitimate checkpoint holding a global outside the allowlist (a ``datetime.date`` in its
    meta, harmless): refused by default, loaded with the opt-in."""
    checkpoint = dict(base or training_checkpoint())
    checkpoint['meta'] = dict(checkpoint.get('meta', {}), created=datetime.date(2024, 5, 1))
    return checkpoint


def as_written_on_a_gpu(path: str, out: str) -> int:
    """Copy the zip-format checkpoint ``path`` to ``out`` as a GPU machine writes it: every
    storage located on ``cuda:0`` (the pickle is otherwise the same; it names the location once,
    then refers to it). Returns how many location strings were changed."""
    cpu, cuda = b'X\x03\x00\x00\x00cpu', b'X\x06\x00\x00\x00cuda:0'  # BINUNICODE
    count = 0
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, 'w') as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith('/data.pkl'):
                count = data.count(cpu)
                data = data.replace(cpu, cuda)
            target.writestr(info.filename, data)
    return count


@contextlib.contextmanager
def serve_directory(directory: str) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the signature of the base class)
        pass
