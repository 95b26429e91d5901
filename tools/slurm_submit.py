#!/usr/bin/env python3
"""Queue-aware Slurm launcher: the first allocation of an ordered list that starts, on one work dir.

    python tools/slurm_submit.py -p gpu --work-dir work_dirs/run1 --data-root /data/TBX11K
    python tools/slurm_submit.py -p gpu --work-dir work_dirs/run1 --pending-timeout 90m
    python tools/slurm_submit.py -p gpu --work-dir work_dirs/run1 --prefer 1      # 1 GPU first
    python tools/slurm_submit.py -p gpu --work-dir work_dirs/run8 --config CONFIG --gpus 8,4,2,1
    python tools/slurm_submit.py -p gpu --work-dir work_dirs/run1 --background    # log out safely

The users' decision table, automated: submit the first layout of ``--gpus`` (default 2,1:
``--prefer 2``; ``--prefer 1`` is 1,2) as ``slurm/train.sbatch``; if it is still pending (waiting
for resources or priority) after ``--pending-timeout`` (default 2 h), cancel it and submit the
next on the same work dir. A GPU count larger than a node has runs on several nodes (GPUs per
node from the partition's nodes' Gres: the fewest nodes that can; ``--gpus-per-node`` fixes it).
Every layout of one effective batch trains the same run and resumes the others' checkpoints, so
this also works mid-run: every invocation continues the work dir's latest checkpoint, on
whichever layout starts, larger or smaller than the last. The submitted job checkpoints before
its time limit and requeues itself until the schedule is done (slurm/train_session.sh). All jobs
of one work dir share a job name and ``--dependency=singleton``: two sessions never train the
same work dir at once.

Before anything is submitted, each layout is checked and one that can never start is skipped
with the reason: no node set has its GPUs; its GPU count does not divide the config's
``effective_batch_size`` (read with the jobs' python, which must import the project: else exit 2
naming the python); the partition's limits (MaxNodes, MaxCPUsPerNode, MaxTime, the nodes' CPUs);
``sbatch --test-only``. Where a config fixes an accumulation that does not fit a layout, that job
gets ``--cfg-options optim_wrapper.accumulative_counts=K`` (said). A job pending for a reason no
waiting clears (PartitionConfig, PartitionTimeLimit, InvalidAccount, a per-job QOS limit, ...) is
cancelled at once and the next layout tried.

Without ``-p`` it uses the cluster's default partition (the one ``sinfo`` marks with '*') and
says so; a cluster without one needs ``-p``.

It reports what it did (and with ``--report FILE`` writes it as JSON). Exit status: 0 a job was
submitted (and started, or is queued), or ``--dry-run``/``--check-only`` found nothing wrong;
1 Slurm refused a job (sbatch failed: its message says why), a job failed or ended without
running, or every job pended for a reason that never clears;
2 usage or cluster errors, all found before anything is submitted or cancelled: a bad option
value (``--time``, ``--signal-margin`` not shorter than the time limit, ``--poll``, ...), no Slurm
here, unknown partition, no layout that can ever start (the message names what to change), a
python that cannot import the project, a job already training this work dir (``--replace``
stops it: it checkpoints, then the new job continues).

``--check-only`` only checks that ``--gpus`` can ever start (GPUs, partition limits, ``sbatch
--test-only``; ``--gpus`` per node on ``--nodes`` nodes: tools/slurm_train.sh uses it).
``--dry-run`` changes nothing (also with ``--replace``: it says which jobs it would stop) and
prints each submission as a shell line that does the same as the real submit when pasted (its
log directory, environment and sbatch options). ``--background`` runs the same checks first
(errors on the terminal, exit 2), then detaches. This script needs only the Python standard
library (run it with the login node's python3); the jobs' python is checked separately.
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
SCRIPT = osp.join(ROOT, 'slurm', 'train.sbatch')
DEFAULT_CONFIGS = {1: osp.join(ROOT, 'configs', 'dino_tbx11k_1gpu.py'),
                   2: osp.join(ROOT, 'configs', 'dino_tbx11k_2gpu.py')}
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


def script_text() -> str:
    try:
        with open(SCRIPT) as f:
            return f.read()
    except OSError:
        return ''


def script_limits() -> Tuple[Optional[str], Optional[int]]:
    """(--time, --signal margin) of the #SBATCH lines of slurm/train.sbatch (None: unset)."""
    text = script_text()
    limit = re.search(r'^#SBATCH\s+(?:--time=|-t\s*)(\S+)', text, re.M)
    margin = re.search(r'^#SBATCH\s+--signal=\S*@(\d+)', text, re.M)
    return limit and limit.group(1), margin and int(margin.group(1))


def script_cpus() -> Optional[int]:
    """--cpus-per-task of the #SBATCH lines of slurm/train.sbatch."""
    match = re.search(r'^#SBATCH\s+--cpus-per-task=(\d+)', script_text(), re.M)
    return int(match.group(1)) if match else None


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


def node_table(partition: str) -> List[Tuple[str, Dict[Optional[str], int], Optional[int], str]]:
    """(node, GPUs by type, CPUs, state) of each node of the partition (sinfo -N)."""
    out = slurm('sinfo', '-h', '-N', '-p', partition, '-o', '%N|%G|%c|%T')
    table = []
    for line in out.splitlines():
        fields = line.split('|')
        if len(fields) < 2:
            continue
        cpus = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else None
        table.append((fields[0], node_gpus(fields[1]), cpus, fields[3] if len(fields) > 3 else ''))
    return table


def gpu_nodes(partition: str) -> List[Tuple[str, Dict[Optional[str], int]]]:
    return [(node, gpus) for node, gpus, _, _ in node_table(partition)]


def node_gpu_count(gpus: Dict[Optional[str], int], gpu_type: Optional[str]) -> int:
    return sum(gpus.values()) if gpu_type is None else gpus.get(gpu_type, 0)


def fits(gpus: Dict[Optional[str], int], count: int, gpu_type: Optional[str]) -> bool:
    return node_gpu_count(gpus, gpu_type) >= count


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


# ---- layouts -------------------------------------------------------------------------------------
# pending reasons that no waiting clears (Slurm's squeue "JOB REASON CODES"): the job asks for
# more than the partition, account or QOS ever allows a job, or depends on what will never be
PENDING_FOREVER = {
    'PartitionConfig': 'the partition can never give this request (more CPUs, GPUs, memory or '
                       'nodes per node than its nodes have)',
    'BadConstraints': "the job's constraints can never be satisfied",
    'PartitionNodeLimit': "the node count is outside the partition's limits (MinNodes/MaxNodes)",
    'PartitionTimeLimit': "--time exceeds the partition's MaxTime",
    'InvalidAccount': 'the account is invalid (--sbatch-arg=--account=...)',
    'InvalidQOS': 'the QOS is invalid (--sbatch-arg=--qos=...)',
    'AccountNotAllowed': 'the account may not use this partition',
    'QOSNotAllowed': 'the QOS may not use this partition',
    'DependencyNeverSatisfied': 'a dependency can never be satisfied',
    'QOSMaxCpuPerJobLimit': "more CPUs than the QOS allows a job",
    'QOSMaxGRESPerJob': "more GPUs than the QOS allows a job",
    'QOSMaxNodePerJobLimit': "more nodes than the QOS allows a job",
    'QOSMaxWallDurationPerJobLimit': "--time exceeds the QOS's limit",
    'QOSMaxMemoryPerJob': "more memory than the QOS allows a job",
    'QOSMinGRES': 'fewer GPUs than the QOS requires',
    'AssocMaxCpuPerJobLimit': "more CPUs than the account allows a job",
    'AssocMaxGRESPerJob': "more GPUs than the account allows a job",
    'AssocMaxNodePerJobLimit': "more nodes than the account allows a job",
    'AssocMaxWallDurationPerJobLimit': "--time exceeds the account's limit",
}
USABLE_NODE_STATES = ('idle', 'mix', 'alloc', 'comp', 'plan', 'resv')
FAILED_STATES = {'FAILED', 'NODE_FAIL', 'OUT_OF_MEMORY', 'BOOT_FAIL', 'DEADLINE', 'TIMEOUT',
                 'PREEMPTED'}


def pending_forever(reason: str, partition: str) -> Optional[str]:
    """Why a job pending for ``reason`` can never start (None: it may, in time)."""
    code = reason.split(',')[0].strip()
    if code in PENDING_FOREVER:
        return PENDING_FOREVER[code]
    if code == 'ReqNodeNotAvail':
        states = [state for _, _, _, state in node_table(partition)]
        if not any(s.startswith(USABLE_NODE_STATES) and not s.endswith('*') for s in states):
            return (f'no node of partition {partition!r} can run jobs (states: '
                    f'{", ".join(sorted(set(states))) or "none"})')
    return None


def partition_limits(partition: str) -> Dict[str, str]:
    """The partition's settings (scontrol show partition): MaxNodes, MaxTime, MaxCPUsPerNode..."""
    out = slurm('scontrol', 'show', 'partition', '-o', partition, check=False)
    return dict(re.findall(r'\b([A-Za-z]+)=(\S+)', out))


class Layout:
    """One allocation to ask for: ``gpus`` processes, one GPU each, ``per_node`` on each of
    ``nodes`` nodes, training ``config`` (None: the sbatch script's default) with
    ``extra_args`` after the user's tools/train.py arguments."""

    def __init__(self, gpus: int, nodes: int, per_node: int, partition: str) -> None:
        self.gpus, self.nodes, self.per_node, self.partition = gpus, nodes, per_node, partition
        self.config: Optional[str] = None  # CONFIG of the job (None: the script's default)
        self.read_config = ''  # the config the job trains (read for its effective batch)
        self.extra_args: List[str] = []
        self.problem: Optional[str] = None  # why it can never run (skipped)
        self.note: Optional[str] = None  # what the launcher adds for it

    def __str__(self) -> str:
        text = f'{self.gpus} GPU{"s" if self.gpus > 1 else ""}'
        return text + (f' ({self.nodes} nodes x {self.per_node})' if self.nodes > 1 else '')


def plan_nodes(total: int, per_node: Optional[int], table, gpu_type: Optional[str]
               ) -> Optional[Tuple[int, int]]:
    """(nodes, GPUs per node) for ``total`` GPUs on the partition's nodes: the most GPUs per node
    (fewest nodes) that enough nodes have; ``per_node`` fixes it. None: no node set can."""
    counts = [node_gpu_count(gpus, gpu_type) for _, gpus, _, _ in table]
    choices = [per_node] if per_node else [p for p in range(total, 0, -1) if total % p == 0]
    for p in choices:
        if total % p == 0 and sum(c >= p for c in counts) >= total // p:
            return total // p, p
    return None


def limits_problem(layout: Layout, table, limits: Dict[str, str], cpus_per_task: int,
                   time_limit: Optional[str], gpu_type: Optional[str]) -> Optional[str]:
    """Why the partition's limits can never give ``layout`` (None: they can)."""
    max_nodes = limits.get('MaxNodes', 'UNLIMITED')
    if max_nodes.isdigit() and layout.nodes > int(max_nodes):
        return (f'{layout.nodes} nodes exceed the MaxNodes={max_nodes} of partition '
                f'{layout.partition!r}: ask for fewer GPUs or more per node (--gpus-per-node)')
    cpus = layout.per_node * cpus_per_task
    max_cpus = limits.get('MaxCPUsPerNode', 'UNLIMITED')
    if max_cpus.isdigit() and cpus > int(max_cpus):
        return (f'{layout.per_node} tasks x {cpus_per_task} CPUs = {cpus} CPUs per node exceed '
                f'the MaxCPUsPerNode={max_cpus} of partition {layout.partition!r}: lower '
                '--cpus-per-task')
    able = [c for _, gpus, c, _ in table
            if node_gpu_count(gpus, gpu_type) >= layout.per_node and c is not None]
    if able and sum(c >= cpus for c in able) < layout.nodes:
        return (f'{layout.per_node} tasks x {cpus_per_task} CPUs = {cpus} CPUs per node, but the '
                f'nodes with {layout.per_node} GPUs have at most {max(able)} CPUs: lower '
                '--cpus-per-task')
    max_time = limits.get('MaxTime', 'UNLIMITED')
    if time_limit:
        try:
            wanted, allowed = slurm_time_seconds(time_limit), slurm_time_seconds(max_time)
        except ValueError:
            return None
        if allowed is not None and (wanted is None or wanted > allowed):
            return (f'--time {time_limit} exceeds the MaxTime={max_time} of partition '
                    f'{layout.partition!r}: pass a shorter --time (sessions chain until the run '
                    'is done)')
    return None


def test_only(cmd: List[str], env: Dict[str, str]) -> Optional[str]:
    """sbatch --test-only of a submission: None if Slurm could ever start it, else its words."""
    probe = ['sbatch', '--test-only'] + [w for w in cmd[1:] if w != '--parsable']
    try:
        proc = subprocess.run(probe, capture_output=True, text=True, env=env, timeout=120)
    except FileNotFoundError:
        return 'sbatch not found'
    if proc.returncode == 0:
        return None
    return (proc.stderr or proc.stdout).strip().splitlines()[-1] if (proc.stderr or proc.stdout
                                                                      ).strip() else 'refused'


def train_cfg_options(train_args: List[str]) -> Dict[str, str]:
    """The ``--cfg-options key=value ...`` among tools/train.py's arguments."""
    options, collecting = {}, False
    for word in train_args:
        if word in ('--cfg-options', '--cfg_options'):
            collecting = True
        elif word.startswith('-'):
            collecting = False
        elif collecting and '=' in word:
            key, value = word.split('=', 1)
            options[key] = value
    return options


# run by the python the jobs will run: it must import the project, and it reads what the
# launcher needs of each config (with the --cfg-options of the call applied)
PROBE = r'''
import json, sys
try:
    import tbx11k, mmdet.models  # noqa: F401
except Exception as error:
    print(json.dumps({"import_error": f"{type(error).__name__}: {error}"}))
    sys.exit(0)
from mmengine.config import Config, DictAction
options = json.loads(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    try:
        cfg = Config.fromfile(path)
        cfg.merge_from_dict({k: DictAction._parse_iterable(v) for k, v in options.items()})
        wrapper = cfg.get("optim_wrapper") or {}
        loader = cfg.get("train_dataloader") or {}
        out[path] = dict(effective_batch_size=cfg.get("effective_batch_size"),
                         accumulative_counts=wrapper.get("accumulative_counts", 1),
                         batch_size=loader.get("batch_size", 1))
    except Exception as error:
        out[path] = dict(error=f"{type(error).__name__}: {error}")
print(json.dumps(out, default=str))
'''


def job_python(args: argparse.Namespace) -> str:
    """The python the jobs run: --python, else the project's .venv, else python3 (as the job
    scripts choose: slurm/lib.sh)."""
    if args.python:
        return args.python
    venv = osp.join(ROOT, '.venv', 'bin', 'python')
    return venv if os.access(venv, os.X_OK) else 'python3'


def probe_configs(python: str, configs: List[str], options: Dict[str, str]) -> Dict[str, Dict]:
    """Check that ``python`` imports the project and read each config's effective batch,
    accumulation and images per GPU; ClusterError saying what to do if it cannot."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        ROOT, os.environ.get('PYTHONPATH')])))
    fix = (f'pass --python with the python of the project\'s environment (e.g. '
           f'{osp.join(ROOT, ".venv", "bin", "python")}, made by tools/setup_env.sh), or '
           'activate that environment first')
    try:
        proc = subprocess.run([python, '-c', PROBE, json.dumps(options)] + configs,
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    except (FileNotFoundError, PermissionError) as error:
        raise ClusterError(f'the jobs would run python {python!r}, which cannot be run here '
                           f'({error.strerror}): {fix}')
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise ClusterError(f'python {python!r} failed to read the config(s) (status '
                           f'{proc.returncode}): {(proc.stderr or proc.stdout).strip()[-1500:]}')
    if 'import_error' in result:
        raise ClusterError(f'the jobs would run python {python!r}, which cannot import the '
                           f'project ({result["import_error"]}): every job would fail at once. '
                           f'Nothing was submitted; {fix}')
    for path, info in result.items():
        if 'error' in info:
            raise ClusterError(f'config {path} cannot be read: {info["error"]}')
    return result


def fitting_gpu_counts(effective: int, images: int, upto: int = 64) -> List[int]:
    return [g for g in range(1, min(upto, effective) + 1) if effective % (g * images) == 0]


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors='replace') as f:
            text = f.read().splitlines()[-lines:]
    except OSError:
        return ''
    return '\n'.join('    ' + line for line in text)


class Submitter:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work_dir = osp.abspath(args.work_dir)
        self.job_name = args.job_name or default_job_name(self.work_dir)
        self.log_dir = osp.join(self.work_dir, 'slurm')
        self.report: Dict = dict(work_dir=self.work_dir, job_name=self.job_name, jobs=[],
                                 actions=[], started=None, layouts=[])

    def act(self, message: str, **fields) -> None:
        say(message)
        self.report['actions'].append(dict(message=message, time=time.time(), **fields))

    def sbatch_command(self, layout: Layout) -> List[str]:
        a = self.args
        gres = f'gpu:{a.gpu_type + ":" if a.gpu_type else ""}{layout.per_node}'
        cmd = ['sbatch', '--parsable', f'--partition={layout.partition}',
               f'--job-name={self.job_name}', '--dependency=singleton',
               f'--nodes={layout.nodes}', f'--ntasks-per-node={layout.per_node}',
               f'--gres={gres}', f'--output={osp.join(self.log_dir, "job-%j.out")}',
               '--open-mode=append']
        if a.time:
            cmd.append(f'--time={a.time}')
        if a.signal_margin is not None:
            cmd.append(f'--signal=B:USR1@{a.signal_margin}')
        if a.cpus_per_task:
            cmd.append(f'--cpus-per-task={a.cpus_per_task}')
        cmd += a.sbatch_arg or []
        return cmd + [SCRIPT] + list(a.train_args) + layout.extra_args

    def partition(self, gpus: int) -> str:
        return (self.args.partition_1gpu or self.args.partition) if gpus == 1 \
            else self.args.partition

    def config_of(self, gpus: int) -> Tuple[Optional[str], str]:
        """(the CONFIG to pass, None: the script's default by task count; the config read)."""
        a = self.args
        given = {1: a.config_1gpu, 2: a.config_2gpu}.get(gpus) or a.config
        if given:
            return osp.abspath(given), osp.abspath(given)
        default = DEFAULT_CONFIGS.get(gpus)
        return (None, default) if default else (DEFAULT_CONFIGS[2], DEFAULT_CONFIGS[2])

    def env_changes(self, layout: Layout) -> Tuple[Dict[str, str], List[str]]:
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
        if layout.config:
            set_vars['CONFIG'] = layout.config
        else:
            unset.insert(0, 'CONFIG')  # the sbatch script picks the config by its task count
        return set_vars, unset

    def environment(self, layout: Layout) -> Dict[str, str]:
        set_vars, unset = self.env_changes(layout)
        env = dict(os.environ, **set_vars)
        for key in unset:
            env.pop(key, None)
        return env

    def shell_command(self, layout: Layout) -> str:
        """What submit() runs, as one shell line that does the same when pasted (--dry-run)."""
        set_vars, unset = self.env_changes(layout)
        words = (['env'] + [w for key in unset for w in ('-u', key)]) if unset else []
        words += [f'{key}={value}' for key, value in set_vars.items()]
        words += self.sbatch_command(layout)
        return (f'mkdir -p {shlex.quote(self.log_dir)} && '
                + ' '.join(shlex.quote(word) for word in words))

    def submit(self, layout: Layout) -> str:
        cmd = self.sbatch_command(layout)
        if self.args.dry_run:
            self.act(f'would run: {self.shell_command(layout)}', gpus=layout.gpus)
            return 'DRYRUN'
        os.makedirs(self.log_dir, exist_ok=True)
        try:
            out = slurm(*cmd, env=self.environment(layout))
        except ClusterError as error:
            raise SlurmRefused(f'Slurm refused the {layout} job: {error}. Fix what it names '
                               '(an --sbatch-arg, the account, a limit) and call again')
        job_id = out.strip().split(';')[0]
        self.report['jobs'].append(dict(id=job_id, gpus=layout.gpus, nodes=layout.nodes,
                                        partition=layout.partition))
        self.act(f'submitted the {layout} job {job_id} (partition {layout.partition}, log '
                 f'{osp.join(self.log_dir, f"job-{job_id}.out")})', job=job_id,
                 gpus=layout.gpus, event='submitted')
        return job_id

    def wait(self, job_id: str, timeout: Optional[float], partition: str
             ) -> Tuple[bool, str, str, float, Optional[str]]:
        """Poll until the job starts, can never start, or has been queue-pending for
        ``timeout`` seconds.

        Returns (started, state, reason, seconds pending in the queue, why it can never start).
        """
        queued = 0.0
        last = time.monotonic()
        reported = None
        while True:
            state, reason = job_state(job_id)
            now = time.monotonic()
            if state == 'PENDING':
                never = pending_forever(reason, partition)
                if never:
                    return False, state, reason, queued, never
                if reason not in NOT_QUEUE_REASONS:
                    queued += now - last
            last = now
            if state != 'PENDING':
                return state in STARTED_STATES or state == 'GONE', state, reason, queued, None
            if (state, reason) != reported and reason != 'None':
                say(f'job {job_id} is pending ({reason})')
                reported = (state, reason)
            if timeout is not None and queued >= timeout:
                return False, state, reason, queued, None
            time.sleep(self.args.poll)

    def cancel(self, job_id: str) -> str:
        slurm('scancel', job_id, check=False)
        for _ in range(100):
            state, _ = job_state(job_id)
            if state not in ('PENDING', 'CONFIGURING'):
                return state
            time.sleep(0.2)
        return state

    def order(self) -> List[int]:
        a = self.args
        if a.gpus:
            return a.gpus
        return [1, 2] if a.prefer == 1 else [2, 1]

    def layouts(self) -> List[Layout]:
        """Every layout of the order, each with the problem that keeps it from ever running
        here (None: it may run): no node set has its GPUs, it does not divide the effective
        batch, a partition limit, or sbatch --test-only refuses it."""
        a = self.args
        result, tables, limits = [], {}, {}
        for gpus in self.order():
            partition = self.partition(gpus)
            if partition not in tables:
                tables[partition] = node_table(partition)
                limits[partition] = partition_limits(partition)
            plan = plan_nodes(gpus, a.gpus_per_node, tables[partition], a.gpu_type)
            layout = Layout(gpus, *(plan or (1, gpus)), partition)
            layout.config, layout.read_config = self.config_of(gpus)
            if plan is None:
                per_node = a.gpus_per_node or gpus
                layout.problem = str(gpu_error(partition, per_node, a.gpu_type,
                                               -(-gpus // per_node)))
                most = max([node_gpu_count(g, a.gpu_type) for _, g, _, _ in tables[partition]]
                           or [0])
                if not a.gpus_per_node and 0 < most < gpus:
                    kind = f'GPUs of type {a.gpu_type!r}' if a.gpu_type else 'GPUs'
                    layout.problem = (f'no set of nodes of partition {partition!r} has {gpus} '
                                      f'{kind} in equal numbers per node (nodes: '
                                      f'{describe_gpus(partition)})')
                if a.gpus_per_node and gpus % a.gpus_per_node:
                    layout.problem = (f'{gpus} GPUs are not a multiple of --gpus-per-node '
                                      f'{a.gpus_per_node}')
            result.append(layout)
        return result

    def check_batches(self, layouts: List[Layout]) -> None:
        """Effective batch of each layout's config (read by the jobs' python, which must import
        the project): a layout whose GPUs do not divide it gets a problem; where the config
        fixes another accumulation, the layout gets the one that fits it (--cfg-options)."""
        options = train_cfg_options(self.args.train_args)
        configs = sorted({layout.read_config for layout in layouts if not layout.problem})
        infos = probe_configs(job_python(self.args), configs, options)
        for layout in layouts:
            if layout.problem:
                continue
            info = infos[layout.read_config]
            effective, images = info['effective_batch_size'], info['batch_size'] or 1
            acc = info['accumulative_counts']
            if not isinstance(effective, int):
                continue
            name = osp.relpath(layout.read_config, ROOT) if layout.read_config.startswith(
                ROOT + os.sep) else layout.read_config
            if effective % (layout.gpus * images):
                fit = ', '.join(map(str, fitting_gpu_counts(effective, images)))
                layout.problem = (f'{layout.gpus} GPUs x {images} image(s) do not divide the '
                                  f'effective batch {effective} of {name} (GPU counts that fit: '
                                  f'{fit}): choose --gpus among them, or a config with another '
                                  'effective_batch_size')
                continue
            needed = effective // (layout.gpus * images)
            if isinstance(acc, int) and not isinstance(acc, bool) and acc != needed:
                if 'optim_wrapper.accumulative_counts' in options:
                    layout.problem = (f'--cfg-options optim_wrapper.accumulative_counts={acc} '
                                      f'(after --) fixes the layout to '
                                      f'{effective // (images * acc)} GPU(s) for the effective '
                                      f'batch {effective}: drop it to let each layout use its own')
                    continue
                layout.extra_args = ['--cfg-options', f'optim_wrapper.accumulative_counts={needed}']
                layout.note = (f'{name} accumulates {acc} step(s); on {layout.gpus} GPU(s) the '
                               f'effective batch {effective} needs {needed}: the job gets '
                               f'--cfg-options optim_wrapper.accumulative_counts={needed}')

    def check_limits(self, layouts: List[Layout]) -> None:
        """Partition limits and sbatch --test-only for the layouts without a problem yet."""
        a = self.args
        time_limit = a.time or script_limits()[0]
        cpus = a.cpus_per_task or script_cpus() or 1
        for layout in layouts:
            if layout.problem:
                continue
            table = node_table(layout.partition)
            layout.problem = limits_problem(layout, table, partition_limits(layout.partition),
                                            cpus, time_limit, a.gpu_type)
            if not layout.problem:
                refusal = test_only(self.sbatch_command(layout), self.environment(layout))
                if refusal:
                    layout.problem = f'sbatch --test-only refuses it: {refusal}'

    def check(self) -> Tuple[List[Layout], List[Tuple[str, str]]]:
        """Everything checked before the first sbatch (also before --background detaches): Slurm,
        partition(s), which layouts can ever run, the jobs' python, no job training the work dir
        (unless --replace).

        Returns (the layouts to submit, in order; the active jobs of this work dir)."""
        a = self.args
        check_slurm()
        resolve_partition(a)
        for partition in sorted({self.partition(g) for g in self.order()}):
            check_partition(partition)
        layouts = self.layouts()
        self.check_limits(layouts)
        if any(not layout.problem for layout in layouts):
            self.check_batches(layouts)
        for layout in layouts:
            self.report['layouts'].append(dict(gpus=layout.gpus, nodes=layout.nodes,
                                               per_node=layout.per_node,
                                               partition=layout.partition,
                                               problem=layout.problem, note=layout.note))
        usable = [layout for layout in layouts if not layout.problem]
        if not usable:
            reasons = '; '.join(f'{layout}: {layout.problem}' for layout in layouts)
            raise ClusterError(f'no layout of --gpus {",".join(map(str, self.order()))} can '
                               f'ever start on this cluster, nothing was submitted. {reasons}')
        active = [(j, s) for j, s in jobs_named(self.job_name) if s in ACTIVE_STATES]
        if active and not a.replace:
            listed = ', '.join(f'{j} ({s})' for j, s in active)
            raise ClusterError(f'job(s) {listed} named {self.job_name} already train '
                               f'{self.work_dir}: wait for them, or pass --replace to stop them '
                               '(a running one checkpoints first) and continue under this policy')
        self.all_layouts = layouts
        return usable, active

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
        for layout in self.all_layouts:
            if layout.problem:
                self.act(f'skipping the {layout} layout: {layout.problem}', event='skipped',
                         gpus=layout.gpus, reason=layout.problem)
            elif layout.note:
                self.act(f'{layout}: {layout.note}', event='layout_note', gpus=layout.gpus)
        self.replace(active)

        stopping = [j for j, state in active if state != 'PENDING']
        state = (f'continuing from the checkpoint job {", ".join(stopping)} writes as it stops'
                 if stopping else checkpoint_state(self.work_dir))
        self.act(f'work dir {self.work_dir}: {state}', event='work_dir')
        timeout = a.pending_timeout
        for position, layout in enumerate(usable):
            last_choice = position == len(usable) - 1
            job_id = self.submit(layout)
            if a.dry_run:
                continue
            never = None
            if last_choice and not a.wait_start:
                time.sleep(min(2.0, a.poll))
                state, reason = job_state(job_id)
                started, queued = state in STARTED_STATES, 0.0
                if state == 'PENDING':
                    never = pending_forever(reason, layout.partition)
            else:
                started, state, reason, queued, never = self.wait(
                    job_id, None if last_choice else timeout, layout.partition)
            log = osp.join(self.log_dir, f'job-{job_id}.out')
            if state in FAILED_STATES:
                tail = log_tail(log)
                self.act(f'job {job_id} ({layout}) failed ({state}) after '
                         f'{fmt_duration(queued)} in the queue: see {log}'
                         + (f'; it ends:\n{tail}' if tail else ''), job=job_id,
                         gpus=layout.gpus, event='failed', state=state)
                return 1
            if started:
                self.report['started'] = dict(id=job_id, gpus=layout.gpus, nodes=layout.nodes)
                self.act(f'job {job_id} ({layout}) started ({state}) after '
                         f'{fmt_duration(queued)} in the queue', job=job_id, gpus=layout.gpus,
                         event='started', state=state)
                break
            if state != 'PENDING':
                self.act(f'job {job_id} ended without running ({state} {reason}): see {log}',
                         job=job_id, event='failed', state=state)
                return 1
            if never:
                final = self.cancel(job_id)
                following = ('' if last_choice else
                             f'; trying the {usable[position + 1]} layout')
                self.act(f'job {job_id} ({layout}) is pending ({reason}), which no waiting '
                         f'clears: {never}. Cancelled it ({final}){following}', job=job_id,
                         gpus=layout.gpus, event='never_starts', reason=reason)
                if last_choice:
                    print(f'slurm_submit: error: no layout could start ({reason}: {never}); '
                          'change what it names and call again', file=sys.stderr)
                    return 1
                continue
            if last_choice:
                self.act(f'job {job_id} ({layout}) is queued ({reason}); it starts when '
                         'resources allow', job=job_id, gpus=layout.gpus, event='queued',
                         reason=reason)
                break
            final = self.cancel(job_id)
            if final in STARTED_STATES:
                self.act(f'job {job_id} started just as it was cancelled ({final}): it '
                         'checkpoints and stops; the next job continues from there', job=job_id,
                         event='cancelled_running')
            else:
                self.act(f'job {job_id} ({layout}) was still pending ({reason}) after '
                         f'{fmt_duration(queued)} >= --pending-timeout {fmt_duration(timeout)}: '
                         f'cancelled it ({final}); falling back to {usable[position + 1]} '
                         'on the same work dir', job=job_id, gpus=layout.gpus, event='cancelled',
                         reason=reason)
        self.act(f'follow: tail -f {osp.join(self.log_dir, "job-<id>.out")}; sessions: '
                 f'{osp.join(self.work_dir, "slurm_sessions.tsv")}; stop after a checkpoint: '
                 f'scancel --signal=TERM --batch --name {self.job_name} (a pending job: '
                 f'scancel --name {self.job_name})', event='help')
        return 0


def gpu_list(text: str) -> List[int]:
    """--gpus: an ordered list of distinct positive GPU counts, e.g. 8,4,2,1."""
    counts = [positive_int(part.strip()) for part in text.split(',')]
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f'{text!r} names a GPU count twice')
    return counts


def check_only(args: argparse.Namespace) -> None:
    """--check-only: can ``--gpus`` GPUs (each count of the list) ever start on the partition?
    With --nodes (tools/slurm_train.sh): --gpus GPUs per node on that many nodes."""
    check_slurm()
    resolve_partition(args)
    check_partition(args.partition)
    table = node_table(args.partition)
    for count in args.gpus or [2]:
        if args.nodes:
            nodes, per_node = args.nodes, count
            if not check_gpus(args.partition, per_node, args.gpu_type, nodes):
                raise gpu_error(args.partition, per_node, args.gpu_type, nodes)
        else:
            plan = plan_nodes(count, args.gpus_per_node, table, args.gpu_type)
            if plan is None:
                per_node = args.gpus_per_node or count
                raise gpu_error(args.partition, per_node, args.gpu_type, -(-count // per_node))
            nodes, per_node = plan
        layout = Layout(nodes * per_node, nodes, per_node, args.partition)
        problem = limits_problem(layout, table, partition_limits(args.partition),
                                 args.cpus_per_task or 1, args.time, args.gpu_type)
        if not problem:
            gres = f'gpu:{args.gpu_type + ":" if args.gpu_type else ""}{per_node}'
            cmd = ['sbatch', f'--partition={args.partition}', f'--nodes={nodes}',
                   f'--ntasks-per-node={per_node}', f'--gres={gres}', '--wrap=true']
            if args.cpus_per_task:
                cmd.append(f'--cpus-per-task={args.cpus_per_task}')
            if args.time:
                cmd.append(f'--time={args.time}')
            refusal = test_only(cmd, dict(os.environ))
            if refusal:
                problem = (f'{layout} with {args.cpus_per_task or 1} CPU(s) per task can never '
                           f'start on partition {args.partition!r}: sbatch --test-only says '
                           f'{refusal!r} (nodes: {describe_gpus(args.partition)})')
        if problem:
            raise ClusterError(problem)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Arguments after -- go to tools/train.py '
        '(e.g. -- --cfg-options train_cfg.max_epochs=60).')
    parser.add_argument('-p', '--partition', help="partition for every layout (default: the "
                        "cluster's default partition, sinfo's '*')")
    parser.add_argument('--partition-1gpu', help='another partition for the 1-GPU job')
    parser.add_argument('--gpus', type=gpu_list, metavar='N[,N...]',
                        help='GPU counts to try, in order of preference, e.g. 8,4,2,1 (default '
                        '2,1). A count larger than a node has runs on several nodes. With '
                        '--check-only: the GPUs to check (per node with --nodes)')
    parser.add_argument('--gpus-per-node', type=positive_int, metavar='N',
                        help='GPUs (tasks) per node of every layout (default: as many as the '
                        "partition's nodes have, fewest nodes)")
    parser.add_argument('--gpu-type', help='GPU model, as in --gres=gpu:TYPE:N (default: any)')
    parser.add_argument('--work-dir', default='work_dirs/dino_tbx11k',
                        help='run directory, shared by both layouts (default %(default)s)')
    parser.add_argument('--data-root', help='TBX11K root (default: the config\'s data_root)')
    parser.add_argument('--config', help='config of every layout: its effective_batch_size '
                        'decides which GPU counts fit (default: configs/dino_tbx11k_1gpu.py on '
                        '1 GPU, configs/dino_tbx11k_2gpu.py on others)')
    parser.add_argument('--config-1gpu', help='config of the 1-GPU job (default: --config, '
                        'else configs/dino_tbx11k_1gpu.py)')
    parser.add_argument('--config-2gpu', help='config of the 2-GPU job (default: --config, '
                        'else configs/dino_tbx11k_2gpu.py); all must train the same schedule')
    parser.add_argument('--prefer', type=int, choices=(1, 2), default=None,
                        help='shorthand: --prefer 2 is --gpus 2,1 (the default), --prefer 1 is '
                        '--gpus 1,2')
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
    parser.add_argument('--python', help="python on the compute nodes (default: the project's "
                        '.venv/bin/python when it exists, else python3); checked to import the '
                        'project before anything is submitted')
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
                        help='only check that --gpus can ever start: Slurm, partition, GPUs, '
                        'partition limits, sbatch --test-only')
    parser.add_argument('--nodes', type=positive_int,
                        help='with --check-only: nodes with --gpus GPUs each')
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: List[str] = []
    if '--' in argv:
        cut = argv.index('--')
        argv, train_args = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    args.train_args = train_args
    if args.gpus and args.prefer:
        parser.error('--prefer is a shorthand for --gpus 2,1 or 1,2: give one of them')
    if args.nodes and not args.check_only:
        parser.error('--nodes goes with --check-only; a run takes its nodes from --gpus '
                     '(and --gpus-per-node)')
    problem = margin_problem(args)
    if problem:
        parser.error(problem)
    return args


def margin_problem(args: argparse.Namespace) -> Optional[str]:
    """Why --signal-margin is not shorter than the --time limit (given, or the scripts')."""
    if args.time is None and args.signal_margin is None:
        return None  # the scripts' own pair
    for script_time, script_margin in (script_limits(),):
        script = osp.basename(SCRIPT)
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
            check_only(args)
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
