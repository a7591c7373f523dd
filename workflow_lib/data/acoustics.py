"""Simulated acoustic responses: long rooms (image sources + a stochastic late tail) and resonant, ringing spaces.

Measured impulse responses are few (a project usually has a handful of real rooms), and the model's measured weak
spot is a space whose few narrow resonances ring for a second (a dish, a tiled cubicle, a tube, a car cabin): tonal
energy smeared over time at a handful of frequencies, with 30 dB peaks and notches. Two generators cover it:

* ``modal_response``: a bank of exponentially decaying sinusoids (the modes of a small rigid space) with random
  frequencies, decay times and strongly unequal amplitudes, plus the direct sound and an optional weak diffuse tail;
* ``comb_response``: parallel feedback combs with damping in the loop (tubes, plates, flutter between two hard
  walls): a harmonic series of resonances ringing down together.

``hybrid_room`` simulates shoebox rooms of any reverberation time (0.2-3 s) cheaply: pyroomacoustics' image-source
method gives the direct sound and early reflections (which depend on the geometry and source-microphone distance),
and a Gaussian-noise late tail with a frequency-dependent exponential decay (high frequencies die faster, as air and
wall absorption make them) continues it past the mixing time (Polack's statistical model of late reverberation).
Image sources alone would need hundreds of millions of images for a 3 s hall.

All functions are pure and seeded by the ``numpy.random.Generator`` they are given.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy import signal

from workflow_lib import SAMPLE_RATE

log = logging.getLogger(__name__)

SR = SAMPLE_RATE
LN1000 = math.log(1000.0)  # an amplitude envelope exp(-LN1000 t / T60) falls 60 dB in T60
# Octave bands of the late tail (Hz, up to Nyquist) and how their decay time scales with the broadband RT60.
TAIL_BANDS_HZ = (125.0, 250.0, 500.0, 1000.0, 2000.0, 3500.0)
TAIL_RT60_SCALE = (1.2, 1.1, 1.0, 0.95, 0.8, 0.6)


def _fade_out(h: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    n = min(int(seconds * SR), len(h) // 4)
    if n > 0:
        h[-n:] *= 0.5 * (1 + np.cos(np.linspace(0, np.pi, n)))
    return h


def modal_response(rng: np.random.Generator, t60_s: tuple[float, float] = (0.3, 2.0),
                   freq_hz: tuple[float, float] = (150.0, 3800.0), n_modes: tuple[int, int] = (3, 40)
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """A ringing space as a sum of decaying modes. Returns (response at 8 kHz, description).

    Amplitudes are log-normal (sigma 1.5 in natural log, ~13 dB): a few modes dominate, which gives the deep peaks
    and notches of a resonant space rather than a flat, diffuse colouring. The direct sound is kept at -25..-5 dB
    relative to the modes' energy, and half the responses get a weak diffuse tail (-30..-10 dB).
    """
    k = int(rng.integers(n_modes[0], n_modes[1] + 1))
    freqs = np.exp(rng.uniform(math.log(freq_hz[0]), math.log(freq_hz[1]), k))
    t60 = rng.uniform(t60_s[0], t60_s[1], k)
    amps = np.exp(rng.normal(0.0, 1.5, k))
    phases = rng.uniform(0, 2 * np.pi, k)
    n = int(math.ceil(t60.max() * SR))
    t = np.arange(n) / SR
    h = np.zeros(n)
    for f, d, a, p in zip(freqs, t60, amps, phases):
        m = int(math.ceil(d * SR))
        h[:m] += a * np.exp(-LN1000 * t[:m] / d) * np.sin(2 * np.pi * f * t[:m] + p)
    h /= max(np.linalg.norm(h), 1e-12)
    direct_db = float(rng.uniform(-25.0, -5.0))
    h[0] += 10 ** (direct_db / 20)
    diffuse_db = None
    if rng.random() < 0.5:
        diffuse_db = float(rng.uniform(-30.0, -10.0))
        tail = rng.standard_normal(n) * np.exp(-LN1000 * t / float(np.median(t60)))
        h += tail / max(np.linalg.norm(tail), 1e-12) * 10 ** (diffuse_db / 20)
    return _fade_out(h), {"family": "modal", "modes": k, "t60_max_s": round(float(t60.max()), 3),
                          "direct_db": round(direct_db, 1), "diffuse_db": diffuse_db}


def comb_response(rng: np.random.Generator, t60_s: tuple[float, float] = (0.3, 2.0),
                  delay_ms: tuple[float, float] = (1.0, 12.0), n_combs: tuple[int, int] = (1, 3)
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Parallel feedback combs with a one-pole low-pass in each loop: harmonic resonances at multiples of
    1 / delay that ring down together (high harmonics faster). Returns (response at 8 kHz, description)."""
    c = int(rng.integers(n_combs[0], n_combs[1] + 1))
    t60 = float(rng.uniform(*t60_s))
    n = int(math.ceil(t60 * SR))
    h = np.zeros(n)
    delays = []
    for _ in range(c):
        d = max(2, int(round(rng.uniform(*delay_ms) * SR / 1000)))
        delays.append(d)
        g = 10 ** (-3.0 * d / (t60 * SR))  # loop gain for a 60 dB decay in t60
        damp = float(rng.uniform(0.0, 0.5))  # one-pole low-pass in the loop: y = (1 - damp) x + damp y[-1]
        # y[n] = x[n] + g * lp(y)[n - d]: an impulse train through an IIR, computed by lfilter on a
        # denominator with the loop's low-pass folded in.
        b = np.zeros(d + 2)
        b[0], b[1] = 1.0, -damp
        a = np.zeros(d + 2)
        a[0], a[1] = 1.0, -damp
        a[d] += -g * (1 - damp)
        x = np.zeros(n)
        x[0] = 1.0
        y = signal.lfilter(b, a, x)
        h += float(np.exp(rng.normal(0, 0.5))) * y / max(np.linalg.norm(y), 1e-12)
    h /= max(np.linalg.norm(h), 1e-12)
    direct_db = float(rng.uniform(-25.0, -5.0))
    h[0] += 10 ** (direct_db / 20)
    return _fade_out(h), {"family": "comb", "combs": c, "delays_ms": [round(d * 1000 / SR, 2) for d in delays],
                          "t60_s": round(t60, 3), "direct_db": round(direct_db, 1)}


def resonant_response(rng: np.random.Generator, t60_s: tuple[float, float] = (0.3, 2.0)
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """A random resonant space: modal (two in three) or comb-like."""
    if rng.random() < 2 / 3:
        return modal_response(rng, t60_s)
    return comb_response(rng, t60_s)


def stochastic_tail(rng: np.random.Generator, n: int, rt60_s: float) -> np.ndarray:
    """Gaussian noise in octave bands, each decaying exponentially with its own RT60 (``TAIL_RT60_SCALE``)."""
    t = np.arange(n) / SR
    out = np.zeros(n)
    edges = [0.0] + [math.sqrt(a * b) for a, b in zip(TAIL_BANDS_HZ[:-1], TAIL_BANDS_HZ[1:])] + [SR / 2]
    for lo, hi, scale in zip(edges[:-1], edges[1:], TAIL_RT60_SCALE):
        noise = rng.standard_normal(n)
        if lo <= 0:
            sos = signal.butter(4, hi, "lowpass", fs=SR, output="sos")
        elif hi >= SR / 2:
            sos = signal.butter(4, lo, "highpass", fs=SR, output="sos")
        else:
            sos = signal.butter(4, [lo, hi], "bandpass", fs=SR, output="sos")
        band = signal.sosfilt(sos, noise)
        band /= max(np.sqrt(np.mean(band ** 2)), 1e-12)
        out += band * np.exp(-LN1000 * t / (rt60_s * scale))
    return out


def room_for(rt60: float, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Random room dimensions for which Sabine's formula allows ``rt60`` (absorption <= 1): big rooms cannot be as
    dry as small ones. Returns (dims, rt60); rt60 is raised only if even the smallest room cannot reach it."""
    import pyroomacoustics as pra

    for _ in range(200):
        dims = rng.uniform(lo, hi)
        try:
            pra.inverse_sabine(rt60, dims)
            return dims, rt60
        except ValueError:
            continue
    dims = np.asarray(lo, dtype=float).copy()
    v, s = np.prod(dims), 2 * (dims[0] * dims[1] + dims[0] * dims[2] + dims[1] * dims[2])
    feasible = 24 * np.log(10) * v / (343.0 * s) * 1.01
    log.warning("RT60 %.2f s is too short for rooms of at least %s m: using %.2f s", rt60, list(lo), feasible)
    return dims, max(rt60, feasible)


def positions(dims: np.ndarray, rng: np.random.Generator, min_distance: float = 0.5,
              max_distance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Source and microphone inside the room, away from the walls, ``min_distance``..``max_distance`` apart."""
    margin = np.minimum(0.5, dims / 4)
    src = mic = None
    for _ in range(200):
        src, mic = rng.uniform(margin, dims - margin, size=(2, 3))
        d = np.linalg.norm(src - mic)
        if d >= min_distance and (max_distance is None or d <= max_distance):
            break
    return src, mic


def ism_response(dims, src, mic, absorption: float, max_order: int) -> np.ndarray:
    """pyroomacoustics image-source response (randomised image positions, no air absorption) at 8 kHz."""
    import pyroomacoustics as pra

    room = pra.ShoeBox(dims, fs=SR, materials=pra.Material(float(absorption)), max_order=int(max_order),
                       air_absorption=False, use_rand_ism=True)
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    return np.asarray(room.rir[0][0], dtype=np.float64)


def order_for(dims: np.ndarray, seconds: float) -> int:
    """Image-source order whose reflections cover ``seconds`` of the response (as pra.inverse_sabine computes)."""
    r = min(a * b / np.hypot(a, b) for a, b in ((dims[0], dims[1]), (dims[0], dims[2]), (dims[1], dims[2])))
    return max(1, int(np.ceil(343.0 * seconds / r - 1)))


def hybrid_room(rt60_s: float, dims: np.ndarray, src: np.ndarray, mic: np.ndarray, rng: np.random.Generator,
                max_ir_s: float, early_s: float = 0.08) -> np.ndarray:
    """Room response: image sources up to ``early_s`` after the direct sound, then a stochastic tail whose level
    continues the image-source energy at the junction (20 ms crossfade). Length up to ``max_ir_s`` (or 1.2 x RT60).
    """
    import pyroomacoustics as pra

    # pyroomacoustics draws its randomised image-source displacements from its own global generators
    pra.random.seed(numpy=int(rng.integers(2 ** 63)), libroom=int(rng.integers(2 ** 63)))
    absorption, _ = pra.inverse_sabine(rt60_s, dims)
    absorption = float(np.clip(absorption, 1e-3, 0.999))
    direct = float(np.linalg.norm(src - mic)) / 343.0
    early = ism_response(dims, src, mic, absorption, order_for(dims, direct + early_s))
    n = max(int(round(min(max_ir_s, 1.2 * rt60_s + direct) * SR)), int((direct + early_s) * SR) + 1)
    h_early = np.zeros(n)
    h_early[:min(n, len(early))] = early[:n]
    j = min(int((direct + early_s) * SR), len(early) - 1, n - 1)
    w = int(0.02 * SR)
    lo = max(j - w, 0)
    ramp = np.clip((np.arange(n) - lo) / max(w, 1), 0.0, 1.0)
    # The image-source part and one noise realisation move the measured decay off the target, most in short rooms:
    # re-draw the tail with its decay time corrected by the measured ratio until it is within 5 %.
    tail_rt60 = rt60_s
    for _ in range(4):
        tail = stochastic_tail(rng, n, tail_rt60)
        if j > lo:
            tail *= math.sqrt(float(np.mean(h_early[lo:j] ** 2)) / max(float(np.mean(tail[lo:j] ** 2)), 1e-20))
        h = h_early * (1 - ramp) + tail * ramp
        measured = _t20(h)
        if not np.isfinite(measured) or abs(measured / rt60_s - 1) < 0.05:
            break
        tail_rt60 *= rt60_s / measured
    return _fade_out(h)


def _t20(h: np.ndarray) -> float:
    return estimate_rt60(h[int(np.argmax(np.abs(h))):])


def energy_decay_db(h: np.ndarray) -> np.ndarray:
    """Schroeder backward-integrated energy decay curve in dB relative to the total energy."""
    e = np.cumsum(np.square(h.astype(np.float64))[::-1])[::-1]
    return 10 * np.log10(np.maximum(e / max(e[0], 1e-300), 1e-30))


def estimate_rt60(h: np.ndarray, sr: int = SR) -> float:
    """RT60 from the Schroeder decay curve: a line fitted between -5 and -25 dB (T20), extrapolated to -60 dB.

    NaN when the curve never reaches -25 dB or the fit range is too short to trust.
    """
    if len(h) < 4 or not np.any(h):
        return float("nan")
    edc = energy_decay_db(h)
    below5, below25 = np.flatnonzero(edc <= -5.0), np.flatnonzero(edc <= -25.0)
    if len(below25) == 0 or len(below5) == 0:
        return float("nan")
    i0, i1 = below5[0], below25[0]
    if i1 - i0 < 4:
        return float("nan")
    t = np.arange(i0, i1 + 1) / sr
    slope = np.polyfit(t, edc[i0:i1 + 1], 1)[0]
    return float(-60.0 / slope) if slope < 0 else float("nan")


def random_eq_biquads(rng: np.random.Generator, n_bands: tuple[int, int] = (2, 5),
                      gain_db: tuple[float, float] = (-20.0, 20.0), freq_hz: tuple[float, float] = (150.0, 3800.0),
                      q: tuple[float, float] = (0.5, 4.0)) -> list[tuple[float, float, float]]:
    """A small loudspeaker's or phone microphone's static colouring as peaking bands (freq, Q, gain dB)."""
    k = int(rng.integers(n_bands[0], n_bands[1] + 1))
    return [(float(np.exp(rng.uniform(math.log(freq_hz[0]), math.log(freq_hz[1])))), float(rng.uniform(*q)),
             float(rng.uniform(*gain_db))) for _ in range(k)]


def peaking_sos(freq_hz: float, q: float, gain_db: float, sr: int = SR) -> np.ndarray:
    """One RBJ peaking-EQ biquad as a scipy second-order section."""
    amp = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * min(max(freq_hz, 1.0), sr / 2 - 1.0) / sr
    alpha = math.sin(w0) / (2 * q)
    b = np.array([1 + alpha * amp, -2 * math.cos(w0), 1 - alpha * amp])
    a = np.array([1 + alpha / amp, -2 * math.cos(w0), 1 - alpha / amp])
    return np.concatenate([b / a[0], a / a[0]])[None, :]


def apply_eq(x: np.ndarray, bands: list[tuple[float, float, float]], sr: int = SR) -> np.ndarray:
    """``x`` through the peaking bands (causal, like a real device)."""
    if not bands:
        return np.asarray(x, dtype=np.float32)
    sos = np.concatenate([peaking_sos(f, q, g, sr) for f, q, g in bands])
    return signal.sosfilt(sos, x).astype(np.float32)
