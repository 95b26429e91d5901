#!/usr/bin/env bash
# mmdet's dist_train.sh: CONFIG GPUS [train.py args]; env NNODES NODE_RANK PORT MASTER_ADDR.
# Without CUDA the processes use gloo on the CPU (tests, CI). GPUS is the processes (GPUs) on
# this node. PYTHON: the project's .venv/bin/python when it exists, else python3.
#
# Several nodes: run one copy per node, with the same GPUS on each. In a Slurm step
# (`srun --ntasks-per-node=1 bash tools/dist_train.sh CONFIG GPUS`) NNODES, NODE_RANK, MASTER_ADDR
# (the first node's NodeAddr) and PORT (one per job) come from Slurm's environment; elsewhere set
# them on every node (NNODES=2 NODE_RANK=0|1 MASTER_ADDR=HOST). The processes meet through
# torch.distributed's rendezvous (--nnodes --node_rank --master_addr --master_port).
# Refused before any process starts (exit 2, naming what to change): NNODES or NODE_RANK that
# disagree with the Slurm step, more GPUS than Slurm gave this node, nodes with unequal GPU
# counts, several copies of this script on one node, an allocation of several nodes used from
# its batch script (one node only would train).
#
# Two additions for runs that must lose no work:
# - SIGUSR1/SIGTERM sent to this script go to the training processes only (each checkpoints at the
#   next optimizer-step boundary and exits 75). torch.distributed.run itself is not signalled: it
#   would kill the workers 30 s after forwarding a signal, possibly in the middle of a checkpoint.
# - The exit status is the one all ranks agree on (0 or one of tbx11k/engine/exit_codes.py; see
#   docs/reliability.md "Exit statuses"), not torch.distributed.run's 1 for any failed worker. A crash keeps the launcher's
#   status.
# Ctrl-C (SIGINT to the process group) reaches torch.distributed.run and the workers themselves:
# the script waits until the launcher has stopped them and exits with its status, as for TERM. A
# second Ctrl-C sends SIGTERM to the workers (checkpoint, exit 75) and to the launcher.
set -uo pipefail
if (($# < 2)); then
  echo "usage: $0 CONFIG GPUS [tools/train.py options]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
if [[ ! $GPUS =~ ^[1-9][0-9]*$ ]]; then  # torch's launcher answers 0 or 'two' with a traceback
  echo "$0: error: GPUS (the 2nd argument) must be a positive integer, got '$GPUS'" \
    "(usage: $0 CONFIG GPUS [tools/train.py options])" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../slurm/lib.sh
source "$ROOT/slurm/lib.sh"
PYTHON=${PYTHON:-$(tbx11k_default_python "$ROOT")}
die() { echo "dist_train.sh: error: $*" >&2; exit 2; }
if [[ -n ${SLURM_JOB_ID:-} ]]; then
  slurm_dist_layout "$GPUS" || exit 2  # sets NNODES NODE_RANK MASTER_ADDR PORT in a Slurm step
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
[[ $NNODES =~ ^[1-9][0-9]*$ ]] || die "NNODES must be a positive integer, got '$NNODES'"
[[ $NODE_RANK =~ ^[0-9]+$ ]] && ((NODE_RANK < NNODES)) \
  || die "NODE_RANK must be 0 to NNODES-1 ($((NNODES - 1))), got '$NODE_RANK'"

STATUS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tbx11k-status.XXXXXX") || exit 1
launcher=""

forward() {  # forward a signal to the training processes (torch.distributed.run's children)
  local sig=$1
  echo "dist_train.sh: SIG$sig: asking training to checkpoint at the next optimizer-step boundary" >&2
  [[ -n "$launcher" ]] && pkill "-$sig" -P "$launcher" 2>/dev/null
  return 0
}
interrupts=0
interrupted() {  # SIGINT: the launcher stops the workers itself; keep waiting for it
  interrupts=$((interrupts + 1))
  if ((interrupts == 1)); then
    echo "dist_train.sh: SIGINT: waiting for torch.distributed.run to stop the training" \
      "processes (Ctrl-C again: checkpoint and stop them)" >&2
  else  # the launcher may not have seen it (before rendezvous it ignores SIGINT, as a background job)
    forward TERM
    [[ -n "$launcher" ]] && kill -TERM "$launcher" 2>/dev/null
  fi
  return 0
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap interrupted INT
trap 'rm -rf "$STATUS_DIR"' EXIT

# torch.distributed.run, less its ChildFailedError traceback when every rank of this node exited
# with the same status of ours (a clean refusal such as 5, or 75 after a checkpoint): the
# training's own message says why. A crash keeps the traceback.
LAUNCH='
import importlib.util, logging, os, sys
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run
spec = importlib.util.spec_from_file_location("exit_codes", os.environ["TBX11K_EXIT_CODES"])
codes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(codes)
OURS = {v for k, v in vars(codes).items() if k.startswith("EXIT_")}
class HideOurs(logging.Filter):
    def filter(self, record):
        return not (record.msg.startswith("failed (exitcode") and record.args
                    and record.args[0] in OURS)
logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(HideOurs())
try:
    run(parse_args(sys.argv[1:]))
except ChildFailedError:
    folder = os.environ["TBX11K_EXIT_STATUS_DIR"]
    statuses = set()
    for name in os.listdir(folder):
        with open(os.path.join(folder, name)) as f:
            statuses.add(f.read().strip())
    if len(statuses) == 1 and statuses <= {str(code) for code in OURS}:
        sys.exit(1)  # what torch.distributed.run exits with; the status is read below
    raise
'
TBX11K_EXIT_STATUS_DIR="$STATUS_DIR" TBX11K_EXIT_CODES="$ROOT/tbx11k/engine/exit_codes.py" \
PYTHONPATH="$ROOT:${PYTHONPATH:-}" "$PYTHON" -c "$LAUNCH" \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$ROOT/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}" &
launcher=$!

# `wait` returns early (status > 128) whenever a trapped signal arrives: wait again while it runs
while :; do
  wait "$launcher"
  rc=$?
  if ((rc > 128)) && kill -0 "$launcher" 2>/dev/null; then continue; fi
  break
done
if ((rc > 128)); then  # interrupted just as it exited: collect its real status
  wait "$launcher" 2>/dev/null
  real=$?
  [[ $real != 127 ]] && rc=$real
fi

if ((rc != 0)); then
  statuses=$(cat "$STATUS_DIR"/rank* 2>/dev/null | sort -u)
  if [[ -n "$statuses" && $(wc -l <<<"$statuses") -eq 1 && "$statuses" != 0 ]]; then
    echo "dist_train.sh: every rank exited with status $statuses (torch.distributed.run: $rc)" >&2
    rc=$statuses
  fi
fi
exit "$rc"
