"""tools/slurm_submit.py's layouts against fake Slurm commands (run everywhere, no cluster
needed): --gpus 8,4,2,1 over nodes, layouts that can never start skipped before anything is
submitted (GPUs, effective batch, partition limits, sbatch --test-only), pending reasons that
never clear, a job that fails, and the jobs' python checked first."""
import json
import subprocess
import sys

from tbx11k.testing.slurm import SLURM_SUBMIT, fake_python, fake_slurm_env

# partition 'gpu': n1, n2 with 4 GPUs and 16 CPUs each, n3 with 2 GPUs and 8 CPUs. Partition
# limits from $FAKE_PARTITION; `sbatch --test-only` refuses args matching $FAKE_REFUSE; job N
# (4242, 4243, ... in order of submission) is in the state of $FAKE_STATE_N ('PENDING|Resources';
# default RUNNING; CANCELLED once scancelled). sbatch and scancel append their arguments to
# $FAKE_CALLS.
FAKE_TOOLS = {
    'sinfo': '''#!/bin/bash
case "$*" in
  *"%R"*) echo gpu ;;
  *"%N|%G"*) echo "n1|gpu:4|16|idle"; echo "n2|gpu:4|16|idle"; echo "n3|gpu:2|8|idle" ;;
esac
''',
    'scontrol': '''#!/bin/bash
[[ "$1 $2" == "show partition" ]] && echo "PartitionName=gpu ${FAKE_PARTITION:-MaxNodes=UNLIMITED}"
exit 0
''',
    'squeue': '''#!/bin/bash
case " $* " in
  *" -n "*) ;;
  *" -j "*) args="$*"; id=${args##* -j }; id=${id%% *}; var=FAKE_STATE_$((id - 4241))
    if grep -qx "scancel $id" "$FAKE_CALLS" 2>/dev/null; then echo "CANCELLED|None"
    else echo "${!var:-RUNNING|None}"; fi ;;
esac
''',
    'scancel': '#!/bin/bash\necho "scancel $*" >> "$FAKE_CALLS"\n',
    'sbatch': '''#!/bin/bash
if [[ " $* " == *" --test-only "* ]]; then
  if [[ -n ${FAKE_REFUSE:-} && " $* " == *" $FAKE_REFUSE "* ]]; then
    echo "allocation failure: Requested node configuration is not available" >&2; exit 1
  fi
  echo "sbatch: Job 1 to start at now" >&2; exit 0
fi
echo "sbatch $*" >> "$FAKE_CALLS"
echo $((4241 + $(grep -c '^sbatch' "$FAKE_CALLS")))
''',
}


def run_submit(tmp_path, *args, **fake):
    env = fake_slurm_env(str(tmp_path / 'fakeslurm'), FAKE_TOOLS, drop=('FAKE_',))
    env.update(FAKE_CALLS=str(tmp_path / 'calls.txt'), **fake)
    report = tmp_path / 'report.json'
    proc = subprocess.run(
        [sys.executable, SLURM_SUBMIT, '-p', 'gpu', '--work-dir', str(tmp_path / 'w'),
         '--python', fake_python(str(tmp_path / 'py')), '--poll', '0.1', '--report',
         str(report), '--cpus-per-task', '2', *args], env=env, capture_output=True, text=True,
        timeout=60)
    calls = (tmp_path / 'calls.txt').read_text().splitlines() \
        if (tmp_path / 'calls.txt').exists() else []
    return proc, calls, json.loads(report.read_text()) if report.exists() else None


def submitted_layouts(calls):
    return [next(w for w in c.split() if w.startswith('--nodes=')) + ' ' +
            next(w for w in c.split() if w.startswith('--ntasks-per-node='))
            for c in calls if c.startswith('sbatch')]


def test_gpus_list_runs_layouts_over_nodes_in_order(tmp_path):
    """--gpus did not exist (1 or 2 GPUs only); now any counts in order, a count larger than a
    node has over several nodes (from the nodes' Gres), those not dividing E skipped."""
    proc, calls, _ = run_submit(tmp_path, '--gpus', '8,4,3,2,1', '--dry-run', FAKE_EB='8',
                                FAKE_ACC='auto')
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if 'would run: ' in line]
    assert [(w for w in line.split() if w.startswith('--nodes=')).__next__() + ' ' +
            next(w for w in line.split() if w.startswith('--gres=')) for line in lines] == \
        ['--nodes=2 --gres=gpu:4', '--nodes=1 --gres=gpu:4', '--nodes=1 --gres=gpu:2',
         '--nodes=1 --gres=gpu:1']
    assert 'skipping the 3 GPUs layout: 3 GPUs x 1 image(s) do not divide the effective batch 8' \
        in proc.stdout and 'GPU counts that fit: 1, 2, 4, 8' in proc.stdout
    assert all('slurm/train.sbatch' in line for line in lines)
    assert not any('accumulative_counts' in line for line in lines)  # 'auto': train.py's
    # a config that fixes its accumulation: each layout gets the one that fits it, said
    proc, _, _ = run_submit(tmp_path / 'fixed', '--gpus', '4,1', '--dry-run', FAKE_EB='4',
                            FAKE_ACC='1')
    lines = [line for line in proc.stdout.splitlines() if 'would run: ' in line]
    assert not lines[0].endswith('accumulative_counts=1') and \
        lines[1].endswith('--cfg-options optim_wrapper.accumulative_counts=4'), lines
    assert 'on 1 GPU(s) the effective batch 4 needs 4' in proc.stdout
    # --gpus-per-node fixes the split; --prefer and --gpus together are a usage error
    proc, _, _ = run_submit(tmp_path / 'pn', '--gpus', '4', '--gpus-per-node', '2', '--dry-run',
                            FAKE_EB='4', FAKE_ACC='auto')
    assert '--nodes=2 --ntasks-per-node=2 --gres=gpu:2' in proc.stdout, proc.stderr
    proc, _, _ = run_submit(tmp_path / 'both', '--gpus', '4', '--prefer', '1')
    assert proc.returncode == 2 and '--prefer is a shorthand' in proc.stderr


def test_layouts_that_can_never_start_are_skipped_before_submitting(tmp_path):
    """A layout no node set, limit or sbatch --test-only allows was submitted and waited for
    (pending PartitionConfig for the whole --pending-timeout); now skipped at once with the
    reason, and if none is left: exit 2 naming what to change, nothing submitted."""
    proc, calls, report = run_submit(
        tmp_path, '--gpus', '16,8,4,2,1', FAKE_EB='16', FAKE_ACC='auto',
        FAKE_PARTITION='MaxNodes=1 MaxCPUsPerNode=6',
        FAKE_REFUSE='--ntasks-per-node=2')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "skipping the 16 GPUs layout: no set of nodes of partition 'gpu' has 16 GPUs in " \
        'equal numbers per node (nodes: n1: 4 x gpu (untyped); ' in out
    assert "skipping the 8 GPUs (2 nodes x 4) layout: 2 nodes exceed the MaxNodes=1 of " \
        "partition 'gpu'" in out
    assert 'skipping the 4 GPUs layout: 4 tasks x 2 CPUs = 8 CPUs per node exceed the ' \
        "MaxCPUsPerNode=6 of partition 'gpu': lower --cpus-per-task" in out
    assert 'skipping the 2 GPUs layout: sbatch --test-only refuses it: allocation failure' in out
    assert submitted_layouts(calls) == ['--nodes=1 --ntasks-per-node=1']
    assert [(d['gpus'], bool(d['problem'])) for d in report['layouts']] == \
        [(16, True), (8, True), (4, True), (2, True), (1, False)]
    # nothing can start: exit 2 with every reason, nothing submitted
    proc, calls, _ = run_submit(tmp_path / 'none', '--gpus', '4,2', '--time', '8:00:00',
                                FAKE_PARTITION='MaxTime=04:00:00')
    assert proc.returncode == 2 and calls == [], proc.stdout
    assert 'no layout of --gpus 4,2 can ever start on this cluster, nothing was submitted' \
        in proc.stderr
    assert "--time 8:00:00 exceeds the MaxTime=04:00:00 of partition 'gpu': pass a shorter " \
        '--time' in proc.stderr


def test_pending_reasons_that_never_clear_are_not_queueing(tmp_path):
    """PartitionConfig counted as queueing: slurm_submit waited the whole --pending-timeout
    (2 h by default), then fell back. Now the job is cancelled at once and the next layout
    tried; on the last layout: exit 1 naming the reason. ReqNodeNotAvail is only final when
    no node can run jobs."""
    proc, calls, report = run_submit(tmp_path, '--gpus', '2,1', '--pending-timeout', '1h',
                                     FAKE_STATE_1='PENDING|PartitionConfig')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls[:2] == [c for c in calls if c.startswith('sbatch')][:1] + ['scancel 4242']
    assert submitted_layouts(calls) == ['--nodes=1 --ntasks-per-node=2',
                                        '--nodes=1 --ntasks-per-node=1']
    events = [a['event'] for a in report['actions'] if a.get('event')]
    assert events[-3:] == ['submitted', 'started', 'help'] and 'never_starts' in events
    assert 'is pending (PartitionConfig), which no waiting clears' in proc.stdout
    proc, calls, _ = run_submit(tmp_path / 'last', '--gpus', '1',
                                FAKE_STATE_1='PENDING|PartitionTimeLimit')
    assert proc.returncode == 1 and 'scancel 4242' in calls
    assert "--time exceeds the partition's MaxTime" in proc.stderr
    # ReqNodeNotAvail while nodes can run jobs: waiting (here: the last layout is queued)
    proc, _, _ = run_submit(tmp_path / 'req', '--gpus', '1',
                            FAKE_STATE_1='PENDING|ReqNodeNotAvail, UnavailableNodes:n3')
    assert proc.returncode == 0 and 'is queued (ReqNodeNotAvail' in proc.stdout


def test_a_job_that_fails_is_a_failure(tmp_path):
    """A job that failed at once was reported 'started (FAILED)' with exit 0."""
    (tmp_path / 'w' / 'slurm').mkdir(parents=True)
    (tmp_path / 'w' / 'slurm' / 'job-4242.out').write_text(
        "ModuleNotFoundError: No module named 'mmengine'\n")
    proc, _, report = run_submit(tmp_path, '--gpus', '1', FAKE_STATE_1='FAILED|NonZeroExitCode')
    assert proc.returncode == 1, proc.stdout
    assert 'job 4242 (1 GPU) failed (FAILED)' in proc.stdout
    assert "No module named 'mmengine'" in proc.stdout  # the end of its log
    assert report['started'] is None


def test_the_jobs_python_must_import_the_project(tmp_path):
    """`python3 tools/slurm_submit.py` submitted jobs whose python lacked the project's packages
    (each failed at once); now nothing is submitted and the error names the python."""
    proc, calls, _ = run_submit(tmp_path, '--gpus', '2,1',
                                FAKE_IMPORT_ERROR="ModuleNotFoundError: No module named 'mmengine'")
    assert proc.returncode == 2 and calls == [], proc.stdout
    python = str(tmp_path / 'py' / 'python')
    assert f"the jobs would run python '{python}', which cannot import the project " \
        "(ModuleNotFoundError: No module named 'mmengine')" in proc.stderr
    assert '--python' in proc.stderr and '.venv' in proc.stderr
    proc, calls, _ = run_submit(tmp_path / 'missing', '--python', str(tmp_path / 'nope'))
    assert proc.returncode == 2 and calls == [] and 'cannot be run here' in proc.stderr
