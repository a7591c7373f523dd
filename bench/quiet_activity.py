"""Can the silence gate tell a quiet capture's music from a quiet room by its spectrum? Seconds under the query's
gate (``audio.segments.QUERY_SILENCE_DBFS``, down to 13 dB below it) of an evaluation's quiet-condition queries
(the conditions with ``level_db``), against seconds of background recordings (rooms, streets, rain: no music)
scaled to the same levels and recorded in 16 bits. Two features of each second's 300-3500 Hz power spectrum:
its flatness (geometric over arithmetic mean; music is more tonal, so lower) and its peakiness (the share of the
band's power in its loudest 5 % of bins; music higher). Prints, per feature, the area under the ROC curve and the
share of music seconds a gate would pass at the 95th / 99th / 99.9th percentile of the noise seconds.

    .venv/bin/python bench/quiet_activity.py runs/devx_quiet/results --noise ../shared/corpus/dev/noise
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib import SAMPLE_RATE  # noqa: E402
from workflow_lib.audio.files import AUDIO_EXTENSIONS, load_audio  # noqa: E402
from workflow_lib.audio.segments import QUERY_SILENCE_DBFS, frame, segment_levels_db  # noqa: E402
from workflow_lib.evaluation.degrade import quantise_16bit  # noqa: E402

BELOW_DB = 13.0  # how far under the gate the seconds compared lie
BAND_HZ = (300.0, 3500.0)


def band_power(segments: np.ndarray) -> np.ndarray:
    spec = np.abs(np.fft.rfft(segments * np.hanning(segments.shape[1]), axis=1)) ** 2
    f = np.fft.rfftfreq(segments.shape[1], 1.0 / SAMPLE_RATE)
    return spec[:, (f >= BAND_HZ[0]) & (f <= BAND_HZ[1])] + 1e-20


def tonality_by_flatness(segments: np.ndarray) -> np.ndarray:
    p = band_power(segments)
    return -np.exp(np.mean(np.log(p), 1)) / np.mean(p, 1)  # negated: higher means more tonal


def tonality_by_peakiness(segments: np.ndarray) -> np.ndarray:
    p = band_power(segments)
    k = max(1, p.shape[1] // 20)
    return np.sort(p, 1)[:, -k:].sum(1) / p.sum(1)


def under_gate(segments: np.ndarray) -> np.ndarray:
    lv = segment_levels_db(segments)
    return segments[(lv < QUERY_SILENCE_DBFS) & (lv >= QUERY_SILENCE_DBFS - BELOW_DB)]


def auc(music: np.ndarray, noise: np.ndarray) -> float:
    ranks = np.concatenate([music, noise]).argsort().argsort() + 1
    return float((ranks[:len(music)].sum() - len(music) * (len(music) + 1) / 2) / (len(music) * len(noise)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder whose evaluation has a quiet condition")
    ap.add_argument("--noise", type=Path, required=True, help="background recordings without music")
    ap.add_argument("--per-file", type=int, default=60, help="seconds drawn from each noise recording")
    args = ap.parse_args()
    folder = args.results / "eval" / "queries"
    queries = pd.read_parquet(folder / "queries.parquet")
    if "level_db" not in queries or queries["level_db"].isna().all():
        sys.exit(f"{folder}: no quiet condition (evaluate.conditions[].level_db)")
    quiet = queries[queries["level_db"].notna()]
    music = [under_gate(frame(load_audio(folder / f))) for f in quiet["file"]]
    music = np.concatenate([m for m in music if len(m)])
    rng = np.random.default_rng(0)
    noise = []
    for path in sorted(p for p in args.noise.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS):
        segs = frame(load_audio(path))
        for seg in segs[rng.permutation(len(segs))[:args.per_file]]:
            rms = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))
            if rms > 0:
                level = rng.uniform(QUERY_SILENCE_DBFS - BELOW_DB, QUERY_SILENCE_DBFS)
                noise.append(quantise_16bit(seg * 10 ** (level / 20) / rms))
    noise = under_gate(np.array(noise))
    print(f"{len(music)} seconds of {len(quiet)} quiet-condition queries and {len(noise)} seconds of {args.noise}, "
          f"all {QUERY_SILENCE_DBFS - BELOW_DB:g} to {QUERY_SILENCE_DBFS:g} dBFS (the gate's measure)")
    for name, feature in (("flatness", tonality_by_flatness), ("peakiness", tonality_by_peakiness)):
        m, n = feature(music), feature(noise)
        passed = ", ".join(f"{np.mean(m > np.percentile(n, pct)) * 100:.1f} % at the noise's {pct:g}th percentile"
                           for pct in (95, 99, 99.9))
        print(f"  {name}: AUC {auc(m, n):.3f}; music seconds passed {passed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
