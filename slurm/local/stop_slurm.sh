#!/usr/bin/env bash
# Stop what slurm/local/start_slurm.sh started: cancel every job of the local cluster, wait for
# them to end, then stop every slurmd, slurmctld and munged by their PID files. Idempotent.
#   bash slurm/local/stop_slurm.sh [--quiet]
set -uo pipefail
QUIET=0; [[ "${1:-}" == --quiet ]] && QUIET=1
log() { ((QUIET)) || echo "stop_slurm: $*"; }

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }
pid_of() { [[ -s "$1" ]] && tr -dc '0-9' < "$1" || true; }

# jobs first, while the controller still answers (slurmstepd outlives slurmd otherwise)
if alive "$(pid_of /run/slurmctld.pid)" && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')
  if [[ -n "${jobs// /}" ]]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 100); do
      [[ -z "$(squeue -h -o '%i' 2>/dev/null)" ]] && break
      sleep 0.2
    done
  fi
fi

stop_pid_file() {
  local name=$1 file=$2 pid
  pid=$(pid_of "$file")
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null; log "$name ($pid) killed"; else log "$name ($pid) stopped"; fi
  fi
  rm -f "$file"
}
for file in /run/slurmd.pid /run/slurmd-*.pid; do  # one slurmd per node (slurmd-NAME.pid)
  [[ -e $file ]] && stop_pid_file "slurmd ${file#/run/}" "$file"
done
stop_pid_file slurmctld /run/slurmctld.pid
stop_pid_file munged /run/munge/munged.pid
exit 0
