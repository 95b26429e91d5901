"""A Slurm training session whose work dir holds a crafted checkpoint: refused before anything in
it runs (exit 8), and the job chain stops instead of requeueing (real local Slurm)."""
import os.path as osp

from tbx11k.testing import TINY_1GPU
from tbx11k.testing.checkpoint_payloads import write_crafted_checkpoint
from tbx11k.testing.slurm import JOB_PREFIX, SBATCH_1GPU, job_env, sessions, wait_job_end


def test_session_refuses_a_crafted_checkpoint_and_stops(slurm_cluster, slurm_jobs, tmp_path,
                                                        training_root):
    work = tmp_path / 'work'
    work.mkdir()
    path = str(work / 'iter_2.pth')
    marker = write_crafted_checkpoint(path, 'message_hub')
    (work / 'last_checkpoint').write_text(path)
    job = slurm_jobs.sbatch(
        ['-p', slurm_cluster, '-J', f'{JOB_PREFIX}-untrusted', '--gres=gpu:shared:1',
         '--cpus-per-task=1', '--time=30', f'--output={work}/job-%j.out', SBATCH_1GPU],
        env=job_env(WORK_DIR=work, DATA_ROOT=training_root, CONFIG=TINY_1GPU))
    wait_job_end(job, 300)
    with open(work / f'job-{job}.out') as f:
        log = f.read()
    assert 'refusing to load the checkpoint' in log and path in log, log[-4000:]
    assert 'TBX11K_TRUST_CHECKPOINTS=1' in log and 'posix.system' in log
    assert 'training exited with status 8' in log, log[-4000:]
    assert [(s['exit'], s['outcome']) for s in sessions(str(work))] == [('8', 'error')]
    assert not osp.exists(marker)
