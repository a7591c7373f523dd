"""Query degradation for evaluation and calibration: reverb (linear convolution), background noise at a set SNR, and
band-limiting, applied to a whole query at once (one noise excerpt, one impulse response per query, as a real
recording would have), all in numpy FFTs.

Order follows the signal path of a phone held in a room: the song is reverberated by the room, the room's noise adds
to it, and the device band-limits the mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import SAMPLE_RATE
from .clipbank import ClipBank

# Excerpts quieter than this (RMS) carry no fingerprintable content; SNR against them is meaningless.
MIN_SIGNAL_RMS = 1e-4
PEAK_LIMIT = 0.99


@dataclass(frozen=True)
class Degradation:
    """One query's degradation. ``snr_db`` None = no noise; band edges None = no filtering on that side."""

    snr_db: float | None = None
    reverb: bool = False
    highpass_hz: float | None = None
    lowpass_hz: float | None = None

    @property
    def is_clean(self) -> bool:
        return self.snr_db is None and not self.reverb and self.highpass_hz is None and self.lowpass_hz is None


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
    in the frequency domain over the whole signal: no edge transients, no scipy."""
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


def limit_peak(x: np.ndarray, peak: float = PEAK_LIMIT) -> np.ndarray:
    """Scale down (never up) so the query fits in [-1, 1] without clipping when written as 16-bit audio."""
    m = float(np.max(np.abs(x))) if len(x) else 0.0
    return (x * (peak / m)).astype(np.float32) if m > peak else x.astype(np.float32)


def degrade(song: np.ndarray, start: int, length: int, spec: Degradation, rng: np.random.Generator,
            noise_bank: ClipBank | None = None, ir_bank: ClipBank | None = None) -> tuple[np.ndarray, dict]:
    """Cut ``song[start:start + length]`` and apply ``spec``. Returns the query and what was used (for the table).

    Noise and IR are drawn from the banks with ``rng``; a bank is required only when the spec asks for it.
    """
    if start < 0 or start + length > len(song):
        raise ValueError(f"query [{start}, {start + length}) lies outside the song ({len(song)} samples)")
    info: dict = {"ir": None}
    if spec.reverb:
        if ir_bank is None or len(ir_bank) == 0:
            raise ValueError("reverb requested but no impulse-response bank was given")
        i = int(rng.integers(len(ir_bank)))
        x = reverberate(song, start, length, ir_bank.clip(i))
        info["ir"] = str(ir_bank.meta["name"].iloc[i]) if "name" in ir_bank.meta else str(i)
    else:
        x = np.array(song[start:start + length], dtype=np.float32)
    if spec.snr_db is not None:
        if noise_bank is None or len(noise_bank) == 0:
            raise ValueError("noise requested but no noise bank was given")
        noise = noise_bank.random_excerpt(rng, length)
        x = add_noise(x, noise, spec.snr_db)
    x = bandlimit(x, spec.highpass_hz, spec.lowpass_hz)
    return limit_peak(x), info
