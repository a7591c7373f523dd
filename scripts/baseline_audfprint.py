"""Snakemake adapter: the audfprint landmark baseline on the same database songs and query files."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from workflow_lib.common.logs import setup_logging
from workflow_lib.evaluation.audfprint import run_baseline

setup_logging(snakemake.log[0])
i = snakemake.input
index_meta = next(f for f in i.index if f.endswith("index_meta.parquet"))
run_baseline(i.queries, i.songs, index_meta, snakemake.output.results, snakemake.params.audfprint,
             threads=snakemake.threads)
