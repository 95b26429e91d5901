#!/usr/bin/env bash
# One training session inside a Slurm batch job: slurm/train.sbatch (and its 1- and 2-GPU entry
# points slurm/train_1gpu.sbatch, slurm/train_2gpu.sbatch) `exec` this script (so it IS the batch
# shell and gets `--signal=B:...`). The layout is the allocation's: SLURM_NTASKS tasks, one GPU
# each, on SLURM_JOB_NUM_NODES nodes (tools/slurm_train.sh checks that every node got as many).
#
# It resumes the run in WORK_DIR (tools/slurm_train.sh -> srun -> tools/train.py --resume),
# turns the time-limit warning into a checkpoint, and keeps the run going in a new session until
# the schedule is done:
#
#   SIGUSR1 (time limit near, --signal=B:USR1@SECONDS) or SIGTERM (scancel, preemption) reaches
#   this shell -> it sends SIGUSR1 to srun, which hands it to every task on every node (the ranks
#   agree on the step to stop after, so all of them stop together; srun answers SIGTERM by
#   SIGKILLing the tasks, so TERM is never forwarded as such) -> PreemptionCheckpointHook finishes
#   the optimizer step, writes iter_N.pth + last_checkpoint and tools/train.py exits 75 -> here:
#
#   training exit            | what this script does
#   -------------------------+-------------------------------------------------------------------
#   0   schedule done        | exit 0: the chain ends
#   75  checkpointed, after  | next session: `scontrol requeue` (same job id, same options; Slurm
#       SIGUSR1 or a signal  | starts it again after AuthInfo cred_expire, 120 s by default) or,
#       sent to the tasks    | with CHAIN=resubmit or when requeue is refused, `sbatch
#                            | --dependency=afterany:<this job>` of the same script and options
#   75  after SIGTERM        | exit 75, no new session: the job was cancelled (scancel) or preempted
#                            | (a site that preempts with requeue requeues it itself); but Slurm's
#                            | own SIGTERM at the time limit (reason TimeLimit: the warning came too
#                            | late) continues the run like SIGUSR1
#   3   nothing to train     | session 1: exit 3 (the work dir holds a finished run); later
#                            | sessions: exit 0 (the previous one ended exactly at the end)
#   4, 5, 6, 7, 8 and others | exit with it, no new session (incompatible checkpoint, wrong layout,
#                            | diverged, pretrained weights unavailable, untrusted checkpoint, crash),
#                            | also when a signal was forwarded meanwhile; fix, then resubmit:
#                            | training resumes by itself (8: only with TBX11K_TRUST_CHECKPOINTS=1
#                            | if you trust the checkpoint)
#   killed by the forwarded  | next session (the signal came before training could handle it, i.e.
#   signal (no checkpoint)   | during start-up; the work dir still holds the previous checkpoint)
#
# A new session is not started after MAX_SESSIONS sessions (default 20), nor after
# MAX_IDLE_SESSIONS (default 2) sessions in a row without a new optimizer step (e.g. a time limit
# shorter than start-up plus the signal margin): never an endless loop.
#
# Environment (all optional):
#   WORK_DIR       run directory (default work_dirs/dino_tbx11k, relative to the submit dir)
#   DATA_ROOT      TBX11K root (tools/train.py --data-root; default: the config's data_root)
#   CONFIG         config (default configs/dino_tbx11k_{1,2}gpu.py by the job's task count)
#   PYTHON         python with torch/mmdet (default: the project's .venv/bin/python when it
#                  exists, else python3)
#   MAX_SESSIONS, MAX_IDLE_SESSIONS   see above
#   CHAIN          requeue (default) | resubmit | none (stop after each session)
#   TBX11K_OUTPUT  --output pattern for resubmitted sessions (default: the job's log directory,
#                  slurm-%x-%j.out)
#   TBX11K_SIGNAL  --signal for resubmitted sessions (default: the script's #SBATCH --signal)
# Arguments: extra tools/train.py arguments (e.g. --cfg-options ...); a --work-dir among them is
# taken as WORK_DIR.
# Every session appends a line to WORK_DIR/slurm_sessions.tsv.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib.sh
source "$ROOT/slurm/lib.sh"
say() { echo "[tbx11k-slurm $(date '+%F %T')] $*"; }
die() { say "error: $*"; exit 1; }

[[ -n ${SLURM_JOB_ID:-} ]] || die "run inside a Slurm batch job: sbatch slurm/train.sbatch (or train_1gpu.sbatch, train_2gpu.sbatch)"
JOB=$SLURM_JOB_ID
GPUS=${SLURM_NTASKS:-1}
PYTHON=${PYTHON:-$(tbx11k_default_python "$ROOT")}
export PYTHON  # tools/slurm_train.sh runs the same one
NODES=${SLURM_JOB_NUM_NODES:-1}
NODE_LIST=${SLURM_JOB_NODELIST:-$(hostname -s)}
# mmdet's habit `--work-dir DIR` among the extra arguments is this script's WORK_DIR (tools/train.py
# would otherwise train there while the session bookkeeping watched another folder)
extra_args=()
while (($#)); do
  case $1 in
    --work-dir | --work_dir) (($# >= 2)) || die "--work-dir needs a folder"; arg_work_dir=$2; shift 2 ;;
    --work-dir=* | --work_dir=*) arg_work_dir=${1#*=}; shift ;;
    *) extra_args+=("$1"); shift ;;
  esac
done
set -- ${extra_args[@]+"${extra_args[@]}"}
if [[ -n ${arg_work_dir:-} ]]; then
  if [[ -n ${WORK_DIR:-} && $(realpath -m "$WORK_DIR") != $(realpath -m "$arg_work_dir") ]]; then
    die "WORK_DIR=$WORK_DIR and --work-dir $arg_work_dir name two folders: give one of them"
  fi
  WORK_DIR=$arg_work_dir
fi
WORK_DIR=$(realpath -m "${WORK_DIR:-work_dirs/dino_tbx11k}")
CONFIG=${CONFIG:-}
DATA_ROOT=${DATA_ROOT:-}
MAX_SESSIONS=${MAX_SESSIONS:-20}
MAX_IDLE_SESSIONS=${MAX_IDLE_SESSIONS:-2}
CHAIN=${CHAIN:-requeue}
SESSION=$((${TBX11K_SESSION:-1} + ${SLURM_RESTART_COUNT:-0}))
SESSIONS_LOG=$WORK_DIR/slurm_sessions.tsv
OWNER_FILE=$WORK_DIR/.slurm_job
STARTED_AT=$(date '+%F %T')
case $CHAIN in requeue | resubmit | none) ;; *) die "CHAIN must be requeue, resubmit or none, got '$CHAIN'" ;; esac

# ---- signals: record, forward once to srun as SIGUSR1 ----------------------------------------------
pid=""
got_usr1=0
got_term=0
timed_out=0
forwarded=0
on_signal() {
  local sig=$1
  if [[ $sig == USR1 ]]; then
    got_usr1=1
    say "SIGUSR1: the time limit is near"
  elif [[ $(squeue -h -j "$JOB" -o '%r' 2>/dev/null) == TimeLimit ]]; then
    timed_out=1  # Slurm's SIGTERM at the limit itself: the warning came too late (or not at all)
    say "SIG$sig: the time limit is reached (the --signal warning did not come early enough)"
  else
    got_term=1
    say "SIG$sig: the job is being cancelled or preempted"
  fi
  if [[ -n $pid ]] && ((!forwarded)) && kill -0 "$pid" 2>/dev/null; then
    forwarded=1
    say "asking training to checkpoint at the next optimizer-step boundary (SIGUSR1 to srun $pid, which hands it to every task)"
    kill -USR1 "$pid" 2>/dev/null
  fi
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
cleanup() {  # never leave srun (and its tasks) behind: no orphans
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    sleep 1
    kill -KILL "$pid" 2>/dev/null
  fi
  if [[ -f $OWNER_FILE && $(cat "$OWNER_FILE" 2>/dev/null) == "$JOB" ]]; then rm -f "$OWNER_FILE"; fi
}
trap cleanup EXIT

# ---- helpers -------------------------------------------------------------------------------------------
job_active() {  # whether job $1 is running (its processes may write the work dir)
  local state
  state=$(squeue -h -j "$1" -o '%T' 2>/dev/null | head -n1)
  [[ $state =~ ^(RUNNING|COMPLETING|CONFIGURING|SUSPENDED|STOPPED|SIGNALING|STAGE_OUT)$ ]]
}
last_checkpoint() { [[ -s $WORK_DIR/last_checkpoint ]] && head -n1 "$WORK_DIR/last_checkpoint"; }
checkpoint_step() {  # optimizer steps done by the checkpoint last_checkpoint names ('' if none)
  local path
  path=$(last_checkpoint) || return 0
  # iter_N.pth (preemption and by-iteration checkpoints) holds N steps; others: read the meta
  if [[ $path =~ /iter_([0-9]+)\.pth$ && -f $path ]]; then echo "${BASH_REMATCH[1]}"; return 0; fi
  # loaded as tools/train.py loads it: a checkpoint holding more than weights and training state
  # is refused unread here (no step), and tools/train.py says why (exit 8)
  "$PYTHON" - "$path" "$ROOT" 2>/dev/null <<'PY' || true
import sys
sys.path.insert(0, sys.argv[2])
from tbx11k.compat.torch_load import load_checkpoint_mmapped
ckpt = load_checkpoint_mmapped(sys.argv[1])
print(int(ckpt['meta']['iter']))
PY
}
log_session() {  # outcome, training exit status
  if [[ ! -s $SESSIONS_LOG ]]; then
    printf 'job\tsession\tgpus\tpartition\tnode\tstarted\tended\texit\toutcome\tstep_before\tstep_after\tcheckpoint\n' >"$SESSIONS_LOG"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$JOB" "$SESSION" "$GPUS" \
    "${SLURM_JOB_PARTITION:-}" "$NODE_LIST" "$STARTED_AT" "$(date '+%F %T')" "$2" "$1" \
    "${step_before:-}" "${step_after:-}" "$(last_checkpoint || true)" >>"$SESSIONS_LOG"
}
idle_sessions_before() {  # sessions in a row, just before this one, that made no optimizer step
  [[ -s $SESSIONS_LOG ]] || { echo 0; return; }
  # rows of sessions that handed over to a next one ($9) without a new step ($11 <= $10)
  awk -F'\t' 'NR > 1 { if ($9 ~ /^(requeued|resubmitted)$/ && $11 + 0 <= $10 + 0) n++; else n = 0 } END { print n + 0 }' "$SESSIONS_LOG"
}

# ---- one run per work dir ------------------------------------------------------------------------------
mkdir -p "$WORK_DIR" || die "cannot create work dir $WORK_DIR"
if [[ -s $OWNER_FILE ]]; then
  other=$(cat "$OWNER_FILE")
  if [[ $other != "$JOB" ]] && job_active "$other"; then
    trap - EXIT
    die "job $other is training in $WORK_DIR right now; two jobs must not share a work dir (wait for it, or scancel $other: it checkpoints and stops)"
  fi
fi
echo "$JOB" >"$OWNER_FILE"

step_before=$(checkpoint_step)
say "session $SESSION of job $JOB (restart ${SLURM_RESTART_COUNT:-0}) on $NODE_LIST: $GPUS GPU task(s) on $NODES node(s), partition ${SLURM_JOB_PARTITION:-?}, python $PYTHON"
if [[ -n $step_before ]]; then
  say "work dir $WORK_DIR: resuming from $(last_checkpoint) (optimizer step $step_before)"
elif last_checkpoint >/dev/null; then
  say "work dir $WORK_DIR: resuming from its latest loadable checkpoint ($(last_checkpoint) is named)"
else
  say "work dir $WORK_DIR: no checkpoint, a new run starts"
fi

# ---- train ---------------------------------------------------------------------------------------------
rc=""
if ((got_usr1 || got_term || timed_out)); then
  say "a signal arrived before training started: not starting it"
  rc=75
else
  train_args=()
  [[ -n $DATA_ROOT ]] && train_args+=(--data-root "$DATA_ROOT")
  TBX11K_SKIP_SLURM_CHECKS=1 GPU_TYPE="" bash "$ROOT/tools/slurm_train.sh" "${SLURM_JOB_PARTITION:-}" \
    "$GPUS" "$CONFIG" "$WORK_DIR" -- ${train_args[@]+"${train_args[@]}"} "$@" &
  pid=$!
  while :; do
    wait "$pid"
    rc=$?
    # wait returns >128 when a trapped signal interrupts it: keep waiting while srun lives
    if ((rc > 128)) && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  if ((rc > 128)); then  # interrupted just as srun exited: collect its real status
    wait "$pid" 2>/dev/null
    real=$?
    [[ $real != 127 ]] && rc=$real
  fi
  pid=""
fi
step_after=$(checkpoint_step)
say "training exited with status $rc (optimizer step ${step_before:-0} -> ${step_after:-0})"

# ---- what next -----------------------------------------------------------------------------------------

case $rc in
  0)
    log_session "done" "$rc"
    say "the schedule is complete"
    exit 0 ;;
  3)
    if ((SESSION > 1)); then
      log_session "done" "$rc"
      say "nothing left to train: the previous session completed the schedule"
      exit 0
    fi
    log_session nothing-to-train "$rc"
    say "nothing to train: $WORK_DIR holds a finished run (raise the epochs or use a new work dir)"
    exit 3 ;;
  75)
    if ((got_term)); then
      log_session stopped "$rc"
      say "stopped by SIGTERM (scancel or preemption) after checkpointing: no new session. Continue with tools/slurm_submit.py or sbatch on the same WORK_DIR"
      exit 75
    fi
    ;;
  *)
    # a status of ours (tbx11k/engine/exit_codes.py) is the training's own decision, also when a
    # signal was forwarded meanwhile: only another status can be the signal killing start-up
    ours=" $(sed -n 's/^EXIT_[A-Z_]* = \([0-9]*\)$/\1/p' "$ROOT/tbx11k/engine/exit_codes.py" | tr '\n' ' ')"
    if ((forwarded && !got_term)) && [[ $ours != *" $rc "* ]]; then
      say "training ended ($rc) from the forwarded signal before it could checkpoint (it was still starting up); $WORK_DIR still holds the previous checkpoint"
    else
      log_session error "$rc"
      say "training failed with status $rc: no new session (see the log above; resubmitting resumes from the last checkpoint)"
      exit "$rc"
    fi ;;
esac

# one more session, unless a guard says no
idle=$(idle_sessions_before)
if ((${step_after:-0} <= ${step_before:-0})); then idle=$((idle + 1)); else idle=0; fi
if ((SESSION >= MAX_SESSIONS)); then
  log_session max-sessions "$rc"
  say "MAX_SESSIONS=$MAX_SESSIONS sessions done: not starting another. Resubmit on the same WORK_DIR to go on"
  exit 75
fi
if ((idle >= MAX_IDLE_SESSIONS)); then
  log_session no-progress "$rc"
  say "$idle session(s) in a row made no optimizer step: not starting another. Is --time much longer than start-up + the --signal margin?"
  exit 75
fi
if [[ $CHAIN == none ]]; then
  log_session stopped "$rc"
  say "CHAIN=none: not starting another session. Resubmit on the same WORK_DIR to go on"
  exit 75
fi

trap - USR1 TERM INT
resubmit() {
  local info opts=() value script outdir
  info=$(scontrol show job "$JOB" 2>/dev/null) || return 1
  field() { grep -o "\b$1=[^ ]*" <<<"$info" | head -n1 | cut -d= -f2-; }
  # Command, WorkDir, StdOut have a line of their own (scontrol's multi-line form): paths with spaces
  path_field() { sed -n "s/^ *$1=//p" <<<"$info" | head -n1; }
  # Command= is the script's path and its arguments joined by spaces: drop words from the end
  # until what is left is a file
  script=$(path_field Command)
  while [[ -n $script && ! -f $script && $script == *" "* ]]; do script=${script% *}; done
  [[ -f $script ]] || { say "cannot resubmit: batch script '$script' not found"; return 1; }
  value=$(field Partition); [[ -n $value ]] && opts+=(--partition="$value")
  value=$(field TimeLimit); [[ -n $value && $value != UNLIMITED && $value != Partition_Limit ]] && opts+=(--time="$value")
  value=$(field NumNodes); value=${value%%-*}; [[ -n $value && $value != N/A ]] && opts+=(--nodes="$value")
  value=$(field NumTasks); [[ -n $value && $value != N/A ]] && opts+=(--ntasks="$value")
  value=$(field 'NtasksPerN:B:S:C'); value=${value%%:*}
  [[ -n $value && $value != 0 && $value != '*' ]] && opts+=(--ntasks-per-node="$value")
  value=$(field CPUs/Task); [[ -n $value && $value != N/A ]] && opts+=(--cpus-per-task="$value")
  value=$(field TresPerNode); [[ -n $value && $value != "(null)" ]] && opts+=(--gres="$(sed -E 's#gres[:/]##g' <<<"$value")")
  value=$(field Account); [[ -n $value && $value != "(null)" ]] && opts+=(--account="$value")
  value=$(field QOS); [[ -n $value && $value != "(null)" ]] && opts+=(--qos="$value")
  value=$(field Reservation); [[ -n $value && $value != "(null)" ]] && opts+=(--reservation="$value")
  value=$(field Features); [[ -n $value && $value != "(null)" ]] && opts+=(--constraint="$value")
  value=$(field MinMemoryNode); [[ -n $value && $value != 0 ]] && opts+=(--mem="$value")
  value=$(field MinMemoryCPU); [[ -n $value && $value != 0 ]] && opts+=(--mem-per-cpu="$value")
  value=$(field ReqNodeList); [[ -n $value && $value != "(null)" ]] && opts+=(--nodelist="$value")
  value=$(field ExcNodeList); [[ -n $value && $value != "(null)" ]] && opts+=(--exclude="$value")
  value=$(field MailUser); [[ -n $value && $value != "(null)" ]] && opts+=(--mail-user="$value")
  value=$(field MailType); [[ -n $value && $value != NONE && $value != "(null)" ]] && opts+=(--mail-type="$value")
  value=$(field JobName); [[ -n $value ]] && opts+=(--job-name="$value")
  value=$(path_field WorkDir); [[ -n $value ]] && opts+=(--chdir="$value")
  outdir=$(dirname "$(path_field StdOut)")
  opts+=(--output="${TBX11K_OUTPUT:-$outdir/slurm-%x-%j.out}" --open-mode=append)
  [[ -n ${TBX11K_SIGNAL:-} ]] && opts+=(--signal="$TBX11K_SIGNAL")
  say "resubmitting with: ${opts[*]} $script (other sbatch options, e.g. --signal, are not visible to scontrol: set TBX11K_SIGNAL)"
  # a clean environment for the new job: none of this job's SLURM_* variables
  local unset_args=()
  for value in $(compgen -e | grep '^SLURM_' | grep -vx 'SLURM_CONF'); do unset_args+=(-u "$value"); done
  local new
  new=$(env "${unset_args[@]}" TBX11K_SESSION=$((SESSION + 1)) WORK_DIR="$WORK_DIR" \
    sbatch --parsable --dependency="afterany:$JOB" "${opts[@]}" "$script" "$@") || return 1
  say "submitted session $((SESSION + 1)) as job ${new%%;*} (starts when this job has ended)"
}

if [[ $CHAIN == requeue ]]; then
  log_session requeued "$rc"
  say "requeueing job $JOB: session $((SESSION + 1)) resumes from $(last_checkpoint || echo 'the start')"
  if scontrol requeue "$JOB"; then
    exit 0  # the request is registered: the job goes back to the queue when this shell ends
  fi
  say "scontrol requeue was refused (is requeue disabled here?): resubmitting instead"
  sed -i '$ s/\trequeued\t/\tresubmitted\t/' "$SESSIONS_LOG"
fi
if resubmit "$@"; then
  [[ $CHAIN == requeue ]] || log_session resubmitted "$rc"
  exit 0
fi
log_session chain-failed "$rc"
say "could not start another session: resubmit on the same WORK_DIR to go on (it resumes from $(last_checkpoint || echo 'the start'))"
exit 75
