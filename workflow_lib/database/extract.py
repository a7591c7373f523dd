"""Fingerprint extraction into Parquet shards.

The database songs (configured splits of the manifest) are assigned to ``n_shards`` shards by a hash of the song id,
so a song's shard never depends on which other songs exist and each shard is an independent Snakemake job. A shard
file has one row per 1 s segment (0.5 s hop): ``song_id``, ``segment`` (int32), ``embedding``
(``fixed_size_list<float16|float32>[D]``), rows of one song contiguous and in segment order, and schema metadata
naming the model checksum, front-end parameters, hop and segment length (see docs/ARCHITECTURE.md).

Resumption and reuse: new fingerprints are first written as small part files under
``<out dir>/.cache/<shard name>/`` (each atomically, every ``flush_rows`` rows or ``flush_seconds``), and a finished
shard is hard-linked into that folder. A rerun (after a kill, or after songs were added or removed) reuses every song
whose file signature and model are unchanged and extracts only the rest; the final file is then written in one pass,
atomically. Snakemake deletes a job's outputs before running it, which is why the cache lives beside the output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm import tqdm

from workflow_lib import HOP_SAMPLES, SAMPLE_RATE, SEGMENT_SAMPLES
from workflow_lib.common.atomic import atomic_path
from workflow_lib.audio.files import AudioDecodeError
from workflow_lib.audio.segments import check_framing
from workflow_lib.model.embed import DEFAULT_BATCH_SIZE, embed_file, embedding_dim, resolve_device

log = logging.getLogger(__name__)

FORMAT = "nafp-fingerprints/1"
DTYPES = {"float16": np.float16, "float32": np.float32}
ROW_GROUP_ROWS = 65536
COMPILE_MIN_AUDIO_S = 1800.0
_SIG_BYTES = 1 << 16


class FingerprintFileError(ValueError):
    """A fingerprint file is missing, corrupt or not in the expected format; the message names the file."""


class ModelMismatchError(ValueError):
    """Fingerprints or an index were made by a different model (or front end) than the one in use."""


@dataclass(frozen=True)
class ModelIdentity:
    """What makes fingerprints comparable: the model file checksum, its front end and output dimension."""
    checksum: str
    frontend: dict[str, Any]
    dim: int


def fingerprinter_identity(fingerprinter: nn.Module, checksum: str) -> ModelIdentity:
    fc = getattr(fingerprinter, "frontend_config", None)
    frontend = fc.to_dict() if hasattr(fc, "to_dict") else (dict(fc) if isinstance(fc, dict) else {})
    return ModelIdentity(checksum, frontend, embedding_dim(fingerprinter))


def load_model(model_path: str | Path, device: str | torch.device = "auto") -> tuple[nn.Module, ModelIdentity]:
    """Load ``model.pt`` (eval mode, on ``device``) and its identity."""
    from workflow_lib.model.model_file import load_fingerprinter, model_checksum  # the model stage's module; imported when needed

    dev = resolve_device(device)
    fingerprinter = load_fingerprinter(model_path, dev)
    return fingerprinter, fingerprinter_identity(fingerprinter, model_checksum(model_path))


@dataclass
class ShardMeta:
    """Schema metadata of a fingerprint file."""
    model_checksum: str
    frontend: dict[str, Any]
    dim: int
    dtype: str = "float16"
    hop_samples: int = HOP_SAMPLES
    segment_samples: int = SEGMENT_SAMPLES
    sample_rate: int = SAMPLE_RATE
    n_songs: int = 0
    n_rows: int = 0
    # song_id -> file signature, for reuse on reruns; songs that could not be fingerprinted, with the reason.
    sources: dict[str, str] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    # Anything else (shard number, catalogue rows of songs added from the command line...).
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @classmethod
    def for_identity(cls, identity: ModelIdentity, dtype: str, **kw: Any) -> "ShardMeta":
        return cls(model_checksum=identity.checksum, frontend=dict(identity.frontend), dim=identity.dim,
                   dtype=dtype, **kw)

    def to_metadata(self) -> dict[str, str]:
        return {"format": self.format, "model_checksum": self.model_checksum,
                "frontend": json.dumps(self.frontend, sort_keys=True), "dim": str(self.dim), "dtype": self.dtype,
                "hop_samples": str(self.hop_samples), "segment_samples": str(self.segment_samples),
                "sample_rate": str(self.sample_rate), "n_songs": str(self.n_songs), "n_rows": str(self.n_rows),
                "sources": json.dumps(self.sources, sort_keys=True), "skipped": json.dumps(self.skipped),
                "extra": json.dumps(self.extra, sort_keys=True)}

    @classmethod
    def from_schema(cls, schema: pa.Schema, path: str | Path) -> "ShardMeta":
        md = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        if md.get("format") != FORMAT:
            raise FingerprintFileError(f"{path}: not a fingerprint file (format {md.get('format')!r}, "
                                       f"expected {FORMAT!r})")
        try:
            return cls(model_checksum=md["model_checksum"], frontend=json.loads(md["frontend"]),
                       dim=int(md["dim"]), dtype=md["dtype"], hop_samples=int(md["hop_samples"]),
                       segment_samples=int(md["segment_samples"]), sample_rate=int(md["sample_rate"]),
                       n_songs=int(md["n_songs"]), n_rows=int(md["n_rows"]), sources=json.loads(md["sources"]),
                       skipped=json.loads(md["skipped"]), extra=json.loads(md.get("extra", "{}")))
        except (KeyError, ValueError) as exc:
            raise FingerprintFileError(f"{path}: damaged fingerprint metadata ({exc!r})") from exc

    def same_fingerprints_as(self, other: "ShardMeta") -> bool:
        """True when rows of both files are interchangeable (same model, front end, framing, dim, dtype)."""
        return (self.model_checksum, self.frontend, self.dim, self.dtype, self.hop_samples, self.segment_samples,
                self.sample_rate) == (other.model_checksum, other.frontend, other.dim, other.dtype,
                                      other.hop_samples, other.segment_samples, other.sample_rate)


def check_model(meta: ShardMeta, checksum: str, what: str) -> None:
    """Refuse fingerprints made by another model, naming both checksums."""
    if meta.model_checksum != checksum:
        raise ModelMismatchError(f"{what} was made by model {meta.model_checksum}, but the model in use is "
                                 f"{checksum}: re-extract the fingerprints (and rebuild the index) with this model")


# ----------------------------------------------------------------------------------------------- song selection

def shard_of(song_id: str, n_shards: int) -> int:
    """Shard number of a song: a hash of its id, so it never depends on the other songs."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return int.from_bytes(hashlib.sha1(song_id.encode()).digest()[:8], "big") % n_shards


def select_database_songs(songs: pd.DataFrame, splits: pd.DataFrame, include_splits: list[str]) -> pd.DataFrame:
    """Manifest rows of the songs whose split is in ``include_splits``, sorted by song id."""
    missing = {"song_id", "path"} - set(songs.columns)
    if missing:
        raise ValueError(f"songs table lacks columns {sorted(missing)}")
    merged = songs.merge(splits[["song_id", "split"]], on="song_id", how="left", validate="one_to_one")
    unsplit = merged["split"].isna().sum()
    if unsplit:
        raise ValueError(f"{unsplit} manifest songs have no split: the splits table is older than the manifest")
    out = merged[merged["split"].isin(include_splits)]
    return out.sort_values("song_id", kind="stable").reset_index(drop=True)


def shard_songs(db_songs: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} out of range for {n_shards} shards")
    mask = np.array([shard_of(s, n_shards) == shard for s in db_songs["song_id"]], dtype=bool)
    return db_songs[mask].sort_values("song_id", kind="stable").reset_index(drop=True)


def file_signature(path: str | Path) -> str:
    """Cheap content signature (size + first and last 64 KiB): unchanged when a folder is moved or copied."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_SIG_BYTES))
        if size > _SIG_BYTES:
            f.seek(max(_SIG_BYTES, size - _SIG_BYTES))
            h.update(f.read(_SIG_BYTES))
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- file format

def fingerprint_schema(meta: ShardMeta) -> pa.Schema:
    value_type = pa.float16() if meta.dtype == "float16" else pa.float32()
    return pa.schema([("song_id", pa.string()), ("segment", pa.int32()),
                      ("embedding", pa.list_(value_type, meta.dim))], metadata=meta.to_metadata())


def fingerprint_table(song_ids: list[str], counts: list[int], embeddings: np.ndarray, meta: ShardMeta) -> pa.Table:
    """Rows for whole songs: ``counts[i]`` consecutive segments (0..n-1) of ``song_ids[i]``."""
    dtype = DTYPES[meta.dtype]
    emb = np.ascontiguousarray(embeddings, dtype=dtype)
    if emb.ndim != 2 or emb.shape[1] != meta.dim or len(emb) != sum(counts):
        raise ValueError(f"embeddings of shape {emb.shape} do not match dim {meta.dim} and {sum(counts)} rows")
    segments = np.concatenate([np.arange(n, dtype=np.int32) for n in counts]) if counts else \
        np.zeros(0, dtype=np.int32)
    sid = pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(len(song_ids), dtype=np.int32), counts)),
                                         pa.array(song_ids, type=pa.string())).cast(pa.string())
    value_type = pa.float16() if meta.dtype == "float16" else pa.float32()
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=value_type), meta.dim)
    return pa.Table.from_arrays([sid, pa.array(segments), col], schema=fingerprint_schema(meta))


def embeddings_to_numpy(col: pa.ChunkedArray | pa.Array, dim: int, dtype: type = np.float32) -> np.ndarray:
    """``fixed_size_list`` column -> ``(n, dim)`` array (``flatten`` respects slices, ``.values`` would not)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts = [np.asarray(c.flatten().to_numpy(zero_copy_only=False)).reshape(-1, dim) for c in chunks]
    if not parts:
        return np.zeros((0, dim), dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


def read_meta(path: str | Path) -> ShardMeta:
    """Schema metadata of a fingerprint file; clear errors for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FingerprintFileError(f"{path}: fingerprint file does not exist")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise FingerprintFileError(f"{path}: corrupt fingerprint file, not readable as Parquet ({exc}); delete it "
                                   "and rerun its extract job") from exc
    meta = ShardMeta.from_schema(schema, path)
    try:
        check_framing(str(path), meta.sample_rate, meta.segment_samples, meta.hop_samples)
    except ValueError as exc:
        raise FingerprintFileError(str(exc)) from None
    expected = {"song_id", "segment", "embedding"}
    if not expected <= set(schema.names):
        raise FingerprintFileError(f"{path}: missing columns {sorted(expected - set(schema.names))}")
    return meta


def iter_rows(path: str | Path, batch_rows: int = ROW_GROUP_ROWS, dtype: type = np.float32
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stream ``(song_ids (object array), segments (int32), embeddings (n, D))`` batches of a fingerprint file."""
    meta = read_meta(path)
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["song_id", "segment", "embedding"]):
            yield (batch.column(0).to_numpy(zero_copy_only=False), batch.column(1).to_numpy(),
                   embeddings_to_numpy(batch.column(2), meta.dim, dtype))
    except (pa.ArrowException, OSError) as exc:
        raise FingerprintFileError(f"{path}: corrupt fingerprint file ({exc}); delete it and rerun its extract "
                                   "job") from exc


def iter_songs(path: str | Path, dtype: type = np.float32) -> Iterator[tuple[str, np.ndarray]]:
    """Stream ``(song_id, embeddings (J, D))`` per song, checking that segments run 0..J-1 in order."""
    cur: str | None = None
    segs: list[np.ndarray] = []
    embs: list[np.ndarray] = []

    def finish() -> tuple[str, np.ndarray]:
        seg = np.concatenate(segs)
        if not np.array_equal(seg, np.arange(len(seg))):
            raise FingerprintFileError(f"{path}: song {cur}: segments are not 0..{len(seg) - 1} in order")
        return cur, np.concatenate(embs)  # type: ignore[return-value]

    for ids, seg, emb in iter_rows(path, dtype=dtype):
        if not len(ids):
            continue
        # Boundaries between runs of equal song ids inside this batch.
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        ends = np.r_[starts[1:], len(ids)]
        for s, e in zip(starts, ends):
            if ids[s] != cur:
                if cur is not None:
                    yield finish()
                cur, segs, embs = ids[s], [], []
            segs.append(seg[s:e])
            embs.append(emb[s:e])
    if cur is not None:
        yield finish()


def read_fingerprints(path: str | Path, dtype: type = np.float32) -> tuple[ShardMeta, pd.DataFrame, np.ndarray]:
    """Whole file: (meta, table of ``song_id, segment``, embeddings ``(n, D)``). For tests and small files."""
    meta = read_meta(path)
    ids, segs, embs = [], [], []
    for i, s, e in iter_rows(path, dtype=dtype):
        ids.append(i)
        segs.append(s)
        embs.append(e)
    table = pd.DataFrame({"song_id": np.concatenate(ids) if ids else np.zeros(0, dtype=object),
                          "segment": np.concatenate(segs) if segs else np.zeros(0, dtype=np.int32)})
    return meta, table, np.concatenate(embs) if embs else np.zeros((0, meta.dim), dtype=dtype)


# ----------------------------------------------------------------------------------------------- reuse cache

class _Source:
    """One readable fingerprint file in the cache; gives the rows of a song by reading only its row groups."""

    def __init__(self, path: Path, meta: ShardMeta):
        self.path, self.meta = path, meta
        self.file = pq.ParquetFile(path)
        ids = self.file.read(columns=["song_id"]).column(0).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, dtype=np.int64)
        ends = np.r_[starts[1:], len(ids)]
        self.runs = {ids[s]: (int(s), int(e)) for s, e in zip(starts, ends)}
        md = self.file.metadata
        self.rg_start = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
        self._cached: tuple[tuple[int, int], pa.Table] | None = None

    def rows(self, song_id: str) -> pa.Table:
        s, e = self.runs[song_id]
        g0 = int(np.searchsorted(self.rg_start, s, side="right") - 1)
        g1 = int(np.searchsorted(self.rg_start, e - 1, side="right") - 1)
        if self._cached is None or self._cached[0] != (g0, g1):  # songs are read in file order: one group at a time
            self._cached = ((g0, g1), self.file.read_row_groups(list(range(g0, g1 + 1))))
        return self._cached[1].slice(s - int(self.rg_start[g0]), e - s)


class _Cache:
    """Reusable fingerprints from earlier runs of the same shard (previous output and parts of a killed run)."""

    def __init__(self, cache_dir: Path, want: ShardMeta, enabled: bool):
        self.dir = cache_dir
        self.want = want
        self.songs: dict[str, tuple[_Source, str]] = {}  # song_id -> (source, signature)
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in sorted(self.dir.glob("*.parquet")):
            if enabled:
                self.add(p)

    def add(self, path: Path) -> None:
        try:
            meta = read_meta(path)
            if not meta.same_fingerprints_as(self.want):
                log.info("cache: ignoring %s (made by model %s / another set-up)", path.name, meta.model_checksum)
                return
            src = _Source(path, meta)
        except (FingerprintFileError, pa.ArrowException, OSError) as exc:
            log.warning("cache: ignoring unreadable %s (%s)", path, exc)
            return
        for sid, sig in meta.sources.items():
            if sid in src.runs:
                self.songs[sid] = (src, sig)

    def get(self, song_id: str, signature: str) -> _Source | None:
        hit = self.songs.get(song_id)
        return hit[0] if hit is not None and hit[1] == signature else None

    def replace_with(self, final: Path) -> None:
        """Keep only ``final`` (hard link, no copy) for the next run."""
        for p in self.dir.iterdir():
            if p.is_file():
                p.unlink()
        link = self.dir / "previous.parquet"
        try:
            os.link(final, link)
        except OSError:  # file systems without hard links
            shutil.copyfile(final, link)


class _PartWriter:
    """Buffers freshly extracted songs; writes a part file (atomically) every ``flush_rows`` rows / ``flush_s``."""

    def __init__(self, cache: _Cache, flush_rows: int, flush_s: float):
        self.cache, self.flush_rows, self.flush_s = cache, flush_rows, flush_s
        self.ids: list[str] = []
        self.embs: list[np.ndarray] = []
        self.sigs: dict[str, str] = {}
        self.n_rows = 0
        self.last = time.monotonic()

    def add(self, song_id: str, emb: np.ndarray, signature: str) -> None:
        self.ids.append(song_id)
        self.embs.append(emb)
        self.sigs[song_id] = signature
        self.n_rows += len(emb)
        if self.n_rows >= self.flush_rows or time.monotonic() - self.last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.ids:
            return
        meta = ShardMeta(**{**self.cache.want.__dict__, "sources": dict(self.sigs), "skipped": [],
                            "n_songs": len(self.ids), "n_rows": self.n_rows})
        table = fingerprint_table(self.ids, [len(e) for e in self.embs], np.concatenate(self.embs), meta)
        path = self.cache.dir / f"part-{time.time_ns()}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
        self.cache.add(path)
        self.ids, self.embs, self.sigs, self.n_rows = [], [], {}, 0


# ----------------------------------------------------------------------------------------------- extraction

def extract_songs(fingerprinter: nn.Module, identity: ModelIdentity, songs: pd.DataFrame, out_path: str | Path, *,
                  batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device | None = None,
                  dtype: str = "float16", chunk_seconds: float = 60.0, reuse: bool = True,
                  cache_dir: str | Path | None = None, flush_rows: int = 200_000, flush_seconds: float = 300.0,
                  extra: dict[str, Any] | None = None, compile_model: bool = False,
                  compile_min_audio_s: float = COMPILE_MIN_AUDIO_S) -> ShardMeta:
    """Fingerprint ``songs`` (columns ``song_id, path``, optionally ``duration_s``) into one file at ``out_path``.

    Songs that fail to decode (or are shorter than one segment) are logged, listed in the file's ``skipped``
    metadata and left out. With ``compile_model`` the model goes through ``torch.compile`` when there are at least
    ``compile_min_audio_s`` seconds of audio to extract (below that the ~20 s compilation costs more than it
    saves). Returns the written file's metadata.
    """
    if dtype not in DTYPES:
        raise ValueError(f"extract.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out_path = Path(out_path)
    if songs["song_id"].duplicated().any():
        raise ValueError(f"duplicate song ids in the songs to extract: "
                         f"{sorted(songs.loc[songs['song_id'].duplicated(), 'song_id'])[:5]}")
    want = ShardMeta.for_identity(identity, dtype, extra=dict(extra or {}))
    cache = _Cache(Path(cache_dir) if cache_dir else out_path.parent / ".cache" / out_path.stem, want, reuse)

    skipped: list[dict[str, str]] = []
    sigs: dict[str, str] = {}
    todo: list[tuple[str, str, str]] = []
    for sid, path in zip(songs["song_id"], songs["path"]):
        try:
            sig = file_signature(path)
        except OSError as exc:
            log.warning("skipping song %s: cannot read %s (%s)", sid, path, exc)
            skipped.append({"song_id": sid, "path": str(path), "reason": f"cannot read: {exc}"})
            continue
        sigs[sid] = sig
        if cache.get(sid, sig) is None:
            todo.append((sid, str(path), sig))
    log.info("%s: %d songs, %d reused from earlier runs, %d to extract", out_path.name, len(songs),
             len(sigs) - len(todo), len(todo))
    if compile_model and todo:
        durations = songs.set_index("song_id")["duration_s"] if "duration_s" in songs else None
        audio_s = float(durations.loc[[t[0] for t in todo]].sum()) if durations is not None else float("inf")
        if audio_s >= compile_min_audio_s:
            from workflow_lib.model.embed import optimize_for_inference

            log.info("compiling the model for %.0f s of audio (torch.compile)", audio_s)
            fingerprinter = optimize_for_inference(fingerprinter)
        else:
            log.info("eager model: %.0f s of audio to extract is too little to repay compilation", audio_s)

    parts = _PartWriter(cache, flush_rows, flush_seconds)
    t0, n_segments_done = time.perf_counter(), 0
    last_log = t0
    for i, (sid, path, sig) in enumerate(tqdm(todo, desc=f"extract {out_path.stem}", unit="song", mininterval=10)):
        if time.perf_counter() - last_log > 60:  # progress in the rule's log file too (tqdm only reaches stderr)
            last_log = time.perf_counter()
            log.info("%d/%d songs, %.0f segments/s", i, len(todo), n_segments_done / (last_log - t0))
        try:
            emb = embed_file(fingerprinter, path, batch_size, device, chunk_seconds)
        except AudioDecodeError as exc:
            log.warning("skipping song %s: %s", sid, exc)
            skipped.append({"song_id": sid, "path": path, "reason": str(exc)})
            continue
        if len(emb) == 0:
            log.warning("skipping song %s: %s is shorter than one segment", sid, path)
            skipped.append({"song_id": sid, "path": path, "reason": "shorter than one 1 s segment"})
            continue
        parts.add(sid, emb, sig)
        n_segments_done += len(emb)
    parts.flush()
    if todo:
        dt = time.perf_counter() - t0
        audio_s = n_segments_done * HOP_SAMPLES / SAMPLE_RATE
        log.info("extracted %d segments (~%.0f s of audio) in %.1f s: %.0f segments/s, ~%.0fx realtime",
                 n_segments_done, audio_s, dt, n_segments_done / max(dt, 1e-9), audio_s / max(dt, 1e-9))

    # Final file: every available song in the given order, streamed from the cache files.
    skipped_ids = {s["song_id"] for s in skipped}
    keep = [sid for sid in songs["song_id"] if sid not in skipped_ids]
    sources = {sid: cache.get(sid, sigs[sid]) for sid in keep}
    n_rows = sum(src.runs[sid][1] - src.runs[sid][0] for sid, src in sources.items())  # type: ignore[union-attr]
    meta = ShardMeta(**{**want.__dict__, "sources": {sid: sigs[sid] for sid in keep}, "skipped": skipped,
                        "n_songs": len(keep), "n_rows": n_rows})
    schema = fingerprint_schema(meta)
    with atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            buf: list[pa.Table] = []
            n_buf = 0
            for sid in keep:
                t = sources[sid].rows(sid)  # type: ignore[union-attr]
                buf.append(t)
                n_buf += len(t)
                if n_buf >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(buf).cast(schema), row_group_size=ROW_GROUP_ROWS)
                    buf, n_buf = [], 0
            if buf:
                writer.write_table(pa.concat_tables(buf).cast(schema), row_group_size=ROW_GROUP_ROWS)
    cache.replace_with(out_path)
    log.info("wrote %s: %d songs, %d fingerprints, %d skipped", out_path, len(keep), n_rows, len(skipped))
    return meta


def extract_shard(songs_path: str | Path, splits_path: str | Path, model_path: str | Path, out_path: str | Path,
                  shard: int, n_shards: int, include_splits: list[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                  device: str = "auto", threads: int = 1, dtype: str = "float16", compile_model: bool = True,
                  reuse: bool = True, chunk_seconds: float = 60.0) -> ShardMeta:
    """The ``extract`` rule: fingerprint this shard's database songs with ``model.pt``."""
    torch.set_num_threads(max(1, threads))
    db = select_database_songs(pd.read_parquet(songs_path), pd.read_parquet(splits_path), include_splits)
    songs = shard_songs(db, shard, n_shards)
    log.info("shard %d/%d: %d of %d database songs (splits %s)", shard, n_shards, len(songs), len(db),
             ", ".join(include_splits))
    fingerprinter, identity = load_model(model_path, device)
    return extract_songs(fingerprinter, identity, songs, out_path, batch_size=batch_size,
                         device=resolve_device(device), dtype=dtype, chunk_seconds=chunk_seconds, reuse=reuse,
                         extra={"shard": shard, "n_shards": n_shards}, compile_model=compile_model)
