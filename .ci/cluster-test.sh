#!/usr/bin/env bash
# Cluster test (issue 7): a private single-node SLURM on this machine, the workflow through Snakemake's SLURM
# executor on a tiny config, one job killed mid-run, a rerun, and the results compared with a local run.
#   bash .ci/cluster-test.sh [cluster_test.py options]     (root; installs its Debian packages when missing)
# Everything lives in one scratch folder (TMPDIR included), removed on success and kept on failure. The daemons
# are stopped by the PIDs that slurm-up.sh recorded, whatever happens (EXIT trap).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
LIMIT=${CLUSTER_TEST_TIMEOUT:-720}   # seconds for the whole test: a job that can never start must not hang CI

# Short path: the munge socket path under it must stay below 108 bytes.
SCRATCH=$(mktemp -d /tmp/nafp-cluster.XXXXXX)
export TMPDIR="$SCRATCH/tmp"
mkdir -p "$TMPDIR"
ROOT="$SCRATCH/slurm"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  bash "$REPO/.ci/slurm-down.sh" "$ROOT" || true
  # A job step of a job cancelled mid-test can outlive its step daemon (slurm-down lists only the jobs still known
  # at the end): whatever still works in the scratch folder is this test's, and is killed by PID.
  for d in /proc/[0-9]*; do
    case "$(readlink "$d/cwd" 2>/dev/null)" in
      "$SCRATCH" | "$SCRATCH"/*) echo "cluster-test: killing leftover process ${d#/proc/}" >&2
                                 kill -KILL "${d#/proc/}" 2>/dev/null || true ;;
    esac
  done
  if [ "$rc" = 0 ] && [ -z "${KEEP_CLUSTER_TEST:-}" ]; then
    rm -rf "$SCRATCH"
  else
    echo "cluster-test: runs, logs and SLURM logs kept in $SCRATCH"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$REPO/.venv/bin/snakemake" ] || bash "$REPO/tools/setup.sh"
start=$(date +%s)
bash "$REPO/.ci/slurm-up.sh" "$ROOT"
export SLURM_CONF="$ROOT/etc/slurm.conf"
timeout 30 srun -t 1 true   # smoke test: the cluster runs a job at all

timeout -k 30 "$LIMIT" "$REPO/.venv/bin/python" "$REPO/.ci/cluster_test.py" --scratch "$SCRATCH" "$@"
echo "cluster-test: passed in $(( $(date +%s) - start )) s"
