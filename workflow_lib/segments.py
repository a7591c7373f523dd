"""Framing of audio into the 1 s segments at 0.5 s hop that every stage shares."""

from __future__ import annotations

import numpy as np

from . import HOP_SAMPLES, SEGMENT_SAMPLES


def n_segments(n_samples: int, seg: int = SEGMENT_SAMPLES, hop: int = HOP_SAMPLES) -> int:
    """Number of whole segments in ``n_samples`` (0 when shorter than one segment)."""
    if n_samples < seg:
        return 0
    return (n_samples - seg) // hop + 1


def frame(audio: np.ndarray, seg: int = SEGMENT_SAMPLES, hop: int = HOP_SAMPLES) -> np.ndarray:
    """Read-only view of shape ``(n_segments, seg)``; segment ``j`` starts at sample ``j * hop``."""
    n = n_segments(len(audio), seg, hop)
    if n == 0:
        return np.zeros((0, seg), dtype=audio.dtype)
    return np.lib.stride_tricks.as_strided(
        audio, shape=(n, seg), strides=(audio.strides[0] * hop, audio.strides[0]), writeable=False)


def segment_start_seconds(segment: int | np.ndarray, hop: int = HOP_SAMPLES, sr: int = 8000):
    return np.asarray(segment) * hop / sr
