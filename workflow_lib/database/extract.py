"""Fingerprint extraction into Parquet shards (the file format itself: ``fingerprint_file``).

The database songs (configured splits of the manifest) are assigned to ``n_shards`` shards by a hash of the song id,
so a song's shard never depends on which other songs exist and each shard is an independent Snakemake job.

Resumption and reuse: new fingerprints are first written as small part files under
``<out dir>/.cache/<shard name>/`` (each atomically, every ``flush_rows`` rows or ``flush_seconds``), and a finished
shard is hard-linked into that folder. A rerun (after a kill, or after songs were added or removed) reuses every song
whose file signature and model are unchanged and extracts only the rest; a file renamed or moved (same signature,
new song id) or with edited tags (new signature, the same decoded audio: the manifest's ``audio_digest``) is reused
too. The final file is then written in one pass, atomically. Snakemake deletes a job's outputs before running it,
which is why the cache lives beside the output.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from workflow_lib import HOP_S
from workflow_lib.common.atomic import atomic_path
from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.common.progress import progress
from workflow_lib.database.fingerprint_file import (DTYPES, ROW_GROUP_ROWS, FingerprintFileError, ModelIdentity,
                                                    ShardMeta, fingerprint_schema, fingerprint_table, read_meta)
from workflow_lib.model.embed import DEFAULT_BATCH_SIZE, embed_file, embedding_dim, resolve_device

log = logging.getLogger(__name__)

COMPILE_MIN_AUDIO_S = 1800.0
_SIG_BYTES = 1 << 16


def fingerprinter_identity(fingerprinter: nn.Module, checksum: str) -> ModelIdentity:
    fc = getattr(fingerprinter, "frontend_config", None)
    frontend = fc.to_dict() if hasattr(fc, "to_dict") else (dict(fc) if isinstance(fc, dict) else {})
    return ModelIdentity(checksum, frontend, embedding_dim(fingerprinter))


def load_model(model_path: str | Path, device: str | torch.device = "auto") -> tuple[nn.Module, ModelIdentity]:
    """Load ``model.pt`` (eval mode, on ``device``) and its identity."""
    # the model stage's module; imported when needed
    from workflow_lib.model.model_file import load_fingerprinter, model_checksum

    dev = resolve_device(device)
    fingerprinter = load_fingerprinter(model_path, dev)
    return fingerprinter, fingerprinter_identity(fingerprinter, model_checksum(model_path))


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
        # song_id -> (source, file signature, digest of its decoded audio or None where not recorded)
        self.songs: dict[str, tuple[_Source, str, str | None]] = {}
        # ("file", signature) or ("audio", digest) -> (source or another shard's file, song id there, its audio
        # digest or None): built on the first ``elsewhere`` look-up
        self._by_key: dict[tuple[str, str], tuple[_Source | Path, str, str | None]] | None = None
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
                self.songs[sid] = (src, sig, meta.audio.get(sid))

    def get(self, song_id: str, signature: str, audio: str | None = None) -> _Source | None:
        """The song's fingerprints if its file is unchanged: the same signature, and the same decoded audio where
        both digests are known (the signature reads only the file's ends: an edit in the middle keeps it)."""
        hit = self.songs.get(song_id)
        if hit is None or hit[1] != signature or not _same_audio(audio, hit[2]):
            return None
        return hit[0]

    def elsewhere(self, signature: str, audio: str | None) -> tuple[_Source, str] | None:
        """The fingerprints of this file found another way than under its song id and signature: a file with this
        signature under another id (the id follows the path: the file was renamed or moved), or one with the same
        decoded audio (its tags were edited, and perhaps it was moved too), from this cache or another shard's:
        (source, that id), or None. The other shards' caches are read on the first miss, metadata first: a file is
        opened only for a song it holds."""
        if self._by_key is None:
            self._by_key = {}
            for sid, (src, sig, digest) in self.songs.items():
                self._by_key[("file", sig)] = (src, sid, digest)
                if digest:
                    self._by_key[("audio", digest)] = (src, sid, digest)
            for path in sorted(self.dir.parent.glob("*/*.parquet")):
                if path.parent == self.dir:
                    continue
                try:
                    meta = read_meta(path)
                except (FingerprintFileError, pa.ArrowException, OSError):
                    continue  # unreadable, or replaced by its shard's job meanwhile: extracted again
                if meta.same_fingerprints_as(self.want):
                    for sid, sig in meta.sources.items():
                        self._by_key.setdefault(("file", sig), (path, sid, meta.audio.get(sid)))
                        if sid in meta.audio:
                            self._by_key.setdefault(("audio", meta.audio[sid]), (path, sid, meta.audio[sid]))
        hit = self._by_key.get(("audio", audio)) if audio else None
        if hit is None:
            hit = self._by_key.get(("file", signature))
            if hit is not None and not _same_audio(audio, hit[2]):
                hit = None
        if hit is None:
            return None
        src, sid, _ = hit
        if isinstance(src, Path):  # another shard's file, not opened yet
            try:
                src = _Source(src, read_meta(src))
            except (FingerprintFileError, pa.ArrowException, OSError):
                return None
            self._by_key.update({k: (src, s, a) for k, (p, s, a) in self._by_key.items() if p == src.path})
        return (src, sid) if sid in src.runs else None

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


def _same_audio(a: str | None, b: str | None) -> bool:
    """Digests of decoded audio agree, or cannot be compared: one is not known (fingerprints made before digests
    were recorded), or they were made by different decoder builds (``audio.files.decoder_id``: after an upgrade a
    few samples may round otherwise, and every song fingerprinted again for it would cost hours)."""
    if a is None or b is None or a.split("-", 1)[0] != b.split("-", 1)[0]:
        return True
    return a == b


class _PartWriter:
    """Buffers freshly extracted songs; writes a part file (atomically) every ``flush_rows`` rows / ``flush_s``."""

    def __init__(self, cache: _Cache, flush_rows: int, flush_s: float):
        self.cache, self.flush_rows, self.flush_s = cache, flush_rows, flush_s
        self.ids: list[str] = []
        self.embs: list[np.ndarray] = []
        self.sigs: dict[str, str] = {}
        self.audio: dict[str, str] = {}
        self.n_rows = 0
        self.last = time.monotonic()

    def add(self, song_id: str, emb: np.ndarray, signature: str, audio: str | None) -> None:
        self.ids.append(song_id)
        self.embs.append(emb)
        self.sigs[song_id] = signature
        if audio:
            self.audio[song_id] = audio
        self.n_rows += len(emb)
        if self.n_rows >= self.flush_rows or time.monotonic() - self.last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.ids:
            return
        meta = ShardMeta(**{**self.cache.want.__dict__, "sources": dict(self.sigs), "skipped": [],
                            "audio": dict(self.audio), "n_songs": len(self.ids), "n_rows": self.n_rows})
        table = fingerprint_table(self.ids, [len(e) for e in self.embs], np.concatenate(self.embs), meta)
        path = self.cache.dir / f"part-{time.time_ns()}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
        self.cache.add(path)
        self.ids, self.embs, self.sigs, self.audio, self.n_rows = [], [], {}, {}, 0


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
    # the manifest's digest of each song's decoded audio (none where a table lacks it: songs of `db add`)
    audio = {sid: a for sid, a in zip(songs["song_id"], songs["audio_digest"]) if isinstance(a, str)} \
        if "audio_digest" in songs else {}
    todo: list[tuple[str, str, str]] = []
    # song id -> (source, the id its fingerprints are stored under): renamed, moved or retagged files
    found_elsewhere: dict[str, tuple[_Source, str]] = {}
    for sid, path in zip(songs["song_id"], songs["path"]):
        try:
            sig = file_signature(path)
        except OSError as exc:
            log.warning("skipping song %s: cannot read %s (%s)", sid, path, exc)
            skipped.append({"song_id": sid, "path": str(path), "reason": f"cannot read: {exc}"})
            continue
        sigs[sid] = sig
        if cache.get(sid, sig, audio.get(sid)) is None:
            found = cache.elsewhere(sig, audio.get(sid)) if reuse else None
            if found is not None:
                found_elsewhere[sid] = found
            else:
                todo.append((sid, str(path), sig))
    log.info("%s: %d songs, %d reused from earlier runs, %d to extract", out_path.name, len(songs),
             len(sigs) - len(todo), len(todo))
    if found_elsewhere:
        log.info("%d of the reused songs were found by their file under another id, or by their decoded audio (the "
                 "file renamed, moved or its tags edited)", len(found_elsewhere))
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
    for i, (sid, path, sig) in enumerate(progress(todo, desc=f"extract {out_path.stem}", unit="song", mininterval=10)):
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
        parts.add(sid, emb, sig, audio.get(sid))
        n_segments_done += len(emb)
    parts.flush()
    if todo:
        dt = time.perf_counter() - t0
        audio_s = n_segments_done * HOP_S
        log.info("extracted %d segments (~%.0f s of audio) in %.1f s: %.0f segments/s, ~%.0fx realtime",
                 n_segments_done, audio_s, dt, n_segments_done / max(dt, 1e-9), audio_s / max(dt, 1e-9))

    # Final file: every available song in the given order, streamed from the cache files.
    skipped_ids = {s["song_id"] for s in skipped}
    keep = [sid for sid in songs["song_id"] if sid not in skipped_ids]
    sources = {sid: found_elsewhere.get(sid) or (cache.get(sid, sigs[sid], audio.get(sid)), sid) for sid in keep}
    n_rows = sum(src.runs[at][1] - src.runs[at][0] for src, at in sources.values())  # type: ignore[union-attr]
    meta = ShardMeta(**{**want.__dict__, "sources": {sid: sigs[sid] for sid in keep}, "skipped": skipped,
                        "audio": {sid: audio[sid] for sid in keep if sid in audio}, "n_songs": len(keep),
                        "n_rows": n_rows})
    schema = fingerprint_schema(meta)
    with atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            buf: list[pa.Table] = []
            n_buf = 0
            for sid in keep:
                src, at = sources[sid]
                t = src.rows(at)  # type: ignore[union-attr]
                if at != sid:  # stored under its old id
                    t = t.set_column(t.schema.get_field_index("song_id"), "song_id",
                                     pa.array([sid] * len(t), pa.string()).cast(t.schema.field("song_id").type))
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
