"""Snakemake adapter: train (or resume training) the fingerprinter; writes model.pt, metrics.csv and the curves."""
import os

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a busy machine spinning threads fight the
# other processes for the cores (measured 14 -> 57 pairs/s with 2 threads at load average 6).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from workflow_lib.logs import setup_logging
from workflow_lib.malloc_tuning import keep_freed_memory
from workflow_lib.train import train_from_config

setup_logging(snakemake.log[0])
keep_freed_memory()  # torch's big buffers stay in the heap between steps (bench/README.md)
p, out = snakemake.params, snakemake.output
train_from_config(p.banks["train"], p.banks["val"], p.banks["noise"], p.banks["irs"], out.model, out.metrics,
                  out.curves, p.checkpoint, dict(p.model), dict(p.train), threads=snakemake.threads)
