"""Snakemake adapter: train (or resume training) the fingerprinter; writes model.pt, metrics.csv and the curves."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from workflow_lib.common.cpu_process import setup_cpu_process

setup_cpu_process(keep_buffers=True)  # before torch loads

from pathlib import Path  # noqa: E402

from workflow_lib.common.logs import setup_logging  # noqa: E402
from workflow_lib.data.clipbank import bank_prefix  # noqa: E402
from workflow_lib.training.train import train_from_config  # noqa: E402

i, p, out = snakemake.input, snakemake.params, snakemake.output
# The training's own log beside its checkpoint keeps every run's lines (a resumed job's log shows the killed run).
setup_logging(snakemake.log[0], history=str(Path(p.checkpoint).parent / "train.log"))
train_from_config(bank_prefix(i.train_audio[0]), bank_prefix(i.val_audio[0]), bank_prefix(i.noise[0]),
                  bank_prefix(i.irs[0]), out.model, out.metrics, out.curves, p.checkpoint, dict(p.model),
                  dict(p.train), threads=snakemake.threads, init_from=i.init[0] if i.init else None,
                  partner=i.partner[0] if i.partner else None)
