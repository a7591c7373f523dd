"""How much of a segment's identity each front end keeps, before any training (issue 11: the front end and ringing).

A model can only learn what its input still holds. For 1 s segments of real music, each front end's feature map of
a degraded view is compared with the clean maps of the same segment and of all the others (Pearson correlation of
the maps over the frames both cover): "same" is the mean correlation with its own clean map, "top-1" the share of
views whose best match among all clean maps is their own. Views:

- ``shift``: the window starts a quarter of a second later (the query sits between two database hops); only the 24
  frames both windows cover are compared. A front end that depends on where the window starts (a smoother started
  at the first frame) loses here what a model has to learn back.
- ``resonant``: a held-out draw of the resonant-space generator (``acoustics.resonant_response``, seeds apart from
  training's), the excerpt convolved with 2 s of run-up before the window.
- ``hall``: a diffuse tail of RT60 2 s (``acoustics.stochastic_tail``).
- ``noise 5 dB``, ``hall + noise 5 dB``: white-ish coloured noise, or clips of ``--noise`` files.

It is a screen, not a result: a trained encoder learns invariances no feature map has. It tells which front-end
variants are worth a training run, and why one fails.

    .venv/bin/python bench/frontend_invariance.py ../shared/corpus/dev/music/*.mp3 --songs 60 --per-song 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import signal

from workflow_lib import SAMPLE_RATE as SR, SEGMENT_SAMPLES
from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.files import load_audio
from workflow_lib.data.acoustics import resonant_response, stochastic_tail
from workflow_lib.model.features import (FrontendConfig, LogMelFrontend, log_mel_band_centred, log_mel_normalise,
                                          pcen)

PRE_S = 2.0  # run-up before each window, so reverberation has a past
SHIFT_FRAMES = 8  # 0.25 s at 32 frames per second
N_FRAMES = FrontendConfig().n_frames


def front_ends() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    cfg = FrontendConfig()
    mel = LogMelFrontend(cfg).mel
    fps = cfg.sample_rate / cfg.hop_length

    def log(wav):
        return log_mel_normalise(mel(wav), cfg.log_offset)

    def delta(wav):  # the log-mel's change over one frame: onsets, not sustained level
        lm = torch.log10(mel(wav) + cfg.log_offset)
        return torch.diff(lm, dim=-1, prepend=lm[..., :1])

    def log_cmn(wav):  # compression "log-cmn"
        return log_mel_band_centred(mel(wav), cfg.log_offset)

    out = {"log (shipped)": log, "log delta": delta, "log, band mean removed": log_cmn}
    for t in (0.4, 0.1):
        out[f"pcen {t} s, first frame"] = lambda w, t=t: pcen(mel(w), fps, t)
        out[f"pcen {t} s, band mean"] = lambda w, t=t: pcen(mel(w), fps, t, start="mean")
    out["pcen 0.4 s, band mean, floor -30 dB"] = lambda w: pcen(mel(w), fps, 0.4, start="mean", floor=10 ** -1.5)
    return out


def corr_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``a`` with every row of ``b``."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    return a @ b.T


def mix(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    p_x, p_n = np.mean(x ** 2), np.mean(noise ** 2) + 1e-20
    return x + noise * np.sqrt(p_x / p_n / 10 ** (snr_db / 10))


def excerpts(files: list[Path], songs: int, per_song: int, rng: np.random.Generator) -> np.ndarray:
    """(n, PRE + segment + shift) excerpts of real music, skipping near-silent ones."""
    need = int(PRE_S * SR) + SEGMENT_SAMPLES + SHIFT_FRAMES * 256
    out = []
    for f in files:
        if len(out) >= songs * per_song:
            break
        try:
            audio = load_audio(f)
        except AudioDecodeError as exc:
            print(f"skip {f.name}: {exc}", file=sys.stderr)
            continue
        if len(audio) < need + SR:
            continue
        for s in rng.integers(0, len(audio) - need, per_song):
            x = audio[s:s + need].astype(np.float64)
            if np.sqrt(np.mean(x[-SEGMENT_SAMPLES:] ** 2)) > 1e-3:
                out.append(x)
    return np.stack(out)


def views(x: np.ndarray, rng: np.random.Generator, noise_clips: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Degraded copies of each excerpt (same length)."""
    def noise_like(n):
        if noise_clips:
            clip = noise_clips[rng.integers(len(noise_clips))]
            s = rng.integers(0, max(1, len(clip) - n))
            return np.resize(clip[s:s + n], n)
        return signal.lfilter([1.0], [1.0, -0.9], rng.standard_normal(n))  # red-ish noise

    out = {"resonant": [], "hall": [], "noise 5 dB": [], "hall + noise 5 dB": []}
    for row in x:
        h, _ = resonant_response(np.random.default_rng(int(rng.integers(10 ** 9)) + 7 * 10 ** 9))
        out["resonant"].append(signal.fftconvolve(row, h)[:len(row)])
        tail = stochastic_tail(rng, int(2.0 * SR), 2.0) * 0.3
        tail[0] = 1.0
        hall = signal.fftconvolve(row, tail)[:len(row)]
        out["hall"].append(hall)
        out["noise 5 dB"].append(mix(row, noise_like(len(row)), 5.0))
        out["hall + noise 5 dB"].append(mix(hall, noise_like(len(row)), 5.0))
    return {k: np.stack(v) for k, v in out.items()}


def window(x: np.ndarray, shift: int = 0) -> torch.Tensor:
    s = int(PRE_S * SR) + shift * 256
    return torch.from_numpy(x[:, s:s + SEGMENT_SAMPLES].astype(np.float32))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("music", nargs="+", type=Path)
    ap.add_argument("--songs", type=int, default=60)
    ap.add_argument("--per-song", type=int, default=4)
    ap.add_argument("--noise", nargs="*", type=Path, default=[], help="noise files (default: generated noise)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(args.seed)
    files = sorted(args.music)
    rng.shuffle(files)
    x = excerpts(files, args.songs, args.per_song, rng)
    noise_clips = [load_audio(p) for p in args.noise]
    degraded = views(x, rng, noise_clips)
    print(f"{len(x)} one-second segments from {min(len(files), args.songs)} songs; "
          f"noise: {'files' if noise_clips else 'generated'}")
    names = ["shift", *degraded]
    print(f"{'front end':38s}" + "".join(f"{n:>22s}" for n in names))
    print(f"{'':38s}" + "".join(f"{'same / other / top-1':>22s}" for _ in names))
    for fe_name, fe in front_ends().items():
        clean = fe(window(x)).numpy().reshape(len(x), -1, N_FRAMES)  # (n, bands, frames)
        cells = []
        for n in names:
            if n == "shift":
                q = fe(window(x, SHIFT_FRAMES)).numpy().reshape(len(x), -1, N_FRAMES)[..., :N_FRAMES - SHIFT_FRAMES]
                ref = clean[..., SHIFT_FRAMES:]
            else:
                q, ref = fe(window(degraded[n])).numpy().reshape(len(x), -1, N_FRAMES), clean
            c = corr_rows(q.reshape(len(x), -1), ref.reshape(len(x), -1))
            same = np.diag(c)
            other = (c.sum(1) - same) / (len(x) - 1)
            top1 = np.mean(c.argmax(1) == np.arange(len(x)))
            cells.append(f"{same.mean():.2f} / {other.mean():.2f} / {100 * top1:3.0f}%")
        print(f"{fe_name:38s}" + "".join(f"{c:>22s}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
