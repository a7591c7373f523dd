"""Snakemake adapter: decode the training or validation songs once into a memory-mapped song bank
(and its low-bitrate codec copy when training uses one)."""
from workflow_lib.common.logs import setup_logging
from workflow_lib.training.data import build_song_bank

setup_logging(snakemake.log[0])
p = snakemake.params
build_song_bank(snakemake.input.songs, snakemake.input.splits, snakemake.wildcards.split, p.prefix,
                max_songs=p.max_songs, seed=p.seed, codecs=p.codecs)
