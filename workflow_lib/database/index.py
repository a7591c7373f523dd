"""The FAISS fingerprint database's folder: its files, each edit committed whole, and loading and searching it
(``FingerprintDB``). Building it and editing it in place: ``index_build``; the index's factory and training:
``index_training``.

Files in an index folder (see docs/ARCHITECTURE.md):

- ``index.faiss``: inner-product index over L2-normalised fingerprints; FAISS id == row.
- ``index_meta.parquet``: one row per fingerprint in row order: ``song_id`` (dictionary-encoded string),
  ``segment`` (int32). Rows of a song are contiguous and its segments run 0..J-1, so (song, segment) -> row is
  ``song_start[song] + segment``.
- ``vectors.f16.npy``: the fingerprints as float16, row-aligned, memory-mapped on load for exact re-ranking of the
  approximate (IVF-PQ) candidates and for re-scoring aligned segments.
- ``index.json``: sidecar (format, model checksum, front end, factory, counts, nprobe, build time, history).

A new set of files is written into a staging folder and committed by a marker file before it is renamed into place
(``write_folder``); reading a folder first finishes a committed edit that a kill interrupted (``recover_folder``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import pandas as pd

from workflow_lib.audio.segments import check_framing
from workflow_lib.common.atomic import atomic_path, write_text_atomic
from workflow_lib.database.fingerprint_file import ModelMismatchError
from workflow_lib.database.index_training import default_nprobe
from workflow_lib.database.other_music import count_other_music
from workflow_lib.database.vectors import half_to_float

log = logging.getLogger(__name__)

INDEX_FORMAT = "nafp-index/1"
INDEX_FILE, META_FILE, VECTORS_FILE, SIDECAR_FILE = "index.faiss", "index_meta.parquet", "vectors.f16.npy", \
    "index.json"


class IndexFileError(ValueError):
    """An index folder is missing files, corrupt or inconsistent; the message names the file and the fix."""


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


# ----------------------------------------------------------------------------------------------- commits

COMMIT_PREFIX, COMMIT_MARKER = ".commit-", "COMMITTED"
FOLDER_FILES = (VECTORS_FILE, META_FILE, INDEX_FILE, SIDECAR_FILE)  # the order they are put in place: sidecar last


def write_folder(folder: Path, index: faiss.Index, rows: RowMap, vectors_tmp: Path, info: dict[str, Any]) -> None:
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


def vectors_tmp_path(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".{VECTORS_FILE}.{os.getpid()}.{time.time_ns()}.tmp.npy"


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
