"""Framing of audio into the 1 s segments at 0.5 s hop that every stage shares."""

from __future__ import annotations

import functools

import numpy as np

from workflow_lib import HOP_SAMPLES, SAMPLE_RATE, SEGMENT_SAMPLES


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


def check_framing(source: str, sample_rate: int | None = None, segment_samples: int | None = None,
                  hop_samples: int | None = None) -> None:
    """Refuse a file made for another framing than this build's (``workflow_lib.SAMPLE_RATE``, 1 s segments at
    0.5 s hop): its fingerprints would not line up with the ones searched. Values not stamped (None) pass."""
    want = {"sample_rate": SAMPLE_RATE, "segment_samples": SEGMENT_SAMPLES, "hop_samples": HOP_SAMPLES}
    got = {"sample_rate": sample_rate, "segment_samples": segment_samples, "hop_samples": hop_samples}
    wrong = {k: v for k, v in got.items() if v is not None and int(v) != want[k]}
    if wrong:
        raise ValueError(f"{source} was made with {wrong}, but this build fingerprints with "
                         f"{ {k: want[k] for k in wrong} }: rebuild it with this version")


# The silence gate shared by every path that embeds audio (extraction, query, listener, scan): a 1 s segment whose
# level (``segment_levels_db``) is below this is not music. The front end's log floor maps every quiet segment to
# almost the same log-mel, so a quiet room would otherwise match any song's digital silence at cosine ~1.
SILENCE_DBFS = -55.0
# What a query hears (a file, the listener, a scan) may be far quieter than the songs were mastered: a microphone
# across a room, an input gain left low. Below about -35 dBFS the front end's log floor flattens the model's input,
# and the -55 dBFS gate cut most seconds of a capture 35 dB under its song's level. So a query's seconds are gated
# at QUERY_SILENCE_DBFS and those between it and QUERY_LEVEL_DBFS are raised to QUERY_LEVEL_DBFS before the model:
# noisy 3 s clips 40 / 45 dB under their songs' level, 36 / 9 of 76 named -> 67 / 58, and room, street and rain
# recordings without music at -30 to -65 dBFS answered with a song 0 times in 1,000 (1 and 3 at -55 and -60 dBFS
# before; bench/README.md, "How quiet a capture may be"). The database keeps SILENCE_DBFS, unraised: its songs are
# at their mastered level, and its shards stay valid.
QUERY_SILENCE_DBFS = -65.0
QUERY_LEVEL_DBFS = -35.0
# The front end's mel bands start at 300 Hz (``FrontendConfig.f_min``): mains hum or a microphone's DC offset is
# loud by its RMS but silent to the model, and a hum-only song tail matched a quiet room with hum at confidence
# 1.000 while the gate measured only the RMS. So the level is also measured from here up, and music, a median
# ``BAND_ALLOWANCE_DB`` quieter there than over the whole band (bench/README.md, "Hum and a DC offset are silence
# too"), is allowed that much: the gate rejects all it rejected before, and what is loud only below the band.
LEVEL_BAND_LOW_HZ = 300.0
BAND_ALLOWANCE_DB = 6.0


@functools.lru_cache(maxsize=4)
def _level_window(n: int) -> tuple[np.ndarray, float]:
    """A Hann window without its zero end points (every sample counts) and the scale that makes a broadband
    signal's windowed spectrum give back its RMS."""
    window = np.hanning(n + 2)[1:-1].astype(np.float32)
    return window, float(n * np.sum(window.astype(np.float64) ** 2))


def band_levels_db(segments: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The level (dBFS) of each row of ``segments`` (n, seg) above ``LEVEL_BAND_LOW_HZ``; -inf for silence.

    Measured on the Hann-windowed spectrum, scaled so that a broadband signal keeps its RMS (a 1 kHz sine of
    amplitude 0.1 reads -23 dBFS), so that the leakage of strong hum below the band stays out of it.
    """
    from scipy import fft  # not at import: commands that never measure a level start without it

    x = np.asarray(segments, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        return np.zeros(0)
    n = x.shape[1]
    window, scale = _level_window(n)
    spectrum = fft.rfft(x * window, axis=1)[:, int(np.ceil(LEVEL_BAND_LOW_HZ * n / sr - 1e-9)):]
    power = spectrum.real ** 2 + spectrum.imag ** 2
    total = 2.0 * power.sum(axis=1, dtype=np.float64)  # one-sided spectrum: every bin twice...
    if n % 2 == 0:
        total -= power[:, -1]  # ...but the Nyquist bin once
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(total / scale)


def segment_levels_db(segments: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The silence gate's level (dBFS) of each row of ``segments`` (n, seg): the lower of the RMS level and the
    level above ``LEVEL_BAND_LOW_HZ`` (``band_levels_db``) plus ``BAND_ALLOWANCE_DB``; -inf for digital silence."""
    x = np.asarray(segments, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        return np.zeros(0)
    power = np.einsum("ij,ij->i", x, x, dtype=np.float64) / x.shape[1]
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(power), band_levels_db(x, sr) + BAND_ALLOWANCE_DB)


def level_dbfs(segment: np.ndarray) -> float:
    """Level of one stretch of audio in dBFS, as ``segment_levels_db`` measures it (-inf for silence)."""
    return float(segment_levels_db(np.asarray(segment, dtype=np.float32)[None, :])[0]) if len(segment) else -np.inf
