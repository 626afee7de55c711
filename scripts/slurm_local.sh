#!/usr/bin/env bash
# Starts a single-node Slurm cluster on 127.0.0.1 for the sweep tests (tests/sweep.rs): installs
# Debian's slurm-wlm and munge when they are missing (needs root and apt), writes a slurm.conf
# into $1 (default /tmp/unlearn-slurm), starts munged, slurmctld and slurmd, and waits until the
# node is idle. Prints `export SLURM_CONF=…` on success; on failure says why and exits non-zero.
#   eval "$(bash scripts/slurm_local.sh)"      # then: sinfo, sbatch, unlearn sweep --executor slurm
set -euo pipefail
dir=${1:-/tmp/unlearn-slurm}
say() { echo "slurm_local: $*" >&2; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || { say "no apt-get to install slurm-wlm and munge"; exit 1; }
  [ "$(id -u)" = 0 ] || { say "installing slurm-wlm needs root"; exit 1; }
  say "installing slurm-wlm and munge from Debian's packages"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >&2 \
    || { say "apt-get install slurm-wlm munge failed"; exit 1; }
fi
host=$(hostname -s)
mem=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
mkdir -p "$dir/ctld" "$dir/d"
cat > "$dir/slurm.conf" <<CONF
ClusterName=unlearn-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/d
SlurmctldPidFile=$dir/ctld.pid
SlurmdPidFile=$dir/d.pid
SlurmctldLogFile=$dir/ctld.log
SlurmdLogFile=$dir/d.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
if ! pgrep -x munged >/dev/null; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  [ -f /etc/munge/munge.key ] || { say "no /etc/munge/munge.key"; exit 1; }
  munged --force >&2 || { say "munged did not start"; exit 1; }
fi
pgrep -x slurmctld >/dev/null || slurmctld >&2 || { say "slurmctld did not start: $(tail -3 $dir/ctld.log 2>/dev/null)"; exit 1; }
pgrep -x slurmd >/dev/null || slurmd >&2 || { say "slurmd did not start: $(tail -3 $dir/d.log 2>/dev/null)"; exit 1; }
for _ in $(seq 1 30); do
  if sinfo -h -o %T 2>/dev/null | grep -q idle; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 1
done
say "the node did not become idle: $(sinfo 2>&1 | tail -2); $(tail -3 $dir/ctld.log 2>/dev/null)"
exit 1
