#!/usr/bin/env bash
# A real one-node Slurm cluster for the cluster tests (Debian 12, as root).
#   .ci/slurm.sh up     install (once) and start munge, slurmctld and slurmd; idempotent
#   .ci/slurm.sh down   stop them, by the pids in their pid files
# No systemd and no cgroups are needed: process tracking by /proc, no task plugin.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -n bash "$0" "$@"  # installing packages and starting daemons needs root
fi

PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid)
HOST="$(hostname -s)"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
      || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  fi
}

start_munge() {
  if running /run/munge/munged.pid; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || runuser -u munge -- /usr/sbin/mungekey --create 2>/dev/null \
    || runuser -u munge -- /usr/sbin/create-munge-key
  runuser -u munge -- /usr/sbin/munged --force
  munge -n | unmunge >/dev/null
}

write_config() {
  mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
  local node
  node="$(slurmd -C | head -n 1)"
  cat > /etc/slurm/slurm.conf <<EOF
ClusterName=biobench-ci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=2
MaxArraySize=10000
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
${node} NodeAddr=127.0.0.1
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF
}

up() {
  install_packages
  if ! getent hosts "$HOST" | grep -q '^127\.'; then
    echo "127.0.0.1 $HOST" >> /etc/hosts
  fi
  start_munge
  if ! running /run/slurmctld.pid || ! running /run/slurmd.pid; then
    write_config
    running /run/slurmctld.pid || slurmctld -c
    running /run/slurmd.pid || slurmd
  fi
  for _ in $(seq 1 60); do
    if [ "$(sinfo -h -o %T 2>/dev/null | head -n 1)" = "idle" ]; then
      srun -N1 hostname >/dev/null
      echo "slurm up: $(sinfo -h -o '%P %D %c %T')"
      return 0
    fi
    sleep 0.5
  done
  echo "slurm did not come up; see /var/log/slurm/" >&2
  return 1
}

down() {
  for pidfile in "${PIDS[@]}"; do
    if running "$pidfile"; then
      kill "$(cat "$pidfile")"
    fi
  done
  echo "slurm down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
