"""Spectral gating of a query before it is whitened: the background noise's steady part taken out.

In a resonant space the music reaches the microphone through a few narrow resonances; between them, at 5 dB, the
room's noise is all there is. Whitening (``search.whiten``) flattens the long-term spectrum, which lifts those noise
valleys to the level of the resonances. Gating first keeps what stands above the noise: the noise's power in each
frequency is a low percentile of the query's own short-time power over time (music comes and goes; a steady
background stays), and each short-time bin keeps ``max(1 - OVER_SUBTRACT * noise / power, GAIN_FLOOR)`` of its
power, the gain smoothed over three frames (a gain that flickers from frame to frame leaves "musical noise").
bench/README.md, "Gating the noise before whitening", has the measurement behind the three settings, and why the
searcher's whitened view does not gate unless asked (``search.whitened_view.denoise``): it wins queries in a quiet
resonant space and loses songs to the live listener in a noisy one.

Short-time transform: a periodic Hann window of 256 samples (32 ms at 8 kHz) every 64, so the squared windows of
overlapping frames sum to a constant (1.5) and overlap-add gives the signal back where the gain is 1. One framing
serves a whole query (``spectral_gate``) and a stream (``StreamingGate``: the noise from the newest ``fit_s``
seconds, refitted every ``refit_s``; each sample comes out once no later frame can change it, at most
``StreamingGate.latency`` later). numpy's FFT suffices: the gate costs a few milliseconds for a 10 s query.
"""

from __future__ import annotations

import numpy as np

from workflow_lib import SAMPLE_RATE

FRAME = 256
HOP = 64
NOISE_PERCENTILE = 35.0  # of each frequency's short-time power over the query: the noise's power there
OVER_SUBTRACT = 1.5  # the noise estimate's multiplier in the gain
GAIN_FLOOR = 10 ** (-20 / 10)  # the lowest power gain (-20 dB): what is gated stays faintly there
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME)  # periodic Hann
_OLA = float(np.sum(_WINDOW[::HOP] ** 2))  # 1.5: the squared windows' sum at every sample in steady state


def noise_power(power: np.ndarray) -> np.ndarray:
    """Each frequency's noise power from short-time powers ``(frames, bins)``: their NOISE_PERCENTILE over time."""
    return np.percentile(power, NOISE_PERCENTILE, axis=0)


def gains(power: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Amplitude gains ``(frames, bins)`` for short-time powers given the noise's power per frequency, before the
    smoothing over frames."""
    return np.sqrt(np.maximum(1.0 - OVER_SUBTRACT * noise / np.maximum(power, 1e-20), GAIN_FLOOR))


def _smooth3(g: np.ndarray) -> np.ndarray:
    """The mean of each frame's gains and its two neighbours' (edges repeat), as three-frame smoothing."""
    padded = np.concatenate([g[:1], g, g[-1:]])
    return (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0


def _spectra(x: np.ndarray) -> np.ndarray:
    """Windowed spectra of every frame of ``x`` (whose length is a whole number of hops past the first frame)."""
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP]
    return np.fft.rfft(frames * _WINDOW, axis=1)


def _synthesise(spectra: np.ndarray) -> np.ndarray:
    """Overlap-add of the frames' inverse transforms through the window, divided by the window sum: ``(frames - 1)
    * HOP + FRAME`` samples, of which the first and last ``FRAME - HOP`` lack some of their frames."""
    frames = np.fft.irfft(spectra, FRAME, axis=1) * _WINDOW
    out = np.zeros((len(frames) - 1) * HOP + FRAME)
    step = FRAME // HOP
    for i in range(step):  # frames i, i + step, ... touch end to end: one add each
        part = frames[i::step].ravel()
        out[i * HOP:i * HOP + len(part)] += part
    return out / _OLA


def spectral_gate(x: np.ndarray) -> np.ndarray:
    """``x`` (8 kHz, 1-D) with its steady background noise gated out, at ``x``'s RMS and length. A silent ``x``
    comes back as it is."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"spectral_gate: expected 1-D audio, got shape {x.shape}")
    if len(x) == 0 or not np.any(x):
        return x.astype(np.float32)
    lead = FRAME - HOP  # every sample of x is then covered by FRAME // HOP frames
    n_frames = -(-(len(x) + lead) // HOP)
    padded = np.zeros((n_frames - 1) * HOP + FRAME)
    padded[lead:lead + len(x)] = x
    spectra = _spectra(padded)
    power = spectra.real ** 2 + spectra.imag ** 2
    y = _synthesise(spectra * _smooth3(gains(power, noise_power(power))))[lead:lead + len(x)]
    return at_rms_of(x, y)


def at_rms_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y`` brought to ``x``'s RMS, as float32 (``y`` as it is when silent)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    energy = float(np.mean(y * y))
    return (y * np.sqrt(float(np.mean(x * x)) / energy) if energy > 0 else y).astype(np.float32)


class StreamingGate:
    """``spectral_gate`` for a stream, chunk by chunk: the noise estimated from the newest ``fit_s`` seconds' frames
    (refitted every ``refit_s``), each frame's gain smoothed with its neighbours', and each sample given out once the
    last frame that covers it is in: at most ``latency`` samples after it came in. The first ``first_s`` seconds
    are held back and gated with one estimate from all of them, as a query of that length is (the whitened view's
    first seconds wait for the whitener anyway); without them (0) the estimate starts from the first frame and is
    refitted sooner while the stream is young (after 1, 2, 4, ... frames). The output is the stream's audio, sample
    for sample, only later; its level is the gate's own (the whitener after it sets the level)."""

    latency = FRAME + HOP  # the frames that cover a sample, and the next one for the gain's smoothing

    def __init__(self, fit_s: float = 5.0, refit_s: float = 0.5, first_s: float = 0.0):
        self.first_samples = int(round(first_s * SAMPLE_RATE))
        self.fit_rows = max(int(round(fit_s * SAMPLE_RATE / FRAME)), 1)  # the frames of fit_s that do not overlap
        self.refit_frames = max(int(round(refit_s * SAMPLE_RATE / HOP)), 1)
        self.reset()

    def reset(self) -> None:
        """Forget what was heard (a gap in the stream)."""
        self._input = np.zeros(FRAME - HOP)  # the stream not yet framed, after FRAME - HOP zeros of lead
        self._lead = FRAME - HOP  # samples at the start of the output still to drop (the lead's)
        # the power of every fourth frame (those that do not overlap) over the newest fit_s: a percentile over them
        # is as good an estimate, at a quarter of the cost of the partition that dominates the streaming gate's time
        self._powers = np.zeros((0, FRAME // 2 + 1))
        self._frames = 0  # frames seen
        self._noise: np.ndarray | None = None
        self._since_fit = 0
        self._fitted_on = 0  # frames seen when the estimate in force was made
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # last frame: spectrum, gain, previous
        self._tail = np.zeros(FRAME - HOP)  # the overlap-add past the samples given out, divided by the window sum
        self._owed = 0  # samples taken in and not yet given out

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """The gated audio that is ready (float32; empty until the first frames are complete)."""
        chunk = np.asarray(chunk, dtype=np.float64).ravel()
        self._owed += len(chunk)
        self._input = np.concatenate([self._input, chunk])
        if self._noise is None and self._owed < self.first_samples:
            return np.zeros(0, dtype=np.float32)  # the first seconds wait to be gated as a whole query is
        n = (len(self._input) - FRAME) // HOP + 1 if len(self._input) >= FRAME else 0
        if n <= 0:
            return np.zeros(0, dtype=np.float32)
        spectra = _spectra(self._input[:(n - 1) * HOP + FRAME])
        self._input = self._input[n * HOP:]
        g = self._gains(spectra.real ** 2 + spectra.imag ** 2)
        # the pending frame leads the batch; the last new one waits for its successor's gain
        if self._pending is not None:
            spectra = np.concatenate([self._pending[0][None], spectra])
            g = np.concatenate([self._pending[1][None], g])
            before = self._pending[2]
        else:
            before = g[0]
        self._pending = (spectra[-1], g[-1], g[-2] if len(g) > 1 else before)
        if len(spectra) < 2:
            return np.zeros(0, dtype=np.float32)
        smoothed = (np.concatenate([before[None], g[:-2]]) + g[:-1] + g[1:]) / 3.0
        out = _synthesise(spectra[:-1] * smoothed)
        out[:len(self._tail)] += self._tail
        ready = (len(spectra) - 1) * HOP
        self._tail = out[ready:]
        drop = min(self._lead, ready)
        self._lead -= drop
        self._owed -= ready - drop
        return out[drop:ready].astype(np.float32)

    def flush(self) -> np.ndarray:
        """The end of the stream: the samples still owed, gated as if silence followed."""
        owed = self._owed
        out = self.push(np.zeros(self.latency + HOP))[:owed]
        self._owed = 0
        return out

    def _gains(self, power: np.ndarray) -> np.ndarray:
        """The new frames' gains, each with the noise estimate in force when it came in."""
        if self._noise is None and self.first_samples:  # the first seconds: one estimate from all their frames
            self._remember(power)
            self._noise, self._since_fit, self._fitted_on = noise_power(self._powers), 0, self._frames
            return gains(power, self._noise)
        out = np.empty((len(power), power.shape[1]))
        i = 0
        while i < len(power):
            due = min(self.refit_frames, self._fitted_on)  # sooner while young: the estimate doubles its frames
            if self._noise is None or self._since_fit >= due:
                self._remember(power[i:i + 1])
                self._noise, self._since_fit, self._fitted_on = noise_power(self._powers), 1, self._frames
                out[i] = gains(power[i:i + 1], self._noise)[0]
                i += 1
                continue
            m = min(due - self._since_fit, len(power) - i)
            self._remember(power[i:i + m])
            out[i:i + m] = gains(power[i:i + m], self._noise)
            self._since_fit += m
            i += m
        return out

    def _remember(self, power: np.ndarray) -> None:
        """Keep every fourth of these consecutive frames (counted from the stream's first) for the noise estimate."""
        step = FRAME // HOP
        kept = power[-self._frames % step::step]
        self._frames += len(power)
        self._powers = np.concatenate([self._powers, kept])[-self.fit_rows:]
