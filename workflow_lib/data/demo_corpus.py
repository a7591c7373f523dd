"""Built-in demo corpus: deterministic synthetic songs so the whole workflow runs on a fresh machine.

Each song gets its own key, mode, tempo, metre, swing, chord progressions, melody, bass line, accompaniment style,
drum pattern, timbres (harmonic spectra and ADSR envelopes), reverb and song structure (verse/chorus/bridge, some with
a key change). Songs are never exact loops: melodies and drums vary bar by bar, timing and velocities are humanised
and noise-based drums differ on every hit, so two 1 s segments of one song are not trivially identical -- the
fingerprinter is trained and evaluated on them.

Everything is drawn from ``np.random.default_rng([seed, i])`` for song ``i``, so a song does not depend on how many
songs are generated and the output is bit-identical for a seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_lib import SAMPLE_RATE
from workflow_lib.common.atomic import atomic_path
from workflow_lib.audio.files import write_audio
from workflow_lib.common.progress import progress

log = logging.getLogger(__name__)

SR = SAMPLE_RATE
NYQUIST_MARGIN_HZ = 3800.0  # keep every partial below this (band-limited synthesis, no aliasing at 8 kHz)
TABLE_SIZE = 2048

SCALES = {
    "major": [0, 2, 4, 5, 7, 9, 11],
    "minor": [0, 2, 3, 5, 7, 8, 10],
    "dorian": [0, 2, 3, 5, 7, 9, 10],
    "mixolydian": [0, 2, 4, 5, 7, 9, 10],
    "harmonic minor": [0, 2, 3, 5, 7, 8, 11],
    "phrygian": [0, 1, 3, 5, 7, 8, 10],
    "lydian": [0, 2, 4, 6, 7, 9, 11],
}
# Chord progressions as scale degrees (0 = tonic); random ones are added too.
PROGRESSIONS = [
    [0, 4, 5, 3], [0, 5, 3, 4], [5, 3, 0, 4], [0, 3, 4, 4], [1, 4, 0, 0], [0, 6, 5, 4], [0, 3, 0, 4],
    [5, 4, 3, 4], [0, 2, 3, 4], [3, 4, 0, 5], [0, 0, 3, 4], [0, 4, 1, 3], [5, 1, 4, 0], [0, 5, 1, 4],
]
STRUCTURES = [
    "AABABB", "ABABCB", "AABBCBB", "ABCABC", "AAB", "ABAB", "AABACBB", "ABBCB", "AAAB", "ABCB",
]
NOTE_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]

TITLE_A = ["Velvet", "Copper", "Silent", "Electric", "Golden", "Paper", "Midnight", "Crystal", "Hollow", "Neon",
           "Amber", "Distant", "Broken", "Lunar", "Crimson", "Quiet", "Wild", "Frozen", "Northern", "Painted"]
TITLE_B = ["Harbor", "Engine", "Garden", "Signal", "River", "Lanterns", "Horizon", "Machine", "Orchard", "Tides",
           "Avenue", "Echoes", "Mirrors", "Satellite", "Meadow", "Skyline", "Circuit", "Voyage", "Embers", "Parade"]
ARTISTS = ["The Sine Waves", "Fourier & Sons", "Nyquist", "Dr. Oscillator", "Half Step", "Modal Collective",
           "The Envelopes", "Phase Shift", "Sawtooth Sisters", "Low Pass Club"]


@dataclass
class Timbre:
    """A band-limited oscillator voice: harmonic amplitudes, ADSR envelope and expression."""

    harmonics: np.ndarray  # amplitude of partial k+1
    attack: float
    decay: float
    sustain: float
    release: float
    vibrato_hz: float
    vibrato_cents: float
    detune_cents: float  # a second, detuned oscillator (chorus); 0 = none
    pluck: float  # 0..1: brightness decays during the note (mix of bright and dark tables)


# --------------------------------------------------------------------------------------------- oscillators

_TABLES: dict[tuple, np.ndarray] = {}


def _wavetable(harmonics: np.ndarray, f0: float) -> np.ndarray:
    """One period of the timbre with only the partials below the Nyquist margin for ``f0`` (cached)."""
    n = max(1, min(len(harmonics), int(NYQUIST_MARGIN_HZ // max(f0, 1.0))))
    key = (harmonics.tobytes(), n)
    table = _TABLES.get(key)
    if table is None:
        k = np.arange(1, n + 1)[:, None]
        phase = 2 * np.pi * np.arange(TABLE_SIZE)[None, :] / TABLE_SIZE
        table = (harmonics[:n, None] * np.sin(k * phase)).sum(axis=0)
        table = np.append(table / max(np.abs(table).max(), 1e-9), table[0] / max(np.abs(table).max(), 1e-9))
        if len(_TABLES) > 1024:  # bounded memory (about 16 MB)
            _TABLES.clear()
        _TABLES[key] = table
    return table


def _lookup(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Linear-interpolated table read at the given phase (in cycles)."""
    pos = (cycles % 1.0) * TABLE_SIZE
    i = pos.astype(np.int64)
    frac = pos - i
    return table[i] * (1 - frac) + table[i + 1] * frac


def _adsr(n: int, held: int, t: Timbre) -> np.ndarray:
    """Envelope over ``n`` samples for a note held ``held`` samples (then released)."""
    a, d, r = max(1, int(t.attack * SR)), max(1, int(t.decay * SR)), max(1, int(t.release * SR))
    idx = np.arange(n, dtype=np.float64)
    env = np.where(idx < a, idx / a, t.sustain + (1 - t.sustain) * np.exp(-(idx - a) / d))
    level_at_release = env[min(held, n - 1)]
    rel = idx >= held
    env[rel] = level_at_release * np.exp(-(idx[rel] - held) * 5.0 / r)
    return env


def _render_note(out: np.ndarray, start: int, dur_s: float, midi: float, vel: float, timbre: Timbre,
                 rng: np.random.Generator) -> None:
    """Add one note to ``out`` in place (clipped at the buffer end)."""
    if start >= len(out) or vel <= 0:
        return
    held = max(1, int(dur_s * SR))
    n = min(held + int(timbre.release * SR), len(out) - start)
    if n <= 0:
        return
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(n) / SR
    vib = timbre.vibrato_cents / 1200 * np.sin(2 * np.pi * timbre.vibrato_hz * t + rng.uniform(0, 6.3))
    # vibrato fades in, as players do
    vib *= np.minimum(1.0, t / 0.25)
    inst_f = f0 * 2 ** vib
    cycles = np.cumsum(inst_f) / SR + rng.uniform()
    bright = _wavetable(timbre.harmonics, f0)
    sig = _lookup(bright, cycles)
    if timbre.pluck > 0:
        dark = _wavetable(timbre.harmonics[:2], f0)
        mix = np.exp(-t * 12 * timbre.pluck)
        sig = sig * mix + _lookup(dark, cycles) * (1 - mix)
    if timbre.detune_cents:
        cycles2 = cycles * 2 ** (timbre.detune_cents / 1200) + 0.37
        sig = 0.6 * sig + 0.4 * _lookup(bright, cycles2)
    sig *= _adsr(n, held, timbre) * vel
    _place(out, sig, start, 1.0)


def _random_timbre(rng: np.random.Generator, role: str) -> Timbre:
    n = 24
    k = np.arange(1, n + 1)
    family = rng.integers(5)
    if family == 0:  # saw-like
        h = 1 / k
    elif family == 1:  # square / clarinet-like (odd partials)
        h = np.where(k % 2 == 1, 1 / k, 0.05 / k)
    elif family == 2:  # soft, flute-like
        h = np.exp(-(k - 1) * rng.uniform(0.6, 1.5))
    elif family == 3:  # formant-like bump (nasal, brassy)
        centre = rng.uniform(2, 8)
        h = np.exp(-((k - centre) / rng.uniform(1.0, 3.0)) ** 2) + 0.3 / k
    else:  # random spectrum
        h = rng.uniform(0, 1, n) / k ** rng.uniform(0.5, 1.5)
    h = h * (1 + 0.3 * rng.standard_normal(n)).clip(0.2, None)
    h[0] = max(h[0], 0.5 * h.max())
    h = (h / h.max()).astype(np.float64)
    if role == "bass":
        h = h * np.exp(-(k - 1) * rng.uniform(0.1, 0.4))
        return Timbre(h, rng.uniform(0.003, 0.02), rng.uniform(0.08, 0.4), rng.uniform(0.2, 0.7),
                      rng.uniform(0.04, 0.12), 0.0, 0.0, 0.0, rng.uniform(0.0, 1.0))
    if role == "pad":
        return Timbre(h * np.exp(-(k - 1) * rng.uniform(0.1, 0.5)), rng.uniform(0.05, 0.4), rng.uniform(0.3, 1.0),
                      rng.uniform(0.5, 0.9), rng.uniform(0.2, 0.6), rng.uniform(3, 6), rng.uniform(0, 10),
                      rng.uniform(4, 14), 0.0)
    if role == "keys":
        return Timbre(h, rng.uniform(0.002, 0.01), rng.uniform(0.1, 0.6), rng.uniform(0.0, 0.4),
                      rng.uniform(0.05, 0.3), 0.0, 0.0, float(rng.choice([0.0, rng.uniform(3, 8)])),
                      rng.uniform(0.3, 1.0))
    # lead
    return Timbre(h, rng.uniform(0.005, 0.08), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.9), rng.uniform(0.05, 0.25),
                  rng.uniform(4.5, 6.5), rng.uniform(5, 30), float(rng.choice([0.0, rng.uniform(4, 12)])),
                  rng.uniform(0.0, 0.6))


# --------------------------------------------------------------------------------------------- drums

def _shaped_noise(rng: np.random.Generator, n: int, lo_hz: float, hi_hz: float) -> np.ndarray:
    """Band-limited noise by FFT masking (soft edges)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    mask = 1 / (1 + (lo_hz / np.maximum(f, 1)) ** 4) / (1 + (f / hi_hz) ** 4)
    x = np.fft.irfft(spec * mask, n)
    return x / (np.abs(x).max() + 1e-9)


def _drum_kit(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """A few variants of each drum sound (fresh noise per variant) so repeated hits are never identical."""
    k_hi, k_lo, k_dec = rng.uniform(110, 200), rng.uniform(40, 60), rng.uniform(0.12, 0.4)
    s_tone, s_dec, s_lo = rng.uniform(160, 260), rng.uniform(0.08, 0.25), rng.uniform(800, 1800)
    h_dec, h_lo = rng.uniform(0.02, 0.07), rng.uniform(2200, 3200)
    tom_base = rng.uniform(90, 140)
    kit: dict[str, list[np.ndarray]] = {"kick": [], "snare": [], "hat": [], "open": [], "tom": [], "clap": []}
    for _ in range(6):
        n = int(0.5 * SR)
        t = np.arange(n) / SR
        f = k_lo + (k_hi - k_lo) * np.exp(-t * rng.uniform(25, 40))
        kick = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.exp(-t / (k_dec * rng.uniform(0.9, 1.1)))
        kick[:40] += 0.3 * rng.standard_normal(40) * np.linspace(1, 0, 40)
        kit["kick"].append(kick)
        n = int(0.4 * SR)
        t = np.arange(n) / SR
        snare = (0.5 * np.sin(2 * np.pi * s_tone * t) * np.exp(-t / 0.05)
                 + _shaped_noise(rng, n, s_lo, 3800) * np.exp(-t / (s_dec * rng.uniform(0.85, 1.15))))
        kit["snare"].append(snare)
        n = int(0.1 * SR)
        t = np.arange(n) / SR
        kit["hat"].append(_shaped_noise(rng, n, h_lo, 3900) * np.exp(-t / (h_dec * rng.uniform(0.8, 1.2))))
        n = int(0.5 * SR)
        t = np.arange(n) / SR
        kit["open"].append(_shaped_noise(rng, n, h_lo * 0.9, 3900) * np.exp(-t / rng.uniform(0.15, 0.3)))
        n = int(0.45 * SR)
        t = np.arange(n) / SR
        ft = tom_base * 1.5 ** (len(kit["tom"]) % 3) * (1 + 0.6 * np.exp(-t * 30))
        kit["tom"].append(np.sin(2 * np.pi * np.cumsum(ft) / SR) * np.exp(-t / 0.18))
        n = int(0.3 * SR)
        t = np.arange(n) / SR
        bursts = sum(np.exp(-np.maximum(t - d, 0) / 0.008) * (t >= d) for d in (0, 0.011, 0.023))
        kit["clap"].append(_shaped_noise(rng, n, 900, 3500) * (bursts + np.exp(-t / 0.08) * (t > 0.03)))
    return kit


def _drum_pattern(rng: np.random.Generator, steps: int, style: int) -> dict[str, np.ndarray]:
    """Velocities per 16th step for one bar (0 = silent)."""
    p = {name: np.zeros(steps) for name in ("kick", "snare", "hat", "open", "clap")}
    if steps == 12:  # 3/4 waltz-like
        p["kick"][0] = 1
        p["snare"][[4, 8]] = 0.7
        p["hat"][::2] = 0.5
    elif style == 0:  # rock
        p["kick"][[0, 8]] = 1
        p["kick"][rng.choice([6, 10, 11, 14])] = 0.8
        p["snare"][[4, 12]] = 1
        p["hat"][::2] = 0.6
    elif style == 1:  # four on the floor
        p["kick"][::4] = 1
        p["open"][2::4] = 0.5
        p["clap"][[4, 12]] = 0.9
        p["hat"][:] = 0.3
    elif style == 2:  # half time
        p["kick"][[0, 3, 10]] = 1
        p["snare"][8] = 1
        p["hat"][::2] = 0.55
    elif style == 3:  # breakbeat
        p["kick"][[0, 10]] = 1
        p["kick"][rng.choice([2, 6, 7])] = 0.8
        p["snare"][[4, 12]] = 1
        p["snare"][rng.choice([7, 9, 15])] = 0.35
        p["hat"][:] = 0.35
        p["hat"][::2] = 0.6
    else:  # random sparse groove
        p["kick"][0] = 1
        p["kick"][rng.choice(np.arange(1, steps), 2, replace=False)] = 0.8
        p["snare"][[4, 12]] = 0.9
        p["hat"][rng.random(steps) < 0.6] = 0.45
    return p


# --------------------------------------------------------------------------------------------- composition

def _chord_pitches(scale: list[int], degree: int, root_midi: int, size: int = 3) -> list[int]:
    """Stacked thirds on a scale degree, as MIDI numbers."""
    out = []
    for j in range(size):
        d = degree + 2 * j
        out.append(root_midi + scale[d % 7] + 12 * (d // 7))
    return out


def _melody_motif(rng: np.random.Generator, steps_per_bar: int, bars: int) -> list[tuple[int, int, int]]:
    """(step, length in steps, scale-degree offset) over ``bars`` bars: rhythm + contour of a phrase."""
    notes = []
    degree = int(rng.integers(0, 5))
    step = 0
    total = steps_per_bar * bars
    lengths = rng.choice([[1, 2, 2, 4], [2, 2, 4, 4], [1, 1, 2, 3], [2, 3, 4, 6], [1, 2, 3, 4]])
    while step < total:
        length = int(rng.choice(lengths))
        if rng.random() < 0.15:  # rest
            step += length
            continue
        degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3]), -3, 10))
        notes.append((step, min(length, total - step), degree))
        step += length
    return notes


def _vary_motif(rng: np.random.Generator, motif: list[tuple[int, int, int]], amount: float) -> list:
    """A bar-level variation: some notes move, some are dropped or split, so no phrase repeats exactly."""
    out = []
    for step, length, deg in motif:
        r = rng.random()
        if r < amount * 0.4:
            deg += int(rng.choice([-2, -1, 1, 2]))
        elif r < amount * 0.55:
            continue
        elif r < amount * 0.75 and length >= 2:
            half = length // 2
            out.append((step, half, deg))
            out.append((step + half, length - half, deg + int(rng.choice([-1, 1, 2]))))
            continue
        out.append((step, length, deg))
    return out


def _song(rng: np.random.Generator, n_samples: int) -> tuple[np.ndarray, dict]:
    """Compose and render one song. Returns (audio float32 in [-1, 1], description)."""
    tonic = int(rng.integers(0, 12))
    mode = str(rng.choice(list(SCALES)))
    scale = SCALES[mode]
    tempo = float(rng.uniform(72, 168))
    steps_per_bar = int(rng.choice([16, 16, 16, 16, 12]))
    step_s = 60.0 / tempo / 4
    swing = float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.1, 0.3)]))
    bar_s = steps_per_bar * step_s
    n_bars = int(np.ceil(n_samples / SR / bar_s)) + 1
    structure = str(rng.choice(STRUCTURES))
    section_bars = int(rng.choice([4, 8, 8]))
    has_drums = rng.random() > 0.1
    drum_style = int(rng.integers(5))
    accomp = str(rng.choice(["pad", "arp", "stabs", "strum"]))
    key_change = int(rng.choice([0, 0, 0, 1, 2]))  # semitones up for the last section

    sections = {}
    for name in sorted(set(structure)):
        prog = (list(PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]) if rng.random() < 0.75
                else [0] + list(rng.integers(0, 7, 3)))
        sections[name] = {
            "prog": prog,
            "chords_per_bar": int(rng.choice([1, 1, 2])) if steps_per_bar == 16 else 1,
            "motif": _melody_motif(rng, steps_per_bar, 2),
            "octave": int(rng.choice([0, 0, 12])),
            "drums": _drum_pattern(rng, steps_per_bar, drum_style if name == "A" else int(rng.integers(5))),
            "bass_rhythm": np.flatnonzero(rng.random(steps_per_bar) < rng.uniform(0.2, 0.5)).tolist() or [0],
            "energy": float(rng.uniform(0.6, 1.0)),
            "lead_on": bool(rng.random() < 0.85) or not has_drums,
        }
    # Sequence of bars: section letter per bar, intro bars use section A without lead.
    plan = []
    while len(plan) < n_bars:
        for letter in structure:
            plan.extend([letter] * section_bars)
    plan = plan[:n_bars]
    last_section_start = max(i for i in range(n_bars) if i == 0 or plan[i] != plan[i - 1])

    root_midi = 48 + tonic if tonic < 7 else 36 + tonic
    lead_t, bass_t = _random_timbre(rng, "lead"), _random_timbre(rng, "bass")
    acc_t = _random_timbre(rng, "pad" if accomp == "pad" else "keys")
    kit = _drum_kit(rng)
    lead, bass, acc, drums = (np.zeros(n_samples) for _ in range(4))
    arp_pattern = rng.permutation([0, 1, 2, 3, 1, 2, 0, 3])[: int(rng.choice([3, 4, 6, 8]))]
    stab_rhythm = np.flatnonzero(rng.random(steps_per_bar) < 0.3).tolist() or [0, steps_per_bar // 2]
    jitter_s = rng.uniform(0.002, 0.012)

    def onset(bar: int, step: float) -> int:
        swung = step + (swing if int(step) % 2 == 1 else 0.0)
        return int(round((bar * bar_s + swung * step_s + rng.normal(0, jitter_s)) * SR))

    for bar in range(n_bars):
        sec = sections[plan[bar]]
        shift = key_change if (key_change and bar >= last_section_start and bar > n_bars // 2) else 0
        intro = bar < 2
        cpb = sec["chords_per_bar"]
        chord_steps = steps_per_bar // cpb
        for c in range(cpb):
            degree = int(sec["prog"][(bar * cpb + c) % len(sec["prog"])])
            chord = [p + shift for p in _chord_pitches(scale, degree, root_midi + 12, size=4 if rng.random() < 0.3
                                                         else 3)]
            if rng.random() < 0.3:  # another inversion now and then: the same chord never sounds exactly alike
                chord = chord[1:] + [chord[0] + 12]
            c_start = c * chord_steps
            # accompaniment
            if accomp == "pad":
                for p in chord:
                    _render_note(acc, onset(bar, c_start), chord_steps * step_s, p, 0.22 * rng.uniform(0.8, 1), acc_t,
                                 rng)
            elif accomp == "arp":
                for j, s in enumerate(range(c_start, c_start + chord_steps, 2)):
                    p = chord[arp_pattern[j % len(arp_pattern)] % len(chord)] + 12 * (j % 4 == 3)
                    _render_note(acc, onset(bar, s), 2 * step_s, p, 0.3 * rng.uniform(0.7, 1), acc_t, rng)
            elif accomp == "stabs":
                for s in stab_rhythm:
                    if c_start <= s < c_start + chord_steps and rng.random() < 0.9:
                        for p in chord:
                            _render_note(acc, onset(bar, s), 1.5 * step_s, p, 0.2 * rng.uniform(0.7, 1), acc_t, rng)
            else:  # strum: chord tones staggered by a few ms, down/up strokes
                for s in range(c_start, c_start + chord_steps, 4):
                    order = chord if (s // 4) % 2 == 0 else chord[::-1]
                    for j, p in enumerate(order):
                        _render_note(acc, onset(bar, s) + int(j * rng.uniform(0.008, 0.02) * SR), 3.5 * step_s, p,
                                     0.18 * rng.uniform(0.6, 1), acc_t, rng)
            # bass
            bass_root = root_midi - 12 + scale[degree % 7] + shift
            for s in sec["bass_rhythm"]:
                if c_start <= s < c_start + chord_steps and not (intro and bar == 0):
                    p = bass_root + int(rng.choice([0, 0, 0, 7, 12]))
                    _render_note(bass, onset(bar, s), 2 * step_s * rng.uniform(0.7, 1.2), p, 0.5 * rng.uniform(0.8, 1),
                                 bass_t, rng)
        # lead: a two-bar motif, varied on every repetition
        if sec["lead_on"] and not intro:
            half = bar % 2
            motif = _vary_motif(rng, sec["motif"], amount=0.35 if bar % 8 >= 4 else 0.2)
            for step, length, deg in motif:
                if half * steps_per_bar <= step < (half + 1) * steps_per_bar:
                    d = deg + (7 if sec["octave"] else 0)
                    p = root_midi + 12 + scale[d % 7] + 12 * (d // 7) + shift
                    _render_note(lead, onset(bar, step - half * steps_per_bar), length * step_s * 0.95, p,
                                 0.35 * rng.uniform(0.75, 1.0), lead_t, rng)
        # drums, with ghost notes and a fill before each section change
        if has_drums and not (intro and bar == 0):
            pat = sec["drums"]
            fill = bar + 1 < n_bars and plan[bar + 1] != plan[bar]
            for name, vels in pat.items():
                for s in np.flatnonzero(vels):
                    if fill and s >= steps_per_bar // 2 and name != "kick":
                        continue
                    v = vels[s] * rng.uniform(0.75, 1.05) * sec["energy"]
                    if rng.random() < 0.05:
                        continue  # a dropped hit now and then
                    hit = kit[name][int(rng.integers(len(kit[name])))]
                    _place(drums, hit, onset(bar, s), v)
            ghosts = np.flatnonzero(rng.random(steps_per_bar) < 0.08)
            for s in ghosts:
                _place(drums, kit["snare"][int(rng.integers(6))], onset(bar, s), 0.2)
            if fill:
                for j, s in enumerate(range(steps_per_bar // 2, steps_per_bar, int(rng.choice([1, 2])))):
                    name = "tom" if rng.random() < 0.6 else "snare"
                    hit = kit[name][(5 - j) % 6 if name == "tom" else int(rng.integers(6))]
                    _place(drums, hit, onset(bar, s), 0.5 + 0.4 * j / steps_per_bar)

    # slow brightness / level movement over the song, so repeated bars differ spectrally as well
    t = np.arange(n_samples) / SR
    lfo = 1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.02, 0.08) * t + rng.uniform(0, 6.3))
    g = rng.uniform(0.5, 1.0, 4) * np.array([1.0, 1.0, 0.8, 0.7 if has_drums else 0])
    mix = g[0] * lead + g[1] * bass + g[2] * acc * lfo + g[3] * drums
    mix = _reverb(mix, rng)
    # fade in/out like a finished track
    fade_in, fade_out = int(0.05 * SR), int(min(3.0, n_samples / SR / 10) * SR)
    mix[:fade_in] *= np.linspace(0, 1, fade_in)
    mix[-fade_out:] *= np.linspace(1, 0, fade_out) ** 2
    mix = np.tanh(1.5 * mix / (np.abs(mix).max() + 1e-9)) / np.tanh(1.5)
    mix *= rng.uniform(0.7, 0.95)
    desc = {"key": f"{NOTE_NAMES[tonic]} {mode}", "tempo_bpm": round(tempo, 1),
            "metre": f"{steps_per_bar // 4}/4", "structure": structure, "accompaniment": accomp,
            "drums": has_drums, "key_change": key_change}
    return mix.astype(np.float32), desc


def _place(out: np.ndarray, hit: np.ndarray, start: int, vel: float) -> None:
    s0, s1 = max(start, 0), min(start + len(hit), len(out))
    if s1 > s0:
        out[s0:s1] += vel * hit[s0 - start:s1 - start]


def _reverb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mix in a synthetic room (exponentially decaying noise) by FFT convolution."""
    rt60 = rng.uniform(0.2, 1.5)
    n_ir = int(rt60 * SR)
    t = np.arange(n_ir) / SR
    ir = rng.standard_normal(n_ir) * np.exp(-6.9 * t / rt60)
    ir /= np.linalg.norm(ir)
    n_fft = 1 << int(np.ceil(np.log2(len(x) + n_ir)))
    wet = np.fft.irfft(np.fft.rfft(x, n_fft) * np.fft.rfft(ir, n_fft), n_fft)[:len(x)]
    wet_gain = rng.uniform(0.1, 0.4)
    return x + wet_gain * wet * (np.std(x) / (np.std(wet) + 1e-12))


def _title(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        title = f"{rng.choice(TITLE_A)} {rng.choice(TITLE_B)}"
        if title not in used:
            used.add(title)
            return title
        # on a clash, try again; after the pool runs low add a part number
        if len(used) >= len(TITLE_A) * len(TITLE_B) // 2:
            title = f"{title} (Part {len(used)})"
            used.add(title)
            return title


def generate_demo_corpus(out_dir: str | Path, n_songs: int, duration_s: float, seed: int) -> pd.DataFrame:
    """Write ``out_dir/music/demo-{i:03d}.flac`` (8 kHz mono PCM_16, tagged) and ``out_dir/catalogue.csv``.

    The catalogue has ``file`` (path relative to the music folder, as in the manifest's ``rel_path``), ``title``,
    ``artist`` plus a short musical description (key, tempo, metre, structure...). Returns the catalogue table.
    """
    if n_songs < 1:
        raise ValueError(f"demo.n_songs must be at least 1, got {n_songs}")
    if duration_s < 1:
        raise ValueError(f"demo.duration_s must be at least 1 s, got {duration_s}")
    out_dir = Path(out_dir)
    music = out_dir / "music"
    music.mkdir(parents=True, exist_ok=True)
    # A rerun with fewer songs must not leave older songs behind for the manifest to pick up.
    expected = {f"demo-{i:03d}.flac" for i in range(n_songs)}
    for stale in sorted(music.glob("demo-*.flac")):
        if stale.name not in expected:
            log.info("removing %s (not part of a %d-song demo corpus)", stale, n_songs)
            stale.unlink()
    n_samples = int(round(duration_s * SR))
    names_rng = np.random.default_rng([seed, 1_000_000])
    used: set[str] = set()
    rows = []
    for i in progress(range(n_songs), desc="demo songs", unit="song", mininterval=5):
        title = _title(names_rng, used)
        artist = ARTISTS[int(names_rng.integers(len(ARTISTS)))]
        audio, desc = _song(np.random.default_rng([seed, i]), n_samples)
        name = f"demo-{i:03d}.flac"
        write_audio(music / name, audio, SR, tags={"title": title, "artist": artist, "album": "NAFP demo corpus"})
        rows.append({"file": name, "title": title, "artist": artist, **desc})
        log.info("song %d/%d %s: %r by %s (%s, %.0f bpm, %s)", i + 1, n_songs, name, title, artist, desc["key"],
                 desc["tempo_bpm"], desc["metre"])
    table = pd.DataFrame(rows)
    with atomic_path(out_dir / "catalogue.csv") as tmp:
        table.to_csv(tmp, index=False)
    log.info("demo corpus: %d songs of %.1f s in %s", n_songs, duration_s, music)
    return table
