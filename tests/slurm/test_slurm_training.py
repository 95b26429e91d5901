"""Training through a real (local) Slurm, on the tiny CPU configs and fake GPUs (gres).

All runs train the same schedule (2 epochs = 14 optimizer steps on the 13-image set, no
validation) and start together, side by side (OMP_NUM_THREADS=1 each):

- ref:       tools/slurm_train.sh PARTITION 1 (srun, 1 task, accumulation 2), uninterrupted
- ddp:       tools/slurm_train.sh PARTITION 2 (srun, 2 tasks, gloo): equals ref (tolerances of
             tests/engine/test_equivalence.py)
- timelimit: slurm/train_1gpu.sbatch with --time=3 --signal=B:USR1@45: Slurm's own warning
             signal, checkpoint, `scontrol requeue`, ... until done: bit-identical to ref (the
             first session's steps are stretched so that the limit cuts it)
- signal:    slurm/train_2gpu.sbatch, CHAIN=resubmit; the warning simulated at a known moment with
             `scancel --signal=USR1 --batch`: checkpoint, next session as a new job
             (--dependency=afterany) with the same options, submit folder and script path
             (spaces in both), --work-dir given as mmdet does: bit-identical to ddp, equal to ref
- fallback:  tools/slurm_submit.py while a blocker job holds 1 of the 2 `scarce` GPUs: the 2-GPU
             job pends, is cancelled after --pending-timeout 5s, the 1-GPU job runs (1 session,
             stopped by the signal); the blocker released, a second launch runs 2 GPUs and
             finishes from the same checkpoint: equals ref
- four:      slurm/train.sbatch with 4 tasks (effective batch 4 = 4 x 1 x 1), stopped by Slurm's
             time-limit warning (limit lowered by `scontrol update` after 2 steps; CHAIN=none);
             a 1-task session (4 x 1 x 4, --dependency=afterany) continues it to the end of the
             schedule (8 steps)
- twonode:   slurm/train.sbatch on 2 nodes x 2 tasks (two slurmd on this host), effective batch
             4; the warning reaches the ranks of both nodes, which checkpoint together; `scontrol
             requeue`; the next session finishes: equals the four -> one run (1e-5)

Runs with the warning signal use tests/slurm/configs/slow_tiny_*gpu.py: the tiny configs plus a
hook that sleeps after every optimizer step (same weights; long runs that cost no CPU).
Everything started is cancelled or stopped at the end, also on failure (fixture slurm_jobs).
"""
import json
import sys

import pytest
import torch

from tbx11k.testing import (
    REPO_ROOT,
    TINY_1GPU,
    TINY_2GPU,
    ema_weights,
    global_relative_difference,
    load_checkpoint,
    raw_weights,
    relative_difference,
)
from tbx11k.testing.slurm import (
    JOB_PREFIX,
    SBATCH,
    SBATCH_1GPU,
    SBATCH_TEST,
    SLOW_1GPU,
    SLOW_2GPU,
    SLURM_SUBMIT,
    SLURM_TRAIN,
    final_checkpoint,
    job_env,
    job_state,
    live_processes_mentioning,
    sessions,
    sh,
    steps_by_run,
    trained_steps,
    wait_job_end,
    wait_job_running,
    wait_until,
)

STEPS = 14
GLOBAL_TOL = 1e-6  # as tests/engine/test_equivalence.py: 1 GPU x acc 2 vs 2 GPUs, float32
TENSOR_TOL = 1e-3
COMMON = {'train_cfg.max_epochs': 2, 'train_cfg.val_begin': 99,
          'default_hooks.logger.interval': 1}
JOB_TIMEOUT = 420


def cfg_options(**extra):
    return ['--cfg-options'] + [f'{k}={v}' for k, v in {**COMMON, **extra}.items()]


def slow(seconds, first_session_only=False):
    return cfg_options(**{'default_hooks.slow.seconds': seconds,
                          'default_hooks.slow.first_session_only': first_session_only})


def launcher(partition, work_dir, data_root, report, *extra, slow_seconds=1):
    return [sys.executable, SLURM_SUBMIT, '-p', partition, '--gpu-type', 'scarce',
            '--work-dir', str(work_dir), '--data-root', data_root, '--config-1gpu', SLOW_1GPU,
            '--config-2gpu', SLOW_2GPU, '--poll', '0.5', '--wait-start', '--time', '30',
            '--cpus-per-task', '1', '--python', sys.executable, '--job-name',
            f'{JOB_PREFIX}-fallback', '--report', str(report), *extra, '--', *slow(slow_seconds)]


def eb4(accumulation, slow_seconds=0.0):
    """tools/train.py options: effective batch 4 (accumulation steps for this layout), 2 epochs
    of the 13-image set = 8 optimizer steps (the last window padded), steps stretched by
    ``slow_seconds`` in a job's first session."""
    return cfg_options(**{'effective_batch_size': 4,
                          'optim_wrapper.accumulative_counts': accumulation,
                          'default_hooks.slow.seconds': slow_seconds,
                          'default_hooks.slow.first_session_only': True})


def time_limit_after(job_id, log_path, steps, margin, timeout=400):
    """Once ``steps`` steps are logged, set the job's time limit so that Slurm's own warning
    (``--signal=B:USR1@margin``) comes within a minute: the limit is the elapsed time plus
    ``margin`` plus less than a minute (Slurm's limits are whole minutes)."""
    wait_until(lambda: trained_steps(log_path) >= steps or job_state(job_id)[0] != 'RUNNING',
               timeout, f'{steps} steps in {log_path}')
    assert job_state(job_id)[0] == 'RUNNING', f'job {job_id} ended before its limit was set'
    elapsed = sh(['squeue', '-h', '-j', job_id, '-o', '%M']).stdout.strip()
    days, _, clock = elapsed.rpartition('-')
    seconds = 0
    for field in clock.split(':'):
        seconds = seconds * 60 + int(field)
    seconds += int(days or 0) * 86400
    minutes = (seconds + margin) // 60 + 1
    sh(['scontrol', 'update', f'JobId={job_id}', f'TimeLimit={minutes}'])
    return trained_steps(log_path)


def signal_after(job_id, log_path, steps, timeout=240):
    """Send the time-limit warning to the batch shell once ``steps`` steps are logged."""
    wait_until(lambda: trained_steps(log_path) >= steps or job_state(job_id)[0] != 'RUNNING',
               timeout, f'{steps} steps in {log_path}')
    assert job_state(job_id)[0] == 'RUNNING', f'job {job_id} ended before it was signalled'
    sh(['scancel', '--signal=USR1', '--batch', job_id])
    return trained_steps(log_path)


@pytest.fixture(scope='module')
def runs(slurm_cluster, slurm_jobs, tmp_path_factory, training_root):
    partition, data = slurm_cluster, training_root
    base = tmp_path_factory.mktemp('slurm_runs')
    work = {name: base / name for name in ('ref', 'ddp', 'timelimit', 'signal', 'fallback',
                                            'four', 'twonode')}
    for path in work.values():
        path.mkdir()
    out = dict(base=base, work=work)

    srun_env = job_env(GPU_TYPE='shared', CPUS_PER_TASK=1, JOB_NAME=f'{JOB_PREFIX}-srun')
    out['ref'] = slurm_jobs.popen(
        ['bash', SLURM_TRAIN, partition, '1', TINY_1GPU, str(work['ref']), '--', '--data-root',
         data, *cfg_options()], srun_env, str(base / 'ref.log'))
    out['ddp'] = slurm_jobs.popen(
        ['bash', SLURM_TRAIN, partition, '2', TINY_2GPU, str(work['ddp']), '--', '--data-root',
         data, *cfg_options()], srun_env, str(base / 'ddp.log'))

    # Slurm's own warning: due 45 s before a 3-minute limit, sent up to 30 s early (its 30-s
    # timer): in [105, 135) s after the start, after start-up also on a busy machine (where a
    # later session may be cut again, with progress); 14 x 12 s outlasts it. Requeued
    # sessions do not sleep (first_session_only), they finish the schedule.
    out['timelimit'] = slurm_jobs.sbatch(
        ['-p', partition, '-J', f'{JOB_PREFIX}-timelimit', '--gres=gpu:shared:1',
         '--cpus-per-task=1', '--time=3', '--signal=B:USR1@45',
         f'--output={work["timelimit"]}/job-%j.out', SBATCH_1GPU, *slow(12, True)],
        env=job_env(WORK_DIR=work['timelimit'], DATA_ROOT=data, CONFIG=SLOW_1GPU))

    # submitted as users do: from a folder and a repository path with spaces (the script finds
    # the repository from its own path: no TBX11K_ROOT), mmdet's --work-dir among the arguments,
    # a DATA_ROOT relative to the submit folder, --mem: the next session must get all of them
    submit_dir = base / 'submit dir'
    (submit_dir / 'x').mkdir(parents=True)
    (submit_dir / 'data').symlink_to(data)
    (submit_dir / 'x' / 'the repo').symlink_to(REPO_ROOT)
    signal_env = job_env(DATA_ROOT='data', CONFIG=SLOW_2GPU, CHAIN='resubmit')
    signal_env.pop('TBX11K_ROOT')
    out['signal'] = slurm_jobs.sbatch(
        ['-p', partition, '-J', f'{JOB_PREFIX}-signal', '--gres=gpu:shared:2', '--mem=100M',
         '--cpus-per-task=1', '--time=30', f'--chdir={submit_dir}',
         f'--output={work["signal"]}/job-%j.out',
         str(submit_dir / 'x' / 'the repo' / 'slurm' / 'train_2gpu.sbatch'),
         '--work-dir', str(work['signal']), *slow(1)], env=signal_env)

    # effective batch 4 on 4 tasks, cut by Slurm's time-limit warning: the limit is set once 2
    # steps are logged (time_limit_after; 4 processes start in 30 s on an idle machine, minutes
    # on a busy one), the warning is due 120 s before it; 8 x 20 s outlasts it
    out['four'] = slurm_jobs.sbatch(
        ['-p', partition, '-J', f'{JOB_PREFIX}-four', '--ntasks-per-node=4',
         '--gres=gpu:shared:4', '--cpus-per-task=1', '--time=30', '--signal=B:USR1@120',
         f'--output={work["four"]}/job-%j.out', SBATCH, *eb4(1, slow_seconds=20)],
        env=job_env(WORK_DIR=work['four'], DATA_ROOT=data, CONFIG=SLOW_2GPU, CHAIN='none'))
    # ... continued by 1 task (4 accumulation steps) as soon as it has ended
    out['four_to_one'] = slurm_jobs.sbatch(
        ['-p', partition, '-J', f'{JOB_PREFIX}-four', '--gres=gpu:shared:1', '--cpus-per-task=1',
         f'--dependency=afterany:{out["four"]}', f'--output={work["four"]}/job-%j.out', SBATCH,
         *eb4(4)],
        env=job_env(WORK_DIR=work['four'], DATA_ROOT=data, CONFIG=SLOW_2GPU))
    # 2 nodes x 2 tasks, effective batch 4, the warning simulated after 2 steps (below)
    out['twonode'] = slurm_jobs.sbatch(
        ['-p', partition, '-J', f'{JOB_PREFIX}-twonode', '--nodes=2', '--ntasks-per-node=2',
         '--gres=gpu:shared:2', '--cpus-per-task=1', '--time=30',
         f'--output={work["twonode"]}/job-%j.out', SBATCH, *eb4(1, slow_seconds=3)],
        env=job_env(WORK_DIR=work['twonode'], DATA_ROOT=data, CONFIG=SLOW_2GPU))

    # queue pressure: 1 of the 2 scarce GPUs taken, so a 2-GPU job pends, a 1-GPU job runs
    out['blocker'] = slurm_jobs.sbatch(
        ['-p', partition, '-J', f'{JOB_PREFIX}-blocker', '--gres=gpu:scarce:1', '-o', '/dev/null',
         '--wrap', 'sleep 600'], env=job_env())
    wait_job_running(out['blocker'], 60)
    report = base / 'submit1.json'
    out['submit1'] = sh(launcher(partition, work['fallback'], data, report, '--pending-timeout',
                                 '5s', '--max-sessions', '1'), env=job_env(), timeout=300).stdout
    with open(report) as f:
        out['report1'] = json.load(f)
    one_gpu_job = out['report1']['started']['id']

    out['signal_steps'] = signal_after(
        out['signal'], str(work['signal'] / f'job-{out["signal"]}.out'), 3)
    out['fallback_steps'] = signal_after(
        one_gpu_job, str(work['fallback'] / 'slurm' / f'job-{one_gpu_job}.out'), 3)
    out['twonode_steps'] = signal_after(
        out['twonode'], str(work['twonode'] / f'job-{out["twonode"]}.out'), 2)
    out['four_steps'] = time_limit_after(
        out['four'], str(work['four'] / f'job-{out["four"]}.out'), 2, margin=120)
    return out


def finished_reference(runs, name):
    proc = runs[name]
    proc.wait(timeout=JOB_TIMEOUT)
    log = open(runs['base'] / f'{name}.log').read()
    assert proc.returncode == 0, log[-5000:]
    return load_checkpoint(final_checkpoint(str(runs['work'][name]))), log


def chain_done(work_dir, job_name):
    """Wait until the session chain of a work dir finished (last session 'done', no job left)."""
    def done():
        rows = sessions(str(work_dir))
        live = sh(['squeue', '-h', '-n', job_name, '-o', '%i'], check=False).stdout.strip()
        return rows if rows and rows[-1]['outcome'] == 'done' and not live else None
    return wait_until(done, JOB_TIMEOUT, f'the sessions of {work_dir} to finish', interval=2)


def assert_equal_weights(a, b):
    ra, rb = raw_weights(a), raw_weights(b)
    assert set(ra) == set(rb)
    assert all(torch.equal(ra[k], rb[k]) for k in ra), global_relative_difference(ra, rb)
    ea, eb = ema_weights(a), ema_weights(b)
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def assert_close_weights(a, b):
    assert global_relative_difference(raw_weights(a), raw_weights(b)) < GLOBAL_TOL
    assert relative_difference(raw_weights(a), raw_weights(b)) < TENSOR_TOL
    assert relative_difference(ema_weights(a), ema_weights(b)) < TENSOR_TOL


def assert_each_step_once(work_dir, cut_after, steps=STEPS):
    """The sessions logged steps 1..k1, k1+1..k2, ..., ..14: none twice, none skipped."""
    runs = steps_by_run(str(work_dir))
    assert [s for run in runs for s in run] == list(range(1, steps + 1)), runs
    assert [run[-1] for run in runs[:-1]] == cut_after, runs


def test_fallback_to_one_gpu_then_back_to_two(runs, slurm_cluster, slurm_jobs, training_root):
    work, report = runs['work']['fallback'], runs['report1']
    events = [(a.get('event'), a.get('gpus')) for a in report['actions'] if a.get('event')]
    assert events[:5] == [('work_dir', None), ('submitted', 2), ('cancelled', 2),
                          ('submitted', 1), ('started', 1)], runs['submit1']
    two_gpu_job, one_gpu_job = report['jobs'][0]['id'], report['jobs'][1]['id']
    cancelled = next(a for a in report['actions'] if a.get('event') == 'cancelled')
    assert cancelled['reason'] == 'Resources' and 'falling back to 1 GPU' in cancelled['message']
    assert job_state(two_gpu_job)[0] == 'CANCELLED'
    assert 'no checkpoint yet: a new run starts' in runs['submit1']

    # the 1-GPU session gets the warning, checkpoints and (--max-sessions 1) stops
    wait_job_end(one_gpu_job, JOB_TIMEOUT)
    first = sessions(str(work))
    assert [(r['job'], r['gpus'], r['exit'], r['outcome']) for r in first] == \
        [(one_gpu_job, '1', '75', 'max-sessions')]
    cut = int(first[0]['step_after'])
    assert runs['fallback_steps'] <= cut < STEPS

    # GPUs free again: a later launch gets 2 GPUs at once and continues the same work dir
    sh(['scancel', runs['blocker']])
    wait_job_end(runs['blocker'], 60)
    report2 = runs['base'] / 'submit2.json'
    out = sh(launcher(slurm_cluster, work, training_root, report2, '--pending-timeout', '60s',
                      slow_seconds=0), env=job_env(), timeout=300).stdout
    assert f'continuing from {work}/iter_{cut}.pth' in out
    with open(report2) as f:
        second = json.load(f)
    assert second['started']['gpus'] == 2 and len(second['jobs']) == 1, out
    assert wait_job_end(second['started']['id'], JOB_TIMEOUT) == 'COMPLETED'
    last = sessions(str(work))[-1]
    assert (last['gpus'], last['exit'], last['outcome'], last['step_before'],
            last['step_after']) == ('2', '0', 'done', str(cut), str(STEPS))
    assert_each_step_once(work, [cut])
    reference, _ = finished_reference(runs, 'ref')
    assert_close_weights(reference, load_checkpoint(final_checkpoint(str(work))))


def test_slurm_train_two_tasks_equal_one_gpu(runs):
    reference, ref_log = finished_reference(runs, 'ref')
    ddp, ddp_log = finished_reference(runs, 'ddp')
    assert '2 task(s) on partition' in ddp_log and '1 task(s) on partition' in ref_log
    assert 'Effective batch size: 2 = 2 GPU x 1 image x 1 accumulation steps' in ddp_log
    assert ddp['meta']['tbx11k']['world_size'] == 2
    assert reference['meta']['tbx11k']['accumulative_counts'] == 2
    assert ddp['meta']['iter'] == reference['meta']['iter'] == STEPS
    assert_close_weights(reference, ddp)


def test_test_sbatch_evaluates_the_checkpoint(runs, slurm_cluster, slurm_jobs, training_root):
    finished_reference(runs, 'ref')
    work = runs['work']['ref']
    job = slurm_jobs.sbatch(
        ['-p', slurm_cluster, '-J', f'{JOB_PREFIX}-test', '--gres=gpu:shared:1',
         '--cpus-per-task=1', f'--output={work}/test-%j.out', SBATCH_TEST],
        env=job_env(WORK_DIR=work, DATA_ROOT=training_root, CONFIG=TINY_1GPU))
    state = wait_job_end(job, JOB_TIMEOUT)
    assert state == 'COMPLETED', open(f'{work}/test-{job}.out').read()[-3000:]
    with open(work / 'test' / 'metrics.json') as f:
        metrics = json.load(f)
    assert metrics['num_images'] == 6 and 'TB_AP_all' in metrics['metrics']
    assert metrics['weights_tag'].startswith(f'EMA weights ({STEPS} EMA updates)')


def test_warning_signal_checkpoints_and_next_job_continues(runs):
    """The 2-GPU batch shell gets the warning: the hook checkpoints at the step boundary, exit
    75, the session chain goes on in a new job (CHAIN=resubmit, --dependency=afterany)."""
    work = runs['work']['signal']
    rows = chain_done(work, f'{JOB_PREFIX}-signal')
    assert [(r['session'], r['gpus'], r['outcome'], r['exit']) for r in rows] == \
        [('1', '2', 'resubmitted', '75'), ('2', '2', 'done', '0')]
    assert rows[0]['job'] == runs['signal'] and rows[1]['job'] != rows[0]['job']
    cut = int(rows[0]['step_after'])
    assert runs['signal_steps'] <= cut < STEPS and rows[1]['step_before'] == str(cut)
    log = open(work / f'job-{runs["signal"]}.out').read()
    assert 'SIGUSR1: the time limit is near' in log
    assert f'saving {work}/iter_{cut}.pth after optimizer step {cut}' in log
    assert f'submitted session 2 as job {rows[1]["job"]}' in log
    resubmitted = next(line for line in log.splitlines() if 'resubmitting with:' in line)
    submit_dir = runs['base'] / 'submit dir'
    for option in ('--mem=100M', f'--chdir={submit_dir}', '--ntasks=2', '--cpus-per-task=1',
                   f'--output={work}/slurm-%x-%j.out',
                   f'{submit_dir}/x/the repo/slurm/train_2gpu.sbatch'):
        assert option in resubmitted, resubmitted
    assert (work / f'slurm-{JOB_PREFIX}-signal-{rows[1]["job"]}.out').is_file()
    assert_each_step_once(work, [cut])
    final = load_checkpoint(final_checkpoint(str(work)))
    assert final['meta']['iter'] == STEPS
    ddp, _ = finished_reference(runs, 'ddp')
    assert_equal_weights(ddp, final)  # same layout: a resume is bit-identical
    reference, _ = finished_reference(runs, 'ref')
    assert_close_weights(reference, final)


def test_time_limit_checkpoints_requeues_and_finishes(runs):
    """Slurm's own time-limit warning (B:USR1) in each 3-minute session; `scontrol requeue`."""
    work, job = runs['work']['timelimit'], runs['timelimit']
    assert wait_job_end(job, JOB_TIMEOUT) == 'COMPLETED'
    rows = sessions(str(work))
    assert len(rows) >= 2, rows
    assert {r['job'] for r in rows} == {job}  # requeued: the same job id every session
    assert [r['session'] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    assert [(r['outcome'], r['exit']) for r in rows] == \
        [('requeued', '75')] * (len(rows) - 1) + [('done', '0')]
    for before, after in zip(rows, rows[1:]):
        assert after['step_before'] == before['step_after']
    log = open(work / f'job-{job}.out').read()
    assert log.count('SIGUSR1: the time limit is near') == len(rows) - 1
    assert log.count(f'requeueing job {job}') == len(rows) - 1
    assert [f'(restart {i})' in log for i in range(len(rows))] == [True] * len(rows)
    assert 'TIMEOUT' not in log
    assert_each_step_once(work, [int(r['step_after']) for r in rows[:-1]])
    reference, _ = finished_reference(runs, 'ref')
    assert_equal_weights(reference, load_checkpoint(final_checkpoint(str(work))))


EB4_STEPS = 8  # 2 epochs of ceil(13 / 4) optimizer steps
EB4_TOL = 1e-5  # global relative difference between layouts of effective batch 4


def test_four_tasks_stopped_by_the_time_limit_continue_on_one_task(runs):
    """4 tasks x 1 image x 1 step (effective batch 4) until Slurm's warning: checkpoint, exit
    75, no new session (CHAIN=none); then 1 task x 1 image x 4 steps resumes the same work dir
    and ends at the same final step, each step trained once."""
    work, job = runs['work']['four'], runs['four']
    wait_job_end(job, JOB_TIMEOUT)
    first = sessions(str(work))[:1]
    log = open(work / f'job-{job}.out').read()
    assert [(r['gpus'], r['exit'], r['outcome']) for r in first] == [('4', '75', 'stopped')], log
    assert 'SIGUSR1: the time limit is near' in log
    assert 'Effective batch size: 4 = 4 GPU x 1 image x 1 accumulation steps' in log
    cut = int(first[0]['step_after'])
    assert runs['four_steps'] <= cut < EB4_STEPS, log[-3000:]

    one = runs['four_to_one']  # submitted with --dependency=afterany on the 4-task job
    assert wait_job_end(one, JOB_TIMEOUT) == 'COMPLETED', open(work / f'job-{one}.out').read()
    last = sessions(str(work))[-1]
    assert (last['gpus'], last['outcome'], last['step_before'], last['step_after']) == \
        ('1', 'done', str(cut), str(EB4_STEPS))
    assert_each_step_once(work, [cut], EB4_STEPS)
    final = load_checkpoint(final_checkpoint(str(work)))
    assert final['meta']['iter'] == EB4_STEPS
    assert (final['meta']['tbx11k']['world_size'],
            final['meta']['tbx11k']['accumulative_counts']) == (1, 4)


def test_two_nodes_train_checkpoint_on_every_node_and_requeue(runs):
    """2 nodes x 2 tasks (a slurmd per node on this host), ranks and rendezvous from Slurm's
    environment: the warning reaches the ranks of both nodes, they checkpoint at one step, the
    job requeues itself and finishes; the result equals the 4-task -> 1-task run."""
    work, job = runs['work']['twonode'], runs['twonode']
    rows = chain_done(work, f'{JOB_PREFIX}-twonode')
    log = open(work / f'job-{job}.out').read()
    assert [(r['session'], r['gpus'], r['outcome'], r['exit']) for r in rows] == \
        [('1', '4', 'requeued', '75'), ('2', '4', 'done', '0')], log[-3000:]
    assert {r['job'] for r in rows} == {job} and rows[0]['node'].count(',') == 1
    assert '4 GPU task(s) on 2 node(s)' in log
    assert 'Effective batch size: 4 = 4 GPU x 1 image x 1 accumulation steps' in log
    cut = int(rows[0]['step_after'])
    assert runs['twonode_steps'] <= cut < EB4_STEPS
    assert f'saving {work}/iter_{cut}.pth after optimizer step {cut}' in log
    assert_each_step_once(work, [cut], EB4_STEPS)
    final = load_checkpoint(final_checkpoint(str(work)))
    assert final['meta']['iter'] == EB4_STEPS and final['meta']['tbx11k']['world_size'] == 4
    other = runs['work']['four']
    wait_until(lambda: (sessions(str(other)) or [{}])[-1].get('outcome') == 'done', JOB_TIMEOUT,
               'the 4-task -> 1-task run')
    difference = global_relative_difference(
        raw_weights(final), raw_weights(load_checkpoint(final_checkpoint(str(other)))))
    print(f'\n[figure] effective batch 4: 2 nodes x 2 tasks (requeued once) vs 4 tasks then '
          f'1 task x 4 steps: global relative weight difference {difference:.2e}')
    assert difference < EB4_TOL


def test_nothing_left_running(runs, slurm_jobs):
    """After the runs: no job of the tests is left, and no process of theirs (no orphans)."""
    wait_until(lambda: slurm_jobs.ours() == [], 120, 'the tests\' jobs to end')
    wait_until(lambda: live_processes_mentioning(str(runs['base'])) == [], 30,
               f'no process working in {runs["base"]}')
