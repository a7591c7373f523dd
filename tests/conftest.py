"""Shared fixtures: generated audio only (the tests never need the dev corpus)."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Keep the suite predictable on a 2-core machine shared with other work.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def tone_mix(seconds: float, sr: int, freqs=(220.0, 330.0, 495.0), seed: int = 0) -> np.ndarray:
    """A deterministic harmonic signal with a little noise, peak about 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in freqs)
    x = x / len(freqs) * 0.5 + 0.01 * rng.standard_normal(len(t))
    return x.astype(np.float32)


@pytest.fixture(autouse=True)
def _torch_one_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
