"""The FAISS fingerprint database: building, incremental add/remove, loading and search (the index's factory and
training: ``index_training``).

Files in an index folder (see docs/ARCHITECTURE.md):

- ``index.faiss``: inner-product index over L2-normalised fingerprints; FAISS id == row.
- ``index_meta.parquet``: one row per fingerprint in row order: ``song_id`` (dictionary-encoded string),
  ``segment`` (int32). Rows of a song are contiguous and its segments run 0..J-1, so (song, segment) -> row is
  ``song_start[song] + segment``.
- ``vectors.f16.npy``: the fingerprints as float16, row-aligned, memory-mapped on load for exact re-ranking of the
  approximate (IVF-PQ) candidates and for re-scoring aligned segments.
- ``index.json``: sidecar (format, model checksum, front end, factory, counts, nprobe, build time, history).

The trained, empty index is cached in ``<index>/.cache/trained.faiss`` (+ ``.json``) and reused by later builds while
it fits the database size, so rebuilding after songs were added or removed never retrains. ``add_to_index`` and
``remove_from_index`` edit a built folder in place (the command-line tool); removing rows compacts the numbering
(FAISS ids are renumbered in place for IVF indexes), so rows stay ``0..ntotal-1`` everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import pandas as pd

from workflow_lib.audio.segments import check_framing
from workflow_lib.common.locks import folder_lock
from workflow_lib.common.atomic import atomic_path, new_npy_map, write_text_atomic
from workflow_lib.common.progress import progress
from workflow_lib.database.fingerprint_file import (FingerprintFileError, ModelMismatchError, ShardMeta, check_model,
                                                    iter_rows, read_meta)
from workflow_lib.database.index_training import TrainSettings, default_nprobe, ensure_trained
from workflow_lib.database.other_music import count_other_music
from workflow_lib.database.vectors import half_to_float, normalize

log = logging.getLogger(__name__)

INDEX_FORMAT = "nafp-index/1"
INDEX_FILE, META_FILE, VECTORS_FILE, SIDECAR_FILE = "index.faiss", "index_meta.parquet", "vectors.f16.npy", \
    "index.json"
ADD_BATCH = 65536


class IndexFileError(ValueError):
    """An index folder is missing files, corrupt or inconsistent; the message names the file and the fix."""


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


# ----------------------------------------------------------------------------------------------- row bookkeeping

@dataclass
class RowMap:
    """Row -> (song, segment) for contiguous songs: ``song_ids[i]`` owns rows ``start[i]:start[i+1]``."""
    song_ids: np.ndarray  # (n_songs,) object (str)
    start: np.ndarray  # (n_songs + 1,) int64

    @property
    def ntotal(self) -> int:
        return int(self.start[-1])

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.start)

    @classmethod
    def from_counts(cls, song_ids: Sequence[str], counts: Sequence[int]) -> "RowMap":
        return cls(np.asarray(list(song_ids), dtype=object),
                   np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64))

    def song_index(self) -> np.ndarray:
        """Per-row song index (int32)."""
        return np.repeat(np.arange(len(self.song_ids), dtype=np.int32), self.counts)

    def segments(self) -> np.ndarray:
        return (np.arange(self.ntotal, dtype=np.int64) - np.repeat(self.start[:-1], self.counts)).astype(np.int32)

    def write(self, path: Path) -> None:
        sid = pa.DictionaryArray.from_arrays(pa.array(self.song_index()), pa.array(list(self.song_ids),
                                                                                    type=pa.string()))
        table = pa.table({"song_id": sid, "segment": pa.array(self.segments())})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, row_group_size=1 << 20)

    @classmethod
    def read(cls, path: Path) -> "RowMap":
        """Read and check the id map: each song one contiguous run with segments 0..J-1."""
        try:
            t = pq.read_table(path, columns=["song_id", "segment"], read_dictionary=["song_id"]).unify_dictionaries()
        except (pa.ArrowException, OSError) as exc:
            raise IndexFileError(f"{path}: corrupt id map ({exc}); rebuild the index") from exc
        col = t.column("song_id").combine_chunks() if t.num_rows else pa.array([], pa.dictionary(pa.int32(),
                                                                                                pa.string()))
        if not pa.types.is_dictionary(col.type):
            col = col.dictionary_encode()
        codes = col.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        names = np.asarray(col.dictionary.to_pylist(), dtype=object)
        seg = t.column("segment").to_numpy().astype(np.int64)
        n = len(codes)
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if n else np.zeros(0, dtype=np.int64)
        run_codes = codes[starts]
        if len(np.unique(run_codes)) != len(run_codes):
            raise IndexFileError(f"{path}: a song's rows are not contiguous; rebuild the index")
        start = np.r_[starts, n].astype(np.int64)
        expected = np.arange(n, dtype=np.int64) - np.repeat(start[:-1], np.diff(start))
        if not np.array_equal(seg, expected):
            raise IndexFileError(f"{path}: segments are not 0..J-1 within each song; rebuild the index")
        return cls(names[run_codes] if n else np.zeros(0, dtype=object), start)


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


# ----------------------------------------------------------------------------------------------- the database

# Gathers of more rows than this read the vector map in row order (sorted, deduplicated first).
SORTED_GATHER_ROWS = 1 << 16


class FingerprintDB:
    """A loaded fingerprint database (``index.faiss`` + id map + float16 vectors + sidecar).

    ``search`` returns inner-product similarities and rows; approximate indexes are re-ranked exactly with the
    memory-mapped float16 vectors, so returned similarities are always exact dot products.
    """

    def __init__(self, index: faiss.Index, rows: RowMap, vectors: np.ndarray, info: dict[str, Any],
                 folder: Path | None = None):
        self.index, self.rows, self.vectors, self.info, self.folder = index, rows, vectors, info, folder
        self._song_pos = {s: i for i, s in enumerate(rows.song_ids)}
        self._row_song: np.ndarray | None = None
        self._meta = None
        self.exact = faiss.try_extract_index_ivf(index) is None and \
            isinstance(faiss.downcast_index(index), faiss.IndexFlat)
        self.rerank = int(info.get("rerank", 100))
        self.set_nprobe(int(info.get("nprobe") or default_nprobe(index)))

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True, nprobe: int | None = None,
             expect_model: str | None = None) -> "FingerprintDB":
        """Load an index folder; ``expect_model`` (a model checksum) refuses a database made by another model."""
        folder = Path(folder)
        info = read_sidecar(folder)
        if expect_model is not None and info["model_checksum"] != expect_model:
            raise ModelMismatchError(f"{folder}: the index was built with model {info['model_checksum']}, but the "
                                     f"model in use is {expect_model}: rebuild the index with this model")
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError as exc:
            raise IndexFileError(f"{folder / INDEX_FILE}: corrupt FAISS index ({str(exc).splitlines()[-1]}); "
                                 "rebuild the index") from exc
        rows = RowMap.read(folder / META_FILE)
        try:
            vectors = np.load(folder / VECTORS_FILE, mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as exc:
            raise IndexFileError(f"{folder / VECTORS_FILE}: unreadable vectors ({exc}); rebuild the index") from exc
        counts = {"index.faiss": index.ntotal, "index_meta.parquet": rows.ntotal, "vectors.f16.npy": len(vectors),
                  "index.json": info.get("ntotal")}
        if len(set(counts.values())) != 1 or vectors.ndim != 2 or vectors.shape[1] != index.d:
            raise IndexFileError(f"{folder}: index files disagree ({counts}, vectors {vectors.shape}, dim "
                                 f"{index.d}); an update was interrupted: rebuild the index")
        db = cls(index, rows, vectors, info, folder)
        if nprobe is not None:
            db.set_nprobe(nprobe)
        return db

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return self.rows.ntotal

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def n_songs(self) -> int:
        return len(self.rows.song_ids)

    @property
    def model_checksum(self) -> str:
        return str(self.info["model_checksum"])

    @property
    def factory(self) -> str:
        return str(self.info["factory"])

    @property
    def song_ids(self) -> np.ndarray:
        return self.rows.song_ids

    @property
    def meta(self) -> "pd.DataFrame":
        """Row -> ``song_id`` (categorical) and ``segment`` as a DataFrame (built on first use)."""
        import pandas as pd

        if getattr(self, "_meta", None) is None:
            codes = self.rows.song_index() if self._row_song is None else self._row_song
            self._meta = pd.DataFrame({
                "song_id": pd.Categorical.from_codes(codes, categories=pd.Index(self.rows.song_ids, dtype=object)),
                "segment": self.rows.segments()})
        return self._meta

    def set_nprobe(self, nprobe: int) -> None:
        """IVF lists visited per query (an HNSW coarse quantizer searches 2x as wide to find them)."""
        self.nprobe = int(nprobe)
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.nprobe = max(1, self.nprobe)
            quantizer = faiss.downcast_index(ivf.quantizer)
            if isinstance(quantizer, faiss.IndexHNSW):
                quantizer.hnsw.efSearch = max(2 * ivf.nprobe, 64)

    # -- search -------------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 10, nprobe: int | None = None,
               rerank: int | None = None, exclude_song: str | Iterable[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows per query by inner product -> ``(sims (n, k) float32, rows (n, k) int64)``.

        Missing neighbours (fewer than ``k`` rows, or lists too sparse) have row -1 and similarity -inf. For
        approximate indexes ``rerank`` (default from the sidecar) candidates are re-scored exactly.
        ``exclude_song`` (one id or a set) searches as if those songs were not in the database (their rows are
        skipped by a FAISS ID selector): queries that stand for songs nobody indexed.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {q.shape}")
        if nprobe is not None and nprobe != self.nprobe:
            self.set_nprobe(nprobe)
        if len(q) == 0 or self.ntotal == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        params = self._exclusion(exclude_song)
        if self.exact:
            sims, rows = self.index.search(q, k, params=params)
        else:
            kk = max(k, self.rerank if rerank is None else rerank)
            _, cand = self.index.search(q, kk, params=params)
            sims = self.scores(q, cand)
            order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            sims, rows = np.take_along_axis(sims, order, 1), np.take_along_axis(cand, order, 1)
        sims = sims.astype(np.float32, copy=False)
        sims[rows < 0] = -np.inf
        return sims, rows.astype(np.int64, copy=False)

    def _exclusion(self, songs: str | Iterable[str] | None):
        """FAISS search parameters that skip the rows of one song or of a set of songs (None: search everything)."""
        ids = [songs] if isinstance(songs, str) else list(songs or ())
        pos = [p for p in (self.song_position(s) for s in ids) if p >= 0]
        if not pos:
            return None
        if len(pos) == 1:
            inner = faiss.IDSelectorRange(int(self.rows.start[pos[0]]), int(self.rows.start[pos[0] + 1]))
        else:
            rows = np.concatenate([np.arange(self.rows.start[i], self.rows.start[i + 1]) for i in pos]).astype(np.int64)
            inner = faiss.IDSelectorBatch(len(rows), faiss.swig_ptr(rows))
            inner._rows = rows  # the selector reads this array: keep it alive with the selector
        sel = faiss.IDSelectorNot(inner)
        ivf = faiss.try_extract_index_ivf(self.index)
        params = faiss.SearchParametersIVF(sel=sel, nprobe=max(1, self.nprobe)) if ivf is not None else \
            faiss.SearchParameters(sel=sel)
        params._keep_alive = (inner, sel)  # SWIG objects hold raw pointers to these: keep them with the params
        return params

    def scores(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact dot products ``queries[i] . vectors[rows[i, j]]`` -> ``(n, m)`` float32 (-inf where row < 0)."""
        q = np.asarray(queries, dtype=np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2 or q.ndim != 2 or len(rows) != len(q):
            raise ValueError(f"scores needs queries (n, D) and rows (n, m), got {q.shape} and {rows.shape}")
        valid = (rows >= 0) & (rows < self.ntotal)
        if self.ntotal == 0:
            return np.full(rows.shape, -np.inf, np.float32)
        vectors = np.asarray(self.vectors)  # a plain view of the map: indexing a np.memmap costs more than the read
        safe = np.where(valid, rows, 0)
        if safe.size > SORTED_GATHER_ROWS:
            # Reading the memory map in row order is much kinder to the page cache than random order.
            uniq, inv = np.unique(safe.ravel(), return_inverse=True)
            v = half_to_float(vectors[uniq])[inv.ravel()].reshape(*rows.shape, self.dim)
        else:  # a window's few thousand rows (the listener, the scan): sorting them costs more than it saves
            v = half_to_float(vectors[safe])
        out = np.matmul(v, q[:, :, None])[:, :, 0]  # batched mat-vec; ~10x faster than the einsum equivalent
        return np.where(valid, out, -np.inf).astype(np.float32, copy=False)

    # -- row <-> (song, segment) --------------------------------------------------------------------------------
    def row_song_index(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows -> (song index into ``song_ids`` (int32), segment (int32)); -1 for rows < 0."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._row_song is None:
            self._row_song = self.rows.song_index()
        valid = (rows >= 0) & (rows < self.ntotal)
        safe = np.where(valid, rows, 0)
        song = np.where(valid, self._row_song[safe] if self.ntotal else 0, -1).astype(np.int32)
        seg = np.where(valid, safe - self.rows.start[np.maximum(song, 0)], -1).astype(np.int32)
        return song, seg

    def row_song(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows -> (song ids (object array, None for rows < 0), segments (int32, -1 for rows < 0))."""
        song, seg = self.row_song_index(rows)
        ids = np.where(song >= 0, self.rows.song_ids[np.maximum(song, 0)] if self.n_songs else None, None)
        return ids, seg

    def song_position(self, song_id: str) -> int:
        """Index of a song in ``song_ids``, -1 when it is not in the database."""
        return self._song_pos.get(song_id, -1)

    def song_rows(self, song_id: str) -> np.ndarray:
        """All rows of a song (segment j is element j); empty when the song is not in the database."""
        i = self.song_position(song_id)
        if i < 0:
            return np.zeros(0, dtype=np.int64)
        return np.arange(self.rows.start[i], self.rows.start[i + 1], dtype=np.int64)

    def rows_for(self, songs: np.ndarray | Sequence[int], segments: np.ndarray | Sequence[int]) -> np.ndarray:
        """(song index, segment) pairs -> rows, -1 where the segment is outside the song (vectorised)."""
        songs = np.asarray(songs, dtype=np.int64)
        segments = np.asarray(segments, dtype=np.int64)
        ok = (songs >= 0) & (songs < self.n_songs)
        s = np.where(ok, songs, 0)
        counts = self.rows.counts
        ok &= (segments >= 0) & (segments < (counts[s] if self.n_songs else 0))
        return np.where(ok, self.rows.start[s] + segments if self.n_songs else -1, -1).astype(np.int64)

    def row_of(self, song_id: str, segment: int) -> int:
        i = self.song_position(song_id)
        return int(self.rows_for([i], [segment])[0]) if i >= 0 else -1

    def memory_bytes(self) -> dict[str, int]:
        """Approximate resident bytes: FAISS structures and the id map (vectors are memory-mapped)."""
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            inv_bytes = self.ntotal * (ivf.code_size + 8)  # codes + 64-bit ids in the inverted lists
            index_bytes = inv_bytes + ivf.nlist * self.dim * 4
        else:
            index_bytes = self.ntotal * faiss.downcast_index(self.index).code_size \
                if hasattr(faiss.downcast_index(self.index), "code_size") else 0
        return {"index": int(index_bytes), "row_map": int(self.ntotal * 4 + len(self.rows.start) * 8),
                "vectors_mmap": int(self.vectors.nbytes)}


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    recover_folder(folder)
    for name in (SIDECAR_FILE, INDEX_FILE, META_FILE, VECTORS_FILE):
        if not (folder / name).is_file():
            raise IndexFileError(f"{folder / name}: missing; build the index first (snakemake build_index)")
    try:
        info = json.loads((folder / SIDECAR_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFileError(f"{folder / SIDECAR_FILE}: corrupt sidecar ({exc}); rebuild the index") from exc
    if info.get("format") != INDEX_FORMAT:
        raise IndexFileError(f"{folder / SIDECAR_FILE}: not an index sidecar (format {info.get('format')!r})")
    try:
        check_framing(str(folder / SIDECAR_FILE), info.get("sample_rate"), info.get("segment_samples"),
                      info.get("hop_samples"))
    except ValueError as exc:
        raise IndexFileError(str(exc)) from None
    return info


# ----------------------------------------------------------------------------------------------- build / add / remove

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


COMMIT_PREFIX, COMMIT_MARKER = ".commit-", "COMMITTED"
FOLDER_FILES = (VECTORS_FILE, META_FILE, INDEX_FILE, SIDECAR_FILE)  # the order they are put in place: sidecar last


def _write_folder(folder: Path, index: faiss.Index, rows: RowMap, vectors_tmp: Path, info: dict[str, Any]) -> None:
    """Replace the index files as one commit: the new set is written into a staging folder, a marker file makes it
    committed, then the files are renamed into place (sidecar last). A kill before the marker leaves the old set
    (the staging folder is discarded later); after it, ``recover_folder`` finishes the renames."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f"{COMMIT_PREFIX}{os.getpid()}-{time.time_ns()}"
    staging.mkdir()
    os.replace(vectors_tmp, staging / VECTORS_FILE)
    rows.write(staging / META_FILE)
    faiss.write_index(index, str(staging / INDEX_FILE))
    info = {**info, "ntotal": rows.ntotal, "n_songs": len(rows.song_ids),
            "other_music_songs": count_other_music(rows.song_ids), "index_bytes": (staging / INDEX_FILE).stat().st_size}
    (staging / SIDECAR_FILE).write_text(json.dumps(info, indent=2))
    _fsync_folder(staging)
    write_text_atomic(staging / COMMIT_MARKER, "a complete set of index files\n")  # the commit point
    _finish_commit(folder, staging)


def _fsync_folder(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _finish_commit(folder: Path, staging: Path) -> None:
    for name in FOLDER_FILES:
        if (staging / name).exists():
            os.replace(staging / name, folder / name)
    shutil.rmtree(staging, ignore_errors=True)


def recover_folder(folder: str | Path) -> None:
    """Finish a committed edit that a kill interrupted, discard an uncommitted one, and drop temporary files that a
    killed build left behind. Skipped while another process holds the folder's edit lock."""
    from workflow_lib.common.locks import LockedError, try_lock

    folder = Path(folder)
    if not folder.is_dir():
        return
    leftovers = [p for p in folder.iterdir() if p.name.startswith(COMMIT_PREFIX) or
                 (p.name.startswith(".") and ".tmp" in p.name) or
                 any(p.name.startswith(f".{name}.") for name in FOLDER_FILES)]
    if not leftovers:
        return
    try:
        with try_lock(folder):
            for p in leftovers:
                if p.name.startswith(COMMIT_PREFIX) and (p / COMMIT_MARKER).exists():
                    log.warning("%s: finishing an index update that was interrupted after its commit", folder)
                    _finish_commit(folder, p)
                elif p.is_dir():
                    log.warning("%s: discarding an index update that was interrupted before its commit", folder)
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    except LockedError:
        pass  # an edit is running: it finishes its own commit


def _vectors_tmp(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".{VECTORS_FILE}.{os.getpid()}.{time.time_ns()}.tmp.npy"


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
    tmp = _vectors_tmp(out_dir)
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
            _write_folder(out_dir, index, rows, tmp, info)
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
    tmp = _vectors_tmp(folder)
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
        _write_folder(folder, index, new_rows, tmp, info)
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
    tmp = _vectors_tmp(folder)
    try:
        vec = new_npy_map(tmp, np.float16, (new_rows.ntotal, index.d))
        _copy_vectors(vec, 0, vectors, keep_mask)
        vec.flush()
        del vec, vectors
        info = {**info, "history": info.get("history", []) + [
            {"op": "remove", "songs": len(pos), "rows": int(len(drop)),
             "seconds": round(time.perf_counter() - t0, 3), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]}
        _write_folder(folder, index, new_rows, tmp, info)
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
