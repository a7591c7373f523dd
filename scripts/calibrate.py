"""Snakemake adapter: fit the no-match threshold on queries from songs outside the database."""
from workflow_lib.calibrate import run_calibration
from workflow_lib.logs import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
run_calibration(snakemake.output.threshold, p.results, snakemake.input.songs, snakemake.input.splits,
                snakemake.input.index_meta, p.noise_prefix, p.ir_prefix,
                {**p.search, "device": p.device, "batch_size": p.batch_size}, p.evaluate, threads=snakemake.threads)
