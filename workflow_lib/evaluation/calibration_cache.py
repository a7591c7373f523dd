"""Reuse of the last calibration when nothing it reads has changed.

Retagging files, copying a collection (new modification times) or rewriting a fingerprint file with the same
vectors rebuilds the index and reruns the ``calibrate`` rule, about a minute for 150 songs, although the threshold
would come out the same: the null queries are seeded, and they read only the model, the index's vectors, the songs'
decoded audio, the noise and impulse-response banks, the settings and the code. ``calibration_key`` is a digest of
exactly these, by content rather than by file: the songs table counts each song by its ``audio_digest`` (the
decoded samples, ``data.manifest``) instead of its path, size and modification time, and the index's sidecar
without its build times. Anything else the key cannot vouch for is in it as it is, so an unknown change costs a
recalibration, never a stale threshold.

``CalibrationCache`` keeps the outputs of the last calibration under ``<index>/.cache/`` (Snakemake deletes a
rule's outputs before it reruns, not that folder), each file written atomically and named by its key, so a cache
killed half-written is a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from importlib import metadata
from pathlib import Path
from typing import Iterable

import pandas as pd

from workflow_lib.common.atomic import file_digest
from workflow_lib.common.source_digest import code_digest
from workflow_lib.database.index import INDEX_FILE, META_FILE, SIDECAR_FILE, VECTORS_FILE

log = logging.getLogger(__name__)

# Where a file lies, not what it holds: left out of the key for songs whose decoded audio is in it.
_LOCATION_COLUMNS = ("root", "rel_path", "path", "size_bytes", "mtime_ns")
# index.json fields that record when and how long a build took, or where its shards were, not what it searches.
_BUILD_RECORDS = ("built_at", "build_seconds", "sources", "history")
_TRAINING_RECORDS = ("train_seconds", "trained_at")
# Libraries whose arithmetic the null scores go through (decoding is in the songs' audio digests).
_LIBRARIES = ("torch", "torchaudio", "faiss-cpu", "faiss-gpu", "numpy", "scipy", "soxr", "pyroomacoustics")


def _table_digest(table: pd.DataFrame) -> str:
    """Content digest of a table: column names, types and values (not Parquet's bytes, which carry its writer)."""
    h = hashlib.sha256(json.dumps([[str(c), str(t)] for c, t in table.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return h.hexdigest()


def songs_content(songs: pd.DataFrame) -> pd.DataFrame:
    """The songs table as calibration sees it: a song with an audio digest is known by it and not by its file's
    path, size and modification time; a song without one (a results folder older than the digest) keeps them."""
    if "audio_digest" not in songs.columns:
        return songs.reset_index(drop=True)
    known = songs["audio_digest"].notna() & (songs["audio_digest"].astype(str) != "")
    out = songs.reset_index(drop=True).astype({c: "object" for c in _LOCATION_COLUMNS if c in songs.columns})
    for col in _LOCATION_COLUMNS:
        if col in out.columns:
            out.loc[known.to_numpy(), col] = None
    return out


def index_content(index_json: dict) -> dict:
    """The index sidecar without its build records."""
    out = {k: v for k, v in index_json.items() if k not in _BUILD_RECORDS}
    if isinstance(out.get("trained"), dict):
        out["trained"] = {k: v for k, v in out["trained"].items() if k not in _TRAINING_RECORDS}
    return out


def library_versions(names: Iterable[str] = _LIBRARIES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def calibration_key(model_path, index_dir, songs_path, splits_path, noise_prefix, ir_prefix, settings: dict) -> str:
    """Digest of everything the ``calibrate`` rule reads (module docstring); ``settings`` are its parameters."""
    index_dir = Path(index_dir)
    h = hashlib.sha256()

    def part(name: str, value) -> None:
        h.update(f"\0{name}\0".encode())
        h.update(value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=str).encode())

    def files(name: str, paths: Iterable[Path]) -> None:
        h.update(f"\0{name}\0".encode())
        for p in paths:
            h.update(f"{p.name}\0{file_digest(p, 64)}".encode())

    files("model", [Path(model_path)])
    files("index", [index_dir / n for n in (INDEX_FILE, META_FILE, VECTORS_FILE)])
    part("sidecar", index_content(json.loads((index_dir / SIDECAR_FILE).read_text())))
    part("songs", _table_digest(songs_content(pd.read_parquet(songs_path))))
    splits = Path(splits_path) if splits_path else None
    part("splits", _table_digest(pd.read_parquet(splits)) if splits is not None and splits.exists() else None)
    for name, prefix in (("noise", noise_prefix), ("irs", ir_prefix)):
        files(name, [Path(prefix).with_suffix(s) for s in (".npy", ".parquet")] if prefix else [])
    part("settings", settings)
    part("code", code_digest())
    part("libraries", library_versions())
    return h.hexdigest()[:32]


class CalibrationCache:
    """The last calibration's outputs (threshold file and table), by key."""

    PREFIX = "calibration-"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{self.PREFIX}{key}.json", self.folder / f"{self.PREFIX}{key}.csv"

    def restore(self, key: str, threshold_path, table_path=None) -> bool:
        """Copy the outputs stored under ``key`` to their places (each atomically); False when there are none."""
        from workflow_lib.common.atomic import atomic_path

        stored = self._paths(key)
        if not all(p.is_file() for p in stored):
            return False
        for src, dst in zip(stored, (threshold_path, table_path)):
            if dst is not None:
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
        return True

    def store(self, key: str, calib) -> None:
        """Keep ``calib`` (a ``search.threshold.Calibration``) and its table under ``key``; drop older entries and
        what a killed store left."""
        from workflow_lib.common.atomic import write_csv_atomic

        self.folder.mkdir(parents=True, exist_ok=True)
        stored = self._paths(key)
        calib.save(stored[0])
        write_csv_atomic(calib.table(), stored[1])
        for old in [*self.folder.glob(f"{self.PREFIX}*"), *self.folder.glob(f".{self.PREFIX}*")]:
            if old not in stored:
                old.unlink(missing_ok=True)
