"""Snakemake adapter: fit the no-match threshold on unknown-song queries (leave-one-song-out)."""
from workflow_lib.evaluation.calibration import run_calibration
from workflow_lib.common.logs import setup_logging

setup_logging(snakemake.log[0])
i, p = snakemake.input, snakemake.params
run_calibration(snakemake.output.threshold, i.model, p.index_dir, i.songs, i.splits, p.noise_prefix, p.ir_prefix,
                {**p.search, "device": p.device, "batch_size": p.batch_size}, p.evaluate, threads=snakemake.threads)
