"""Stored fingerprints as the search reads them: unit float32 rows, and the float16 storage converted fast."""

from __future__ import annotations

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    """float32 copy with unit rows (float16 storage leaves norms slightly off 1)."""
    x = np.array(x, dtype=np.float32, copy=True, order="C")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def half_to_float(x: np.ndarray) -> np.ndarray:
    """float16 -> float32. numpy converts element by element (~2 ns each, the largest cost of re-ranking);
    torch uses the CPU's vector conversion instructions, ~10x faster."""
    if x.dtype != np.float16:
        return np.asarray(x, dtype=np.float32)
    import torch

    x = np.ascontiguousarray(x)
    if not x.flags.writeable:  # a slice of the read-only memory map, which torch warns about: a float16 memcpy
        x = x.copy()
    return torch.from_numpy(x).float().numpy()
