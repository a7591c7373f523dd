"""Can a feature of the query's audio alone tell the no-match rule which condition it is in (issue 12)?

Clean queries of songs that are not in the database are accepted two to three times as often as the rule's 1 %
target, noisy ones less often (bench/README.md, "No-match rule"). Thresholds that knew each query's condition would
even this out; the query's condition is not known, but its audio may show it. Two blind features per query, from
its 8 kHz audio, 32 ms frames, 300-3500 Hz:

- ``floor``: per frequency bin, the 10th percentile of the power over the frames against its median (dB), averaged
  over the bins. Stationary noise and reverberation fill the gaps between notes and raise it;
- ``dyn``: the 10th against the 90th percentile of the frames' energy (dB): the query's dynamic range.

Each rule has one margin threshold per query length and per equal-count bin of the feature, fitted on the null
queries of one half of the evaluation's unknown songs and measured on the other half (then the halves swap), as
``decision_statistic.py`` fits its rules; the plain margin (the product's rule) and the per-condition ceiling are
fitted the same way. Both sides see the evaluation's own noise and rooms, so this is the most favourable case for
any rule: one that fails here does not need the transfer test.

Usage: .venv/bin/python bench/blind_condition_bins.py runs/devx_eval_gate2/results [--fpr 0.01]
(the features are cached as RESULTS/eval/queries/blind_features.parquet)
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402

import decision_statistic as ds  # noqa: E402

FRAME, HOP = 256, 128  # 32 ms frames at 8 kHz
BAND_HZ = (300, 3500)
FEATURES = ("floor", "dyn")


def blind_features(path: Path) -> tuple[float, float]:
    x, sr = sf.read(path, dtype="float32")
    if x.ndim > 1:
        x = x.mean(axis=1)
    if len(x) < FRAME * 4:
        return np.nan, np.nan
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP] * np.hanning(FRAME)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
    band = power[:, int(BAND_HZ[0] / sr * FRAME):int(BAND_HZ[1] / sr * FRAME)]
    floor = float(np.mean(10 * np.log10(np.percentile(band, 10, axis=0) / np.percentile(band, 50, axis=0))))
    energy = 10 * np.log10(band.sum(axis=1))
    return floor, float(np.percentile(energy, 10) - np.percentile(energy, 90))


def query_features(results: Path) -> pd.DataFrame:
    cache = results / "eval" / "queries" / "blind_features.parquet"
    if not cache.exists():
        q = pd.read_parquet(results / "eval" / "queries" / "queries.parquet")
        with ProcessPoolExecutor(2) as pool:
            out = list(pool.map(blind_features, [results / "eval" / "queries" / f for f in q["file"]], chunksize=64))
        pd.DataFrame({"query_id": q["query_id"], "floor": [o[0] for o in out], "dyn": [o[1] for o in out]}
                     ).to_parquet(cache)
    return pd.read_parquet(cache)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results/ folder of an evaluation run")
    ap.add_argument("--fpr", type=float, default=0.01)
    args = ap.parse_args(argv)
    r = Path(args.results)
    q = pd.read_parquet(r / "eval" / "queries" / "queries.parquet").merge(query_features(r), on="query_id")
    unknown, unseen, conds = ds.evaluation_queries(r, "sequence", q)
    print("median of each feature per condition (dB), all queries:\n")
    print(q.groupby("condition")[list(FEATURES)].median().reindex(conds).round(2).to_string(), "\n")
    for frame in (unknown, unseen):
        frame["v"] = [ds._margin(list(t), None, None) for t in frame["top_scores"]]
    rows = ds._cross_validated_rows("margin (the rule)", unknown, unseen, conds, ds._per_length_rule(args.fpr))
    for feature in FEATURES:
        for frame in (unknown, unseen):
            frame["f"] = frame[feature].fillna(frame[feature].median())
        for bins in (2, 3):
            rows += ds._cross_validated_rows(f"margin | {feature} ({bins} bins)", unknown, unseen, conds,
                                             ds._binned_rule(args.fpr, bins))
    rows += ds._oracle_rows(unknown, unseen, conds, args.fpr)
    ds.print_tables(rows, conds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
