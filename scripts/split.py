"""Snakemake adapter: assign songs to train/val/test/distractor splits."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from workflow_lib.common.logs import setup_logging
from workflow_lib.data.split import write_splits

setup_logging(snakemake.log[0])
write_splits(snakemake.input.songs, snakemake.output.splits, dict(snakemake.params.fractions), snakemake.params.seed,
             snakemake.output.csv)
