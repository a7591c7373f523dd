"""Clip bank: many variable-length clips stored as one concatenated array plus a table of (start, length).

Noise and impulse responses are decoded once into banks so that training draws excerpts without decoding files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from workflow_lib.common.atomic import atomic_path, write_parquet_atomic


def write_clip_bank(prefix: str | Path, clips: Sequence[np.ndarray], meta: pd.DataFrame,
                    dtype: str = "float16") -> None:
    """Write ``prefix.npy`` (all clips concatenated) and ``prefix.parquet`` (``meta`` plus ``start``, ``length``)."""
    prefix = Path(prefix)
    if len(clips) != len(meta):
        raise ValueError(f"{len(clips)} clips but {len(meta)} metadata rows")
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(clips) else np.zeros(0, np.int64)
    data = np.concatenate([np.asarray(c, dtype=np.float32) for c in clips]) if len(clips) else np.zeros(0)
    table = meta.reset_index(drop=True).copy()
    table["start"] = starts
    table["length"] = lengths
    with atomic_path(prefix.with_suffix(".npy")) as tmp:
        np.save(tmp, data.astype(dtype))
    write_parquet_atomic(table, prefix.with_suffix(".parquet"))


class ClipBank:
    """Read side of a clip bank. The sample array is memory-mapped, so opening a large bank is instant."""

    def __init__(self, prefix: str | Path):
        prefix = Path(prefix)
        npy, table = prefix.with_suffix(".npy"), prefix.with_suffix(".parquet")
        for p in (npy, table):
            if not p.exists():
                raise FileNotFoundError(f"clip bank file missing: {p}")
        self.samples = np.load(npy, mmap_mode="r")
        self.meta = pd.read_parquet(table)
        self.starts = self.meta["start"].to_numpy(np.int64)
        self.lengths = self.meta["length"].to_numpy(np.int64)
        if len(self.meta) and int(self.starts[-1] + self.lengths[-1]) > len(self.samples):
            raise ValueError(f"clip bank {prefix} is truncated: table says more samples than the array holds")

    def __len__(self) -> int:
        return len(self.meta)

    def clip(self, i: int) -> np.ndarray:
        s = self.starts[i]
        return np.asarray(self.samples[s:s + self.lengths[i]], dtype=np.float32)

    def random_excerpt(self, rng: np.random.Generator, length: int) -> np.ndarray:
        """A random ``length``-sample excerpt of a random clip; short clips are tiled to length."""
        if len(self) == 0:
            raise ValueError("clip bank is empty")
        i = int(rng.integers(len(self)))
        n = int(self.lengths[i])
        if n >= length:
            off = int(rng.integers(n - length + 1))
            return np.asarray(self.samples[self.starts[i] + off:self.starts[i] + off + length], dtype=np.float32)
        return np.resize(self.clip(i), length)


def bank_prefix(path: str | Path) -> Path:
    """The prefix of a clip bank from one of its files (``x/train.npy`` -> ``x/train``), as rules name them."""
    return Path(path).with_suffix("")
