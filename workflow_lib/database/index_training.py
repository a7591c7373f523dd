"""Which FAISS index a database gets, and its training: the factory for the database's size, spherical k-means for
the lists, the codes, and the trained empty index cached so that adding or removing songs never retrains while the
database stays near the size it was trained for (``TrainSettings.retrain_growth``)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from workflow_lib.common.atomic import atomic_path, write_text_atomic
from workflow_lib.database.fingerprint_file import ShardMeta, iter_rows
from workflow_lib.database.vectors import normalize

log = logging.getLogger(__name__)

TRAINED_FORMAT = "nafp-trained-index/1"


def choose_factory(n_vectors: int, dim: int, flat_max: int = 50_000, pq_m: int = 64) -> str:
    """Exact search for small databases; IVF with ~4 sqrt(n) lists (a power of two) and 4-bit fast-scan PQ codes
    for large ones.

    An exact scan reads every vector for every query segment: ~0.8 ms at 50,000 fingerprints and 1.5 ms at 10^5 on
    this project's CPU, slower than IVF at 10^7 (bench/README.md). Beyond ``flat_max``, IVF scans only ``nprobe``
    lists. Because every search re-ranks its candidates exactly with the stored float16 vectors, the codes only
    have to put the true neighbour among ~100 candidates: 4-bit fast-scan PQ (``pq_m / 2`` bytes per fingerprint,
    SIMD table lookups) gave the same recall as 8-bit PQ with a 2-3x faster search. The coarse quantizer stays
    exact (flat): an HNSW quantizer assigned only 55 % of the vectors to their nearest list at its default search
    width, which cost recall.
    """
    if n_vectors <= max(flat_max, 39 * 256):
        return "Flat"
    nlist = min(2 ** int(round(math.log2(4 * math.sqrt(n_vectors)))), 65536)
    while nlist > 1 and nlist * 39 > n_vectors:  # k-means needs ~39 points per list
        nlist //= 2
    m = max(d for d in range(2, min(pq_m, dim) + 1, 2) if dim % d == 0)  # fast-scan wants an even M
    return f"IVF{nlist},PQ{m}x4fs"


def default_nprobe(index: faiss.Index) -> int:
    """Lists to visit: ~0.8 % of them (128 of 16384), at least 64 (cheap while lists are short); 0 without lists.

    With exact re-ranking, recall is set by whether the true neighbour's list is visited (bench/README.md).
    """
    ivf = faiss.try_extract_index_ivf(index)
    return 0 if ivf is None else int(min(ivf.nlist, max(64, ivf.nlist // 128)))


def _train_coarse(index: faiss.Index, x: np.ndarray, seed: int) -> None:
    """Spherical k-means centroids (two-level for many lists: ~sqrt(nlist)x cheaper) into the IVF quantizer.

    Only for a plain IVF index (no pre-transform); anything else is left to FAISS's own training.
    """
    ivf = faiss.downcast_index(index)
    if not isinstance(ivf, faiss.IndexIVF) or ivf.quantizer.ntotal:
        return
    nlist, d = ivf.nlist, x.shape[1]
    if nlist >= 1024:
        from faiss.contrib.clustering import two_level_clustering

        cent, _ = two_level_clustering(x, int(math.sqrt(nlist)), nlist, clustering_niter=10, spherical=True,
                                       seed=seed)
    else:
        km = faiss.Kmeans(d, nlist, niter=20, spherical=True, seed=seed)
        km.train(x)
        cent = km.centroids
    ivf.quantizer.add(normalize(np.ascontiguousarray(cent, dtype=np.float32)))


def make_index(factory: str, dim: int) -> faiss.Index:
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"index.factory: FAISS cannot build {factory!r} for dimension {dim} "
                         f"({str(exc).splitlines()[-1]})") from exc
    # The factory turns on polysemous training for PQ codes; it only serves Hamming pre-filtering, which search
    # never uses, and it is by far the slowest part of training (seconds even for a few thousand vectors).
    ivf = faiss.try_extract_index_ivf(index)
    inner = faiss.downcast_index(ivf if ivf is not None else index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False
    return index


def training_size(factory: str, n_vectors: int, max_train: int) -> int:
    """Enough points for k-means (FAISS wants >= 39 per centroid; 64 per list here), capped and <= n."""
    index_ivf = factory.split(",")[0]
    nlist = int(index_ivf[3:].split("_")[0]) if index_ivf.startswith("IVF") else 0
    want = max(64 * nlist, 65536) if nlist else 65536
    return int(min(n_vectors, want, max_train))


def sample_vectors(paths: Sequence[Path], total: int, n_sample: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of rows across the files, streamed (memory ~ the sample)."""
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=n_sample, replace=False)) if n_sample < total else np.arange(total)
    out, offset = [], 0
    for p in paths:
        for _, _, emb in iter_rows(p):
            lo, hi = np.searchsorted(picks, [offset, offset + len(emb)])
            if hi > lo:
                out.append(emb[picks[lo:hi] - offset])
            offset += len(emb)
    return normalize(np.concatenate(out)) if out else np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class TrainSettings:
    """How the index is chosen and trained (the ``index:`` config section)."""
    factory: str = "auto"
    flat_max: int = 50_000
    pq_m: int = 64
    max_train: int = 1_000_000
    seed: int = 0
    # A trained IVF index is reused while the database stays within this factor of its size at training.
    retrain_growth: float = 4.0

    def chosen(self, n_vectors: int, dim: int) -> str:
        return choose_factory(n_vectors, dim, self.flat_max, self.pq_m) if self.factory == "auto" else self.factory

    def key(self) -> dict[str, Any]:
        """Settings that change the trained result (retrain_growth only decides when to retrain)."""
        return {"factory": self.factory, "flat_max": self.flat_max, "pq_m": self.pq_m, "max_train": self.max_train,
                "seed": self.seed}


def train_empty_index(paths: Sequence[Path], first: ShardMeta, total: int, settings: TrainSettings
                      ) -> tuple[faiss.Index, dict[str, Any]]:
    """A new index of the chosen factory, trained on a seeded sample of the fingerprints (empty: ntotal 0)."""
    chosen = settings.chosen(total, first.dim)
    index = make_index(chosen, first.dim)
    n_train = 0
    t0 = time.perf_counter()
    if not index.is_trained:
        n_train = training_size(chosen, total, settings.max_train)
        ivf = faiss.try_extract_index_ivf(index)
        if n_train < 1 or (ivf is not None and n_train < ivf.nlist):
            raise ValueError(f"index.factory {chosen!r} needs at least {ivf.nlist if ivf else 1} fingerprints to "
                             f"train, the database has {total}; use a smaller nlist or 'auto'")
        x = sample_vectors(paths, total, n_train, settings.seed)
        log.info("training %s on %d of %d fingerprints", chosen, len(x), total)
        _train_coarse(index, x, settings.seed)
        index.train(x)  # the codes (the quantizer, once it holds nlist centroids, is left as it is)
    info = {"format": TRAINED_FORMAT, "factory": chosen, "dim": first.dim, "metric": "inner_product",
            "model_checksum": first.model_checksum, "frontend": first.frontend, "settings": settings.key(),
            "n_train": n_train, "n_vectors_at_training": total,
            "train_seconds": round(time.perf_counter() - t0, 3), "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    log.info("trained %s in %.1f s", chosen, info["train_seconds"])
    return index, info


def _reusable(info: dict[str, Any], first: ShardMeta, total: int, settings: TrainSettings) -> str | None:
    """None when a cached trained index fits this database, else the reason to retrain."""
    if info.get("format") != TRAINED_FORMAT:
        return "no usable trained index"
    if info["model_checksum"] != first.model_checksum or info["dim"] != first.dim:
        return f"the model changed ({info['model_checksum']} -> {first.model_checksum})"
    if info.get("settings") != settings.key():
        return "index settings changed"
    want = settings.chosen(total, first.dim)
    if settings.factory != "auto" or want == "Flat" or info["factory"] == "Flat":
        return None if want == info["factory"] else f"factory {info['factory']} -> {want}"
    lo, hi = info["n_vectors_at_training"] / settings.retrain_growth, \
        info["n_vectors_at_training"] * settings.retrain_growth
    if not lo <= total <= hi:
        return (f"the database has {total} fingerprints, outside {settings.retrain_growth}x of the "
                f"{info['n_vectors_at_training']} it was trained for")
    return None


def ensure_trained(cache_dir: Path, paths: Sequence[Path], first: ShardMeta, total: int,
                   settings: TrainSettings) -> tuple[faiss.Index, dict[str, Any]]:
    """The trained empty index, reused from ``cache_dir`` when it still fits (so adding songs never retrains),
    else trained afresh and cached."""
    idx_path, info_path = cache_dir / "trained.faiss", cache_dir / "trained.json"
    if idx_path.is_file() and info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
            reason = _reusable(info, first, total, settings)
            if reason is None:
                index = faiss.read_index(str(idx_path))
                if index.ntotal == 0 and index.d == first.dim:
                    log.info("reusing the trained %s index (trained on %d of %d fingerprints at %s)",
                             info["factory"], info["n_train"], info["n_vectors_at_training"], info["trained_at"])
                    return index, info
                reason = "cached trained index is not empty"
            log.info("retraining the index: %s", reason)
        except (json.JSONDecodeError, KeyError, RuntimeError) as exc:
            log.warning("ignoring unreadable cached trained index in %s (%s)", cache_dir, exc)
    index, info = train_empty_index(paths, first, total, settings)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(idx_path) as tmp:
        faiss.write_index(index, str(tmp))
    write_text_atomic(info_path, json.dumps(info, indent=2))
    return index, info
