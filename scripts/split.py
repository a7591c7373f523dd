"""Snakemake adapter: assign songs to train/val/test/distractor splits."""
from workflow_lib.common.logs import setup_logging
from workflow_lib.data.split import write_splits

setup_logging(snakemake.log[0])
write_splits(snakemake.input.songs, snakemake.output.splits, dict(snakemake.params.fractions), snakemake.params.seed)
