"""Snakemake adapter: fingerprint one shard of the database songs into results/fingerprints/shard-{i}.parquet."""
import _checkout  # noqa: F401  (workflow_lib from this checkout, in any job environment)
from workflow_lib.common.cpu_process import setup_cpu_process

setup_cpu_process(keep_buffers=True)  # before torch loads

from workflow_lib.database.extract import extract_shard  # noqa: E402
from workflow_lib.common.logs import setup_logging  # noqa: E402

setup_logging(snakemake.log[0])
p = snakemake.params
o = p.opts
extract_shard(snakemake.input.songs, snakemake.input.splits, snakemake.input.model, snakemake.output[0],
              shard=int(snakemake.wildcards.shard), n_shards=o["n_shards"], include_splits=list(o["splits"]),
              batch_size=o["batch_size"], device=o["device"], threads=snakemake.threads, dtype=o["dtype"],
              compile_model=o["compile"], reuse=o["reuse"], chunk_seconds=o["chunk_seconds"])
