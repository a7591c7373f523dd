"""Snakemake adapter: scan the music folders into songs.parquet / rejected.parquet."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from pathlib import Path

from workflow_lib.common.logs import setup_logging
from workflow_lib.data.manifest import write_manifest

setup_logging(snakemake.log[0])
p = snakemake.params
# The run's results folder (RESULTS/manifest/songs.parquet), never scanned as music when it lies in a music folder.
results = Path(snakemake.output.songs).resolve().parent.parent
write_manifest(p.music_dirs, p.distractor_dirs, snakemake.output.songs, snakemake.output.rejected,
               p.min_duration_s, p.silence_dbfs, snakemake.output.rejected_csv, skip_dirs=[results],
               unknown_dirs=p.unknown_dirs, workers=snakemake.threads)
