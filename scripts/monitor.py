"""Snakemake adapter: the monitoring benchmark (programmes through nafp scan, and audfprint when enabled)."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from pathlib import Path

from workflow_lib.common.logs import setup_logging
from workflow_lib.data.clipbank import bank_prefix
from workflow_lib.evaluation.monitoring import run_monitoring

setup_logging(snakemake.log[0])
i, p = snakemake.input, snakemake.params
run_monitoring(snakemake.output.results, i.model, Path(i.index[0]).parent, i.catalogue[0], i.threshold, i.songs,
               i.splits, bank_prefix(i.noise[0]), bank_prefix(i.irs[0]),
               {**p.search, "device": p.device, "batch_size": p.batch_size}, dict(p.listen), dict(p.evaluate),
               dict(p.audfprint) if p.audfprint else None, threads=snakemake.threads)
