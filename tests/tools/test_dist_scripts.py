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


def _sigint_as_in_a_terminal() -> None:
    """SIGINT at its default, as a shell started from a terminal has it: pytest may run with it
    ignored (started as a background job of a script), and bash cannot trap a signal that was
    ignored when it started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_sigint_as_in_a_terminal)
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
        deadline = time.monotonic() + 10  # bash runs the trap once scheduled (a loaded machine)
        while 'Ctrl-C again' not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 'Ctrl-C again' in log.read_text()
        time.sleep(0.5)
        assert proc.poll() is None, log.read_text()  # the first one waits
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=20) == 75, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- the python the launchers run, a clean refusal, several nodes from Slurm's environment -------
RECORDER = '''#!/bin/sh
# stand-in python: records how it was called, one line per argument
printf '%s\\n' "$0" "$@" > "$RECORD"
exit 0
'''


def fake_repo(tmp_path, with_venv=True):
    """A copy of the launchers in a folder of their own, with a recording stand-in for the
    project's .venv/bin/python (or none), and a PATH whose python3/python record too."""
    repo = tmp_path / 'repo'
    for script in ('tools/dist_train.sh', 'tools/dist_test.sh', 'tools/slurm_train.sh',
                   'slurm/lib.sh'):
        (repo / script).parent.mkdir(parents=True, exist_ok=True)
        (repo / script).write_text(open(osp.join(REPO_ROOT, script)).read())
    (repo / 'configs').mkdir()
    (repo / 'configs' / 'c.py').write_text('')
    binaries = [tmp_path / 'bin' / 'python3', tmp_path / 'bin' / 'python']
    if with_venv:
        binaries.append(repo / '.venv' / 'bin' / 'python')
    for binary in binaries:
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text(RECORDER)
        binary.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('SLURM_', 'PYTHON', 'NNODES', 'NODE_RANK', 'MASTER_', 'PORT'))}
    env.update(PATH=f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}',
               RECORD=str(tmp_path / 'record.txt'), TMPDIR=str(tmp_path))
    return repo, env


def recorded(tmp_path):
    return (tmp_path / 'record.txt').read_text().splitlines()


def test_launchers_run_the_project_venv_python_without_PYTHON(tmp_path):
    """`bash tools/dist_train.sh ...` without an activated environment ran the system `python`
    (No module named 'torch'); now the project's .venv/bin/python, else python3."""
    repo, env = fake_repo(tmp_path)
    venv_python = str(repo / '.venv' / 'bin' / 'python')
    for script, args in (('dist_train.sh', ['cfg.py', '1']),
                         ('dist_test.sh', ['cfg.py', 'model.pth', '1'])):
        proc = subprocess.run(['bash', str(repo / 'tools' / script), *args], env=env,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert recorded(tmp_path)[0] == venv_python, (script, recorded(tmp_path))
    # PYTHON given: that one
    proc = subprocess.run(['bash', str(repo / 'tools' / 'dist_test.sh'), 'c', 'm', '1'],
                          env=dict(env, PYTHON=str(tmp_path / 'bin' / 'python')),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and recorded(tmp_path)[0] == str(tmp_path / 'bin' / 'python')
    # no .venv: python3 from PATH
    repo, env = fake_repo(tmp_path / 'novenv', with_venv=False)
    proc = subprocess.run(['bash', str(repo / 'tools' / 'dist_test.sh'), 'c', 'm', '1'],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert recorded(tmp_path / 'novenv')[0] == str(tmp_path / 'novenv' / 'bin' / 'python3')


# stand-in for tools/train.py's processes (torch.distributed.run starts $PYTHON_EXEC): each rank
# leaves its status where dist_train.sh reads it and exits with it, as train.py does
WORKER = '''#!/bin/sh
echo "error: rank $RANK refuses this launch (stand-in)" >&2
echo "$WORKER_STATUS" > "$TBX11K_EXIT_STATUS_DIR/rank$RANK"
exit "$WORKER_STATUS"
'''


def test_a_clean_refusal_is_not_followed_by_a_traceback(tmp_path):
    """Every rank exiting 5 (wrong layout) was followed by torch's ChildFailedError traceback
    and exit 1 from dist_train.sh; now the ranks' message, one line, and their status. (A crash,
    where the ranks leave no status, still re-raises torch's error with its report.)"""
    from tbx11k.testing import free_port
    worker = tmp_path / 'worker'
    worker.write_text(WORKER)
    worker.chmod(0o755)
    env = dict(os.environ, PYTHON=sys.executable, PYTHON_EXEC=str(worker), WORKER_STATUS='5',
               PORT=str(free_port()), TMPDIR=str(tmp_path))
    env = {k: v for k, v in env.items() if not k.startswith('SLURM_')}
    proc = subprocess.run(['bash', DIST_TRAIN, 'cfg.py', '2'], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5, proc.stderr
    assert 'rank 1 refuses this launch' in proc.stderr
    assert 'Traceback' not in proc.stderr and 'ChildFailedError' not in proc.stderr
    assert 'failed (exitcode' not in proc.stderr
    assert 'dist_train.sh: every rank exited with status 5' in proc.stderr


# scontrol of a 2-node Slurm job: nodes n1, n2 reached at 10.0.0.1/2; `show job -d` lists the
# GPUs of each node from $FAKE_NODE_GPUS ("2 2", "2 1")
FAKE_SCONTROL = '''#!/bin/bash
case "$1 $2" in
  "show hostnames") [[ $3 == "n[1-2]" ]] && printf 'n1\nn2\n' || tr , '\n' <<< "$3" ;;
  "show node") echo "NodeName=$4 Arch=x86_64 NodeAddr=10.0.0.${4#n} NodeHostName=$4" ;;
  "show job")
    echo "JobId=$4 JobName=x"
    set -- $FAKE_NODE_GPUS
    echo "     Nodes=n1 CPU_IDs=0-1 Mem=0 GRES=gpu:a100:$1(IDX:0-1)"
    echo "     Nodes=n2 CPU_IDs=0-1 Mem=0 GRES=gpu:a100:$2(IDX:0-1)" ;;
esac
'''


def dist_train_in_slurm_step(tmp_path, gpus='2', **slurm):
    """tools/dist_train.sh (a copy, PYTHON recorded) as the task of node 1 of a 2-node step."""
    repo, env = fake_repo(tmp_path)
    (tmp_path / 'bin' / 'scontrol').write_text(FAKE_SCONTROL)
    (tmp_path / 'bin' / 'scontrol').chmod(0o755)
    env.update(SLURM_JOB_ID='1234', SLURM_STEP_ID='0', SLURM_STEP_NUM_NODES='2',
               SLURM_STEP_NUM_TASKS='2', SLURM_NODEID='1', SLURM_JOB_NUM_NODES='2',
               SLURM_STEP_NODELIST='n[1-2]', SLURM_JOB_NODELIST='n[1-2]',
               SLURM_GPUS_ON_NODE='2', FAKE_NODE_GPUS='2 2')
    env.update(slurm)
    env = {k: v for k, v in env.items() if v is not None}
    proc = subprocess.run(['bash', str(repo / 'tools' / 'dist_train.sh'), 'cfg.py', gpus],
                          env=env, capture_output=True, text=True, timeout=30)
    return proc, (recorded(tmp_path) if proc.returncode == 0 else [])


def test_dist_train_takes_the_nodes_and_ranks_of_a_slurm_step(tmp_path):
    """`srun -N2 --ntasks-per-node=1 tools/dist_train.sh CONFIG 2` ran two unrelated 1-node
    trainings (NNODES=1, MASTER_ADDR=127.0.0.1 on each node); now one 2-node rendezvous: this
    node's rank from SLURM_NODEID, the first node's NodeAddr, one port per job."""
    proc, args = dist_train_in_slurm_step(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {'--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.1', '--nproc_per_node=2',
            f'--master_port={10000 + 1234 % 20000}'} <= set(args), args


def test_dist_train_refuses_layouts_slurm_did_not_give(tmp_path):
    cases = (
        (dict(SLURM_STEP_NUM_TASKS='4'), '2', 'srun started 4 copies of this script on 2 node(s)'),
        (dict(NNODES='3'), '2', 'NNODES=3, but Slurm gave this step 2 node(s) (n[1-2])'),
        (dict(NODE_RANK='0'), '2', 'NODE_RANK=0, but this is node 1 of the Slurm step'),
        ({}, '4', 'GPUS (the 2nd argument) is 4, but Slurm gave node'),
        (dict(FAKE_NODE_GPUS='2 1'), '1', 'unequal GPU counts (n1: 2, n2: 1)'),
        (dict(SLURM_STEP_ID=None, NNODES=None), '2', 'job 1234 has 2 nodes (n[1-2]) but this runs '
         'on one of them only'),
    )
    for n, (slurm, gpus, message) in enumerate(cases):
        proc, _ = dist_train_in_slurm_step(tmp_path / str(n), gpus, **slurm)
        assert proc.returncode == 2, (slurm, proc.stderr)
        assert message in proc.stderr, (slurm, proc.stderr)
        assert not (tmp_path / str(n) / 'record.txt').exists()  # nothing started
