"""The Slurm tools against fake Slurm commands on PATH (run everywhere, no cluster needed): what
tools/slurm_train.sh asks srun for, and tools/slurm_submit.py's --dry-run lines, pasted into a
shell, against what the real submit runs."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from tbx11k.testing import REPO_ROOT
from tbx11k.testing.slurm import SLURM_SUBMIT, SLURM_TRAIN, fake_python, fake_slurm_env

CONFIG_2GPU = osp.join(REPO_ROOT, 'configs', 'dino_tbx11k_2gpu.py')
SHELL_VARS = {'_', 'SHLVL', 'PWD', 'OLDPWD'}  # what the shell itself sets on the way

# partition 'gpu': three nodes with 2 (typed), 1 and 2 GPUs
FAKE_TOOLS = {
    'sinfo': '''#!/bin/bash
case "$*" in
  *"%R"*) echo gpu; echo debug ;;
  *"%N|%G"*) echo "node1|gpu:a100:2(S:0-1),mps:400"; echo "node2|gpu:1"; echo "node3|gpu:2" ;;
esac
''',
    'srun': '#!/bin/bash\nprintf "SRUN %s\\n" "$@"\n',
    # a job of ours is running at once; none trains the work dir yet (squeue -n NAME: empty)
    'squeue': '#!/bin/bash\ncase " $* " in *" -n "*) ;; *) echo "RUNNING|None" ;; esac\n',
    'scancel': '#!/bin/bash\n',
    'scontrol': '#!/bin/bash\n',
    # records its arguments and environment, one JSON file per call
    'sbatch': f'''#!{sys.executable}
import json, os, sys
if '--test-only' in sys.argv:
    sys.exit(0)
calls = os.environ['FAKE_SBATCH_CALLS']
n = len(os.listdir(calls))
with open(os.path.join(calls, f'{{n:03d}}.json'), 'w') as f:
    json.dump(dict(args=sys.argv[1:], env=dict(os.environ)), f)
print(4242 + n)
''',
}


@pytest.fixture
def fake_slurm(tmp_path):
    """Environment with the fake tools first on PATH, outside any allocation."""
    calls = tmp_path / 'sbatch_calls'
    calls.mkdir()
    env = fake_slurm_env(str(tmp_path / 'fakeslurm'), FAKE_TOOLS)
    for name in ('TBX11K_SKIP_SLURM_CHECKS', 'GPU_TYPE'):
        env.pop(name, None)
    env['FAKE_SBATCH_CALLS'] = str(calls)
    return env


def sbatch_calls(env):
    calls = env['FAKE_SBATCH_CALLS']
    result = []
    for name in sorted(os.listdir(calls)):
        with open(osp.join(calls, name)) as f:
            result.append(json.load(f))
        os.remove(osp.join(calls, name))
    return result


def slurm_train(env, gpus, **extra):
    return subprocess.run(['bash', SLURM_TRAIN, 'gpu', str(gpus), CONFIG_2GPU],
                          env=dict(env, **extra), capture_output=True, text=True, timeout=60)


def test_slurm_train_asks_gpus_per_node_on_several_nodes(fake_slurm):
    """mmdet's GPUS_PER_NODE: 4 GPUs as 2 nodes x 2; the pre-check asks for 2 nodes with 2 each."""
    proc = slurm_train(fake_slurm, 4, GPUS_PER_NODE='2')
    assert proc.returncode == 0, proc.stderr
    srun = [line[5:] for line in proc.stdout.splitlines() if line.startswith('SRUN ')]
    assert {'--ntasks=4', '--ntasks-per-node=2', '--gres=gpu:2'} <= set(srun)
    assert '4 task(s) on partition gpu (2 node(s)' in proc.stderr
    # only 2 nodes have 2 GPUs: 6 GPUs as 3 x 2 cannot run, nor 4 GPUs on one node
    proc = slurm_train(fake_slurm, 6, GPUS_PER_NODE='2')
    assert proc.returncode == 2 and 'SRUN' not in proc.stdout
    assert "3 nodes with 2 GPUs each are needed, but partition 'gpu' has 2" in proc.stderr
    proc = slurm_train(fake_slurm, 4, GPUS_PER_NODE='4')
    assert proc.returncode == 2 and "no node of partition 'gpu' has 4 GPUs" in proc.stderr
    # of type a100, only node1 has 2
    proc = slurm_train(fake_slurm, 4, GPUS_PER_NODE='2', GPU_TYPE='a100')
    assert proc.returncode == 2 and "2 GPUs of type 'a100' each are needed" in proc.stderr
    proc = slurm_train(fake_slurm, 2, GPUS_PER_NODE='two')
    assert proc.returncode == 2 and 'GPUS_PER_NODE must be a positive integer' in proc.stderr


def test_slurm_train_takes_mmdets_argument_form(fake_slurm, tmp_path):
    """mmdet's `GPUS=N slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [PY_ARGS]` failed with
    "GPUS must be a positive integer, got 'JOB_NAME'"."""
    def run(*args, **extra):
        proc = subprocess.run(['bash', SLURM_TRAIN, 'gpu', *args], env=dict(fake_slurm, **extra),
                              capture_output=True, text=True, timeout=60)
        return proc, [line[5:] for line in proc.stdout.splitlines() if line.startswith('SRUN ')]
    work_dir = str(tmp_path / 'wd')
    proc, srun = run('myjob', CONFIG_2GPU, work_dir, '--cfg-options', 'a=1', GPUS='2')
    assert proc.returncode == 0, proc.stderr
    assert {'--job-name=myjob', '--ntasks=2', CONFIG_2GPU, f'--work-dir={work_dir}',
            '--cfg-options', 'a=1'} <= set(srun)
    proc, srun = run('myjob', CONFIG_2GPU, work_dir)  # GPUS unset: the config's 2
    assert proc.returncode == 0 and '--ntasks=2' in srun, proc.stderr
    proc, srun = run('myjob', str(tmp_path / 'custom.py'), work_dir)
    assert proc.returncode == 2 and 'GPUS is not set' in proc.stderr and not srun
    proc, _ = run('myjob')  # neither form
    assert proc.returncode == 2 and "GPUS must be a positive integer, got 'myjob' (mmdet's form" \
        in proc.stderr


@pytest.mark.parametrize('prefer', [2, 1])
def test_dry_run_lines_do_what_the_submit_does(fake_slurm, tmp_path, prefer):
    """Each --dry-run line, pasted into a shell, calls sbatch with the arguments and environment
    of the real submit (WORK_DIR, DATA_ROOT, CONFIG, ...; a stale CONFIG and TBX11K_SESSION of
    the calling shell removed) and makes its log directory."""
    work_dir = tmp_path / "work dir's"
    env = dict(fake_slurm, CONFIG='/stale/config.py', TBX11K_SESSION='3', DATA_ROOT='/stale')
    cmd = [sys.executable, SLURM_SUBMIT, '-p', 'gpu', '--work-dir', str(work_dir), '--data-root',
           'data root', '--config-1gpu', 'configs/dino_tbx11k_1gpu.py', '--python',
           fake_python(str(tmp_path / 'my py')),
           '--max-sessions', '3', '--chain', 'resubmit', '--signal-margin', '300', '--poll', '0.1',
           '--prefer', str(prefer), '--', '--cfg-options', 'train_cfg.max_epochs=60',
           'work_dir=a b']
    proc = subprocess.run(cmd[:2] + ['--dry-run'] + cmd[2:], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split('would run: ', 1)[1] for line in proc.stdout.splitlines()
             if 'would run: ' in line]
    assert len(lines) == 2 and not sbatch_calls(env) and not work_dir.exists()

    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    submitted, = sbatch_calls(env)  # the first choice starts at once
    assert submitted['env']['WORK_DIR'] == str(work_dir)
    assert submitted['args'][-2:] == ['train_cfg.max_epochs=60', 'work_dir=a b']

    os.rmdir(work_dir / 'slurm')
    os.rmdir(work_dir)
    subprocess.run(['bash', '-c', lines[0]], env=env, cwd=str(tmp_path), check=True, timeout=60)
    pasted, = sbatch_calls(env)
    assert (work_dir / 'slurm').is_dir()
    assert pasted['args'] == submitted['args']
    assert ({k: v for k, v in pasted['env'].items() if k not in SHELL_VARS}
            == {k: v for k, v in submitted['env'].items() if k not in SHELL_VARS})
    assert pasted['env'].get('CONFIG') == (
        osp.join(str(tmp_path), 'configs', 'dino_tbx11k_1gpu.py') if prefer == 1 else None)
    assert 'TBX11K_SESSION' not in pasted['env']
    assert pasted['env']['DATA_ROOT'] == str(tmp_path / 'data root')


# inside a 2-node allocation (job 77 on n1, n2): scontrol answers for it; the GPUs Slurm gave
# each node come from $FAKE_NODE_GPUS ("2 2", "2 1")
ALLOCATION_SCONTROL = '''#!/bin/bash
case "$1 $2" in
  "show hostnames") case $3 in "n[1-2]") printf 'n1\\nn2\\n' ;; *) tr , '\\n' <<< "$3" ;; esac ;;
  "show job") set -- ${FAKE_NODE_GPUS:-2 2}
    echo "     Nodes=n1 CPU_IDs=0-1 Mem=0 GRES=gpu:$1(IDX:0-1)"
    echo "     Nodes=n2 CPU_IDs=0-1 Mem=0 GRES=gpu:$2(IDX:0-1)" ;;
esac
'''


def slurm_train_in_allocation(fake_slurm, tmp_path, gpus, **slurm):
    """tools/slurm_train.sh GPUS inside job 77 (2 nodes x 2 tasks unless ``slurm`` says else):
    (process, srun's arguments)."""
    scontrol = tmp_path / 'fakeslurm' / 'scontrol'
    scontrol.write_text(ALLOCATION_SCONTROL)
    env = dict(fake_slurm, SLURM_JOB_ID='77', SLURM_NTASKS='4', SLURM_JOB_NUM_NODES='2',
               SLURM_TASKS_PER_NODE='2(x2)', SLURM_JOB_NODELIST='n[1-2]')
    env.pop('PYTHON', None)
    env.update(slurm)
    proc = subprocess.run(['bash', SLURM_TRAIN, 'gpu', str(gpus), CONFIG_2GPU], env=env,
                          capture_output=True, text=True, timeout=60)
    return proc, [line[5:] for line in proc.stdout.splitlines() if line.startswith('SRUN ')]


def test_slurm_train_takes_the_layout_of_its_allocation(fake_slurm, tmp_path):
    """In a 2-node x 2-task allocation, GPUS=4 ran as 4 tasks x 4 per node (mmdet's default
    GPUS_PER_NODE = GPUS): srun failed. Now 2 per node on 2 nodes, the project's python, and
    each task's rendezvous address from the step's first node."""
    proc, srun = slurm_train_in_allocation(fake_slurm, tmp_path, 4)
    assert proc.returncode == 0, proc.stderr
    assert {'--ntasks=4', '--ntasks-per-node=2', '--gres=gpu:2'} <= set(srun), srun
    assert osp.join(REPO_ROOT, '.venv', 'bin', 'python') in srun  # no PYTHON given
    assert osp.join(REPO_ROOT, 'slurm', 'lib.sh') in srun
    assert 'MASTER_ADDR=${MASTER_ADDR:-$(slurm_master_addr' in proc.stdout


def test_slurm_train_refuses_layouts_its_allocation_cannot_run(fake_slurm, tmp_path):
    cases = (
        (6, {}, 'GPUS is 6, but job 77 has 4 task(s)'),
        (4, dict(SLURM_TASKS_PER_NODE='3,1'), 'unequal task counts (3,1'),
        (4, dict(FAKE_NODE_GPUS='2 1'), 'unequal GPU counts (n1: 2, n2: 1)'),
        (2, dict(SRUN_ARGS='-w n3'), 'SRUN_ARGS names node n3 (--nodelist n3), which is not '
         "in job 77's allocation"),
        (3, {}, 'GPUS=3 is not a multiple of the 2 tasks per node'),
    )
    for n, (gpus, slurm, message) in enumerate(cases):
        proc, srun = slurm_train_in_allocation(fake_slurm, tmp_path, gpus, **slurm)
        assert proc.returncode == 2 and not srun, (slurm, proc.stderr)
        assert message in proc.stderr, (slurm, proc.stderr)
