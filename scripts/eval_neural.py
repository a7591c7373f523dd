"""Snakemake adapter: answer every evaluation query with the neural searcher."""
from workflow_lib.evaluation.neural import evaluate_neural
from workflow_lib.common.logs import setup_logging

setup_logging(snakemake.log[0])
i, p = snakemake.input, snakemake.params
evaluate_neural(i.queries, snakemake.output.results, i.model, p.index_dir, i.threshold,
                {**p.search, "device": p.device, "batch_size": p.batch_size}, p.modes, threads=snakemake.threads)
