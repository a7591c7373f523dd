"""Snakemake adapter: answer every evaluation query with the neural searcher."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from pathlib import Path

from workflow_lib.common.logs import setup_logging
from workflow_lib.evaluation.neural import evaluate_neural

setup_logging(snakemake.log[0])
i, p = snakemake.input, snakemake.params
evaluate_neural(i.queries, snakemake.output.results, i.model, Path(i.index[0]).parent, i.threshold,
                {**p.search, "device": p.device, "batch_size": p.batch_size}, p.modes, threads=snakemake.threads)
