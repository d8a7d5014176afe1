#!/usr/bin/env bash
# Start a one-node Slurm on localhost (munged, slurmctld, slurmd -N localhost) for the tests.
# Idempotent: daemons already running from our pid files are kept. Prints the line
# `export SLURM_CONF=...` for the caller to eval; every Slurm command needs it.
# Usage: eval "$(scripts/slurm/start.sh)"     (DLHUB_HPC_SLURM_DIR overrides the directory)
set -euo pipefail
DIR="${DLHUB_HPC_SLURM_DIR:-/tmp/dlhub-hpc-slurm}"
CONF="$DIR/slurm.conf"
log() { echo "slurm: $*" >&2; }

for tool in slurmctld slurmd munged sinfo; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { log "$tool not installed"; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { log "must run as root (slurmd and munged)"; exit 1; }
export PATH="$PATH:/usr/sbin"

mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
cat > "$CONF.tmp" <<CONF
ClusterName=dlhub
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
KillWait=5
MinJobAge=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF.tmp" "$CONF"
export SLURM_CONF="$CONF"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# munge: key and socket directory, then the daemon (as the munge user).
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
  log "started munged"
fi

if ! running "$DIR/slurmctld.pid"; then
  slurmctld
  log "started slurmctld"
fi
if ! running "$DIR/slurmd.pid"; then
  slurmd -N localhost
  log "started slurmd"
fi

# Wait for the node to come up idle (or busy with jobs we left from an earlier run).
for _ in $(seq 1 120); do
  state="$(sinfo -h -o %T 2>/dev/null | head -n1 || true)"
  case "$state" in
    idle|mixed|allocated) log "node localhost is $state ($CONF)"; echo "export SLURM_CONF=$CONF"; exit 0 ;;
    # Left down or drained by an unclean stop: put it back in service.
    down*|drain*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
  esac
  sleep 0.5
done
log "the node did not become idle in 60 s; see $DIR/log/"
exit 1
