"""What every decoder of ``audio`` returns or raises: a file's header (``AudioInfo``), the one error a file that cannot
be decoded raises (``AudioDecodeError``), and the check that decoded samples are finite."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class AudioDecodeError(RuntimeError):
    """A file could not be decoded; the message names the file and the reason."""


@dataclass(frozen=True)
class AudioInfo:
    path: str
    duration_s: float
    sample_rate: int
    channels: int
    format: str
    frames: int


def check_finite(samples: np.ndarray, name: str | Path, first_frame: int, rate: int) -> None:
    """A float file can hold NaN or infinity; the resampler would spread a NaN over its neighbours and the model
    would turn either into a fingerprint that poisons the index, so such a file is an error that names where."""
    finite = np.isfinite(samples)
    if not finite.all():
        at = first_frame + int(np.flatnonzero(~finite.reshape(len(samples), -1).all(axis=1))[0])
        raise AudioDecodeError(f"{name}: non-finite samples (NaN or infinity) at {at / rate:.1f} s: not audio "
                               "that can be fingerprinted")
