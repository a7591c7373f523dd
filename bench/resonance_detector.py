"""Could a scan tell by itself that a recording was made in a resonant space, and turn on its whitened view?
(bench/README.md, "Scanning in two views"). For minute-long excerpts of test songs (no model trained on them),
clean and through held-out responses of each pool with held-out noise, the median over the excerpt's 5 s windows of
how long the ``K`` longest-ringing poles of the window's order-96 predictor ring (T60 = -3 / (8000 log10 |p|));
prints each pool's distribution. A usable detector needs the resonant pool apart from the others.

    python bench/resonance_detector.py RESULTS [--excerpts 40] [--poles 12 3] [--snr 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_lib import SAMPLE_RATE as SR  # noqa: E402
from workflow_lib.audio.files import load_audio  # noqa: E402
from workflow_lib.data.clipbank import ClipBank  # noqa: E402
from workflow_lib.evaluation.degrade import add_noise, ir_pool, limit_peak, reverberate  # noqa: E402
from workflow_lib.evaluation.monitoring import noise_and_talk  # noqa: E402
from workflow_lib.search.whiten import _predictor  # noqa: E402

POOLS = ("clean", "room", "long", "real", "resonant")


def ringing_s(x: np.ndarray, poles: int, order: int = 96) -> float:
    """The median over ``x``'s 5 s windows of the median T60 of its predictor's ``poles`` longest-ringing poles."""
    per_window = []
    for a in range(0, len(x) - 5 * SR + 1, 5 * SR):
        b = _predictor(np.asarray(x[a:a + 5 * SR], np.float64), order, 1e-3)
        if b is None:
            continue
        radius = np.sort(np.abs(np.roots(b)))[::-1][:poles]
        per_window.append(np.median(-3 / (SR * np.log10(np.clip(radius, 1e-9, 1 - 1e-12)))))
    return float(np.median(per_window)) if per_window else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder of the workflow (its songs, splits and banks)")
    ap.add_argument("--excerpts", type=int, default=40, help="minute-long excerpts per pool (default %(default)s)")
    ap.add_argument("--poles", nargs="+", type=int, default=[12, 3], help="longest-ringing poles counted")
    ap.add_argument("--snr", type=float, default=10.0, help="noise SNR of the reverberant excerpts (dB)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = args.results
    songs = pd.read_parquet(r / "manifest" / "songs.parquet")
    splits = pd.read_parquet(r / "split" / "splits.parquet")
    test = songs[songs["song_id"].isin(splits.loc[splits["split"] == "test", "song_id"])]
    irs = ClipBank(r / "irs" / "test")
    noise, _ = noise_and_talk(ClipBank(r / "noise" / "test"))
    rng = np.random.default_rng(args.seed)
    found: dict[tuple[str, int], list[float]] = {(p, k): [] for p in POOLS for k in args.poles}
    for _ in range(args.excerpts):
        song = load_audio(test.iloc[int(rng.integers(len(test)))].path)
        if len(song) < 62 * SR:
            continue
        start = int(rng.integers(0, len(song) - 61 * SR))
        for pool in POOLS:
            x = song[start:start + 60 * SR].astype(np.float32)
            if pool != "clean":
                rows = ir_pool(irs, pool)
                x = reverberate(song, start, 60 * SR, irs.clip(int(rows[rng.integers(len(rows))])))
                x = limit_peak(add_noise(x, noise.random_excerpt(rng, len(x)), args.snr))
            for k in args.poles:
                found[(pool, k)].append(ringing_s(x, k))
    for (pool, k), values in found.items():
        v = np.array(values)
        print(f"{k:2d} poles, {pool:8s} ({len(v)} excerpts): median {np.median(v):.3f} s, 10-90 % "
              f"{np.percentile(v, 10):.3f}-{np.percentile(v, 90):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
