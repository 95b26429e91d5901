"""Helpers of the Slurm tests (tests/slurm): the local cluster, jobs, and what they leave behind.

The tests need a running Slurm with the gres of slurm/local/start_slurm.sh: GPUs of type
``shared`` (jobs run side by side on them) and exactly 2 of type ``scarce`` (queue pressure for
the 2-GPU/1-GPU fallback). ``.ci/run`` starts it; without it the tests skip, except under CI=true
where a missing Slurm fails them.
"""
import csv
import json
import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from ._utils import REPO_ROOT

#: tests/slurm: its test configs and ``slow_steps`` (SlowStepsHook, imported by those configs)
SLURM_TESTS = osp.join(REPO_ROOT, 'tests', 'slurm')
SLURM_TRAIN = osp.join(REPO_ROOT, 'tools', 'slurm_train.sh')
SLURM_SUBMIT = osp.join(REPO_ROOT, 'tools', 'slurm_submit.py')
SBATCH = osp.join(REPO_ROOT, 'slurm', 'train.sbatch')
SBATCH_1GPU = osp.join(REPO_ROOT, 'slurm', 'train_1gpu.sbatch')
SBATCH_2GPU = osp.join(REPO_ROOT, 'slurm', 'train_2gpu.sbatch')
SBATCH_TEST = osp.join(REPO_ROOT, 'slurm', 'test.sbatch')
SLOW_1GPU = osp.join(SLURM_TESTS, 'configs', 'slow_tiny_1gpu.py')
SLOW_2GPU = osp.join(SLURM_TESTS, 'configs', 'slow_tiny_2gpu.py')
PARTITION = os.environ.get('SLURM_TEST_PARTITION', 'debug')
JOB_PREFIX = 'tbx11k-pytest'  # every job the tests submit is named so: teardown cancels them
START_HINT = 'start one with `bash slurm/local/start_slurm.sh` (as root; .ci/run does it)'
TERMINAL = {'COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY',
            'PREEMPTED', 'BOOT_FAIL', 'DEADLINE', 'GONE'}


def in_ci() -> bool:
    return os.environ.get('CI', '').lower() in ('true', '1', 'yes')


def cluster_problem() -> Optional[str]:
    """Why the Slurm tests cannot run here (None: they can)."""
    missing = [t for t in ('sbatch', 'srun', 'squeue', 'scancel', 'scontrol', 'sinfo')
               if shutil.which(t) is None]
    if missing:
        return f'Slurm is not installed here ({", ".join(missing)} not on PATH): {START_HINT}'
    proc = subprocess.run(['sinfo', '-h', '-N', '-p', PARTITION, '-o', '%N|%G|%c|%T'],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return f'the Slurm controller does not answer ({proc.stderr.strip()}): {START_HINT}'
    nodes = [line.split('|') for line in proc.stdout.splitlines() if line.count('|') == 3]
    if not nodes:
        return f'partition {PARTITION!r} does not exist or has no node: {START_HINT}'
    gres = ','.join(n[1] for n in nodes)
    shared = sum(int(m) for m in re.findall(r'gpu:shared:(\d+)', gres))
    scarce = sum(int(m) for m in re.findall(r'gpu:scarce:(\d+)', gres))
    if shared < 2 or scarce != 2:
        return (f'the tests need gres gpu:shared:>=2 and exactly gpu:scarce:2 (found {gres!r}): '
                f'{START_HINT}')
    if not any(n[3].startswith(('idle', 'mix', 'alloc')) for n in nodes):
        return f'no usable node in {PARTITION!r} (states {[n[3] for n in nodes]}): {START_HINT}'
    return None


def job_env(**extra) -> Dict[str, str]:
    """Environment of submitted jobs (sbatch exports it): this python, 1 thread per process, the
    repo and tests/slurm (SlowStepsHook) on PYTHONPATH."""
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1',
               PYTHON=sys.executable, TBX11K_ROOT=REPO_ROOT)
    env['PYTHONPATH'] = os.pathsep.join(
        filter(None, [REPO_ROOT, SLURM_TESTS, os.environ.get('PYTHONPATH')]))
    for key in ('WORK_DIR', 'DATA_ROOT', 'CONFIG', 'CHAIN', 'MAX_SESSIONS', 'TBX11K_SESSION',
                'TBX11K_OUTPUT', 'TBX11K_SIGNAL', 'GPU_TYPE'):
        env.pop(key, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def fake_slurm_env(folder, tools: Dict[str, str], drop: Tuple[str, ...] = ()) -> Dict[str, str]:
    """Environment with fake Slurm commands (name -> script text) written to ``folder`` first on
    PATH, outside any allocation (no SLURM_* variables, nor those starting with ``drop``)."""
    os.makedirs(folder, exist_ok=True)
    for name, text in tools.items():
        path = osp.join(folder, name)
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_',) + tuple(drop))}
    env['PATH'] = f'{folder}{os.pathsep}{os.environ["PATH"]}'
    return env


def sh(cmd: Sequence[str], env: Optional[Dict] = None, timeout: float = 120,
       check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=REPO_ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n'
                             f'{proc.stderr[-4000:]}')
    return proc


def job_state(job_id: str) -> Tuple[str, str]:
    out = sh(['squeue', '-h', '-t', 'all', '-j', job_id, '-o', '%T|%r'], check=False).stdout
    if out.strip():
        state, _, reason = out.strip().splitlines()[0].partition('|')
        return state, reason
    out = sh(['scontrol', 'show', 'job', '-o', job_id], check=False).stdout
    match = re.search(r'\bJobState=(\S+)', out)
    return (match.group(1), '') if match else ('GONE', '')


def wait_until(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')


def wait_job_end(job_id: str, timeout: float) -> str:
    """Final state of a job (a requeued job is not finished: it comes back)."""
    def ended():
        state, _ = job_state(job_id)
        return state if state in TERMINAL else None
    return wait_until(ended, timeout, f'job {job_id} to end')


def wait_job_running(job_id: str, timeout: float) -> None:
    wait_until(lambda: job_state(job_id)[0] == 'RUNNING', timeout, f'job {job_id} to run',
               interval=0.3)


def trained_steps(log_path: str) -> int:
    """Optimizer steps logged so far in a job log (logger interval 1)."""
    if not osp.isfile(log_path):
        return 0
    with open(log_path, errors='replace') as f:
        return len(re.findall(r'Epoch\(train\)\s+\[\d+\]\[\s*\d+/\d+\]', f.read()))


def sessions(work_dir: str) -> List[Dict[str, str]]:
    path = osp.join(work_dir, 'slurm_sessions.tsv')
    if not osp.isfile(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f, delimiter='\t'))


def steps_by_run(work_dir: str) -> List[List[int]]:
    """Optimizer steps each training process (one per session) logged, in order of sessions."""
    runs = sorted(d for d in os.listdir(work_dir)
                  if osp.isfile(osp.join(work_dir, d, 'vis_data', 'scalars.json')))
    result = []
    for run in runs:
        with open(osp.join(work_dir, run, 'vis_data', 'scalars.json')) as f:
            records = [json.loads(line) for line in f if line.strip()]
        steps = [int(r['step']) for r in records if 'lr' in r]
        if steps:
            result.append(steps)
    return result


def final_checkpoint(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


class Jobs:
    """Every job and process a test starts; ``stop_all`` cancels and stops them (by id/PID)."""

    def __init__(self) -> None:
        self.job_ids: List[str] = []
        self.procs: List[subprocess.Popen] = []

    def sbatch(self, args: Sequence[str], env: Dict) -> str:
        out = sh(['sbatch', '--parsable'] + list(args), env=env).stdout
        job_id = out.strip().split(';')[0]
        self.job_ids.append(job_id)
        return job_id

    def popen(self, cmd: Sequence[str], env: Dict, log_path: str) -> subprocess.Popen:
        log = open(log_path, 'w')
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO_ROOT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def ours(self) -> List[str]:
        """Ids of live jobs named JOB_PREFIX* (chained sessions, launcher jobs) and recorded."""
        out = sh(['squeue', '-h', '-o', '%i|%j'], check=False).stdout
        named = [line.split('|')[0] for line in out.splitlines()
                 if line.partition('|')[2].startswith(JOB_PREFIX)]
        return sorted(set(named) | {j for j in self.job_ids if job_state(j)[0] not in TERMINAL})

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)  # srun: cancels its step
        if shutil.which('scancel'):
            ids = self.ours()
            if ids:
                sh(['scancel'] + ids, check=False)
                try:
                    wait_until(lambda: not self.ours(), 60, 'the tests\' jobs to end')
                except AssertionError:
                    sh(['scancel', '--signal=KILL', '--full'] + self.ours(), check=False)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def live_processes_mentioning(text: str) -> List[str]:
    """``pid args`` of live processes whose command line contains ``text`` (orphan check)."""
    out = subprocess.run(['ps', '-eo', 'pid=,args='], capture_output=True, text=True).stdout
    me = str(os.getpid())
    return [line.strip() for line in out.splitlines()
            if text in line and line.split()[0] != me and 'ps -eo' not in line]


# A stand-in for the jobs' python (tools/slurm_submit.py --python): it answers the launcher's
# check (`python -c PROBE OPTIONS CONFIG...`) at once, without importing torch: each config has
# the effective batch $FAKE_EB (default 2), accumulation $FAKE_ACC (default: 2 for a *1gpu*
# config, else 1; 'auto' or a number) and 1 image per GPU; $FAKE_IMPORT_ERROR makes the import
# fail as a python without the project's packages does.
FAKE_PYTHON = f'''#!{sys.executable}
import json, os, sys
if os.environ.get('FAKE_IMPORT_ERROR'):
    print(json.dumps({{'import_error': os.environ['FAKE_IMPORT_ERROR']}}))
    sys.exit(0)
out = {{}}
for path in sys.argv[4:]:
    acc = os.environ.get('FAKE_ACC') or (2 if '1gpu' in os.path.basename(path) else 1)
    out[path] = dict(effective_batch_size=int(os.environ.get('FAKE_EB', 2)),
                     accumulative_counts=int(acc) if str(acc).isdigit() else acc, batch_size=1)
print(json.dumps(out))
'''


def fake_python(folder) -> str:
    """Path of a FAKE_PYTHON written into ``folder`` (made if needed)."""
    os.makedirs(folder, exist_ok=True)
    path = osp.join(folder, 'python')
    with open(path, 'w') as f:
        f.write(FAKE_PYTHON)
    os.chmod(path, 0o755)
    return path
