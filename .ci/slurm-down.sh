#!/usr/bin/env bash
# Stop exactly the daemons that slurm-up.sh recorded in ROOT/pids (never by name: no pkill/killall).
# Usage: bash .ci/slurm-down.sh ROOT          Safe to call twice, or after a partial start.
ROOT=${1:?usage: slurm-down.sh ROOT}
[ -f "$ROOT/pids" ] || exit 0
export SLURM_CONF="$ROOT/etc/slurm.conf"
# Cancel this private cluster's jobs first. SLURM lists the processes of every job step (scontrol listpids); a job
# process that ignores SIGTERM (Snakemake waiting for its running jobs does) and outlives its step daemon would be
# left behind, so whatever of that list is still alive after the cancellation is killed, by PID.
job_pids=""
if grep -q '^slurmctld ' "$ROOT/pids" && [ -f "$SLURM_CONF" ]; then
  job_pids=$(timeout 10 scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}' || true)
  timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 1 30); do  # KillWait=5: SLURM itself sends SIGKILL 5 s after SIGTERM
    left=""; for p in $job_pids; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
    [ -z "$left" ] && [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5
  done
fi
for p in $job_pids; do
  kill -0 "$p" 2>/dev/null && { echo "slurm-down: killing leftover job process $p" >&2; kill -KILL "$p" 2>/dev/null; }
done
pids=$(tac "$ROOT/pids" | awk '{print $2}')   # reverse start order: slurmd, slurmctld, munged
for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
alive=""
for _ in $(seq 1 60); do
  alive=""; for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
  [ -z "$alive" ] && break; sleep 0.5
done
for p in $alive; do echo "slurm-down: force-killing $p" >&2; kill -KILL "$p" 2>/dev/null || true; done
if [ -f "$ROOT/etc_link" ] && [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$(cat "$ROOT/etc_link")" ]; then
  rm -f /etc/slurm/slurm.conf "$ROOT/etc_link"
fi
rm -f "$ROOT/pids"
echo "slurm-down: stopped"
