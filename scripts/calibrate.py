"""Snakemake adapter: fit the no-match threshold on unknown-song queries (leave-one-song-out)."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from pathlib import Path

from workflow_lib.common.logs import setup_logging
from workflow_lib.data.clipbank import bank_prefix
from workflow_lib.evaluation.calibration import run_calibration

setup_logging(snakemake.log[0])
i, p = snakemake.input, snakemake.params
run_calibration(snakemake.output.threshold, i.model, Path(i.index[0]).parent, i.songs, i.splits,
                bank_prefix(i.noise[0]), bank_prefix(i.irs[0]),
                {**p.search, "device": p.device, "batch_size": p.batch_size}, p.evaluate, threads=snakemake.threads,
                table_path=snakemake.output.table)
