"""Song-disjoint train/val/test/distractor splits that stay put when songs are added (and the ``unknown`` songs of
``data.unknown_dirs`` in a split of their own, never trained on or indexed).

Each song's split depends only on a seeded hash of its id, never on which other songs exist, so adding songs to a
collection never moves an existing song into another split (a random permutation would reshuffle everything).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_lib.common.atomic import atomic_path, write_csv_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "distractor")
# The collection and split of data.unknown_dirs: music searched only as unknown, never trained on or indexed.
UNKNOWN_COLLECTION = "unknown"


def unit_hash(key: str, seed: int) -> float:
    """Uniform number in [0, 1) from a string and a seed (SHA-1, stable across Python versions and machines)."""
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign_splits(songs: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.DataFrame:
    """Return ``song_id, split``. Songs of the ``distractor`` collection always go to the distractor split, those of
    the ``unknown`` collection to the split ``unknown`` (no fraction: not in ``extract.splits``, not trained on)."""
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split names in fractions: {sorted(unknown)}")
    total = sum(fractions.values())
    if not np.isclose(total, 1.0, atol=1e-6):
        raise ValueError(f"split fractions must sum to 1, got {total} ({fractions})")
    edges = np.cumsum([fractions.get(s, 0.0) for s in SPLITS])
    out = []
    for sid, collection in zip(songs["song_id"], songs["collection"]):
        if collection in ("distractor", UNKNOWN_COLLECTION):
            out.append(collection)
            continue
        u = unit_hash(sid, seed)
        out.append(SPLITS[min(int(np.searchsorted(edges, u, side="right")), len(SPLITS) - 1)])
    return pd.DataFrame({"song_id": songs["song_id"].to_numpy(), "split": out})


def write_splits(songs_path: str | Path, out_path: str | Path, fractions: dict[str, float], seed: int,
                 csv_path: str | Path | None = None) -> pd.DataFrame:
    """The split as ``out_path`` (Parquet) and, with ``csv_path``, a CSV naming each song's file too."""
    songs = pd.read_parquet(songs_path)
    splits = assign_splits(songs, fractions, seed)
    counts = splits["split"].value_counts().reindex([*SPLITS, UNKNOWN_COLLECTION], fill_value=0)
    for name in ("train", "val", "test"):
        if fractions.get(name, 0) > 0 and counts[name] == 0:
            raise ValueError(f"split '{name}' is empty with {len(songs)} songs and fraction {fractions[name]}: "
                             "add songs or raise the fraction")
    with atomic_path(out_path) as tmp:
        splits.to_parquet(tmp, index=False)
    if csv_path is not None:
        readable = splits.merge(songs[["song_id", "path", "duration_s"]], on="song_id", how="left")
        write_csv_atomic(readable.sort_values(["split", "path"]), csv_path)
    log.info("splits: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    return splits
