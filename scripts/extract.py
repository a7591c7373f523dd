"""Snakemake adapter: fingerprint one shard of the database songs into results/fingerprints/shard-{i}.parquet."""
import os

# OpenMP threads that spin while another process holds the core make a shared machine several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from workflow_lib.extract import extract_shard
from workflow_lib.logs import setup_logging
from workflow_lib.malloc_tuning import keep_freed_memory

setup_logging(snakemake.log[0])
keep_freed_memory()  # torch's big buffers stay in the heap between steps (bench/README.md)
p = snakemake.params
o = p.opts
extract_shard(snakemake.input.songs, snakemake.input.splits, snakemake.input.model, snakemake.output[0],
              shard=int(snakemake.wildcards.shard), n_shards=o["n_shards"], include_splits=list(o["splits"]),
              batch_size=o["batch_size"], device=o["device"], threads=snakemake.threads, dtype=o["dtype"],
              compile_model=o["compile"], reuse=o["reuse"], chunk_seconds=o["chunk_seconds"])
