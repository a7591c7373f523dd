"""Snakemake adapter: cut and degrade the evaluation query files (results/eval/queries/)."""
from workflow_lib.evaluation.queries import make_query_set
from workflow_lib.common.logs import setup_logging

setup_logging(snakemake.log[0])
i, p = snakemake.input, snakemake.params
make_query_set(p.out_dir, i.songs, i.splits, i.index_meta, p.noise_prefix, p.ir_prefix, p.evaluate)
