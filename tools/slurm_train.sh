#!/usr/bin/env bash
# mmdet's slurm_train.sh for tbx11k-dino: run tools/train.py as GPUS Slurm tasks (--launcher slurm).
#
#   tools/slurm_train.sh PARTITION GPUS [CONFIG] [WORK_DIR] [-- extra tools/train.py args]
#   GPUS=N tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [extra tools/train.py args]
#                                       (mmdet's form; GPUS defaults to 1 for a *1gpu* config, 2
#                                       for a *2gpu* one)
#
#   tools/slurm_train.sh gpu 2          # configs/dino_tbx11k_2gpu.py, 2 tasks x 1 GPU (DDP)
#   tools/slurm_train.sh gpu 1          # configs/dino_tbx11k_1gpu.py, 1 task, accumulation 2
#   tools/slurm_train.sh gpu 1 "" work_dirs/run1 -- --data-root /data/TBX11K
#
# GPUS is 1 or 2 with the default configs (effective batch 2 either way); another count needs a
# CONFIG whose GPUs x images x accumulation gives the same effective batch. WORK_DIR defaults to
# work_dirs/dino_tbx11k for BOTH layouts, so a run started on 1 GPU continues on 2 and back.
# Training always resumes from the latest checkpoint in WORK_DIR (--resume without a path; a
# `--resume CKPT` among the extra args wins); an empty WORK_DIR starts a new run.
#
# Environment (mmdet's names where mmdet has one):
#   GPUS_PER_NODE  tasks and GPUs per node (default: inside an allocation, its tasks per node;
#                  else GPUS, at most 8); more GPUS run on GPUS/GPUS_PER_NODE nodes with
#                  GPUS_PER_NODE GPUs each, as in mmdet (GPUS must be a multiple of it)
#   CPUS_PER_TASK  CPUs per task (default: the job's --cpus-per-task inside an allocation, else
#                  5: 4 dataloader workers + the main process)
#   GPU_TYPE       GPU model for --gres=gpu:TYPE:N (default: any)
#   SRUN_ARGS      more srun options (word-split), e.g. "--mem=32G --time=8:00:00"
#   JOB_NAME       srun --job-name when this script creates the allocation (default tbx11k-dino)
#   PYTHON         python with torch/mmdet (default: the project's .venv/bin/python when it
#                  exists, else python3)
#   STOP_GRACE     seconds srun lets the other tasks finish after the first one exits (default
#                  120; see below)
#   MASTER_PORT    rendezvous port (default 10000 + SLURM_JOB_ID % 20000: one per job)
#   MASTER_ADDR    rendezvous host (default: the NodeAddr of the step's first node)
#
# Several nodes: each task is one rank of torch.distributed (mmengine's Slurm launcher: rank
# SLURM_PROCID of SLURM_NTASKS, local rank SLURM_LOCALID), meeting at MASTER_ADDR:MASTER_PORT.
# Inside an allocation the layout is the allocation's (salloc -N2 --ntasks-per-node=4
# --gres=gpu:4, then GPUS=8); refused before anything starts (exit 2, naming what to change):
# more GPUS than the allocation's tasks, nodes with unequal task or GPU counts, a GPUS that is
# not a multiple of the tasks per node, an srun --nodelist (SRUN_ARGS) outside the allocation.
# Outside an allocation the request is checked first (tools/slurm_submit.py --check-only:
# partition limits and `sbatch --test-only`): one that can never start is refused at once
# instead of srun waiting for ever. srun's --immediate is not used: it would also give up on a
# request that only waits for busy GPUs, the normal case on a shared cluster.
#
# Inside an allocation (sbatch, salloc) the tasks run in it; otherwise srun asks for one. Exit
# status: tools/train.py's (0 done, 3 nothing left to train, 4 incompatible checkpoint, 5 wrong
# layout, 6 diverged, 75 stopped by SIGUSR1/SIGTERM after a checkpoint: resume to go on), or 2
# for usage and cluster errors (no Slurm, unknown partition, no such GPUs).
#
# Differences from mmdet's script, on purpose: the short form takes GPUS as the 2nd argument and
# picks the config from it (mmdet's form, JOB_NAME 2nd and GPUS in the environment, works too;
# mmdet's GPUS default of 8 does not fit these configs, so it follows the config's name); srun runs with --kill-on-bad-exit=0 --wait=STOP_GRACE
# instead of --kill-on-bad-exit=1, because a preempted run exits 75 on every rank while rank 0 may
# still be writing the checkpoint: killing the other ranks at the first non-zero exit could abort
# a 2-rank shutdown half way. A crashed rank still brings the others down after STOP_GRACE s.
set -euo pipefail

here=${BASH_SOURCE[0]%/*}
[[ $here == "${BASH_SOURCE[0]}" ]] && here=.
ROOT="$(cd "$here/.." && pwd)"
# shellcheck source=../slurm/lib.sh
source "$ROOT/slurm/lib.sh"
usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "slurm_train.sh: error: $*" >&2; exit 2; }

[[ $# -ge 2 ]] || usage
[[ $1 == -h || $1 == --help ]] && usage
command -v srun >/dev/null || die "srun not found: Slurm is not installed on this machine or \
not on PATH (on some clusters: module load slurm)"
PARTITION=$1
CONFIG=""
WORK_DIR=""
if [[ ! $2 =~ ^[0-9]+$ && $# -ge 4 && $3 != -* && $4 != -* ]]; then
  # mmdet's form: PARTITION JOB_NAME CONFIG WORK_DIR [PY_ARGS...], GPUS in the environment
  JOB_NAME=$2 CONFIG=$3 WORK_DIR=$4
  shift 4
  if [[ -z ${GPUS:-} ]]; then
    case ${CONFIG##*/} in
      *1gpu*) GPUS=1 ;;
      *2gpu*) GPUS=2 ;;
      *) die "GPUS is not set: mmdet's form (PARTITION JOB_NAME CONFIG WORK_DIR) takes the number \
of GPUs from the environment, e.g. GPUS=2 $0 $PARTITION $JOB_NAME $CONFIG $WORK_DIR" ;;
    esac
  fi
else
  GPUS=$2
  shift 2
  if [[ $# -gt 0 && $1 != -* ]]; then CONFIG=$1; shift; fi
  if [[ $# -gt 0 && $1 != -* ]]; then WORK_DIR=$1; shift; fi
  [[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "GPUS must be a positive integer, got '$GPUS' (mmdet's \
form is PARTITION JOB_NAME CONFIG WORK_DIR, with GPUS in the environment)"
fi
[[ ${1:-} == -- ]] && shift
PY_ARGS=("$@")

[[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "GPUS must be a positive integer, got '$GPUS'"
if [[ -z $CONFIG ]]; then
  case $GPUS in
    1) CONFIG=$ROOT/configs/dino_tbx11k_1gpu.py ;;
    2) CONFIG=$ROOT/configs/dino_tbx11k_2gpu.py ;;
    *) die "no default config for $GPUS GPUs: configs/dino_tbx11k_{1,2}gpu.py train with an \
effective batch of 2 on 1 or 2 GPUs; pass a CONFIG whose effective_batch_size $GPUS GPUs divide" ;;
  esac
fi
[[ -f $CONFIG ]] || die "config '$CONFIG' not found"
WORK_DIR=${WORK_DIR:-work_dirs/dino_tbx11k}

SRUN_ARGS=${SRUN_ARGS:-""}
if [[ -n ${SLURM_JOB_ID:-} && -z ${GPUS_PER_NODE:-} ]]; then
  # inside an allocation: its layout (every node must run as many tasks as the others)
  per_node=$(slurm_expand_counts "${SLURM_TASKS_PER_NODE:-1}")
  [[ $(tr ' ' '\n' <<<"$per_node" | sort -u | wc -l) -le 1 ]] || die "Slurm gave the nodes \
of job $SLURM_JOB_ID unequal task counts (${SLURM_TASKS_PER_NODE}: ${SLURM_JOB_NODELIST:-}); \
every node must run as many as the others: ask for --ntasks-per-node=N with -N NODES (not \
--ntasks alone)"
  GPUS_PER_NODE=${per_node%% *}
  [[ -z ${SLURM_NTASKS:-} ]] || ((GPUS <= SLURM_NTASKS)) || die "GPUS is $GPUS, but job \
$SLURM_JOB_ID has $SLURM_NTASKS task(s) (${SLURM_TASKS_PER_NODE} per node on \
${SLURM_JOB_NODELIST:-?}): pass at most $SLURM_NTASKS, or ask sbatch/salloc for more \
(--ntasks-per-node, -N)"
fi
GPUS_PER_NODE=${GPUS_PER_NODE:-$((GPUS < 8 ? GPUS : 8))}
[[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || die "GPUS_PER_NODE must be a positive integer, got \
'$GPUS_PER_NODE'"
CPUS_PER_TASK=${CPUS_PER_TASK:-${SLURM_CPUS_PER_TASK:-5}}
STOP_GRACE=${STOP_GRACE:-120}
PYTHON=${PYTHON:-$(tbx11k_default_python "$ROOT")}
TASKS_PER_NODE=$((GPUS < GPUS_PER_NODE ? GPUS : GPUS_PER_NODE))
NODES=$(((GPUS + TASKS_PER_NODE - 1) / TASKS_PER_NODE))
((GPUS % TASKS_PER_NODE == 0)) || die "GPUS=$GPUS is not a multiple of the $TASKS_PER_NODE \
tasks per node (GPUS_PER_NODE): nodes would run unequal numbers of processes; pass GPUS as a \
multiple of $TASKS_PER_NODE or set GPUS_PER_NODE"
GRES="gpu:${GPU_TYPE:+$GPU_TYPE:}$TASKS_PER_NODE"

if [[ -n ${SLURM_JOB_ID:-} ]]; then
  ((NODES <= ${SLURM_JOB_NUM_NODES:-1})) || die "$GPUS tasks at $TASKS_PER_NODE per node need \
$NODES nodes, but job $SLURM_JOB_ID has ${SLURM_JOB_NUM_NODES:-1} (${SLURM_JOB_NODELIST:-?}): \
ask sbatch/salloc for -N $NODES, or set GPUS_PER_NODE"
  slurm_check_equal_gpus "$SLURM_JOB_ID" "Ask for GPUs per node (--gres=gpu:N with -N NODES), \
not per job (--gpus)." || exit 2
  # an srun --nodelist must name nodes of the allocation (srun would refuse it cryptically)
  read -r -a srun_words <<<"$SRUN_ARGS"
  for ((i = 0; i < ${#srun_words[@]}; i++)); do
    word=${srun_words[i]}
    case $word in
      -w | --nodelist) wanted=${srun_words[i + 1]:-} ;;
      -w* | --nodelist=*) wanted=${word#--nodelist=}; wanted=${wanted#-w} ;;
      *) continue ;;
    esac
    allocated=" $(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | tr '\n' ' ')"
    for node in $(scontrol show hostnames "$wanted" 2>/dev/null || tr , ' ' <<<"$wanted"); do
      [[ $allocated == *" $node "* ]] || die "SRUN_ARGS names node $node (--nodelist \
$wanted), which is not in job $SLURM_JOB_ID's allocation (${SLURM_JOB_NODELIST:-none}): remove \
it from SRUN_ARGS or ask sbatch/salloc for it (-w)"
    done
  done
fi

if [[ -z ${SLURM_JOB_ID:-} && ${TBX11K_SKIP_SLURM_CHECKS:-0} != 1 ]]; then
  # outside an allocation: say clearly what is wrong before srun waits or fails cryptically
  # (the GPUs are asked per node: --gres=gpu:TASKS_PER_NODE on each of NODES nodes)
  checker=$(command -v python3 || command -v "$PYTHON")
  "$checker" "$ROOT/tools/slurm_submit.py" --check-only --partition "$PARTITION" \
    --gpus "$TASKS_PER_NODE" --nodes "$NODES" --cpus-per-task "$CPUS_PER_TASK" \
    ${GPU_TYPE:+--gpu-type "$GPU_TYPE"} || exit 2
fi

echo "slurm_train.sh: $GPUS task(s) on partition $PARTITION ($NODES node(s), $GRES per node, \
$CPUS_PER_TASK CPUs per task), config $CONFIG, work dir $WORK_DIR (resumes from its latest \
checkpoint)" >&2

# MASTER_PORT is chosen inside the step, where SLURM_JOB_ID is known also when srun itself makes
# the allocation. `exec` keeps signals going straight from slurmstepd to python.
# shellcheck disable=SC2016,SC2086
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec srun -p "$PARTITION" \
  --job-name="${JOB_NAME:-tbx11k-dino}" \
  --gres="$GRES" \
  --ntasks="$GPUS" \
  --ntasks-per-node="$TASKS_PER_NODE" \
  --cpus-per-task="$CPUS_PER_TASK" \
  --kill-on-bad-exit=0 \
  --wait="$STOP_GRACE" \
  $SRUN_ARGS \
  bash -c 'source "$0"
    export MASTER_PORT=${MASTER_PORT:-$(slurm_job_port "$SLURM_JOB_ID")}
    export MASTER_ADDR=${MASTER_ADDR:-$(slurm_master_addr "${SLURM_STEP_NODELIST:-$SLURM_JOB_NODELIST}")}
    exec "$@"' "$ROOT/slurm/lib.sh" "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" \
  --launcher=slurm --resume ${PY_ARGS[@]+"${PY_ARGS[@]}"}
