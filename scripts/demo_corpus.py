"""Snakemake adapter: generate the built-in synthetic demo corpus."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from pathlib import Path

from workflow_lib.data.demo_corpus import generate_demo_corpus
from workflow_lib.common.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
table = generate_demo_corpus(Path(snakemake.output.catalogue).parent, p.n_songs, p.duration_s, p.seed)
log.info("demo corpus: %d synthetic songs of %.0f s", len(table), p.duration_s)
