#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster on this machine (root, no systemd, no cgroups) for the cluster test.
# Usage: bash .ci/slurm-up.sh ROOT
#   ROOT holds everything: config, munge key and socket, state, logs and the PIDs of the daemons started here
#   (keep it short: the munge socket path must stay under 108 bytes).
# Every daemon's PID is appended to ROOT/pids; `bash .ci/slurm-down.sh ROOT` stops exactly those, never by name.
# The node offers one stand-in GPU GRES (device file /dev/null: Slurm drops GPUs without a file) so that the real
# profile's GPU request for training (`gres: gpu:1`) is scheduled here too; such jobs still run on the CPU.
set -euo pipefail
ROOT=${1:?usage: slurm-up.sh ROOT}
HERE=$(cd "$(dirname "$0")" && pwd)
PARTITION=${SLURM_CI_PARTITION:-debug}

# 1. Debian packages (bookworm: Slurm 22.05, munge 0.5); installed only when missing.
pkgs="slurmctld slurmd slurm-client munge"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then echo "slurm-up: need root to install:$missing" >&2; exit 1; fi
  echo "slurm-up: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing > "${TMPDIR:-/tmp}/slurm-apt.log" 2>&1 \
    || { tail -n 20 "${TMPDIR:-/tmp}/slurm-apt.log" >&2; exit 1; }
fi

# The snakemake slurm-jobstep plugin removes SLURM_CONF (with all SLURM_* variables) before its nested srun, so the
# config must also be at the compiled-in default path: we symlink ours there for the life of the cluster.
# A link left by a run of ours that was killed before slurm-down (the session or CI job ended mid-test) is stale:
# its target is gone, or its root's recorded daemons are all dead. Only such a link is replaced; a real config is not.
stale_link() {
  local target other name pid
  target=$(readlink /etc/slurm/slurm.conf) || return 1   # a plain file: a real installation
  [ -e "$target" ] || return 0                            # dangling: nothing can use it
  other=$(dirname "$(dirname "$target")")
  [ -f "$other/etc_link" ] && [ "$(cat "$other/etc_link")" = "$target" ] || return 1   # not made by this script
  [ -f "$other/pids" ] || return 0                        # slurm-down ran but could not remove the link
  while read -r name pid; do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && return 1   # that cluster still runs
  done < "$other/pids"
  return 0
}
if [ -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
  if [ "$(readlink /etc/slurm/slurm.conf)" != "$ROOT/etc/slurm.conf" ]; then
    if stale_link; then
      echo "slurm-up: replacing the stale link /etc/slurm/slurm.conf -> $(readlink /etc/slurm/slurm.conf) (its cluster is gone)"
      rm -f /etc/slurm/slurm.conf
    else
      echo "slurm-up: /etc/slurm/slurm.conf exists and is not ours; refusing to overwrite it" >&2; exit 1
    fi
  fi
fi
for port in 6817 6818; do  # another cluster (or a leftover one) on these ports would make ours fail obscurely
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "slurm-up: port $port is already in use (another slurmctld/slurmd running?)" >&2; exit 1
  fi
done
mkdir -p "$ROOT"/{etc,state,spool,log,run,munge}
: > "$ROOT/pids"
trap 'echo "slurm-up: failed; stopping what was started" >&2; bash "$HERE/slurm-down.sh" "$ROOT"' ERR
chmod 700 "$ROOT/munge"

start() {  # start NAME CMD... : run CMD (a foreground daemon) in the background and record its PID
  local name=$1; shift
  "$@" > "$ROOT/log/$name.out" 2>&1 < /dev/null &
  echo "$name $!" >> "$ROOT/pids"
}
wait_for() {  # wait_for SECONDS WHAT CMD...
  local t=$1 what=$2; shift 2
  for _ in $(seq 1 $((t * 4))); do "$@" > /dev/null 2>&1 && return 0; sleep 0.25; done
  echo "slurm-up: timeout waiting for $what" >&2; tail -n 30 "$ROOT"/log/* >&2 || true; return 1
}

# 2. munge with its own key and socket under ROOT.
[ -f "$ROOT/munge/munge.key" ] || mungekey -c -k "$ROOT/munge/munge.key"
chmod 600 "$ROOT/munge/munge.key"
SOCK="$ROOT/run/munge.socket"
start munged munged --foreground --force --key-file="$ROOT/munge/munge.key" --socket="$SOCK" \
  --pid-file="$ROOT/run/munged.pid" --log-file="$ROOT/log/munged.log" --seed-file="$ROOT/munge/munged.seed"
wait_for 15 munged bash -c "munge -n --socket='$SOCK' | unmunge --socket='$SOCK'"

# 3. slurm.conf sized from this machine (RealMemory must not exceed what slurmd detects, or the node drains).
hw=$(slurmd -C 2>/dev/null | head -n1)
field() { sed -E "s/.*$1=([0-9]+).*/\1/" <<< "$hw"; }
cpus=$(field CPUs); sockets=$(field SocketsPerBoard); cps=$(field CoresPerSocket); tpc=$(field ThreadsPerCore)
mem=$(( $(field RealMemory) * 85 / 100 ))
cat > "$ROOT/etc/slurm.conf" <<CONF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
ProctrackType=proctrack/linuxproc
# Bind each job to its allocated CPUs (no cgroups needed), as real clusters do: Snakemake inside a job then
# sees only those CPUs and runs the rule with as many threads as the job was given.
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# squeue-based status checks need finished jobs to stay visible for >= 3x the status-check interval.
MinJobAge=300
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus SocketsPerBoard=$sockets CoresPerSocket=$cps ThreadsPerCore=$tpc RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
# A stand-in GPU: schedulable, but there is no CUDA device behind it (no cgroups: nothing fences devices).
echo "Name=gpu File=/dev/null" > "$ROOT/etc/gres.conf"
export SLURM_CONF="$ROOT/etc/slurm.conf"
mkdir -p /etc/slurm
ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
echo "$SLURM_CONF" > "$ROOT/etc_link"   # tells slurm-down.sh that the /etc link is ours to remove

# 4. controller and node daemon, in the foreground (-D) so that $! is the daemon itself.
start slurmctld slurmctld -D -i -f "$SLURM_CONF"
wait_for 30 slurmctld scontrol ping
start slurmd slurmd -D -N localhost -f "$SLURM_CONF"
wait_for 20 "node idle" bash -c "sinfo -h -n localhost -o %T | grep -qx idle"
echo "slurm-up: $(sinfo -h -o '%P %a %D nodes %T %c CPUs %m MB %G') (pids: $(awk '{print $1"="$2}' "$ROOT/pids" | tr '\n' ' '))"
trap - ERR
