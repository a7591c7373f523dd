"""Snakemake adapter: impulse responses (measured, simulated rooms and resonant spaces) into train/test clip banks."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from pathlib import Path

from workflow_lib.data.irs import prepare_irs
from workflow_lib.common.logs import setup_logging
from workflow_lib.data.manifest import list_audio_files

log = setup_logging(snakemake.log[0])
p = snakemake.params
o = p.opts
summary = prepare_irs(list_audio_files(p.ir_dirs), Path(snakemake.output.train[0]).parent,
                      test_fraction=o["test_fraction"], max_ir_s=o["max_ir_s"], simulate=dict(o["simulate"]),
                      seed=o["seed"], holdout=o["holdout"])
log.info("IR banks: %s", {k: v for k, v in summary.items() if k != "skipped"})  # skips are logged one by one
