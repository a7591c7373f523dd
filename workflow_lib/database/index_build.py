"""Building the fingerprint database's folder (``build_index``, the workflow's ``build_index`` rule) and editing it
in place (``add_to_index``, ``remove_from_index``: ``nafp db``). Every edit writes a whole new set of files and
commits it (``index.write_folder``), so a kill leaves the old set or the new one. Removing rows compacts the
numbering (FAISS ids are renumbered in place for IVF indexes), so rows stay ``0..ntotal-1`` everywhere.

The trained, empty index is cached in ``<index>/.cache/trained.faiss`` (+ ``.json``) and reused by later builds while
it fits the database size, so rebuilding after songs were added or removed never retrains (``index_training``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workflow_lib.common.atomic import new_npy_map
from workflow_lib.common.locks import folder_lock
from workflow_lib.common.progress import progress
from workflow_lib.database.fingerprint_file import (FingerprintFileError, ModelMismatchError, ShardMeta, check_model,
                                                    iter_rows, read_meta)
from workflow_lib.database.index import (INDEX_FORMAT, FingerprintDB, RowMap, read_sidecar, vectors_tmp_path,
                                         write_folder)
from workflow_lib.database.index_training import TrainSettings, default_nprobe, ensure_trained
from workflow_lib.database.vectors import normalize

log = logging.getLogger(__name__)

ADD_BATCH = 65536


def _check_same_model(metas: Sequence[tuple[Path, ShardMeta]]) -> ShardMeta:
    if not metas:
        raise ValueError("no fingerprint files given")
    first_path, first = metas[0]
    for path, m in metas[1:]:
        if not m.same_fingerprints_as(first):
            raise ModelMismatchError(f"{path} (model {m.model_checksum}, dim {m.dim}) does not match {first_path} "
                                     f"(model {first.model_checksum}, dim {first.dim}): re-extract all shards with "
                                     "one model")
    return first


def _plan_songs(paths: Sequence[Path], exclude: set[str]) -> tuple[list[tuple[Path, str, int]], list[str]]:
    """Songs to take from each file, in order, with their row counts; later duplicates are dropped (logged)."""
    plan: list[tuple[Path, str, int]] = []
    seen: dict[str, Path] = {}
    dropped: list[str] = []
    for p in paths:
        try:
            t = pq.read_table(p, columns=["song_id"], read_dictionary=["song_id"]).unify_dictionaries()
        except (pa.ArrowException, OSError) as exc:
            raise FingerprintFileError(f"{p}: corrupt fingerprint file ({exc}); delete it and rerun its extract "
                                       "job") from exc
        col = t.column("song_id").combine_chunks() if t.num_rows else None
        if col is None:
            continue
        codes = col.indices.to_numpy(zero_copy_only=False)
        names = col.dictionary.to_pylist()
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        ends = np.r_[starts[1:], len(codes)]
        for s, e in zip(starts, ends):
            sid = names[codes[s]]
            if sid in exclude:
                continue
            if sid in seen:
                log.warning("song %s is in both %s and %s; keeping the first", sid, seen[sid], p)
                dropped.append(sid)
                continue
            seen[sid] = p
            plan.append((p, sid, int(e - s)))
    return plan, dropped


def _iter_planned(plan: list[tuple[Path, str, int]]) -> Iterator[tuple[list[str], list[int], np.ndarray]]:
    """Stream (song ids, counts, float32 unit vectors) blocks of ~ADD_BATCH rows for the planned songs."""
    wanted: dict[Path, set[str]] = {}
    for p, sid, _ in plan:
        wanted.setdefault(p, set()).add(sid)
    ids: list[str] = []
    counts: list[int] = []
    embs: list[np.ndarray] = []
    n = 0
    for p in dict.fromkeys(p for p, _, _ in plan):
        keep = wanted[p]
        for batch_ids, _, emb in iter_rows(p):
            if not len(batch_ids):
                continue
            starts = np.flatnonzero(np.r_[True, batch_ids[1:] != batch_ids[:-1]])
            ends = np.r_[starts[1:], len(batch_ids)]
            for s, e in zip(starts, ends):
                sid = batch_ids[s]
                if sid not in keep:
                    continue
                if ids and ids[-1] == sid:  # a song continued across a batch boundary
                    counts[-1] += int(e - s)
                else:
                    ids.append(sid)
                    counts.append(int(e - s))
                embs.append(emb[s:e])
                n += int(e - s)
            if n >= ADD_BATCH and len(ids) > 1:
                # Emit whole songs only: the last one may continue in the next batch.
                block, cut = np.concatenate(embs), n - counts[-1]
                yield ids[:-1], counts[:-1], normalize(block[:cut])
                ids, counts, embs, n = ids[-1:], counts[-1:], [block[cut:]], counts[-1]
    if ids:
        yield ids, counts, normalize(np.concatenate(embs))


# ----------------------------------------------------------------------------------------------- index surgery

def _remove_rows(index: faiss.Index, rows: np.ndarray, vectors: np.ndarray) -> None:
    """Delete ``rows`` (sorted unique) and renumber the remaining ids to stay ``0..ntotal-1`` in row order.

    ``vectors`` (the stored float16 rows, before removal) is used where FAISS cannot remove in place.
    """
    if len(rows) == 0:
        return
    sel = faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(rows))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        if not isinstance(faiss.downcast_index(index), faiss.IndexFlatCodes):
            raise ValueError(f"index type {type(faiss.downcast_index(index)).__name__} does not support removal; "
                             "rebuild the database instead")
        index.remove_ids(sel)  # flat codes are compacted in order: ids shift exactly like our rows
        return
    if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan):
        # FAISS 1.15 fast-scan lists: vectors added after a remove_ids get wrong codes (packed blocks are not
        # repacked). Empty the lists instead (the trained quantizer and codebooks stay) and re-add the kept rows.
        keep = np.ones(len(vectors), dtype=bool)
        keep[rows] = False
        index.reset()
        step = ADD_BATCH * 4
        for lo in progress(range(0, len(vectors), step), desc="re-adding kept fingerprints", unit="block",
                           mininterval=10):
            block = np.asarray(vectors[lo:lo + step])[keep[lo:lo + step]]
            if len(block):
                index.add(normalize(block))
        return
    ivf.remove_ids(sel)
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        raise ValueError("IVF indexes with a direct map are not supported")
    inv = ivf.invlists
    for lst in range(ivf.nlist):
        n = inv.list_size(lst)
        if n == 0:
            continue
        # The ids of an in-memory list are one int64 array: renumber it in place.
        ids = faiss.rev_swig_ptr(inv.get_ids(lst), n)
        ids -= np.searchsorted(rows, ids)
    # Wrapping indexes (e.g. a pre-transform) keep their own count.
    if index is not ivf:
        index.ntotal = ivf.ntotal


def _copy_vectors(dst: np.ndarray, dst_off: int, src: np.ndarray, keep: np.ndarray | None = None,
                  step: int = 1 << 20) -> int:
    """Copy rows of a (memory-mapped) array in blocks; returns rows written."""
    n = 0
    for lo in range(0, len(src), step):
        block = src[lo:lo + step]
        if keep is not None:
            block = block[keep[lo:lo + step]]
        dst[dst_off + n:dst_off + n + len(block)] = block
        n += len(block)
    return n


# ----------------------------------------------------------------------------------------------- build / add / remove

def _fill(index: faiss.Index, plan: list[tuple[Path, str, int]], vec: np.ndarray, offset: int, desc: str
          ) -> tuple[list[str], list[int]]:
    ids: list[str] = []
    counts: list[int] = []
    total = sum(c for _, _, c in plan)
    with progress(total=total, desc=desc, unit="fp", unit_scale=True, mininterval=10) as bar:
        for b_ids, b_counts, x in _iter_planned(plan):
            index.add(x)
            vec[offset:offset + len(x)] = x.astype(np.float16)
            offset += len(x)
            ids += b_ids
            counts += b_counts
            bar.update(len(x))
    return ids, counts


def build_index(fingerprint_paths: Sequence[str | Path], out_dir: str | Path, *,
                settings: TrainSettings = TrainSettings(), exclude_songs: Iterable[str] = (),
                nprobe: int | str = "auto", rerank: int = 100, threads: int = 1,
                cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The ``build_index`` rule: train (or reuse the cached training), add every fingerprint file, write the folder.

    The trained empty index is kept in ``cache_dir`` (default ``<out_dir>/.cache``); a rebuild after songs were
    added or removed reuses it while it fits (see ``TrainSettings.retrain_growth``), so growing the database
    never retrains it.
    """
    faiss.omp_set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    paths = [Path(p) for p in fingerprint_paths]
    metas = [(p, read_meta(p)) for p in paths]
    first = _check_same_model(metas)
    exclude = set(exclude_songs)
    plan, _ = _plan_songs(paths, exclude)
    total = sum(c for _, _, c in plan)
    index, tinfo = ensure_trained(Path(cache_dir) if cache_dir else out_dir / ".cache", paths, first, total,
                                  settings)
    tmp = vectors_tmp_path(out_dir)
    try:
        vec = new_npy_map(tmp, np.float16, (total, index.d))
        ids, counts = _fill(index, plan, vec, 0, "build index")
        vec.flush()
        del vec
        rows = RowMap.from_counts(ids, counts)
        info = {"format": INDEX_FORMAT, "model_checksum": first.model_checksum, "frontend": first.frontend,
                "sample_rate": first.sample_rate, "segment_samples": first.segment_samples,
                "hop_samples": first.hop_samples,
                "dim": int(index.d), "factory": tinfo["factory"], "metric": "inner_product",
                "nprobe": default_nprobe(index) if nprobe == "auto" else int(nprobe),
                "rerank": rerank, "vectors_dtype": "float16",
                "trained": {k: tinfo[k] for k in ("n_train", "n_vectors_at_training", "train_seconds",
                                                  "trained_at")},
                "sources": [str(p) for p in paths], "excluded": sorted(exclude),
                "build_seconds": round(time.perf_counter() - t0, 3),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "history": []}
        with folder_lock(out_dir):
            write_folder(out_dir, index, rows, tmp, info)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("index %s: %d fingerprints of %d songs (%s) in %.1f s", out_dir, total, len(ids), tinfo["factory"],
             time.perf_counter() - t0)
    return read_sidecar(out_dir)


def _load_for_update(folder: Path) -> tuple[faiss.Index, RowMap, np.ndarray, dict[str, Any]]:
    db = FingerprintDB.load(folder)
    return db.index, db.rows, db.vectors, db.info


def add_to_index(folder: str | Path, fingerprint_paths: Sequence[str | Path], *, threads: int = 1,
                 replace: bool = False, lock: bool = True) -> dict[str, Any]:
    """Append the songs of fingerprint files to an existing index (no retraining). Songs already present are
    refused unless ``replace`` (then the old rows are removed first). ``lock`` False: the caller holds the folder's
    edit lock (``common.locks.folder_lock``)."""
    if lock:
        with folder_lock(folder):
            return add_to_index(folder, fingerprint_paths, threads=threads, replace=replace, lock=False)
    faiss.omp_set_num_threads(max(1, threads))
    folder = Path(folder)
    index, rows, vectors, info = _load_for_update(folder)
    paths = [Path(p) for p in fingerprint_paths]
    for p in paths:
        m = read_meta(p)
        check_model(m, info["model_checksum"], f"fingerprint file {p}")
        if m.dim != index.d:
            raise ModelMismatchError(f"{p}: dimension {m.dim} does not match the index ({index.d})")
    plan, _ = _plan_songs(paths, set())
    present = [sid for _, sid, _ in plan if sid in set(rows.song_ids)]
    if present and not replace:
        raise ValueError(f"{len(present)} songs are already in the database (e.g. {present[0]}); remove them "
                         "first or use replace")
    if present:
        index, rows, vectors, info = _remove_songs(folder, index, rows, vectors, info, set(present))
    n_new = sum(c for _, _, c in plan)
    t0 = time.perf_counter()
    tmp = vectors_tmp_path(folder)
    try:
        vec = new_npy_map(tmp, np.float16, (rows.ntotal + n_new, index.d))
        _copy_vectors(vec, 0, vectors)
        del vectors
        ids, counts = _fill(index, plan, vec, rows.ntotal, "add to index")
        vec.flush()
        del vec
        new_rows = RowMap.from_counts(list(rows.song_ids) + ids, list(rows.counts) + counts)
        info = {**info, "history": info.get("history", []) + [
            {"op": "add", "songs": len(ids), "rows": n_new, "seconds": round(time.perf_counter() - t0, 3),
             "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sources": [str(p) for p in paths]}]}
        write_folder(folder, index, new_rows, tmp, info)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("added %d songs (%d fingerprints) to %s", len(ids), n_new, folder)
    return read_sidecar(folder)


def _remove_songs(folder: Path, index: faiss.Index, rows: RowMap, vectors: np.ndarray, info: dict[str, Any],
                  song_ids: set[str]) -> tuple[faiss.Index, RowMap, np.ndarray, dict[str, Any]]:
    t0 = time.perf_counter()
    pos = [i for i, s in enumerate(rows.song_ids) if s in song_ids]
    if not pos:
        return index, rows, vectors, info
    drop = np.concatenate([np.arange(rows.start[i], rows.start[i + 1]) for i in pos]).astype(np.int64)
    drop.sort()
    _remove_rows(index, drop, vectors)
    keep_mask = np.ones(rows.ntotal, dtype=bool)
    keep_mask[drop] = False
    keep_song = np.ones(len(rows.song_ids), dtype=bool)
    keep_song[pos] = False
    new_rows = RowMap.from_counts(rows.song_ids[keep_song], rows.counts[keep_song])
    tmp = vectors_tmp_path(folder)
    try:
        vec = new_npy_map(tmp, np.float16, (new_rows.ntotal, index.d))
        _copy_vectors(vec, 0, vectors, keep_mask)
        vec.flush()
        del vec, vectors
        info = {**info, "history": info.get("history", []) + [
            {"op": "remove", "songs": len(pos), "rows": int(len(drop)),
             "seconds": round(time.perf_counter() - t0, 3), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]}
        write_folder(folder, index, new_rows, tmp, info)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("removed %d songs (%d fingerprints) from %s", len(pos), len(drop), folder)
    return _load_for_update(folder)


def remove_from_index(folder: str | Path, song_ids: Iterable[str], *, threads: int = 1, lock: bool = True
                      ) -> tuple[list[str], list[str]]:
    """Remove songs by id; returns (removed, not found). Rows are compacted, ids stay consistent."""
    if lock:
        with folder_lock(folder):
            return remove_from_index(folder, song_ids, threads=threads, lock=False)
    faiss.omp_set_num_threads(max(1, threads))
    folder = Path(folder)
    index, rows, vectors, info = _load_for_update(folder)
    wanted = list(dict.fromkeys(song_ids))
    present = set(rows.song_ids)
    found = [s for s in wanted if s in present]
    missing = [s for s in wanted if s not in present]
    _remove_songs(folder, index, rows, vectors, info, set(found))
    return found, missing
