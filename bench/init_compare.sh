#!/usr/bin/env bash
# Issue 13: bundled model as is vs 4 min from scratch vs 4 min fine-tuning the bundled model, on the dev corpus
# (bench/init_compare.yaml). Prints the song top-1 / acceptance table of the three summaries.
set -euo pipefail
cd "$(dirname "$0")/.."
run() {  # name, then --config overrides
  local name=$1; shift
  .venv/bin/snakemake all --cores 2 --configfile config/examples/dev_corpus.yaml bench/init_compare.yaml \
      --directory "runs/init_$name" --config "$@" > "runs/init_$name.log" 2>&1
}
run bundled 'model={source: bundled}'
run scratch 'model={source: train}' 'train={init: none}'
run finetune 'model={source: train}' 'train={init: bundled}'
.venv/bin/python bench/compare_runs.py bundled=runs/init_bundled/results/eval/metrics.parquet \
    scratch=runs/init_scratch/results/eval/metrics.parquet finetune=runs/init_finetune/results/eval/metrics.parquet
