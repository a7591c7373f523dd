"""Snakemake adapter: train (or reuse the training of) the FAISS index and add every fingerprint file."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from pathlib import Path

import pandas as pd

from workflow_lib.common.cpu_process import setup_cpu_process

setup_cpu_process()  # before faiss loads

from workflow_lib.database.catalogue import added_catalogue_rows, superseded_added_songs  # noqa: E402
from workflow_lib.database.index_build import build_index  # noqa: E402
from workflow_lib.database.index_training import TrainSettings  # noqa: E402
from workflow_lib.database.removed import read_removed_songs  # noqa: E402
from workflow_lib.common.logs import setup_logging  # noqa: E402

setup_logging(snakemake.log[0])
o = snakemake.params.opts
settings = TrainSettings(factory=o["factory"], flat_max=o["flat_max"], pq_m=o["pq_m"], max_train=o["max_train"],
                         seed=o["seed"], retrain_growth=o["retrain_growth"])
exclude = set(o["remove_songs"]) | read_removed_songs(snakemake.input.removed)
exclude |= superseded_added_songs(pd.read_parquet(snakemake.input.songs, columns=["song_id", "path"]),
                                  added_catalogue_rows(snakemake.input.added), exclude)
build_index(list(snakemake.input.shards) + list(snakemake.input.added) + list(snakemake.input.other_music),
            Path(snakemake.output[0]).parent,
            settings=settings, exclude_songs=exclude, nprobe=o["nprobe"], rerank=o["rerank"],
            threads=snakemake.threads)
