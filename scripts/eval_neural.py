"""Snakemake adapter: answer every evaluation query with the neural searcher."""
from workflow_lib.evaluate import evaluate_neural
from workflow_lib.logs import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
evaluate_neural(snakemake.input.queries, snakemake.output.results, p.results,
                {**p.search, "device": p.device, "batch_size": p.batch_size}, p.modes, threads=snakemake.threads)
