"""Snakemake adapter: decode noise (and babble from speech) into train/test clip banks."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from pathlib import Path

from workflow_lib.common.logs import setup_logging
from workflow_lib.data.manifest import list_audio_files
from workflow_lib.data.noise import prepare_noise

log = setup_logging(snakemake.log[0])
p = snakemake.params
o = p.opts
summary = prepare_noise(list_audio_files(p.noise_dirs), list_audio_files(p.speech_dirs),
                        Path(snakemake.output.train[0]).parent,
                        test_fraction=o["test_fraction"], max_clip_s=o["max_clip_s"],
                        babble_speakers=tuple(o["babble_speakers"]), babble_clips=o["babble_clips"],
                        babble_clip_s=o["babble_clip_s"], generated_clips=o["generated_clips"], seed=o["seed"])
log.info("noise banks: %s", {k: v for k, v in summary.items() if k != "skipped"})  # skips are logged one by one
