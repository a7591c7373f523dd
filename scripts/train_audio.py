"""Snakemake adapter: decode the training or validation songs once into a memory-mapped song bank
(and its low-bitrate codec copy when training uses one)."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from workflow_lib.common.logs import setup_logging
from workflow_lib.data.clipbank import bank_prefix
from workflow_lib.training.data import build_song_bank

setup_logging(snakemake.log[0])
p = snakemake.params
build_song_bank(snakemake.input.songs, snakemake.input.splits, snakemake.wildcards.split,
                bank_prefix(snakemake.output[0]),
                max_songs=p.max_songs, seed=p.seed, codecs=p.codecs)
