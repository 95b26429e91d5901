#!/usr/bin/env bash
# mmdet's dist_train.sh: CONFIG GPUS [train.py args]; env NNODES NODE_RANK PORT MASTER_ADDR.
# Without CUDA the processes use gloo on the CPU (tests, CI).
#
# Two additions for runs that must lose no work:
# - SIGUSR1/SIGTERM sent to this script go to the training processes only (each checkpoints at the
#   next optimizer-step boundary and exits 75). torch.distributed.run itself is not signalled: it
#   would kill the workers 30 s after forwarding a signal, possibly in the middle of a checkpoint.
# - The exit status is the one all ranks agree on (0, 3, 4, 5, 6, 7 or 75; see README "Exit
#   statuses"), not torch.distributed.run's 1 for any failed worker. A crash keeps the launcher's
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
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python}

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

TBX11K_EXIT_STATUS_DIR="$STATUS_DIR" PYTHONPATH="$ROOT:${PYTHONPATH:-}" \
"$PYTHON" -m torch.distributed.run \
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
