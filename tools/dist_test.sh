#!/usr/bin/env bash
# mmdet's dist_test.sh: CONFIG CHECKPOINT GPUS [test.py args]; env NNODES NODE_RANK PORT MASTER_ADDR.
# PYTHON: the project's .venv/bin/python when it exists, else python3.
set -euo pipefail
if (($# < 3)); then
  echo "usage: $0 CONFIG CHECKPOINT GPUS [tools/test.py options]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
if [[ ! $GPUS =~ ^[1-9][0-9]*$ ]]; then  # torch's launcher answers 0 or 'two' with a traceback
  echo "$0: error: GPUS (the 3rd argument) must be a positive integer, got '$GPUS'" \
    "(usage: $0 CONFIG CHECKPOINT GPUS [tools/test.py options])" >&2
  exit 2
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../slurm/lib.sh
source "$ROOT/slurm/lib.sh"
PYTHON=${PYTHON:-$(tbx11k_default_python "$ROOT")}

PYTHONPATH="$ROOT:${PYTHONPATH:-}" \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$ROOT/tools/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
