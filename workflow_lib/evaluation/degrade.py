"""Query degradation for evaluation and calibration, applied to a whole query at once (one noise excerpt, one
impulse response, one device per query, as a real recording would have), in numpy.

Order follows the signal path of a song played in a room and recorded by a phone: the source as played (speed
change, broadcast compression), the room or resonant space (linear convolution), the room's noise, the recording
device (band limits and EQ, which colour the noise too), the capture's level (a quiet recording, quantised to 16 bits
as a converter would) and finally the transmission codec of a call or voice note.

Impulse responses are drawn from a *pool* of the bank by kind (``ir_pool``): ``room`` (every room), ``long``
(rooms with RT60 >= 1.5 s), ``real long`` (measured rooms with RT60 >= 1.5 s), ``real`` (measured rooms),
``resonant`` (ringing spaces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from workflow_lib import SAMPLE_RATE
from workflow_lib.data.acoustics import apply_eq
from workflow_lib.data.clipbank import ClipBank

# Excerpts quieter than this (RMS) carry no fingerprintable content; SNR against them is meaningless.
MIN_SIGNAL_RMS = 1e-4
PEAK_LIMIT = 0.99
LONG_RT60_S = 1.5
IR_POOLS = ("room", "long", "real", "real long", "resonant")
# Level detector and gain smoothing of the compressor (30 ms), as in training (augment.COMPRESS_WINDOW).
COMPRESS_WINDOW = 240


@dataclass(frozen=True)
class Degradation:
    """One query's degradation. None / empty / 1.0 = that step is off."""

    snr_db: float | None = None
    room: str | None = None  # impulse-response pool (IR_POOLS)
    highpass_hz: float | None = None
    lowpass_hz: float | None = None
    eq: tuple[tuple[float, float, float], ...] = ()  # recording device: peaking bands (freq Hz, Q, gain dB)
    codec: str | None = None  # transmission codec (codecs.CODECS), last in the chain
    speed: float = 1.0  # source played this much faster
    compress: tuple[float, float] | None = None  # source compression (ratio, threshold dB below the loudest 30 ms)
    level_db: float | None = None  # capture level relative to the song as mastered (dB; quantised to 16 bits)

    @property
    def reverb(self) -> bool:
        return self.room is not None

    @property
    def is_clean(self) -> bool:
        return self == Degradation()


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _fft_size(n: int) -> int:
    return 1 << max(1, int(np.ceil(np.log2(max(n, 2)))))


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Full linear convolution (length ``len(x) + len(h) - 1``) by FFT, zero-padded so nothing wraps around."""
    n = len(x) + len(h) - 1
    nfft = _fft_size(n)
    y = np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[:n]
    return y.astype(np.float32)


def reverberate(song: np.ndarray, start: int, length: int, ir: np.ndarray) -> np.ndarray:
    """Reverberant version of ``song[start:start + length]``.

    The audio before ``start`` (up to the IR length) is convolved too, so the query carries the reverb tail of what
    played just before it, as a real recording would. The output is aligned on the IR's direct sound (its peak) so
    the query's true offset in the song does not move, and scaled back to the dry excerpt's RMS so the SNR that
    follows refers to the same loudness for every IR.
    """
    if len(ir) == 0:
        raise ValueError("empty impulse response")
    peak = int(np.argmax(np.abs(ir)))
    pre = min(start, len(ir))
    end = min(len(song), start + length + peak)
    ctx = np.asarray(song[start - pre:end], dtype=np.float32)
    if len(ctx) < pre + length + peak:  # near the song's end: silence after it
        ctx = np.pad(ctx, (0, pre + length + peak - len(ctx)))
    wet = convolve(ctx, np.asarray(ir, dtype=np.float32))[pre + peak:pre + peak + length]
    dry_rms, wet_rms = rms(ctx[pre:pre + length]), rms(wet)
    if wet_rms > 0:
        wet = wet * (dry_rms / wet_rms)
    return wet.astype(np.float32)


def add_noise(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal`` plus ``noise`` scaled so that the power ratio signal/noise over the whole query is ``snr_db``."""
    if len(noise) != len(signal):
        raise ValueError(f"noise has {len(noise)} samples, signal {len(signal)}")
    ps, pn = rms(signal) ** 2, rms(noise) ** 2
    if ps < MIN_SIGNAL_RMS ** 2:
        raise ValueError("signal is silent: an SNR relative to it is undefined")
    if pn <= 0:
        raise ValueError("noise excerpt is silent")
    gain = np.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))
    return (signal + gain * noise).astype(np.float32)


def bandlimit(x: np.ndarray, highpass_hz: float | None, lowpass_hz: float | None, sr: int = SAMPLE_RATE,
              order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth-shaped band-pass (magnitude response of an ``order``-pole filter on each side), applied
    in the frequency domain over the whole signal: no edge transients."""
    if highpass_hz is None and lowpass_hz is None:
        return x
    nfft = _fft_size(len(x))
    spec = np.fft.rfft(x, nfft)
    f = np.fft.rfftfreq(nfft, 1.0 / sr)
    gain = np.ones_like(f)
    if highpass_hz is not None:
        with np.errstate(divide="ignore"):
            gain /= np.sqrt(1.0 + (highpass_hz / np.maximum(f, 1e-9)) ** (2 * order))
    if lowpass_hz is not None:
        gain /= np.sqrt(1.0 + (f / lowpass_hz) ** (2 * order))
    return np.fft.irfft(spec * gain, nfft)[:len(x)].astype(np.float32)


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    width = max(1, min(int(width), len(x)))
    padded = np.pad(x.astype(np.float64), (width // 2 + 1, width - 1 - width // 2), mode="edge")
    c = np.cumsum(padded)
    return (c[width:] - c[:-width]) / width


def compress(x: np.ndarray, ratio: float, threshold_db: float, window: int = COMPRESS_WINDOW) -> np.ndarray:
    """Feed-forward level compression: above ``threshold_db`` (relative to the loudest ``window`` samples) the level
    rises only ``1 / ratio`` dB per dB; the gain is smoothed over the window. The numpy twin of
    ``augment.compress`` (which runs batched on the training device); a test keeps the two equal."""
    if ratio <= 1.0 or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    level = 10 * np.log10(_moving_average(np.square(x, dtype=np.float64), window) + 1e-10)
    level -= level.max()
    gain_db = _moving_average(-np.maximum(level - threshold_db, 0.0) * (1 - 1 / ratio), window)
    return (x * 10 ** (gain_db / 20)).astype(np.float32)


def limit_peak(x: np.ndarray, peak: float = PEAK_LIMIT) -> np.ndarray:
    """Scale down (never up) so the query fits in [-1, 1] without clipping when written as 16-bit audio."""
    m = float(np.max(np.abs(x))) if len(x) else 0.0
    return (x * (peak / m)).astype(np.float32) if m > peak else x.astype(np.float32)


def quantise_16bit(x: np.ndarray) -> np.ndarray:
    """``x`` clipped to [-1, 1] on the 16-bit grid, as a converter records it (a quiet capture loses its low bits
    there)."""
    return (np.round(np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0) * 32767.0) / 32767.0).astype(np.float32)


def ir_pool(bank: ClipBank, pool: str) -> np.ndarray:
    """Rows of ``bank`` in an impulse-response pool (``IR_POOLS``). Banks without kinds hold rooms only."""
    if pool not in IR_POOLS:
        raise ValueError(f"unknown impulse-response pool {pool!r} (choose from {IR_POOLS})")
    meta = bank.meta
    kind = meta["kind"].astype(str).to_numpy() if "kind" in meta else np.full(len(bank), "room")
    origin = meta["origin"].astype(str).to_numpy() if "origin" in meta else np.full(len(bank), "measured")
    rt60 = meta["rt60_s"].to_numpy(dtype=float) if "rt60_s" in meta else np.full(len(bank), np.nan)
    room = np.isin(kind, ["room", "measured", "simulated"])  # the last two: banks written before kinds existed
    long = room & (rt60 >= LONG_RT60_S)
    mask = {"room": room, "long": long, "real": room & (origin == "measured"),
            "real long": long & (origin == "measured"), "resonant": kind == "resonant"}[pool]
    return np.flatnonzero(mask)


def play_at_speed(song: np.ndarray, start: int, length: int, speed: float, context: int) -> tuple[np.ndarray, int]:
    """The song around ``[start, start + length * speed)`` played ``speed`` times faster: returns (audio, start in
    it) with ``context`` samples of the played audio before the start (for the reverb tail)."""
    lo = max(0, start - int(np.ceil(context * speed)))
    hi = min(len(song), start + int(np.ceil((length + 1) * speed)) + 1)
    played = soxr.resample(np.asarray(song[lo:hi], dtype=np.float32), SAMPLE_RATE * speed, SAMPLE_RATE,
                           quality="HQ").astype(np.float32)
    new_start = int(round((start - lo) / speed))
    if len(played) < new_start + length:
        played = np.pad(played, (0, new_start + length - len(played)))
    return played, new_start


def degrade(song: np.ndarray, start: int, length: int, spec: Degradation, rng: np.random.Generator,
            noise_bank: ClipBank | None = None, ir_bank: ClipBank | None = None) -> tuple[np.ndarray, dict]:
    """Cut ``song[start:start + length]`` and apply ``spec``. Returns the query and what was used (for the table).

    Noise and IR are drawn from the banks with ``rng``; a bank is required only when the spec asks for it. With a
    speed change, the query covers ``length * speed`` samples of the song from ``start`` (played faster).
    """
    from workflow_lib.audio.codecs import encode_decode

    if start < 0 or start + int(np.ceil(length * spec.speed)) > len(song):
        raise ValueError(f"query [{start}, {start + int(length * spec.speed)}) lies outside the song "
                         f"({len(song)} samples)")
    info: dict = {"ir": None}
    ir = None
    if spec.room is not None:
        if ir_bank is None or len(ir_bank) == 0:
            raise ValueError("reverb requested but no impulse-response bank was given")
        pool = ir_pool(ir_bank, spec.room)
        if not len(pool):
            raise ValueError(f"the impulse-response bank holds no '{spec.room}' responses")
        i = int(pool[rng.integers(len(pool))])
        ir = ir_bank.clip(i)
        info["ir"] = str(ir_bank.meta["name"].iloc[i]) if "name" in ir_bank.meta else str(i)
    src, s0 = (song, start) if spec.speed == 1.0 else \
        play_at_speed(song, start, length, spec.speed, len(ir) if ir is not None else 0)
    if spec.compress is not None:
        ctx = min(s0, len(ir) if ir is not None else 0)
        part = compress(np.asarray(src[s0 - ctx:s0 + length], dtype=np.float32), *spec.compress)
        src, s0 = part, ctx
    x = reverberate(src, s0, length, ir) if ir is not None else np.array(src[s0:s0 + length], dtype=np.float32)
    if spec.snr_db is not None:
        if noise_bank is None or len(noise_bank) == 0:
            raise ValueError("noise requested but no noise bank was given")
        noise = noise_bank.random_excerpt(rng, length)
        x = add_noise(x, noise, spec.snr_db)
    x = bandlimit(x, spec.highpass_hz, spec.lowpass_hz)
    if spec.eq:
        x = apply_eq(x, list(spec.eq))
    if spec.level_db is not None:
        x = quantise_16bit(limit_peak(x) * np.float32(10.0 ** (spec.level_db / 20.0)))
    if spec.codec is not None:
        x = encode_decode(limit_peak(x), spec.codec)
    return limit_peak(x), info
