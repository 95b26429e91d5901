# Shell functions of the launchers (tools/dist_train.sh, tools/dist_test.sh, tools/slurm_train.sh,
# slurm/*.sbatch, slurm/train_session.sh). Source it; it defines functions only.

# The python the launchers run when PYTHON is not given: the project's .venv (set up by
# tools/setup_env.sh) when it exists, else python3, else python.
#   tbx11k_default_python ROOT
tbx11k_default_python() {
  local root=$1
  if [[ -x $root/.venv/bin/python ]]; then
    echo "$root/.venv/bin/python"
  elif command -v python3 >/dev/null 2>&1; then
    echo python3
  else
    echo python
  fi
}

# Expand Slurm's per-node count lists ("2(x3),1" as in SLURM_TASKS_PER_NODE) into one count per
# node, space-separated ("2 2 2 1").
#   slurm_expand_counts LIST
slurm_expand_counts() {
  local item out=() n i
  local -a items
  IFS=',' read -r -a items <<<"$1"
  for item in "${items[@]}"; do
    if [[ $item =~ ^([0-9]+)\(x([0-9]+)\)$ ]]; then
      n=${BASH_REMATCH[2]}
      for ((i = 0; i < n; i++)); do out+=("${BASH_REMATCH[1]}"); done
    elif [[ $item =~ ^[0-9]+$ ]]; then
      out+=("$item")
    fi
  done
  echo "${out[*]}"
}

# The address of the first node of a Slurm node list, to reach the rank-0 process at: the node's
# NodeAddr in Slurm's configuration (what slurmctld itself uses; it differs from the node name on
# clusters with a separate fabric name and on test clusters with several nodes per host), else
# the node name, as mmengine's Slurm launcher uses.
#   slurm_master_addr NODELIST
slurm_master_addr() {
  local first addr
  first=$(scontrol show hostnames "$1" 2>/dev/null | head -n1)
  [[ -n $first ]] || first=${1%%,*}
  addr=$(scontrol show node -o "$first" 2>/dev/null | grep -o '\bNodeAddr=[^ ]*' | head -n1)
  addr=${addr#NodeAddr=}
  echo "${addr:-$first}"
}

# The rendezvous port of a job: one per job id, so that two jobs sharing a node do not collide.
#   slurm_job_port JOB_ID
slurm_job_port() { echo $((10000 + $1 % 20000)); }

# GPUs Slurm gave each node of a job: lines "NODE COUNT" (from `scontrol show job -d`; nothing
# when the job asked for no GPU or scontrol does not answer).
#   slurm_job_node_gpus JOB_ID
slurm_job_node_gpus() {
  scontrol show job -d "$1" 2>/dev/null | awk '
    /^ *Nodes=.*GRES=/ {
      nodes = $1; sub(/^Nodes=/, "", nodes)
      gres = $0; sub(/.*GRES=/, "", gres); sub(/ .*/, "", gres)
      count = 0; n = split(gres, items, /,gpu/)
      for (i = 1; i <= n; i++) {
        item = items[i]; sub(/\(.*/, "", item); k = split(item, f, ":")
        if (f[k] ~ /^[0-9]+$/) count += f[k]
      }
      print nodes, count
    }' | while read -r nodes count; do
    # a line may stand for several nodes (vm[1-2]): one line per node
    for node in $(scontrol show hostnames "$nodes" 2>/dev/null || echo "$nodes"); do
      echo "$node $count"
    done
  done
}

# Refuse (message on stderr, status 1) a job whose nodes got unequal GPU counts (e.g. --gpus=3 on
# 2 nodes gives 2 + 1): every node must run the same number of processes.
#   slurm_check_equal_gpus JOB_ID WHAT_TO_CHANGE
slurm_check_equal_gpus() {
  local per_node counts
  per_node=$(slurm_job_node_gpus "$1")
  [[ -n $per_node ]] || return 0
  counts=$(awk '{print $2}' <<<"$per_node" | sort -u | wc -l)
  if ((counts > 1)); then
    echo "error: Slurm gave the nodes of job $1 unequal GPU counts ($(awk \
      '{printf "%s%s: %s", sep, $1, $2; sep = ", "}' <<<"$per_node")): every node must run as \
many processes as the others. $2" >&2
    return 1
  fi
}

# tools/dist_train.sh inside a Slurm job: NNODES, NODE_RANK, MASTER_ADDR and PORT of this node's
# launcher from the Slurm step it runs in (variables the caller set are checked, not replaced),
# or a refusal (message on stderr, status 1) for a launch that cannot work.
#   slurm_dist_layout GPUS_PER_NODE
slurm_dist_layout() {
  local gpus=$1 nodes tasks hint="srun --ntasks-per-node=1 bash tools/dist_train.sh CONFIG GPUS"
  if [[ -z ${SLURM_STEP_ID:-} ]]; then  # the batch script or an salloc shell: this node only
    if ((${SLURM_JOB_NUM_NODES:-1} > 1)) && [[ -z ${NNODES:-} ]]; then
      echo "dist_train.sh: error: job $SLURM_JOB_ID has ${SLURM_JOB_NUM_NODES} nodes" \
        "(${SLURM_JOB_NODELIST:-?}) but this runs on one of them only: start one copy per node," \
        "$hint (or tools/slurm_train.sh)" >&2
      return 1
    fi
  else
    nodes=${SLURM_STEP_NUM_NODES:-1}
    tasks=${SLURM_STEP_NUM_TASKS:-1}
    if ((tasks != nodes)); then
      echo "dist_train.sh: error: srun started $tasks copies of this script on $nodes node(s);" \
        "it starts GPUS processes itself, so it needs one copy per node: $hint" >&2
      return 1
    fi
    if [[ -n ${NNODES:-} && $NNODES != "$nodes" ]]; then
      echo "dist_train.sh: error: NNODES=$NNODES, but Slurm gave this step $nodes node(s)" \
        "(${SLURM_STEP_NODELIST:-?}): unset NNODES, it follows the allocation (srun -N)" >&2
      return 1
    fi
    if [[ -n ${NODE_RANK:-} && $NODE_RANK != "${SLURM_NODEID:-0}" ]]; then
      echo "dist_train.sh: error: NODE_RANK=$NODE_RANK, but this is node ${SLURM_NODEID:-0} of" \
        "the Slurm step: unset NODE_RANK, it follows the allocation" >&2
      return 1
    fi
    NNODES=$nodes
    NODE_RANK=${SLURM_NODEID:-0}
    if ((nodes > 1)); then
      MASTER_ADDR=${MASTER_ADDR:-$(slurm_master_addr "${SLURM_STEP_NODELIST:-$SLURM_JOB_NODELIST}")}
      PORT=${PORT:-$(slurm_job_port "$SLURM_JOB_ID")}
    fi
  fi
  if [[ -n ${SLURM_GPUS_ON_NODE:-} ]] && ((gpus > SLURM_GPUS_ON_NODE)); then
    echo "dist_train.sh: error: GPUS (the 2nd argument) is $gpus, but Slurm gave node" \
      "$(hostname -s) $SLURM_GPUS_ON_NODE GPU(s): pass at most $SLURM_GPUS_ON_NODE, or ask Slurm" \
      "for more (--gres=gpu:$gpus)" >&2
    return 1
  fi
  slurm_check_equal_gpus "$SLURM_JOB_ID" "Ask for GPUs per node (--gres=gpu:N with -N NODES), not per job (--gpus)" \
    || return 1
}
