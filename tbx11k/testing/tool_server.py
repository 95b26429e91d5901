"""Run ``tools/*.py`` in processes forked from one that has imported torch, mmengine and mmdet.

The tests start the real tools well over a hundred times; each fresh interpreter spends some 7 s of
CPU importing torch, mmcv, mmengine and mmdet before the tool does anything (2-core machine,
2026-12-07). A :class:`ToolServer` imports those once (with the tools' own warning filter); each
tool run starts the relay (``tool_relay.py``, standard library only), which hands the server its
argv, environment, working directory and its stdin, stdout and stderr descriptors; the server forks
a child that runs the script as ``__main__``. To the tool the child is a new process: its own argv,
environment, working directory, standard streams (the relay's: the pipes of ``subprocess.run`` or
of ``torch.distributed.run``), ``sys.path[0]`` (the script's folder), random seeds; it exits through
the interpreter's thread shutdown and ``atexit``. The relay forwards the signals it gets and ends
as the tool ended (its status, or killed by the same signal); a killed relay takes its tool with
it. What the preloaded imports wrote to stderr is written first to each tool's stderr, as a fresh
interpreter would. The tool's own package (``tbx11k``) is imported by the child, not preloaded.

A run whose environment differs from the server's in a variable read at import (``PYTHONPATH``,
``OMP_*``, ``TORCH*``...) gets a server of its own; the relay runs the tool in a fresh interpreter
(exec) where no server answers. ``TBX11K_TEST_FRESH_PROCESSES=1`` runs every tool that way.
"""
import json
import os
import os.path as osp
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Dict, List, Optional, Sequence, Tuple

#: heavy third-party modules every tool imports (``import tbx11k`` pulls them all in)
PRELOAD = ('numpy', 'cv2', 'torch', 'matplotlib.pyplot', 'pycocotools.coco', 'pycocotools.cocoeval',
           'mmcv.ops', 'mmengine.runner', 'mmdet.models', 'mmdet.datasets', 'mmdet.evaluation',
           'mmdet.engine')
#: environment variables that shape what an import does: a run whose environment differs from the
#: server's in one of these gets a fresh interpreter
IMPORT_TIME_PREFIXES = ('PYTHON', 'OMP_', 'MKL_', 'KMP_', 'TORCH', 'PYTORCH', 'CUDA', 'NVIDIA',
                        'LD_', 'MPL', 'MATPLOTLIB', 'OPENCV', 'MMCV', 'MMENGINE', 'MMDET', 'HOME',
                        'XDG_')
FRESH_PROCESSES_VARIABLE = 'TBX11K_TEST_FRESH_PROCESSES'


#: ...except these, which torch.distributed.run sets for its workers and torch reads at run time
RUN_TIME_PREFIXES = ('TORCHELASTIC_', 'TORCH_NCCL_')


def _import_time_environment(env: Dict[str, str]) -> Dict[str, str]:
    return {k: v for k, v in env.items()
            if k.startswith(IMPORT_TIME_PREFIXES) and not k.startswith(RUN_TIME_PREFIXES)}


# ---- the server process --------------------------------------------------------------------

def _preload() -> str:
    """Import PRELOAD as the tools do; return what the imports wrote to stderr."""
    import warnings
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                            category=UserWarning)
    import importlib
    with tempfile.TemporaryFile(mode='w+') as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            for name in PRELOAD:
                importlib.import_module(name)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return capture.read()


def _run_tool_in_this_process(request: Dict, fds: Sequence[int], import_noise: str) -> int:
    """The forked child: become the tool's process, run its script, return its exit status."""
    import atexit
    import random
    import runpy
    import traceback
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    for target, fd in enumerate(fds):  # the relay's stdin, stdout and stderr
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, 'w', buffering=1, closefd=False)
    sys.stderr = open(2, 'w', buffering=1, closefd=False)
    sys.stdout.reconfigure(write_through=True)
    sys.stderr.reconfigure(write_through=True, errors='backslashreplace')
    sys.stderr.write(import_noise)
    random.seed()
    import numpy
    numpy.random.seed()
    script = request['argv'][0]
    sys.argv = list(request['argv'])
    sys.path.insert(0, osp.dirname(osp.abspath(script)))  # the server runs without its own
    status = 0
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as stop:
        code = stop.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code
        else:
            print(code, file=sys.stderr)
            status = 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        status = 1
    try:
        threading._shutdown()  # wait for non-daemon threads, as at interpreter exit
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    return status & 0xFF


def _serve_one(connection: socket.socket, import_noise: str, import_environment: Dict) -> None:
    """A handler (forked per relay): fork the tool's process; forward the relay's signals to it;
    report its exit status; kill it if the relay goes away first."""
    import select
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    while not message.endswith(b'\n'):
        message += connection.recv(1 << 20)
    request = json.loads(message)
    accepted = _import_time_environment(request['env']) == import_environment
    connection.sendall(json.dumps({'accepted': accepted}).encode() + b'\n')
    if not accepted:
        return
    pid = os.fork()
    if pid == 0:
        connection.close()
        status = 1
        try:
            status = _run_tool_in_this_process(request, fds, import_noise)
        except BaseException:
            import traceback
            os.write(2, traceback.format_exc().encode())
        finally:
            os._exit(status)
    for fd in fds:
        os.close(fd)
    pending = b''
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        readable, _, _ = select.select([connection], [], [], 0.05)
        if readable:
            data = connection.recv(4096)
            if not data:  # the relay was killed: so is its tool
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            pending += data
            *signums, pending = pending.split(b'\n')
            for signum in signums:
                os.kill(pid, int(signum))
    try:
        connection.sendall(json.dumps(
            {'returncode': os.waitstatus_to_exitcode(wait_status)}).encode() + b'\n')
    except OSError:
        pass


def _die_with_parent() -> None:
    """SIGKILL this server when the test process that started it ends (Linux), however it ends."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(socket_path: str) -> None:
    """Preload, then fork a handler per connection on the Unix socket ``socket_path``."""
    del sys.path[0]  # this file's folder (started as a script: the tbx11k package is not loaded)
    _die_with_parent()
    import_environment = _import_time_environment(dict(os.environ))  # before imports change it
    import_noise = _preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(16)
    print('ready', flush=True)
    while True:
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            try:
                _serve_one(connection, import_noise, import_environment)
            finally:
                os._exit(0)
        connection.close()


# ---- the client (the test process) ---------------------------------------------------------

RELAY = osp.join(osp.dirname(osp.abspath(__file__)), 'tool_relay.py')
SERVER_VARIABLE = 'TBX11K_TOOL_SERVER'  # tool_relay.SERVER_VARIABLE (both run as scripts)


class ToolServer:
    """A preloaded server (a process serving a Unix socket), started with the environment of the
    tools it will run; killed when the test process ends."""

    def __init__(self, env: Dict[str, str], cwd: str) -> None:
        self.folder = tempfile.mkdtemp(prefix='tbx11k-tool-server-')
        self.socket_path = osp.join(self.folder, 'socket')
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.socket_path], env=env, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.ready = self.process.stdout.readline().strip() == 'ready'

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_servers: Dict[tuple, ToolServer] = {}
_lock = threading.Lock()


def _server_for(env: Dict[str, str], cwd: str) -> Optional[ToolServer]:
    key = (cwd, tuple(sorted(_import_time_environment(env).items())))
    with _lock:
        if key not in _servers:
            if not _servers:
                import atexit
                atexit.register(_close_all)
            _servers[key] = ToolServer(env, cwd)
        server = _servers[key]
    return server if server.ready and server.process.poll() is None else None


def through_server(cmd: Sequence[str], env: Dict[str, str],
                   cwd: str) -> Tuple[List[str], Dict[str, str]]:
    """``cmd`` and ``env`` rewritten so that its ``python tools/X.py`` processes run in forks of a
    preloaded server: ``python SCRIPT ...`` and the workers of ``python -m torch.distributed.run
    ... SCRIPT ...`` start the relay instead, which hands the run to the server. Other commands,
    and every command under ``TBX11K_TEST_FRESH_PROCESSES=1``, are returned as they are."""
    cmd = list(cmd)
    if os.environ.get(FRESH_PROCESSES_VARIABLE) == '1' or not cmd or cmd[0] != sys.executable:
        return cmd, env
    if len(cmd) > 1 and cmd[1].endswith('.py') and osp.isfile(cmd[1]):
        script_at = 1
    elif cmd[1:3] == ['-m', 'torch.distributed.run']:
        script_at = next((i for i, arg in enumerate(cmd) if i > 2 and arg.endswith('.py')
                          and not arg.startswith('-') and osp.isfile(arg)), None)
        if script_at is None:
            return cmd, env
    else:
        return cmd, env
    server = _server_for(env, cwd)
    if server is None:
        return cmd, env
    return (cmd[:script_at] + [RELAY] + cmd[script_at:],
            dict(env, **{SERVER_VARIABLE: server.socket_path}))


def _close_all() -> None:
    for server in _servers.values():
        server.close()


if __name__ == '__main__':
    serve(sys.argv[1])
