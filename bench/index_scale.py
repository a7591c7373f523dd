#!/usr/bin/env python
"""Index scale test: build time, bytes per fingerprint, search latency and recall@1 at 10^5..10^7 fingerprints.

    .venv/bin/python bench/index_scale.py [--sizes 100000 1000000 10000000] [--factory auto] [--nprobe 8 16 32 64]
        [--work bench/out/index_scale] [--threads 2] [--queries 1000]

Random unit vectors (dim 128) are written as real fingerprint shards (songs of 480 segments, float16) and indexed
with the workflow's own ``build_index`` (training sample, IVF-PQ or exact choice from the database size), then
searched through ``FingerprintDB.search`` (approximate candidates re-ranked exactly from the memory-mapped float16
vectors). Queries are database vectors degraded to a cosine of ``--cos`` with their source (what a noisy 1 s query
segment looks like to the index), plus uniformly random queries for reference. Recall@1 is measured against exact
(brute-force, float32) search over the same stored vectors. Latency is per 1 s query segment, one FAISS thread:
single-segment calls (p50/p95) and 20-segment calls (a 10 s query) divided by 20. Finally, 10 s queries (20
consecutive segments, each degraded to ``--seq-cos``) go through the workflow's sequence search
(``search_embeddings``), which is what an answer rests on: the share naming the right song at the right offset.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from workflow_lib.database.fingerprint_file import ModelIdentity, ShardMeta, fingerprint_table  # noqa: E402
from workflow_lib.database.index import FingerprintDB  # noqa: E402
from workflow_lib.database.index_build import build_index  # noqa: E402
from workflow_lib.database.index_training import TrainSettings  # noqa: E402
from workflow_lib.search.ranking import search_embeddings  # noqa: E402

DIM = 128
SONG_SEGMENTS = 480  # a 4-minute song
SHARD_ROWS = 1_000_000


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_shards(folder: Path, n: int, seed: int) -> list[Path]:
    """Random unit-vector fingerprints as shard files (reused when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "done.json"
    if done.is_file() and json.loads(done.read_text()) == {"n": n, "seed": seed}:
        return sorted(folder.glob("shard-*.parquet"))
    for p in folder.glob("shard-*.parquet"):
        p.unlink()
    rng = np.random.default_rng(seed)
    ident = ModelIdentity("random-vectors", {}, DIM)
    paths, song, written = [], 0, 0
    while written < n:
        rows = min(SHARD_ROWS, n - written)
        counts = [SONG_SEGMENTS] * (rows // SONG_SEGMENTS) + ([rows % SONG_SEGMENTS] if rows % SONG_SEGMENTS else [])
        ids = [f"{song + i:016x}" for i in range(len(counts))]
        song += len(counts)
        x = unit(rng.standard_normal((rows, DIM), dtype=np.float32))
        meta = ShardMeta.for_identity(ident, "float16", sources={s: "-" for s in ids}, n_songs=len(ids),
                                      n_rows=rows)
        p = folder / f"shard-{len(paths)}.parquet"
        pq.write_table(fingerprint_table(ids, counts, x, meta), p, row_group_size=65536)
        paths.append(p)
        written += rows
    done.write_text(json.dumps({"n": n, "seed": seed}))
    return paths


def exact_top1(vectors: np.ndarray, q: np.ndarray, chunk: int = 1_000_000) -> np.ndarray:
    """Brute-force top-1 rows over the stored (float16) vectors, chunk by chunk."""
    best_s = np.full(len(q), -np.inf, np.float32)
    best_r = np.full(len(q), -1, np.int64)
    for lo in range(0, len(vectors), chunk):
        flat = faiss.IndexFlatIP(DIM)
        flat.add(np.asarray(vectors[lo:lo + chunk], dtype=np.float32))
        s, r = flat.search(q, 1)
        better = s[:, 0] > best_s
        best_s[better], best_r[better] = s[better, 0], r[better, 0] + lo
    return best_r


def latency(db: FingerprintDB, q: np.ndarray, k: int, per_call: int, calls: int) -> np.ndarray:
    """Milliseconds per query segment for calls of ``per_call`` segments."""
    out = []
    for i in range(calls):
        lo = (i * per_call) % (len(q) - per_call)
        t0 = time.perf_counter()
        db.search(q[lo:lo + per_call], k)
        out.append((time.perf_counter() - t0) * 1000 / per_call)
    return np.array(out)


def sequence_queries(db: FingerprintDB, cos: float, n: int, seed: int, length: int = 20
                     ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``n`` queries of ``length`` consecutive segments (10 s at 0.5 s hop), each segment degraded to ``cos``
    with its source independently; returns the queries, their song indexes and their start segments."""
    rng = np.random.default_rng([seed, int(cos * 1000)])
    songs = np.flatnonzero(np.asarray(db.rows.counts) >= length)
    code = rng.choice(songs, n)
    start = (rng.random(n) * (np.asarray(db.rows.counts)[code] - length + 1)).astype(np.int64)
    queries = []
    for c, s0 in zip(code, start):
        base = unit(np.asarray(db.vectors[db.rows_for(np.full(length, c), s0 + np.arange(length))], np.float32))
        noise = unit(rng.standard_normal((length, DIM)).astype(np.float32))
        queries.append(unit(cos * base + np.sqrt(1 - cos ** 2) * noise).astype(np.float32))
    return queries, code, start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    p.add_argument("--factory", default="auto", help="FAISS factory or auto (the workflow's choice)")
    p.add_argument("--nprobe", nargs="+", type=int, default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--rerank", type=int, default=100)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--cos", nargs="+", type=float, default=[1.0, 0.9, 0.8, 0.7],
                   help="cosines of the degraded queries with their source segment")
    p.add_argument("--queries", type=int, default=500, help="queries per cosine")
    p.add_argument("--seq-cos", nargs="+", type=float, default=[0.8, 0.7, 0.6],
                   help="cosines of the 10 s queries answered with the workflow's sequence search")
    p.add_argument("--seq-queries", type=int, default=200, help="10 s queries per cosine")
    p.add_argument("--threads", type=int, default=2, help="FAISS threads for building")
    p.add_argument("--max-train", type=int, default=1_000_000)
    p.add_argument("--work", default=str(REPO / "bench" / "out" / "index_scale"))
    p.add_argument("--keep", action="store_true", help="keep the indexes afterwards (shards are always kept)")
    p.add_argument("--reuse", action="store_true", help="search a kept index instead of building it again")
    args = p.parse_args()
    work = Path(args.work)
    print(f"faiss {faiss.__version__}, load average {os.getloadavg()}")
    for size in map(int, args.sizes):
        shards = write_shards(work / f"shards-{size}", size, seed=size % 1000)
        out = work / f"index-{size}-{args.factory.replace(',', '_')}"
        if args.reuse and (out / "index.json").is_file():
            info = json.loads((out / "index.json").read_text())
            build_s = info["build_seconds"]
            print(f"(reusing the index built {info['built_at']})")
        else:
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            info = build_index(shards, out, settings=TrainSettings(factory=args.factory, max_train=args.max_train),
                               threads=args.threads, rerank=args.rerank)
            build_s = time.perf_counter() - t0
        files = {f.name: f.stat().st_size for f in out.iterdir() if f.is_file()}
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        db = FingerprintDB.load(out)
        mem = db.memory_bytes()
        print(f"\n== {size:,} fingerprints: {info['factory']}, build {build_s:.0f} s (training "
              f"{info['trained']['train_seconds']:.0f} s on {info['trained']['n_train']:,}), threads {args.threads}")
        print(f"   disk bytes/fingerprint: index {files['index.faiss'] / size:.1f}, vectors "
              f"{files['vectors.f16.npy'] / size:.1f}, id map {files['index_meta.parquet'] / size:.2f}; "
              f"memory bytes/fingerprint: index {mem['index'] / size:.1f} + id map {mem['row_map'] / size:.1f} "
              f"(+ {mem['vectors_mmap'] / size:.0f} memory-mapped, paged in on demand); peak RSS so far "
              f"{max(rss0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 2 ** 20:.2f} GiB")
        rng = np.random.default_rng(7)
        src = np.sort(rng.choice(size, args.queries, replace=False))
        base = unit(np.asarray(db.vectors[src], dtype=np.float32))
        noise = unit(rng.standard_normal((args.queries, DIM)).astype(np.float32))
        sets = {f"cos {c:.1f}": unit(c * base + np.sqrt(1 - c ** 2) * noise).astype(np.float32) for c in args.cos}
        sets["random"] = unit(rng.standard_normal((args.queries, DIM)).astype(np.float32))
        faiss.omp_set_num_threads(args.threads)
        t0 = time.perf_counter()
        allq = np.concatenate(list(sets.values()))
        truth_all = exact_top1(db.vectors, allq)
        truth = dict(zip(sets, np.split(truth_all, len(sets))))
        print(f"   exact search for {len(allq)} queries: {time.perf_counter() - t0:.0f} s; exact top-1 is the source "
              "for " + ", ".join(f"{n} {np.mean(truth[n] == src):.3f}" for n in sets if n != "random"))
        faiss.omp_set_num_threads(1)
        lat_q = sets[f"cos {min(args.cos):.1f}"]
        # Latency is measured with the memory-mapped vectors in the page cache (a serving process touches them all
        # soon enough); a cold first query pays disk reads for the ~100 rows it re-ranks.
        t0 = time.perf_counter()
        for lo in range(0, size, 1 << 20):
            np.asarray(db.vectors[lo:lo + (1 << 20)]).max()
        print(f"   page cache warmed with the vectors file in {time.perf_counter() - t0:.1f} s")
        seq_sets = {c: sequence_queries(db, c, args.seq_queries, seed=size % 1000) for c in args.seq_cos}
        for nprobe in (args.nprobe if not db.exact else [0]):
            if not db.exact:
                if nprobe > faiss.extract_index_ivf(db.index).nlist:
                    continue
                db.set_nprobe(nprobe)
            rec = {}
            for name, q in sets.items():
                _, rows = db.search(q, args.k)
                rec[name] = float(np.mean(rows[:, 0] == truth[name]))
            one = latency(db, lat_q, args.k, 1, min(500, args.queries))
            ten = latency(db, lat_q, args.k, 20, 100)
            label = f"nprobe {nprobe:4d}" if not db.exact else "exact      "
            print(f"   {label}: recall@1 " + ", ".join(f"{n} {r:.3f}" for n, r in rec.items())
                  + f" | ms per segment: single p50 {np.percentile(one, 50):.3f} p95 {np.percentile(one, 95):.3f}; "
                  f"in 10 s queries p50 {np.percentile(ten, 50):.3f}", flush=True)
            # What a user sees: a 10 s query answered by the sequence search (20 neighbours per segment, aligned
            # exact re-scoring), right song at the right offset.
            seq = []
            for c in args.seq_cos:
                queries, code, start = seq_sets[c]
                hits, ms = 0, []
                for q, sc, st in zip(queries, code, start):
                    t0 = time.perf_counter()
                    best = search_embeddings(db, q, top_k=20, mode="sequence").best
                    ms.append((time.perf_counter() - t0) * 1000)
                    hits += best is not None and best.song_id == db.song_ids[sc] and best.start_segment == st
                seq.append(f"cos {c:.1f} {hits / len(queries):.3f}")
            print(f"   {' ' * len(label)}  10 s queries, right song and offset: " + ", ".join(seq)
                  + f" | search p50 {np.median(ms):.1f} ms per 10 s query", flush=True)
        del db
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
