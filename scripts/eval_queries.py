"""Snakemake adapter: cut and degrade the evaluation query files (results/eval/queries/)."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from pathlib import Path

from workflow_lib.common.logs import setup_logging
from workflow_lib.data.clipbank import bank_prefix
from workflow_lib.evaluation.queries import make_query_set

setup_logging(snakemake.log[0])
i = snakemake.input
index_meta = next(f for f in i.index if f.endswith("index_meta.parquet"))
make_query_set(Path(snakemake.output.queries).parent, i.songs, i.splits, index_meta, bank_prefix(i.noise[0]),
               bank_prefix(i.irs[0]), snakemake.params.evaluate)
