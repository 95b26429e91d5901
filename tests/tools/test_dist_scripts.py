"""tools/dist_train.sh and tools/dist_test.sh without training: usage errors, and Ctrl-C with a
stand-in for torch.distributed.run (PYTHON) that takes a while to stop its workers."""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

from tbx11k.testing import REPO_ROOT

DIST_TRAIN = osp.join(REPO_ROOT, 'tools', 'dist_train.sh')
DIST_TEST = osp.join(REPO_ROOT, 'tools', 'dist_test.sh')
LAUNCHER_STOP_S = 2.0  # the stand-in launcher's shutdown after SIGINT
LAUNCHER_STATUS = 7

# PYTHON for dist_train.sh: `$PYTHON -m torch.distributed.run ...` runs this instead. Like the real
# launcher it handles SIGINT itself (the shell starts it with SIGINT ignored).
FAKE_LAUNCHER = f'''#!{sys.executable}
import os, signal, sys, time
state = os.environ['FAKE_LAUNCHER_DIR']
interrupted = []
signal.signal(signal.SIGINT, lambda *_: interrupted.append(time.time()))
open(os.path.join(state, 'ready'), 'w').close()
deadline = time.time() + 60
while not interrupted and time.time() < deadline:
    time.sleep(0.02)
time.sleep({LAUNCHER_STOP_S})  # stopping the workers
open(os.path.join(state, 'stopped'), 'w').close()
sys.exit({LAUNCHER_STATUS})
'''


def test_dist_test_sh_without_enough_arguments_prints_usage():
    for args in ([], ['cfg.py'], ['cfg.py', 'model.pth']):
        proc = subprocess.run(['bash', DIST_TEST] + args, capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert 'usage:' in proc.stderr and 'CONFIG CHECKPOINT GPUS' in proc.stderr
        assert 'unbound variable' not in proc.stderr


def test_dist_train_sh_without_enough_arguments_prints_usage():
    proc = subprocess.run(['bash', DIST_TRAIN, 'cfg.py'], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and 'usage:' in proc.stderr


def test_a_gpu_count_that_is_no_positive_integer_is_a_usage_error():
    """torch's launcher answered GPUS=0 with an AssertionError traceback, 'two' with a
    ValueError one."""
    for script, args in ((DIST_TRAIN, ['cfg.py']), (DIST_TEST, ['cfg.py', 'model.pth'])):
        for gpus in ('0', 'two', '-1'):
            proc = subprocess.run(['bash', script, *args, gpus], capture_output=True, text=True,
                                  timeout=30)
            assert proc.returncode == 2, proc.stderr
            assert f"must be a positive integer, got '{gpus}'" in proc.stderr
            assert 'Traceback' not in proc.stderr


def start_dist_train(tmp_path, launcher_source: str):
    """dist_train.sh in its own session with PYTHON = a stand-in launcher, once that is running:
    (process, log file)."""
    launcher = tmp_path / 'fake_python'
    launcher.write_text(launcher_source)
    launcher.chmod(0o755)
    env = dict(os.environ, PYTHON=str(launcher), FAKE_LAUNCHER_DIR=str(tmp_path),
               TMPDIR=str(tmp_path))
    log = tmp_path / 'dist_train.log'
    with open(log, 'w') as out:  # a file, not a pipe: the launcher keeps a pipe open after exit
        proc = subprocess.Popen(['bash', DIST_TRAIN, 'cfg.py', '2'], env=env, cwd=str(tmp_path),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 20
    while not (tmp_path / 'ready').exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f'the stand-in launcher did not start\n{log.read_text()}')
        time.sleep(0.02)
    return proc, log


def test_ctrl_c_waits_for_the_launcher_and_exits_with_its_status(tmp_path):
    """SIGINT to the process group (Ctrl-C): the launcher gets it and stops the workers; the script
    must neither return before it has (leaving them running) nor invent its own 130."""
    proc, log = start_dist_train(tmp_path, FAKE_LAUNCHER)
    try:
        interrupted = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        took = time.monotonic() - interrupted
        stopped = (tmp_path / 'stopped').exists()
        assert stopped, (f'dist_train.sh exited {proc.returncode} {took:.1f} s after SIGINT with '
                         f'the launcher still running\n{log.read_text()}')
        assert proc.returncode == LAUNCHER_STATUS, log.read_text()
        assert took >= LAUNCHER_STOP_S
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 10  # the stand-in launcher, if the script left it behind
        while not (tmp_path / 'stopped').exists() and time.monotonic() < deadline:
            time.sleep(0.05)


# A launcher that has not installed its handlers yet (before rendezvous, as a background job of a
# script, torch.distributed.run ignores SIGINT); SIGTERM makes it stop with 75.
DEAF_LAUNCHER = f'''#!{sys.executable}
import os, signal, sys, time
state = os.environ['FAKE_LAUNCHER_DIR']
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
open(os.path.join(state, 'ready'), 'w').close()
time.sleep(60)
sys.exit(1)
'''


def test_second_ctrl_c_stops_a_launcher_that_ignores_the_first(tmp_path):
    proc, log = start_dist_train(tmp_path, DEAF_LAUNCHER)
    try:
        os.kill(proc.pid, signal.SIGINT)  # the script only: the launcher does not hear it
        time.sleep(1.0)
        assert proc.poll() is None, log.read_text()  # the first one waits
        assert 'Ctrl-C again' in log.read_text()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=20) == 75, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
