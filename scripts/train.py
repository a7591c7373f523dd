"""Snakemake adapter: train (or resume training) the fingerprinter; writes model.pt, metrics.csv and the curves."""
from workflow_lib.common.cpu_process import setup_cpu_process

setup_cpu_process(keep_buffers=True)  # before torch loads

from workflow_lib.common.logs import setup_logging  # noqa: E402
from workflow_lib.training.train import train_from_config  # noqa: E402

setup_logging(snakemake.log[0])
p, out = snakemake.params, snakemake.output
train_from_config(p.banks["train"], p.banks["val"], p.banks["noise"], p.banks["irs"], out.model, out.metrics,
                  out.curves, p.checkpoint, dict(p.model), dict(p.train), threads=snakemake.threads)
