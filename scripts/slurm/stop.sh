#!/usr/bin/env bash
# Stop the one-node Slurm started by start.sh: cancel our jobs, then the daemons by pid file.
# munged is left running (other users of munge may share it). Safe to run when nothing runs.
set -uo pipefail
DIR="${DLHUB_HPC_SLURM_DIR:-/tmp/dlhub-hpc-slurm}"
export SLURM_CONF="$DIR/slurm.conf"
export PATH="$PATH:/usr/sbin"
[ -f "$SLURM_CONF" ] && command -v scancel >/dev/null && scancel --quiet --full -u "$(id -un)" 2>/dev/null
for name in slurmd slurmctld; do
  pidfile="$DIR/$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "slurm: stopped $name ($pid)" >&2
  fi
  rm -f "$pidfile"
done
exit 0
