#!/usr/bin/env bash
# Install (Debian packages) and start a single-node Slurm on this machine, for the Slurm tests.
#
#   bash slurm/local/start_slurm.sh        # as root; idempotent: a running instance is restarted
#   SLURM_CI_SKIP_APT=1 bash slurm/local/start_slurm.sh   # packages already installed: no apt
#
# What it sets up (see docs in slurm-local notes): munge auth, slurmctld + slurmd on this host
# (NodeName = `hostname -s`, address 127.0.0.1), one partition `debug`, SLURM_CI_CPUS (default 24)
# CPUs declared over the real ones (SlurmdParameters=config_overrides: several small jobs run at
# once) and fake GPUs as gres (char-device aliases of /dev/null), so --gres=gpu:N,
# CUDA_VISIBLE_DEVICES and "pending for resources" behave as on a GPU cluster.
# SLURM_CI_GPUS: the first node's GPUs, a count of untyped GPUs ("2") or typed ones,
# "TYPE:N,TYPE:N". The default "shared:14,scarce:2" is a cluster with two GPU models: tests run
# their jobs side by side on the `shared` ones (a 4-task job among them) and make queue pressure
# on the two `scarce` ones (--gres=gpu:scarce:N).
# SLURM_CI_NODES (default 2): nodes on this one host, each its own slurmd (slurmd -N NAME, its own
# port, spool and PID file; Debian's Slurm runs several per host). The first is named
# `hostname -s`, the others `hostname -s`-2, -3, ... with SLURM_CI_OTHER_GPUS (default shared:2)
# and SLURM_CI_OTHER_CPUS (default 4) each: multi-node jobs (-N 2) run here.
# Requeued jobs wait AuthInfo cred_expire seconds before they may start again (Slurm's default
# is 120 s); tests use SLURM_CI_CRED_EXPIRE (default 10).
# State is wiped on every start (no stale drained node, no old jobs). Stop: slurm/local/stop_slurm.sh
# (by PID files). Readiness: waits up to SLURM_CI_START_TIMEOUT (default 30) seconds for the node
# to be idle, else prints the daemons' log tails and exits 1.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
NODE="$(hostname -s)"
CPUS="${SLURM_CI_CPUS:-24}"
GPU_SPEC="${SLURM_CI_GPUS:-shared:14,scarce:2}"
NODES="${SLURM_CI_NODES:-2}"
OTHER_GPU_SPEC="${SLURM_CI_OTHER_GPUS:-shared:2}"
OTHER_CPUS="${SLURM_CI_OTHER_CPUS:-4}"
CRED_EXPIRE="${SLURM_CI_CRED_EXPIRE:-10}"
START_TIMEOUT="${SLURM_CI_START_TIMEOUT:-30}"
CONF_DIR=/etc/slurm
PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "start_slurm: error: $*" >&2; exit 1; }
log() { echo "start_slurm: $*"; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"

installed() {
  local status
  status=$(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null) || return 1
  [[ $(grep -c '^install ok installed$' <<<"$status") -eq ${#PACKAGES[@]} ]]
}
if [[ "${SLURM_CI_SKIP_APT:-0}" == 1 ]]; then
  installed || die "SLURM_CI_SKIP_APT=1 but not all of ${PACKAGES[*]} are installed"
elif installed; then
  log "packages already installed"
else
  log "installing ${PACKAGES[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null \
    || die "apt-get install ${PACKAGES[*]} failed"
fi
for tool in slurmctld slurmd munged sinfo sbatch; do
  command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || die "$tool not found after install"
done

# a previous instance (ours) is stopped first: idempotent restarts
bash "$HERE/stop_slurm.sh" --quiet || true

# ---- munge -----------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
munge -n | unmunge >/dev/null || die "munge self-test failed (munge -n | unmunge)"

# ---- nodes and fake GPUs ----------------------------------------------------------------------
[[ $NODES =~ ^[1-9][0-9]?$ ]] || die "SLURM_CI_NODES must be 1 to 99, got '$NODES'"
NODE_LINES=""  # slurm.conf NodeName= lines
GRES_CONF=""   # gres.conf lines
NODE_NAMES=()
GPUS=0         # fake devices made so far (each node its own /dev/fakegpuN)
add_node() {  # name, port, cpus, gpu spec
  local name=$1 port=$2 cpus=$3 spec=$4 gres="" group type count first last
  local -a groups
  IFS=',' read -r -a groups <<<"$spec"
  for group in "${groups[@]}"; do
    if [[ $group =~ ^[0-9]+$ ]]; then type=""; count=$group
    elif [[ $group =~ ^([A-Za-z][A-Za-z0-9_]*):([0-9]+)$ ]]; then type=${BASH_REMATCH[1]}; count=${BASH_REMATCH[2]}
    else die "GPU spec of node $name: '$group' is neither N nor TYPE:N"; fi
    ((count > 0)) || continue
    first=$GPUS; last=$((GPUS + count - 1)); GPUS=$((GPUS + count))
    gres+="${gres:+,}gpu:${type:+$type:}$count"
    GRES_CONF+="NodeName=$name Name=gpu${type:+ Type=$type} File=/dev/fakegpu[$first-$last]"$'\n'
  done
  [[ -n $gres ]] || die "node $name: GPU spec '$spec' declares no GPU"
  NODE_LINES+="NodeName=$name NodeHostname=$NODE NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=$mem_mb Gres=$gres State=UNKNOWN"$'\n'
  NODE_NAMES+=("$name")
}
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 / NODES ))
add_node "$NODE" 6818 "$CPUS" "$GPU_SPEC"
for ((n = 2; n <= NODES; n++)); do add_node "$NODE-$n" $((6820 + n)) "$OTHER_CPUS" "$OTHER_GPU_SPEC"; done
for ((i = 0; i < GPUS; i++)); do
  [[ -c /dev/fakegpu$i ]] || { rm -f "/dev/fakegpu$i"; mknod -m 666 "/dev/fakegpu$i" c 1 3; }
done

# ---- configuration ---------------------------------------------------------------------------
mkdir -p "$CONF_DIR"
cat > "$CONF_DIR/slurm.conf" <<CONF
# generated by slurm/local/start_slurm.sh (tbx11k-dino CI); regenerated on every start
ClusterName=ci
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd-%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
GresTypes=gpu
JobRequeue=1
MessageTimeout=10
KillWait=10
MinJobAge=300
InactiveLimit=0
${NODE_LINES}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$CONF_DIR/gres.conf" <<CONF
AutoDetect=off
$GRES_CONF
CONF

# ---- fresh state, then the daemons --------------------------------------------------------------
mkdir -p /var/lib/slurm/slurmctld /var/log/slurm
rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd*
for name in "${NODE_NAMES[@]}"; do mkdir -p "/var/lib/slurm/slurmd-$name"; done
chown -R slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm
rm -f /var/log/slurm/slurmd*.log; : > /var/log/slurm/slurmctld.log
chown slurm:slurm /var/log/slurm/slurmctld.log

slurmctld || die "slurmctld did not start: $(tail -n 20 /var/log/slurm/slurmctld.log)"
for name in "${NODE_NAMES[@]}"; do
  slurmd -N "$name" || die "slurmd -N $name did not start: $(tail -n 20 "/var/log/slurm/slurmd-$name.log")"
done

deadline=$((SECONDS + START_TIMEOUT))
state=
while ((SECONDS < deadline)); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | sort -u | tr '\n' ' ' || true)
  [[ "$state" == "idle " ]] && break
  sleep 0.2
done
if [[ "$state" != "idle " ]]; then
  echo "start_slurm: error: nodes ${NODE_NAMES[*]} are '${state:-unreachable}', not all idle, after ${START_TIMEOUT}s" >&2
  echo "--- slurmctld.log" >&2; tail -n 30 /var/log/slurm/slurmctld.log >&2 || true
  for name in "${NODE_NAMES[@]}"; do
    echo "--- slurmd-$name.log" >&2; tail -n 30 "/var/log/slurm/slurmd-$name.log" >&2 || true
  done
  exit 1
fi
log "ready: $(sinfo -h -N -o '%P %N %T %c CPUs %G;' | tr '\n' ' ')requeue delay ${CRED_EXPIRE}s"
