"""Clear errors from the Slurm tools: no Slurm here, unknown partition, no GPUs of the kind asked,
a work dir already being trained; and what the launcher would submit (--dry-run)."""
import os
import sys

from tbx11k.testing.slurm import (
    JOB_PREFIX,
    SBATCH_1GPU,
    SLURM_SUBMIT,
    SLURM_TRAIN,
    fake_python,
    job_env,
    sh,
)


def test_no_slurm_on_this_machine(tmp_path):
    """Runs everywhere: an empty PATH hides any Slurm."""
    env = dict(os.environ, PATH=str(tmp_path))
    proc = sh([sys.executable, SLURM_SUBMIT, '-p', 'gpu', '--work-dir', str(tmp_path / 'w')],
              env=env, check=False)
    assert proc.returncode == 2
    assert 'Slurm not found' in proc.stderr and 'not on PATH' in proc.stderr
    proc = sh(['/bin/bash', SLURM_TRAIN, 'gpu', '2'], env=env, check=False)
    assert proc.returncode == 2
    assert 'srun not found: Slurm is not installed' in proc.stderr
    proc = sh(['/bin/bash', SBATCH_1GPU], env=dict(os.environ, PATH=os.environ['PATH']),
              check=False)
    assert proc.returncode != 0 and 'submit this script with sbatch' in proc.stdout + proc.stderr


def test_unknown_partition(slurm_cluster, tmp_path):
    proc = sh([sys.executable, SLURM_SUBMIT, '-p', 'no-such-partition', '--work-dir',
               str(tmp_path)], check=False)
    assert proc.returncode == 2
    assert f"unknown partition 'no-such-partition': this cluster has {slurm_cluster}" in proc.stderr
    proc = sh(['bash', SLURM_TRAIN, 'no-such-partition', '1'], check=False)
    assert proc.returncode == 2 and "unknown partition 'no-such-partition'" in proc.stderr


def test_no_gpus_of_the_requested_kind(slurm_cluster, tmp_path):
    proc = sh([sys.executable, SLURM_SUBMIT, '-p', slurm_cluster, '--gpu-type', 'a100',
               '--work-dir', str(tmp_path)], check=False)
    assert proc.returncode == 2
    assert "has 1 GPU of type 'a100'" in proc.stderr  # neither layout fits: the smaller is named
    assert 'x shared' in proc.stderr and '2 x scarce' in proc.stderr  # what the nodes do have
    proc = sh([sys.executable, SLURM_SUBMIT, '--check-only', '-p', slurm_cluster, '--gpus', '3',
               '--gpu-type', 'scarce'], check=False)
    assert proc.returncode == 2 and "has 3 GPUs of type 'scarce'" in proc.stderr
    proc = sh(['bash', SLURM_TRAIN, slurm_cluster, '2'], env=dict(os.environ, GPU_TYPE='a100'),
              check=False)
    assert proc.returncode == 2 and "has 2 GPUs of type 'a100'" in proc.stderr
    proc = sh(['bash', SLURM_TRAIN, slurm_cluster, '3'], check=False)
    assert proc.returncode == 2 and 'no default config for 3 GPUs' in proc.stderr


def test_dry_run_shows_the_policy(slurm_cluster, tmp_path):
    python = fake_python(str(tmp_path / 'py'))  # the jobs' python check is tested elsewhere
    proc = sh([sys.executable, SLURM_SUBMIT, '-p', slurm_cluster, '--work-dir', str(tmp_path),
               '--python', python,
               '--dry-run', '--time', '8:00:00', '--signal-margin', '600', '--', '--cfg-options',
               'train_cfg.max_epochs=60'])
    lines = [line for line in proc.stdout.splitlines() if 'would run' in line]
    assert len(lines) == 2
    assert '--ntasks-per-node=2 --gres=gpu:2' in lines[0]  # 2 GPUs first
    assert '--ntasks-per-node=1 --gres=gpu:1' in lines[1]
    assert all('slurm/train.sbatch' in line for line in lines)
    for line in lines:
        assert '--dependency=singleton' in line and '--signal=B:USR1@600' in line
        assert line.endswith('--cfg-options train_cfg.max_epochs=60')
    assert 'no checkpoint yet: a new run starts' in proc.stdout
    proc = sh([sys.executable, SLURM_SUBMIT, '-p', slurm_cluster, '--work-dir', str(tmp_path),
               '--dry-run', '--prefer', '1', '--python', python])
    lines = [line for line in proc.stdout.splitlines() if 'would run' in line]
    assert '--ntasks-per-node=1 ' in lines[0] and '--ntasks-per-node=2 ' in lines[1]


def test_refuses_a_second_job_on_a_busy_work_dir(slurm_cluster, slurm_jobs, tmp_path):
    name = f'{JOB_PREFIX}-busy'
    held = slurm_jobs.sbatch(['-p', slurm_cluster, '-J', name, '--hold', '-o', '/dev/null',
                              '--wrap', 'true'], env=job_env())
    proc = sh([sys.executable, SLURM_SUBMIT, '-p', slurm_cluster, '--work-dir', str(tmp_path),
               '--job-name', name, '--python', fake_python(str(tmp_path / 'py'))], check=False)
    assert proc.returncode == 2
    assert f'job(s) {held} (PENDING) named {name} already train' in proc.stderr
    assert '--replace' in proc.stderr


def test_requests_that_can_never_start_are_refused_at_once(slurm_cluster, tmp_path):
    """More CPUs per task than any node has: slurm_submit.py submitted the job, which sat
    pending (PartitionConfig) until --pending-timeout, and tools/slurm_train.sh's srun waited
    for ever. Now both refuse at once (exit 2), naming what to change; nothing is submitted.
    More memory than any node has is found by sbatch --test-only."""
    name = f'{JOB_PREFIX}-never'
    proc = sh(['bash', SLURM_TRAIN, slurm_cluster, '1'], check=False, timeout=60,
              env=dict(job_env(), CPUS_PER_TASK='64', JOB_NAME=name))
    assert proc.returncode == 2, proc.stderr
    assert '64 CPUs per node, but the nodes with 1 GPUs have at most' in proc.stderr
    assert 'CPUs: lower --cpus-per-task' in proc.stderr
    for extra, message in ((['--cpus-per-task', '64'], 'lower --cpus-per-task'),
                           (['--sbatch-arg=--mem=4000G'], 'sbatch --test-only refuses it')):
        proc = sh([sys.executable, SLURM_SUBMIT, '-p', slurm_cluster, '--work-dir',
                   str(tmp_path), '--job-name', name, *extra], check=False, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert 'no layout of --gpus 2,1 can ever start on this cluster, nothing was submitted' \
            in proc.stderr and message in proc.stderr
    assert sh(['squeue', '-h', '-n', name, '-t', 'all', '-o', '%i']).stdout.strip() == ''
