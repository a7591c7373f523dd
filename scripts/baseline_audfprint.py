"""Snakemake adapter: the audfprint landmark baseline on the same database songs and query files."""
from workflow_lib.evaluation.audfprint import run_baseline
from workflow_lib.common.logs import setup_logging

setup_logging(snakemake.log[0])
run_baseline(snakemake.input.queries, snakemake.input.songs, snakemake.input.index_meta, snakemake.output.results,
             snakemake.params.audfprint, threads=snakemake.threads)
