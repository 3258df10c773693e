#!/usr/bin/env bash
# A real single-node SLURM on localhost, for the `slurm` tests (tests/workflow/test_slurm.py) and CI.
#
#   .ci/slurm.sh start    # as root: installs slurm-wlm and munge with apt when missing, writes a munge
#                         # key and /etc/slurm/slurm.conf sized from nproc and free memory, starts
#                         # munged, slurmctld and slurmd, and waits for the node to be idle
#   .ci/slurm.sh stop     # stops the three daemons this script started
#   .ci/slurm.sh status   # exits 0 when the cluster this script configured answers with a usable node
#
# No accounting database (no slurmdbd): sacct is disabled, so the plugin must use
# `--slurm-status-command squeue`, and MinJobAge keeps finished jobs in squeue for an hour.
# The config lies at /etc/slurm/slurm.conf, where the jobs' own srun (the plugin's jobstep) finds it:
# with only SLURM_CONF set in the submitting shell every job fails with "Could not establish a
# configuration source". Daemons run as root (SlurmUser=root): a test cluster, not a shared one.
# Never touches a SLURM this script did not write (a slurm.conf without its marker line).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by gradientspace-bench .ci/slurm.sh"
LOGS=/var/log/slurm
PIDS=(/run/munge/munged.pid /run/slurmctld.pid /run/slurmd.pid)

die() { echo "slurm.sh: $*" >&2; exit 1; }

ours() { [ -f "$CONF" ] && head -1 "$CONF" | grep -qF "$MARK"; }

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || die "slurmctld missing and no apt-get to install slurm-wlm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  # RealMemory: what is free now (MB) less 1 GB for the daemons, so jobs never wait on memory that
  # slurmd does not report; slurmd drains a node whose RealMemory exceeds the machine's.
  mem=$(awk '/MemAvailable/ {printf "%d", $2 / 1024 - 1024}' /proc/meminfo)
  [ "$mem" -gt 1024 ] || die "only ${mem} MB of memory free"
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS"
  cat >"$CONF" <<EOF
$MARK
ClusterName=gsbench
SlurmctldHost=${host}(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=3600
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  echo "slurm.sh: node ${host}: ${cpus} CPUs, ${mem} MB"
}

munge_key() {
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
}

wait_idle() {
  local i state
  for i in $(seq 60); do
    state=$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)
    case "$state" in
      idle | mix | alloc) return 0 ;;
      drain* | down*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
  done
  die "node not idle after 60 s (state '${state}'); see $LOGS/slurmctld.log and $LOGS/slurmd.log"
}

start() {
  [ "$(id -u)" = 0 ] || die "needs root (apt, munge key, daemons)"
  if status >/dev/null 2>&1; then
    echo "slurm.sh: already running"
    return
  fi
  [ ! -f "$CONF" ] || ours || die "$CONF exists and was not written by this script; not touching it"
  install
  write_conf
  munge_key
  running /run/munge/munged.pid || runuser -u munge -- munged --force 2>/dev/null || munged --force
  running /run/slurmctld.pid || slurmctld -c
  running /run/slurmd.pid || slurmd
  wait_idle
  echo "slurm.sh: started ($(sinfo -h -o '%P %D nodes %c CPUs %m MB'))"
}

stop() {
  local pid
  for pid in "${PIDS[@]}"; do
    if running "$pid"; then
      kill "$(cat "$pid")"
    fi
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 20); do running "$pid" || break; sleep 0.5; done
  done
  echo "slurm.sh: stopped"
}

status() {
  command -v sinfo >/dev/null && ours || return 1
  local state
  state=$(timeout 10 sinfo -h -N -o '%t' 2>/dev/null | head -1) || return 1
  case "$state" in idle* | mix* | alloc* | comp*) echo "slurm.sh: running (node $state)" ;; *) return 1 ;; esac
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
