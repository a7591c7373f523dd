"""Snakemake adapter: write the run's validated config to results/config.yaml."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from workflow_lib.common.config import write_effective_config
from workflow_lib.common.logs import setup_logging

setup_logging(snakemake.log[0])
write_effective_config(dict(snakemake.params.config), snakemake.output[0])
