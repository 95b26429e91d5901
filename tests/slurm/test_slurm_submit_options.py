"""tools/slurm_submit.py's options and up-front checks, against fake Slurm commands on PATH or by
parsing alone (run everywhere, no cluster needed): a dry run changes nothing (also --replace),
--background checks before it detaches, bad option values are usage errors (exit 2) before
anything is submitted, an sbatch refusal exits 1, and without -p the cluster's default partition."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from tbx11k.testing.slurm import SLURM_SUBMIT, fake_python, fake_slurm_env

# partition 'gpu' (node1: 2 x a100, node2: 1 untyped GPU), 'debug'; the default partition is
# $FAKE_DEFAULT; squeue -n lists $FAKE_JOBS ('ID|STATE,...'), any job asked for by id runs;
# scancel and sbatch append their arguments to $FAKE_CALLS; sbatch fails with $FAKE_SBATCH_FAIL
FAKE_TOOLS = {
    'sinfo': '''#!/bin/bash
case "$*" in
  *"%R"*) echo gpu; echo debug ;;
  *"%P"*) for p in gpu debug; do [[ $p == "${FAKE_DEFAULT:-}" ]] && echo "$p*" || echo "$p"; done ;;
  *"%N|%G"*) echo "node1|gpu:a100:2(S:0-1)"; echo "node2|gpu:1" ;;
esac
''',
    'squeue': '''#!/bin/bash
case " $* " in
  *" -n "*) [[ -n ${FAKE_JOBS:-} ]] && tr , '\\n' <<< "$FAKE_JOBS" ;;
  *) echo "RUNNING|None" ;;
esac
''',
    'scontrol': '#!/bin/bash\n',
    'scancel': '#!/bin/bash\necho "scancel $*" >> "$FAKE_CALLS"\n',
    'sbatch': '''#!/bin/bash
if [[ " $* " == *" --test-only "* ]]; then echo "sbatch: Job 1 to start at now" >&2; exit 0; fi
echo "sbatch $*" >> "$FAKE_CALLS"
if [[ -n ${FAKE_SBATCH_FAIL:-} ]]; then echo "sbatch: error: $FAKE_SBATCH_FAIL" >&2; exit 1; fi
echo 4242
''',
}


def load_module():
    spec = importlib.util.spec_from_file_location('slurm_submit_under_test', SLURM_SUBMIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


submit_module = load_module()


@pytest.fixture
def fake_slurm(tmp_path):
    env = fake_slurm_env(str(tmp_path / 'fakeslurm'), FAKE_TOOLS, drop=('FAKE_',))
    env['FAKE_CALLS'] = str(tmp_path / 'calls.txt')
    env['FAKE_PYTHON'] = fake_python(str(tmp_path / 'fakepython'))
    return env


def calls(env):
    path = env['FAKE_CALLS']
    return open(path).read().splitlines() if os.path.exists(path) else []


def submit(env, *args, **fake):
    python = [] if '--python' in args else ['--python', env['FAKE_PYTHON']]
    return subprocess.run([sys.executable, SLURM_SUBMIT, *python, *args], env=dict(env, **fake),
                          capture_output=True, text=True, timeout=60)


def parse_error(capsys, *argv):
    """The usage error parse_args gives (exit 2)."""
    with pytest.raises(SystemExit) as exc:
        submit_module.parse_args(['-p', 'gpu', *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_dry_run_replace_changes_nothing(fake_slurm, tmp_path):
    """--dry-run --replace stopped the running job (scancel --signal=TERM --batch) and cancelled
    the pending one, then submitted nothing; now it says what it would do and calls no scancel."""
    work = ['-p', 'gpu', '--work-dir', str(tmp_path / 'w'), '--poll', '0.1', '--replace']
    proc = submit(fake_slurm, *work, '--dry-run', FAKE_JOBS='77|RUNNING,78|PENDING')
    assert proc.returncode == 0, proc.stderr
    assert calls(fake_slurm) == []
    assert 'would ask running job 77 to checkpoint and stop' in proc.stdout
    assert 'would cancel pending job 78' in proc.stdout
    assert proc.stdout.count('would run: ') == 2
    # the real --replace does both (the fake records what the dry run did not do)
    proc = submit(fake_slurm, *work, FAKE_JOBS='77|RUNNING,78|PENDING')
    assert proc.returncode == 0, proc.stderr
    made = calls(fake_slurm)
    assert made[:2] == ['scancel --signal=TERM --batch 77', 'scancel 78']
    assert made[2].startswith('sbatch --parsable --partition=gpu')


@pytest.mark.parametrize('value', ['never', '0', '0s', 'inf'])
def test_poll_must_be_positive(capsys, value):
    """--poll never crashed (time.sleep(None)); --poll 0 busy-polled the controller."""
    assert 'argument --poll: must be a positive duration' in parse_error(capsys, '--poll', value)
    assert submit_module.parse_args(['-p', 'gpu', '--poll', '0.5']).poll == 0.5


def test_background_checks_before_detaching(fake_slurm, tmp_path):
    """--background only checked that Slurm exists: a bad partition, GPU type or a busy work dir
    went to the background log and the command exited 0. Now: exit 2, message on the terminal,
    nothing detached; a good call still detaches."""
    work_dir = tmp_path / 'w'
    common = ['--work-dir', str(work_dir), '--background']
    for args, fake, message in (
            (['-p', 'nope'], {}, "unknown partition 'nope': this cluster has debug, gpu"),
            (['-p', 'gpu', '--gpu-type', 'h100'], {},
             "no node of partition 'gpu' has 1 GPU of type 'h100'"),
            (['-p', 'gpu'], dict(FAKE_JOBS='77|RUNNING'), 'wait for them, or pass --replace')):
        proc = submit(fake_slurm, *args, *common, **fake)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr
        assert 'running in the background' not in proc.stdout
        assert not work_dir.exists()  # no log: nothing was started
    proc = submit(fake_slurm, '-p', 'gpu', *common, '--dry-run')
    assert proc.returncode == 0 and 'running in the background' in proc.stdout, proc.stderr
    log_dir = work_dir / 'slurm'
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        logs = [p.read_text() for p in log_dir.glob('submit-*.log')]
        if logs and 'follow: tail -f' in logs[0]:
            break
        time.sleep(0.2)
    assert logs and logs[0].count('would run: ') == 2, logs
    assert calls(fake_slurm) == []


@pytest.mark.parametrize('value', ['0', '0s', '0m'])
def test_pending_timeout_must_be_positive(capsys, value):
    """--pending-timeout 0 cancelled the 2-GPU job at its first poll, before the scheduler ever
    looked at it. 0 is a usage error; never still waits for good."""
    err = parse_error(capsys, '--pending-timeout', value)
    assert 'argument --pending-timeout: must be a positive duration or never' in err
    assert '--prefer 1' in err
    parse = submit_module.parse_args
    assert parse(['-p', 'gpu', '--pending-timeout', 'never']).pending_timeout is None
    assert parse(['-p', 'gpu', '--pending-timeout', '1h30m']).pending_timeout == 5400


def test_time_and_limits_checked_up_front(capsys):
    """A bad --time reached sbatch ("Invalid --time specification"); a negative --signal-margin,
    one not shorter than the time limit, --cpus-per-task 0 and --max-sessions 0 were taken.
    All are usage errors naming the option."""
    for text in ('8h', '1:2:3:4', '1-', '-5', '1-2-3', 'abc', '', '1:', '٣'):
        assert "argument --time: %r is not a Slurm time" % text in parse_error(
            capsys, '--time', text)
    assert 'argument --signal-margin: must be whole seconds' in parse_error(
        capsys, '--signal-margin', '-1')
    err = parse_error(capsys, '--time', '10:00', '--signal-margin', '600')
    assert '--signal-margin 600 is not shorter than --time 10:00 (600 s)' in err
    err = parse_error(capsys, '--signal-margin', '28800')  # the scripts' 8:00:00
    assert 'is not shorter than the time limit 08:00:00 (28800 s) of train.sbatch' in err
    err = parse_error(capsys, '--time', '10')  # the scripts' 600 s margin
    assert 'the signal margin 600 s of train.sbatch' in err and 'not shorter than --time 10' in err
    parse = submit_module.parse_args
    assert parse(['-p', 'gpu', '--time', '11']).time == '11'
    assert parse(['-p', 'gpu', '--time', 'UNLIMITED', '--signal-margin', '60000']).time
    for option in ('--cpus-per-task', '--max-sessions'):
        assert f'argument {option}: must be a positive integer' in parse_error(capsys, option, '0')
    seconds = submit_module.slurm_time_seconds
    for text, expected in (('90', 5400), ('10:30', 630), ('8:00:00', 28800), ('1-12', 129600),
                           ('1-12:30', 131400), ('1-0:0:15', 86415), ('UNLIMITED', None),
                           ('infinite', None), ('0', None)):
        assert seconds(text) == expected, text
        assert submit_module.parse_args(['-p', 'gpu', '--time', text]).time == text


def test_sbatch_refusal_exits_1(fake_slurm, tmp_path):
    """The docstring says 1 for a job Slurm refused, 2 for usage/cluster errors; an sbatch
    refusal exited 2. Now 1, with sbatch's message (also in --report)."""
    report = tmp_path / 'report.json'
    proc = submit(fake_slurm, '-p', 'gpu', '--work-dir', str(tmp_path / 'w'), '--report',
                  str(report), FAKE_SBATCH_FAIL='Invalid account or account/partition')
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'Slurm refused the 2 GPUs job' in proc.stderr
    assert 'Invalid account or account/partition' in proc.stderr
    assert 'Invalid account' in json.loads(report.read_text())['error']
    assert '1 Slurm refused a job' in submit_module.__doc__


def test_default_partition_without_p(fake_slurm, tmp_path):
    """-p was required; without it the cluster's default partition (sinfo's '*') is used and
    named, and a cluster without one asks for -p."""
    work = ['--work-dir', str(tmp_path / 'w'), '--dry-run']
    proc = submit(fake_slurm, *work, FAKE_DEFAULT='gpu')
    assert proc.returncode == 0, proc.stderr
    assert "partition gpu: the cluster's default (-p chooses another)" in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if 'would run: ' in line]
    assert len(lines) == 2 and all('--partition=gpu ' in line for line in lines)
    proc = submit(fake_slurm, '--check-only', '--gpus', '2', FAKE_DEFAULT='gpu')
    assert proc.returncode == 0, proc.stderr
    proc = submit(fake_slurm, *work, FAKE_DEFAULT='')
    assert proc.returncode == 2
    assert 'no default partition: pass -p PARTITION (this cluster has debug, gpu)' in proc.stderr
