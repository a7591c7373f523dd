"""The fingerprint file: one Parquet file of segment fingerprints and the metadata that says which model made them.

One row per 1 s segment (0.5 s hop): ``song_id``, ``segment`` (int32), ``embedding`` (``fixed_size_list<float16|
float32>[D]``), rows of one song contiguous and in segment order; the schema metadata names the model checksum,
front-end parameters, hop and segment length (see docs/ARCHITECTURE.md). Writing rows, reading them back, and the
errors for missing, corrupt, foreign or other-model files. No torch here: the index, the catalogue and ``nafp db
list``/``info`` read these files without loading the model stage (``extract`` writes them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workflow_lib import HOP_SAMPLES, SAMPLE_RATE, SEGMENT_SAMPLES
from workflow_lib.audio.segments import check_framing

FORMAT = "nafp-fingerprints/1"
DTYPES = {"float16": np.float16, "float32": np.float32}
ROW_GROUP_ROWS = 65536


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
    # song_id -> digest of its decoded audio (the manifest's ``audio_digest``): a file whose tags were edited has a
    # new signature but the same audio, and keeps its fingerprints. Empty in files made before it was recorded.
    audio: dict[str, str] = field(default_factory=dict)
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
                "audio": json.dumps(self.audio, sort_keys=True), "extra": json.dumps(self.extra, sort_keys=True)}

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
                       skipped=json.loads(md["skipped"]), audio=json.loads(md.get("audio", "{}")),
                       extra=json.loads(md.get("extra", "{}")))
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
