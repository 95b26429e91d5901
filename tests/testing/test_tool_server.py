"""The tests' preloaded tool server: a forked run is what a fresh ``python script.py`` would be."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tbx11k.testing import REPO_ROOT, run
from tbx11k.testing.tool_server import FRESH_PROCESSES_VARIABLE, RELAY, through_server

pytestmark = pytest.mark.slow  # starts a tool server (imports torch, mmdet) and processes

SCRIPT = '''
import json, os, random, sys, threading, time, atexit
import numpy
atexit.register(lambda: print('atexit ran'))
threading.Thread(target=lambda: (time.sleep(0.2), print('thread finished'))).start()
what = dict(argv=sys.argv, cwd=os.getcwd(), path0=sys.path[0], main=__name__,
            file=os.path.basename(__file__), env=os.environ.get('PROBE'),
            torch_loaded='torch' in sys.modules, tbx11k_loaded='tbx11k' in sys.modules,
            stdin=sys.stdin.read(), hash=hash('tbx11k'), random=random.random(),
            numpy=float(numpy.random.random()))
print(json.dumps(what))
print('to stderr', file=sys.stderr)
if sys.argv[1] == 'raise':
    raise ValueError('boom')
if sys.argv[1] == 'wait':
    with open(os.environ['PROBE_PID_FILE'], 'w') as f:
        f.write(str(os.getpid()))
    print('waiting', flush=True)
    time.sleep(60)
sys.exit(int(sys.argv[1]))
'''


@pytest.fixture
def probe(tmp_path):
    path = tmp_path / 'probe.py'
    path.write_text(SCRIPT)
    return str(path)


def both_ways(monkeypatch, cmd, **kwargs):
    forked = run(cmd, check=False, **kwargs)
    monkeypatch.setenv(FRESH_PROCESSES_VARIABLE, '1')
    fresh = run(cmd, check=False, **kwargs)
    monkeypatch.delenv(FRESH_PROCESSES_VARIABLE)
    return forked, fresh


def test_a_forked_run_is_a_fresh_process_to_the_script(probe, monkeypatch):
    import json
    cmd = [sys.executable, probe, '3', 'x y']
    assert through_server(cmd, dict(os.environ), REPO_ROOT)[0][:2] == [sys.executable, RELAY]
    forked, fresh = both_ways(monkeypatch, cmd, env={'PROBE': 'here'})
    assert forked.returncode == fresh.returncode == 3
    assert forked.stderr == fresh.stderr == 'to stderr\n'
    ours, theirs = (json.loads(p.stdout.splitlines()[0]) for p in (forked, fresh))
    assert ours.pop('torch_loaded') and not theirs.pop('torch_loaded')  # the point of it
    assert ours.pop('random') != theirs.pop('random') and ours.pop('numpy') != theirs.pop('numpy')
    ours.pop('hash'), theirs.pop('hash')  # each fresh interpreter has its own (PYTHONHASHSEED)
    assert ours == theirs == dict(argv=[probe, '3', 'x y'], cwd=REPO_ROOT,
                                  path0=os.path.dirname(probe), main='__main__', file='probe.py',
                                  env='here', tbx11k_loaded=False, stdin='')
    assert forked.stdout.splitlines()[1:] == fresh.stdout.splitlines()[1:] == [
        'thread finished', 'atexit ran']
    again = run(cmd, check=False)  # new seeds in every fork
    assert json.loads(again.stdout.splitlines()[0])['random'] != ours.get('random')


def test_uncaught_exception_and_exit_status(probe, monkeypatch):
    forked, fresh = both_ways(monkeypatch, [sys.executable, probe, 'raise'])
    assert forked.returncode == fresh.returncode == 1
    for proc in (forked, fresh):
        assert proc.stderr.splitlines()[-1] == 'ValueError: boom'
        assert 'Traceback (most recent call last):' in proc.stderr


def test_import_time_variables_get_their_own_server_or_a_fresh_interpreter(probe, monkeypatch):
    """A run with another import-time variable runs in a server started with it; a relay whose
    environment differs from its server's in one is refused and runs the script itself."""
    import json
    cmd = [sys.executable, probe, '0']
    forked, fresh = both_ways(monkeypatch, cmd, env={'PYTHONHASHSEED': '7'})
    ours, theirs = (json.loads(p.stdout.splitlines()[0]) for p in (forked, fresh))
    assert ours['torch_loaded'] and not theirs['torch_loaded']
    assert ours['hash'] == theirs['hash']
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONUNBUFFERED='1')
    launch, launch_env = through_server(cmd, env, REPO_ROOT)
    refused = subprocess.run(launch, env=dict(launch_env, OMP_NUM_THREADS='2'), cwd=REPO_ROOT,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert refused.returncode == 0 and refused.stderr == 'to stderr\n'
    assert not json.loads(refused.stdout.splitlines()[0])['torch_loaded']


def test_signals_reach_the_tool_and_a_killed_relay_takes_it_along(probe, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONUNBUFFERED='1')
    for relay_signal, returncode in ((signal.SIGTERM, -signal.SIGTERM),
                                     (signal.SIGKILL, -signal.SIGKILL)):
        pid_file = tmp_path / f'pid{relay_signal}'
        cmd, launch_env = through_server([sys.executable, probe, 'wait'],
                                         dict(env, PROBE_PID_FILE=str(pid_file)), REPO_ROOT)
        relay = subprocess.Popen(cmd, env=launch_env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, text=True)
        assert [relay.stdout.readline() for _ in range(2)][1] == 'waiting\n'
        tool = int(pid_file.read_text())
        assert tool != relay.pid  # the script runs in a fork of the server, not in the relay
        relay.send_signal(relay_signal)
        assert relay.wait(timeout=20) == returncode
        deadline = time.time() + 20
        while is_running(tool) and time.time() < deadline:
            time.sleep(0.05)
        assert not is_running(tool), 'the tool outlived its relay'


def is_running(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False
