"""``python tool_relay.py SCRIPT ARGS...``: run ``python SCRIPT ARGS...`` in a fork of the tests'
preloaded tool server (:mod:`tbx11k.testing.tool_server`), else in this process.

Standard library only and run as a file (never imported through the ``tbx11k`` package): it starts
in some 30 ms. It hands the server its environment, working directory, argv and its stdin, stdout
and stderr (the descriptors themselves), forwards the signals it gets to the tool, and ends as the
tool ended (its exit status, or killed by the same signal). Without a server
(``TBX11K_TOOL_SERVER`` unset or gone) or when the server refuses (an environment variable read at
import differs from the server's), it replaces itself with ``python SCRIPT ARGS...`` (exec): the
tool then runs in a fresh interpreter as it would without the relay.
"""
import json
import os
import signal
import socket
import sys

SERVER_VARIABLE = 'TBX11K_TOOL_SERVER'
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)


def exec_fresh(argv) -> None:
    unbuffered = ['-u'] if getattr(sys.stdout, 'write_through', False) else []  # python -u
    os.execv(sys.executable, [sys.executable] + unbuffered + argv)


def main(argv) -> None:
    path = os.environ.get(SERVER_VARIABLE)
    if not path:
        exec_fresh(argv)
    env = {k: v for k, v in os.environ.items() if k != SERVER_VARIABLE}
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
    except OSError:
        client.close()
        exec_fresh(argv)
    request = json.dumps(dict(argv=argv, env=env, cwd=os.getcwd())).encode() + b'\n'
    socket.send_fds(client, [request], [0, 1, 2])
    stream = client.makefile('rb')
    first = json.loads(stream.readline())
    if not first.get('accepted'):
        client.close()
        exec_fresh(argv)

    def forward(signum, frame):
        try:
            client.sendall(f'{signum}\n'.encode())
        except OSError:
            pass

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    line = b''
    while not line:
        try:
            line = stream.readline()
        except InterruptedError:
            continue
        if not line:  # the server went away: no status to report
            sys.exit(1)
    returncode = json.loads(line)['returncode']
    if returncode < 0:
        signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
    sys.exit(returncode)


if __name__ == '__main__':
    main(sys.argv[1:])
