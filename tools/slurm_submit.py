#!/usr/bin/env python3
"""Queue-aware Slurm launcher: 2 GPUs when they come soon, else 1 GPU, on the same work dir.

    python tools/slurm_submit.py -p gpu --work-dir work_dirs/run1 --data-root /data/TBX11K
    python tools/slurm_submit.py -p gpu --work-dir work_dirs/run1 --pending-timeout 90m
    python tools/slurm_submit.py -p gpu --work-dir work_dirs/run1 --prefer 1      # the reverse
    python tools/slurm_submit.py -p gpu --work-dir work_dirs/run1 --background    # log out safely

The users' decision table, automated: submit ``slurm/train_2gpu.sbatch``; if it is still pending
(waiting for resources or priority) after ``--pending-timeout`` (default 2 h), cancel it and submit
``slurm/train_1gpu.sbatch`` on the same work dir (``--prefer 1`` does the reverse). The two configs
train identically and resume each other's checkpoints, so this also works mid-run: every
invocation continues the work dir's latest checkpoint, on whichever layout starts. The submitted
job checkpoints before its time limit and requeues itself until the schedule is done
(slurm/train_session.sh). All jobs of one work dir share a job name and ``--dependency=singleton``:
two sessions never train the same work dir at once.

Without ``-p`` it uses the cluster's default partition (the one ``sinfo`` marks with '*') and
says so; a cluster without one needs ``-p``.

It reports what it did (and with ``--report FILE`` writes it as JSON). Exit status: 0 a job was
submitted (and started, or is queued), or ``--dry-run``/``--check-only`` found nothing wrong;
1 Slurm refused a job (sbatch failed: its message says why) or a job ended without running;
2 usage or cluster errors, all found before anything is submitted or cancelled: a bad option
value (``--time``, ``--signal-margin`` not shorter than the time limit, ``--poll``, ...), no Slurm
here, unknown partition, no node with the requested GPUs, a job already training this work dir
(``--replace`` stops it: it checkpoints, then the new job continues).

``--check-only`` only checks partition and GPUs (``--gpus`` per node on ``--nodes`` nodes;
tools/slurm_train.sh uses it). ``--dry-run`` changes nothing (also with ``--replace``: it says
which jobs it would stop) and prints each submission as a shell line that does the same as the
real submit when pasted (its log directory, environment and sbatch options). ``--background``
runs the same checks first (errors on the terminal, exit 2), then detaches. Only the Python
standard library is needed (run it with the login node's python3).
"""
import argparse
import getpass
import hashlib
import json
import os
import os.path as osp
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPTS = {1: osp.join(ROOT, 'slurm', 'train_1gpu.sbatch'),
           2: osp.join(ROOT, 'slurm', 'train_2gpu.sbatch')}
SLURM_TOOLS = ('sbatch', 'squeue', 'scancel', 'scontrol', 'sinfo')
# pending reasons that another layout cannot help with: the clock does not run while they hold
NOT_QUEUE_REASONS = {'Dependency', 'BeginTime', 'JobHeldUser', 'JobHeldAdmin', 'None'}
ACTIVE_STATES = {'PENDING', 'RUNNING', 'CONFIGURING', 'COMPLETING', 'REQUEUED', 'REQUEUE_HOLD',
                 'REQUEUE_FED', 'RESIZING', 'SUSPENDED', 'STOPPED', 'SIGNALING', 'STAGE_OUT'}
STARTED_STATES = {'RUNNING', 'CONFIGURING', 'COMPLETING', 'COMPLETED', 'SIGNALING', 'STAGE_OUT',
                  'SUSPENDED', 'STOPPED', 'TIMEOUT', 'FAILED', 'NODE_FAIL', 'OUT_OF_MEMORY'}


class ClusterError(Exception):
    """A problem the user must fix (exit status 2)."""


class SlurmRefused(Exception):
    """sbatch refused a job (exit status 1)."""


def say(message: str) -> None:
    print(f'slurm_submit: {message}', flush=True)


# ---- durations -----------------------------------------------------------------------------------
def parse_duration(text: str) -> Optional[float]:
    """Seconds in '2h', '90m', '1h30m', '45s', '300' (seconds); None for never/inf/none."""
    text = text.strip().lower()
    if text in ('never', 'inf', 'none', 'infinite'):
        return None
    if re.fullmatch(r'\d+(\.\d+)?', text):
        return float(text)
    parts = re.findall(r'(\d+(?:\.\d+)?)\s*([dhms])', text)
    if not parts or ''.join(f'{n}{u}' for n, u in parts) != text.replace(' ', ''):
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 2h, 90m, 1h30m, 30s)")
    scale = {'d': 86400, 'h': 3600, 'm': 60, 's': 1}
    return sum(float(n) * scale[u] for n, u in parts)


def positive_duration(text: str) -> float:
    """--poll: a duration > 0 (parse_duration's forms; not 'never')."""
    seconds = parse_duration(text)
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive duration (e.g. 30, 10s, 1m), not '
                                         f'{text!r}')
    return seconds


def pending_timeout(text: str) -> Optional[float]:
    """--pending-timeout: a duration > 0, or None for 'never'."""
    seconds = parse_duration(text)
    if seconds is not None and seconds <= 0:
        raise argparse.ArgumentTypeError(
            f'must be a positive duration or never (e.g. 2h, 90m, 30s), not {text!r}: the '
            'scheduler needs a moment to start a job (to start on 1 GPU first: --prefer 1)')
    return seconds


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive integer, not {text!r}')
    return value


def signal_margin(text: str) -> int:
    """--signal-margin: seconds, 0 to 65535 (sbatch --signal's range)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f'must be whole seconds from 0 to 65535 (e.g. 600), '
                                         f'not {text!r}')
    return value


def slurm_time_seconds(text: str) -> Optional[int]:
    """Seconds of a Slurm time limit (sbatch --time); None for no limit (UNLIMITED, INFINITE, 0).

    Forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; ValueError for others."""
    text = text.strip()
    if text.upper() in ('UNLIMITED', 'INFINITE'):
        return None
    days, dash, clock = text.rpartition('-')
    fields = clock.split(':')
    numbers = [days] * bool(dash) + fields
    if not 1 <= len(fields) <= 3 or not all(re.fullmatch(r'[0-9]+', n) for n in numbers):
        raise ValueError(f'bad Slurm time {text!r}')
    values = [int(n) for n in fields]
    if dash:  # D-HH[:MM[:SS]]
        h, m, s = values + [0] * (3 - len(values))
        seconds = int(days) * 86400 + h * 3600 + m * 60 + s
    else:  # MM, MM:SS, HH:MM:SS
        h, m, s = ([0] * (3 - len(values)) + values) if len(values) > 1 else (0, values[0], 0)
        seconds = h * 3600 + m * 60 + s
    return seconds or None  # sbatch: a limit of 0 means none


def slurm_time(text: str) -> str:
    """--time: a Slurm time spec, checked here instead of by sbatch after the fact."""
    try:
        slurm_time_seconds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a Slurm time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS '
            'or UNLIMITED (e.g. 480, 8:00:00, 1-12)')
    return text


def script_limits(gpus: int) -> Tuple[Optional[str], Optional[int]]:
    """(--time, --signal margin) of the #SBATCH lines of the ``gpus``-GPU script (None: unset)."""
    try:
        with open(SCRIPTS[gpus]) as f:
            text = f.read()
    except OSError:
        return None, None
    limit = re.search(r'^#SBATCH\s+(?:--time=|-t\s*)(\S+)', text, re.M)
    margin = re.search(r'^#SBATCH\s+--signal=\S*@(\d+)', text, re.M)
    return limit and limit.group(1), margin and int(margin.group(1))


def fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return 'never'
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return (f'{h}h' if h else '') + (f'{m}m' if m else '') + (f'{s}s' if s or not (h or m) else '')


# ---- Slurm queries -------------------------------------------------------------------------------
def slurm(*args: str, check: bool = True, env: Optional[Dict] = None) -> str:
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=120)
    except FileNotFoundError:
        raise ClusterError(f'{args[0]} not found: Slurm is not installed on this machine or not '
                           'on PATH (on some clusters: module load slurm)')
    if check and proc.returncode != 0:
        raise ClusterError(f'{" ".join(args[:2])} failed ({proc.returncode}): '
                           f'{(proc.stderr or proc.stdout).strip()}')
    return proc.stdout


def check_slurm() -> None:
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        raise ClusterError(f'Slurm not found: {", ".join(missing)} not on PATH. Run this on the '
                           "cluster's login node (some clusters need `module load slurm`)")
    proc = subprocess.run(['sinfo', '-h', '-o', '%R'], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ClusterError('Slurm is installed but its controller does not answer (sinfo: '
                           f'{(proc.stderr or proc.stdout).strip()})')


def partitions() -> List[str]:
    return sorted(set(slurm('sinfo', '-h', '-o', '%R').split()))


def default_partition() -> str:
    """The cluster's default partition: the one ``sinfo -o %P`` marks with '*'."""
    marked = [name[:-1] for name in slurm('sinfo', '-h', '-o', '%P').split()
              if name.endswith('*')]
    if not marked:
        known = ', '.join(partitions()) or 'none'
        raise ClusterError('no -p/--partition given and this cluster has no default partition: '
                           f'pass -p PARTITION (this cluster has {known})')
    return marked[0]


def resolve_partition(args: argparse.Namespace) -> None:
    """Without -p: the cluster's default partition, said so."""
    if not args.partition:
        args.partition = default_partition()
        say(f"partition {args.partition}: the cluster's default (-p chooses another)")


def split_gres(gres: str) -> List[str]:
    """'gpu:a100:4(S:0-1),mps:400' -> ['gpu:a100:4', 'mps:400'] (commas inside () kept out)."""
    items, depth, current = [], 0, ''
    for char in gres:
        depth += char == '('
        depth -= char == ')'
        if char == ',' and depth == 0:
            items.append(current)
            current = ''
        else:
            current += char
    items.append(current)
    return [re.sub(r'\(.*\)$', '', item).strip() for item in items if item.strip()]


def node_gpus(gres: str) -> Dict[Optional[str], int]:
    """GPUs of one node by type (None: untyped), from sinfo's %G."""
    gpus: Dict[Optional[str], int] = {}
    for item in split_gres(gres):
        parts = item.split(':')
        if parts[0] != 'gpu':
            continue
        if len(parts) == 2 and parts[1].isdigit():
            gpus[None] = gpus.get(None, 0) + int(parts[1])
        elif len(parts) >= 3 and parts[-1].isdigit():
            gpus[parts[1]] = gpus.get(parts[1], 0) + int(parts[-1])
    return gpus


def gpu_nodes(partition: str) -> List[Tuple[str, Dict[Optional[str], int]]]:
    out = slurm('sinfo', '-h', '-N', '-p', partition, '-o', '%N|%G')
    return [(line.split('|', 1)[0], node_gpus(line.split('|', 1)[1]))
            for line in out.splitlines() if '|' in line]


def fits(gpus: Dict[Optional[str], int], count: int, gpu_type: Optional[str]) -> bool:
    if gpu_type is None:
        return sum(gpus.values()) >= count
    return gpus.get(gpu_type, 0) >= count


def check_partition(partition: str) -> None:
    known = partitions()
    if partition not in known:
        raise ClusterError(f"unknown partition {partition!r}: this cluster has "
                           f"{', '.join(known) or 'none'} (sinfo -s lists them)")


def fitting_nodes(partition: str, count: int, gpu_type: Optional[str]) -> int:
    """How many nodes of the partition have ``count`` GPUs (of ``gpu_type``)."""
    return sum(fits(gpus, count, gpu_type) for _, gpus in gpu_nodes(partition))


def check_gpus(partition: str, count: int, gpu_type: Optional[str], nodes: int = 1) -> bool:
    """Whether ``nodes`` nodes of the partition have ``count`` GPUs (of ``gpu_type``) each."""
    return fitting_nodes(partition, count, gpu_type) >= nodes


def describe_gpus(partition: str) -> str:
    offers = []
    for node, gpus in gpu_nodes(partition):
        offer = ', '.join(f'{n} x {t or "gpu (untyped)"}' for t, n in gpus.items()) or 'no GPU'
        offers.append(f'{node}: {offer}')
    return '; '.join(offers) or 'no nodes'


def gpu_error(partition: str, count: int, gpu_type: Optional[str],
              nodes: int = 1) -> ClusterError:
    kind = f'{count} GPU{"s" if count > 1 else ""}' + (f' of type {gpu_type!r}' if gpu_type else '')
    if nodes > 1:
        return ClusterError(f'{nodes} nodes with {kind} each are needed, but partition '
                            f'{partition!r} has {fitting_nodes(partition, count, gpu_type)} '
                            f'(nodes: {describe_gpus(partition)})')
    return ClusterError(f'no node of partition {partition!r} has {kind} (nodes: '
                        f'{describe_gpus(partition)})')


def job_state(job_id: str) -> Tuple[str, str]:
    """(state, reason) of a job; ('GONE', '') once Slurm forgot it."""
    out = slurm('squeue', '-h', '-t', 'all', '-j', job_id, '-o', '%T|%r', check=False).strip()
    if out:
        state, _, reason = out.splitlines()[0].partition('|')
        return state, reason
    out = slurm('scontrol', 'show', 'job', '-o', job_id, check=False)
    match = re.search(r'\bJobState=(\S+)', out)
    reason = re.search(r'\bReason=(\S+)', out)
    return (match.group(1), reason.group(1) if reason else '') if match else ('GONE', '')


def jobs_named(name: str) -> List[Tuple[str, str]]:
    out = slurm('squeue', '-h', '-u', getpass.getuser(), '-n', name, '-o', '%i|%T', check=False)
    return [tuple(line.split('|', 1)) for line in out.splitlines() if '|' in line]


# ---- the run -------------------------------------------------------------------------------------
def default_job_name(work_dir: str) -> str:
    digest = hashlib.sha1(work_dir.encode()).hexdigest()[:6]
    base = re.sub(r'[^A-Za-z0-9_.-]', '_', osp.basename(work_dir.rstrip('/')) or 'run')
    return f'tbx11k-{base}-{digest}'


def checkpoint_state(work_dir: str) -> str:
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            target = f.read().strip()
        if target:
            return f'continuing from {target}'
    if osp.isdir(work_dir) and any(n.endswith('.pth') for n in os.listdir(work_dir)):
        return 'continuing from its newest loadable checkpoint'
    return 'no checkpoint yet: a new run starts'


class Submitter:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work_dir = osp.abspath(args.work_dir)
        self.job_name = args.job_name or default_job_name(self.work_dir)
        self.log_dir = osp.join(self.work_dir, 'slurm')
        self.report: Dict = dict(work_dir=self.work_dir, job_name=self.job_name, jobs=[],
                                 actions=[], started=None)

    def act(self, message: str, **fields) -> None:
        say(message)
        self.report['actions'].append(dict(message=message, time=time.time(), **fields))

    def sbatch_command(self, gpus: int) -> List[str]:
        a = self.args
        gres = f'gpu:{a.gpu_type + ":" if a.gpu_type else ""}{gpus}'
        cmd = ['sbatch', '--parsable', f'--partition={self.partition(gpus)}',
               f'--job-name={self.job_name}', '--dependency=singleton', f'--gres={gres}',
               f'--output={osp.join(self.log_dir, "job-%j.out")}', '--open-mode=append']
        if a.time:
            cmd.append(f'--time={a.time}')
        if a.signal_margin is not None:
            cmd.append(f'--signal=B:USR1@{a.signal_margin}')
        if a.cpus_per_task:
            cmd.append(f'--cpus-per-task={a.cpus_per_task}')
        cmd += a.sbatch_arg or []
        return cmd + [SCRIPTS[gpus]] + list(a.train_args)

    def partition(self, gpus: int) -> str:
        return (self.args.partition_1gpu or self.args.partition) if gpus == 1 \
            else self.args.partition

    def env_changes(self, gpus: int) -> Tuple[Dict[str, str], List[str]]:
        """(variables set, variables removed) in sbatch's environment (sbatch exports it)."""
        a = self.args
        set_vars = dict(WORK_DIR=self.work_dir, TBX11K_ROOT=ROOT,
                        TBX11K_OUTPUT=osp.join(self.log_dir, 'job-%j.out'))
        for key, value in (('PYTHON', a.python), ('MAX_SESSIONS', a.max_sessions),
                           ('CHAIN', a.chain)):
            if value is not None:
                set_vars[key] = str(value)
        if a.data_root:
            set_vars['DATA_ROOT'] = osp.abspath(a.data_root)
        if a.signal_margin is not None:
            set_vars['TBX11K_SIGNAL'] = f'B:USR1@{a.signal_margin}'
        unset = ['TBX11K_SESSION']
        config = a.config_1gpu if gpus == 1 else a.config_2gpu
        if config:
            set_vars['CONFIG'] = osp.abspath(config)
        else:
            unset.insert(0, 'CONFIG')  # the sbatch scripts pick the config by their task count
        return set_vars, unset

    def environment(self, gpus: int) -> Dict[str, str]:
        set_vars, unset = self.env_changes(gpus)
        env = dict(os.environ, **set_vars)
        for key in unset:
            env.pop(key, None)
        return env

    def shell_command(self, gpus: int) -> str:
        """What submit() runs, as one shell line that does the same when pasted (--dry-run)."""
        set_vars, unset = self.env_changes(gpus)
        words = (['env'] + [w for key in unset for w in ('-u', key)]) if unset else []
        words += [f'{key}={value}' for key, value in set_vars.items()]
        words += self.sbatch_command(gpus)
        return (f'mkdir -p {shlex.quote(self.log_dir)} && '
                + ' '.join(shlex.quote(word) for word in words))

    def submit(self, gpus: int) -> str:
        cmd = self.sbatch_command(gpus)
        if self.args.dry_run:
            self.act(f'would run: {self.shell_command(gpus)}', gpus=gpus)
            return 'DRYRUN'
        os.makedirs(self.log_dir, exist_ok=True)
        try:
            out = slurm(*cmd, env=self.environment(gpus))
        except ClusterError as error:
            raise SlurmRefused(f'Slurm refused the {gpus}-GPU job: {error}. Fix what it names '
                               '(an --sbatch-arg, the account, a limit) and call again')
        job_id = out.strip().split(';')[0]
        self.report['jobs'].append(dict(id=job_id, gpus=gpus, partition=self.partition(gpus)))
        self.act(f'submitted the {gpus}-GPU job {job_id} (partition {self.partition(gpus)}, log '
                 f'{osp.join(self.log_dir, f"job-{job_id}.out")})', job=job_id, gpus=gpus,
                 event='submitted')
        return job_id

    def wait(self, job_id: str, timeout: Optional[float]) -> Tuple[bool, str, str, float]:
        """Poll until the job starts or has been queue-pending for ``timeout`` seconds.

        Returns (started, state, reason, seconds pending in the queue)."""
        queued = 0.0
        last = time.monotonic()
        reported = None
        while True:
            state, reason = job_state(job_id)
            now = time.monotonic()
            if state == 'PENDING' and reason not in NOT_QUEUE_REASONS:
                queued += now - last
            last = now
            if state != 'PENDING':
                return state in STARTED_STATES or state == 'GONE', state, reason, queued
            if (state, reason) != reported and reason != 'None':
                say(f'job {job_id} is pending ({reason})')
                reported = (state, reason)
            if timeout is not None and queued >= timeout:
                return False, state, reason, queued
            time.sleep(self.args.poll)

    def cancel(self, job_id: str) -> str:
        slurm('scancel', job_id, check=False)
        for _ in range(100):
            state, _ = job_state(job_id)
            if state not in ('PENDING', 'CONFIGURING'):
                return state
            time.sleep(0.2)
        return state

    def check(self) -> Tuple[List[int], List[Tuple[str, str]]]:
        """Everything checked before the first sbatch (also before --background detaches): Slurm,
        partition(s), which layouts fit, no job training the work dir (unless --replace).

        Returns (the layouts to submit, in order; the active jobs of this work dir)."""
        a = self.args
        check_slurm()
        resolve_partition(a)
        for partition in sorted({self.partition(1), self.partition(2)}):
            check_partition(partition)
        order = self.order()
        usable = [g for g in order if check_gpus(self.partition(g), g, a.gpu_type)]
        if not usable:
            raise gpu_error(self.partition(order[-1]), min(order), a.gpu_type)
        active = [(j, s) for j, s in jobs_named(self.job_name) if s in ACTIVE_STATES]
        if active and not a.replace:
            listed = ', '.join(f'{j} ({s})' for j, s in active)
            raise ClusterError(f'job(s) {listed} named {self.job_name} already train '
                               f'{self.work_dir}: wait for them, or pass --replace to stop them '
                               '(a running one checkpoints first) and continue under this policy')
        return usable, active

    def order(self) -> List[int]:
        return [2, 1] if self.args.prefer == 2 else [1, 2]

    def replace(self, active: List[Tuple[str, str]]) -> None:
        """--replace: cancel the pending jobs, ask the running ones to checkpoint and stop."""
        for job_id, state in active:
            if self.args.dry_run:
                what = (f'cancel pending job {job_id}' if state == 'PENDING' else
                        f'ask {state.lower()} job {job_id} to checkpoint and stop')
                self.act(f'would {what} (--replace; a dry run changes nothing)', job=job_id,
                         event='would_replace')
            elif state == 'PENDING':
                slurm('scancel', job_id, check=False)
                self.act(f'cancelled the pending job {job_id} of this work dir (--replace)',
                         job=job_id, event='replaced')
            else:  # SIGTERM to the batch shell only: checkpoint, then exit (no KillWait limit)
                slurm('scancel', '--signal=TERM', '--batch', job_id, check=False)
                self.act(f'asked the {state.lower()} job {job_id} of this work dir to checkpoint '
                         'and stop (--replace); the new job starts when it has (singleton)',
                         job=job_id, event='replaced')

    def run(self) -> int:
        a = self.args
        usable, active = self.check()
        for gpus in self.order():
            if gpus not in usable:
                self.act(f'{gpu_error(self.partition(gpus), gpus, a.gpu_type)}: skipping the '
                         f'{gpus}-GPU layout', event='skipped', gpus=gpus)
        self.replace(active)

        stopping = [j for j, state in active if state != 'PENDING']
        state = (f'continuing from the checkpoint job {", ".join(stopping)} writes as it stops'
                 if stopping else checkpoint_state(self.work_dir))
        self.act(f'work dir {self.work_dir}: {state}', event='work_dir')
        timeout = a.pending_timeout
        for position, gpus in enumerate(usable):
            last_choice = position == len(usable) - 1
            job_id = self.submit(gpus)
            if a.dry_run:
                continue
            plural = 's' if gpus > 1 else ''
            if last_choice and not a.wait_start:
                time.sleep(min(2.0, a.poll))
                state, reason = job_state(job_id)
                started, queued = state in STARTED_STATES, 0.0
            else:
                started, state, reason, queued = self.wait(job_id, None if last_choice else timeout)
            if started:
                self.report['started'] = dict(id=job_id, gpus=gpus)
                self.act(f'job {job_id} ({gpus} GPU{plural}) started ({state}) after '
                         f'{fmt_duration(queued)} in the queue', job=job_id, gpus=gpus,
                         event='started', state=state)
                break
            if state != 'PENDING':
                self.act(f'job {job_id} ended without running ({state} {reason})', job=job_id,
                         event='failed', state=state)
                return 1
            if last_choice:
                self.act(f'job {job_id} ({gpus} GPU{plural}) is queued ({reason}); it starts when '
                         'resources allow', job=job_id, gpus=gpus, event='queued', reason=reason)
                break
            final = self.cancel(job_id)
            if final in STARTED_STATES:
                self.act(f'job {job_id} started just as it was cancelled ({final}): it '
                         'checkpoints and stops; the next job continues from there', job=job_id,
                         event='cancelled_running')
            else:
                self.act(f'job {job_id} ({gpus} GPU{plural}) was still pending ({reason}) after '
                         f'{fmt_duration(queued)} >= --pending-timeout {fmt_duration(timeout)}: '
                         f'cancelled it ({final}); falling back to {usable[position + 1]} GPU(s) '
                         'on the same work dir', job=job_id, gpus=gpus, event='cancelled',
                         reason=reason)
        self.act(f'follow: tail -f {osp.join(self.log_dir, "job-<id>.out")}; sessions: '
                 f'{osp.join(self.work_dir, "slurm_sessions.tsv")}; stop after a checkpoint: '
                 f'scancel --signal=TERM --batch --name {self.job_name} (a pending job: '
                 f'scancel --name {self.job_name})', event='help')
        return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Arguments after -- go to tools/train.py '
        '(e.g. -- --cfg-options train_cfg.max_epochs=60).')
    parser.add_argument('-p', '--partition', help="partition for both layouts (default: the "
                        "cluster's default partition, sinfo's '*')")
    parser.add_argument('--partition-1gpu', help='another partition for the 1-GPU job')
    parser.add_argument('--gpu-type', help='GPU model, as in --gres=gpu:TYPE:N (default: any)')
    parser.add_argument('--work-dir', default='work_dirs/dino_tbx11k',
                        help='run directory, shared by both layouts (default %(default)s)')
    parser.add_argument('--data-root', help='TBX11K root (default: the config\'s data_root)')
    parser.add_argument('--config-1gpu', help='config of the 1-GPU job (default '
                        'configs/dino_tbx11k_1gpu.py)')
    parser.add_argument('--config-2gpu', help='config of the 2-GPU job (default '
                        'configs/dino_tbx11k_2gpu.py); the two must train the same schedule')
    parser.add_argument('--prefer', type=int, choices=(1, 2), default=2,
                        help='layout to try first (default 2; 1 = the reverse policy)')
    parser.add_argument('--pending-timeout', type=pending_timeout, default=7200.0,
                        help='queue wait before falling back to the other layout, > 0: 2h, 90m, '
                        '30s, never (default 2h). Waiting for a dependency or a begin time '
                        'does not count')
    parser.add_argument('--poll', type=positive_duration, default=30.0,
                        help='time between queue checks, > 0: 30, 10s, 1m (default 30 s)')
    parser.add_argument('--time', type=slurm_time, default=None,
                        help='time limit per session, sbatch format: minutes, MM:SS, HH:MM:SS, '
                        'D-HH, D-HH:MM, D-HH:MM:SS, UNLIMITED (default: the scripts\' 8:00:00)')
    parser.add_argument('--signal-margin', type=signal_margin, default=None,
                        help='seconds before the time limit at which training checkpoints, '
                        'shorter than --time (default: the scripts\' 600)')
    parser.add_argument('--cpus-per-task', type=positive_int, help='default: the scripts\' 5')
    parser.add_argument('--max-sessions', type=positive_int, help='sessions per job before the '
                        'chain stops (default 20)')
    parser.add_argument('--chain', choices=('requeue', 'resubmit', 'none'),
                        help='how a session continues (default requeue; see '
                        'slurm/train_session.sh)')
    parser.add_argument('--python', help='python on the compute nodes (default: python)')
    parser.add_argument('--job-name', help='default: tbx11k-<work dir name>-<hash of its path>')
    parser.add_argument('--sbatch-arg', action='append', metavar='ARG',
                        help='extra sbatch option, repeatable (e.g. --sbatch-arg=--account=abc)')
    parser.add_argument('--replace', action='store_true',
                        help='cancel jobs already training this work dir first')
    parser.add_argument('--wait-start', action='store_true',
                        help='also wait until the last-choice job starts')
    parser.add_argument('--dry-run', action='store_true',
                        help='print the sbatch commands only (shell lines with the environment '
                        'the real submit passes)')
    parser.add_argument('--background', action='store_true',
                        help='detach (log in WORK_DIR/slurm/submit-*.log): safe to log out')
    parser.add_argument('--report', metavar='FILE', help='write what was done as JSON')
    parser.add_argument('--check-only', action='store_true',
                        help='only check Slurm, partition and GPUs (with --gpus)')
    parser.add_argument('--gpus', type=positive_int, default=2,
                        help='GPUs per node to check with --check-only')
    parser.add_argument('--nodes', type=positive_int, default=1,
                        help='nodes with --gpus GPUs each to check with --check-only (default 1)')
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: List[str] = []
    if '--' in argv:
        cut = argv.index('--')
        argv, train_args = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    args.train_args = train_args
    problem = margin_problem(args)
    if problem:
        parser.error(problem)
    return args


def margin_problem(args: argparse.Namespace) -> Optional[str]:
    """Why --signal-margin is not shorter than the --time limit (given, or the scripts')."""
    if args.time is None and args.signal_margin is None:
        return None  # the scripts' own pair
    for gpus in (1, 2):
        script_time, script_margin = script_limits(gpus)
        script = osp.basename(SCRIPTS[gpus])
        limit = args.time or script_time
        margin = script_margin if args.signal_margin is None else args.signal_margin
        try:
            seconds = slurm_time_seconds(limit) if limit else None
        except ValueError:
            continue  # a script's own #SBATCH line: sbatch judges it
        if seconds is not None and margin is not None and margin >= seconds:
            given_margin = (f'--signal-margin {margin}' if args.signal_margin is not None else
                            f'the signal margin {margin} s of {script}')
            given_time = (f'--time {limit} ({seconds} s)' if args.time else
                          f'the time limit {limit} ({seconds} s) of {script}')
            return (f'{given_margin} is not shorter than {given_time}: every session would get '
                    'its checkpoint warning at once. Pass a longer --time or a smaller '
                    '--signal-margin')
    return None


def background(argv: List[str], work_dir: str) -> int:
    log_dir = osp.join(osp.abspath(work_dir), 'slurm')
    os.makedirs(log_dir, exist_ok=True)
    log = osp.join(log_dir, time.strftime('submit-%Y%m%d-%H%M%S.log'))
    rest = [a for a in argv if a != '--background']
    with open(log, 'a') as f:
        child = subprocess.Popen([sys.executable, osp.abspath(__file__)] + rest, stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    say(f'running in the background (pid {child.pid}); log: {log}')
    return 0


def main(argv=None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    try:
        if args.check_only:
            check_slurm()
            resolve_partition(args)
            check_partition(args.partition)
            if not check_gpus(args.partition, args.gpus, args.gpu_type, args.nodes):
                raise gpu_error(args.partition, args.gpus, args.gpu_type, args.nodes)
            return 0
        if args.background:  # the checks run here, so that their errors reach the terminal
            Submitter(args).check()
            return background(raw, args.work_dir)
        submitter = Submitter(args)
        try:
            return submitter.run()
        except (ClusterError, SlurmRefused) as error:
            submitter.report['error'] = str(error)
            raise
        finally:
            if args.report:
                with open(args.report, 'w') as f:
                    json.dump(submitter.report, f, indent=1)
    except ClusterError as error:
        print(f'slurm_submit: error: {error}', file=sys.stderr)
        return 2
    except SlurmRefused as error:
        print(f'slurm_submit: error: {error}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
