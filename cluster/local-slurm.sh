#!/usr/bin/env bash
# A one-node SLURM on this machine, for tests and CI: no systemd, no munge (auth/none).
#   cluster/local-slurm.sh start [DIR]   writes DIR/slurm.conf, starts slurmctld and slurmd, waits for the node
#   cluster/local-slurm.sh stop [DIR]    stops both daemons by pid
# Clients (sbatch, squeue, scancel, dask-jobqueue) need SLURM_CONF=DIR/slurm.conf.
# Needs Debian's slurm-wlm (apt-get install --no-install-recommends slurm-wlm) and root.
set -euo pipefail
action=${1:?usage: local-slurm.sh start|stop [DIR]}
dir=${2:-${CLPHASE_SLURM_DIR:-/tmp/clphase-slurm}}

stop() {
  for daemon in slurmd slurmctld; do
    if [ -f "$dir/$daemon.pid" ]; then
      pid=$(cat "$dir/$daemon.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$daemon.pid"
    fi
  done
}

if [ "$action" = stop ]; then
  stop
  exit 0
fi
[ "$action" = start ] || { echo "usage: local-slurm.sh start|stop [DIR]" >&2; exit 2; }
command -v slurmctld >/dev/null || { echo "slurmctld not found: apt-get install --no-install-recommends slurm-wlm" >&2; exit 1; }
stop
mkdir -p "$dir/state" "$dir/spool"
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=clphase
SlurmctldHost=localhost
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -c -i
slurmd -N localhost
for _ in $(seq 100); do
  if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
    echo "local SLURM up: SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.1
done
echo "local SLURM did not come up; logs in $dir" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
