#!/usr/bin/env bash
# Evaluate every ablation variant whose model exists (bench/ablate.py), one after another, in one folder (the
# query set is shared); waits for models still training. Usage: bash bench/ablation_eval.sh RUNS_DIR VARIANT...
set -uo pipefail
cd "$(dirname "$0")/.."
runs=$1; shift
for v in "$@"; do
  while [ ! -f "$runs/ablation/$v/model.pt" ]; do sleep 60; done
  [ -f "$runs/ablation/$v/metrics.parquet" ] && continue
  echo "== $v $(date)"
  .venv/bin/snakemake all --cores "${CORES:-2}" --configfile config/examples/dev_extra.yaml bench/eval_ablation.yaml \
      --config model="{source: $(realpath "$runs/ablation/$v/model.pt")}" --directory runs/ablation_eval --notemp \
      --rerun-triggers mtime input params > "runs/ablation_eval-$v.log" 2>&1 \
    && cp runs/ablation_eval/results/eval/metrics.parquet runs/ablation_eval/results/eval/summary.md \
          "$runs/ablation/$v/"
done
