"""How steady is the no-match threshold, and would a smoothed tail estimate steady it? (issue 12)

The calibrate rule places each length's threshold just above the k-th highest of its null values (k = n x rate):
with `nafp index`'s 1,000 null queries a length that is the 10th highest for the query's 1 % rate, the 5th for the
listener's 0.5 % and the 3rd for the scan's 0.3 %. A recalibration (songs added, another seed) draws other null
queries and moves the threshold. This measures by how much, and whether two well-known smoothed estimators of an
upper quantile hold it steadier: the Harrell-Davis quantile (`scipy.stats.mstats.hdquantiles`, a beta-weighted
mean of all order statistics) and a generalized Pareto tail fitted to the top 10 % (`scipy.stats.genpareto`,
peaks over a threshold).

Input: an evaluation run's calibration (``RESULTS/index/threshold.json``, 2,000 null queries a length in the dev +
extra evaluation) and its stored answers. Each repetition splits a length's null values in two halves at random,
fits on one (1,000, `nafp index`'s default) and measures: the false-positive rate on the other half (the same
kind of queries), on the evaluation's unknown-song queries of that length (held-out noise and rooms), and the share
of the unseen database songs' right best guesses at 0-10 dB it accepts. 1 s answers are held to the one-view
thresholds, 3-10 s ones to the two-view thresholds, as the evaluation decided them. Mean and spread (sd) over the
repetitions. Last, at an equal false-positive rate: the Pareto tail's rate lowered until its mean rate on the
held-out halves is the rule's (a tail fit is not conservative by construction), and what each then accepts.

    .venv/bin/python bench/threshold_tail.py RESULTS [--repeats 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import genpareto  # noqa: E402
from scipy.stats.mstats import hdquantiles  # noqa: E402

from decision_statistic import n_segments  # noqa: E402
from workflow_lib.evaluation.metrics import snr_of  # noqa: E402
from workflow_lib.search.threshold import Calibration, _upper_point, decision_statistic  # noqa: E402

RATES = (0.01, 0.005, 0.003)
TAIL_SHARE = 0.1


def empirical(values: np.ndarray, rate: float) -> float:
    """The calibrate rule's threshold (search.threshold)."""
    return _upper_point(np.sort(values), rate)


def harrell_davis(values: np.ndarray, rate: float) -> float:
    return float(hdquantiles(values, prob=[1.0 - rate])[0])


def pareto_tail(values: np.ndarray, rate: float) -> float:
    s = np.sort(values)
    m = int(len(s) * TAIL_SHARE)
    base = s[len(s) - m - 1]
    shape, _, scale = genpareto.fit(s[len(s) - m:] - base, floc=0.0)
    return float(base + genpareto.ppf(1.0 - rate / TAIL_SHARE, shape, loc=0.0, scale=scale))


ESTIMATORS = {"empirical (the rule)": empirical, "Harrell-Davis": harrell_davis,
              f"Pareto tail (top {TAIL_SHARE:.0%})": pareto_tail}


def answers(results: Path, statistic: str) -> pd.DataFrame:
    q = pd.read_parquet(results / "eval" / "queries" / "queries.parquet")
    a = pd.read_parquet(results / "eval" / "results_neural.parquet").merge(q, on="query_id")
    a = a[a["mode"] == "sequence"].copy()
    a["n_seg"] = a["length_s"].map(n_segments)
    a["decision"] = [decision_statistic(list(t), statistic) for t in a["top_scores"]]
    a["right"] = [len(t) > 0 and t[0] == s for t, s in zip(a["top_songs"], a["song_id"])]
    a["noisy"] = a["condition"].map(lambda c: snr_of(c) is not None and snr_of(c) <= 10)
    return a


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="results/ folder of an evaluation run")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cal = Calibration.load(args.results / "index" / "threshold.json")
    a = answers(args.results, cal.statistic)
    rng = np.random.default_rng(args.seed)
    print(f"{args.results}: statistic {cal.statistic}; {args.repeats} random halves of each length's null values "
          "(fit on one, measure on the other, on the evaluation's unknown songs and its right answers)\n")
    summary: dict[tuple[float, str], list[np.ndarray]] = {}
    per_length = []
    for length_s in sorted(a["length_s"].unique()):
        rows = a[a["length_s"] == length_s]
        views = int(rows["views"].mode()[0])
        part = cal.for_views(views)
        n = int(rows["n_seg"].iloc[0])
        if n not in part.n_segments:
            continue
        null = np.asarray(part.null_scores[part.n_segments.index(n)], dtype=np.float64)
        unknown = rows[(rows["group"] == "unknown") & (rows["views"] == views)]["decision"].to_numpy()
        right = rows[(rows["group"] == "unseen") & rows["right"] & rows["noisy"] & (rows["views"] == views)]
        right = right["decision"].to_numpy()
        per_length.append((length_s, null, right))
        print(f"{length_s:g} s ({n} segments, {views} view{'s' if views > 1 else ''}): {len(null)} null values, "
              f"{len(unknown)} unknown-song queries, {len(right)} right best guesses at 0-10 dB")
        for rate in RATES:
            found = {name: [] for name in ESTIMATORS}
            for _ in range(args.repeats):
                order = rng.permutation(len(null))
                fit, held = null[order[: len(null) // 2]], null[order[len(null) // 2:]]
                for name, estimate in ESTIMATORS.items():
                    t = estimate(fit, rate)
                    found[name].append((t, (held >= t).mean(), (unknown >= t).mean(), (right >= t).mean()))
            for name, got in found.items():
                g = np.asarray(got)
                g[:, 1:] *= 100
                summary.setdefault((rate, name), []).append(g)
                print(f"  {rate:.3f} {name:26s} threshold {g[:, 0].mean():.3f} sd {g[:, 0].std():.4f} | FPR held-out "
                      f"half {g[:, 1].mean():.2f} sd {g[:, 1].std():.2f} % | FPR evaluation {g[:, 2].mean():.2f} sd "
                      f"{g[:, 2].std():.2f} % | accepted {g[:, 3].mean():.1f} sd {g[:, 3].std():.2f} %")
        print()
    print("over the lengths (mean of each length's figure):")
    for (rate, name), parts in summary.items():
        thr_sd = np.mean([g[:, 0].std() for g in parts])
        cols = [(np.mean([g[:, i].mean() for g in parts]), np.mean([g[:, i].std() for g in parts])) for i in (1, 2, 3)]
        print(f"  {rate:.3f} {name:26s} threshold sd {thr_sd:.4f} | FPR held-out half {cols[0][0]:.2f} sd "
              f"{cols[0][1]:.2f} % | FPR evaluation {cols[1][0]:.2f} sd {cols[1][1]:.2f} % | accepted "
              f"{cols[2][0]:.1f} sd {cols[2][1]:.2f} %")
    print("\nat an equal rate on the held-out halves (the Pareto tail's rate lowered to the rule's mean):")
    for length_s, null, right in per_length:
        splits = [rng.permutation(len(null)) for _ in range(args.repeats)]
        for rate in RATES[1:]:
            rule = _halves(null, right, splits, empirical, rate)
            tail = min((_halves(null, right, splits, pareto_tail, r) for r in np.linspace(rate / 2, rate, 11)),
                       key=lambda g: abs(g[:, 1].mean() - rule[:, 1].mean()))
            print(f"  {length_s:g} s, {rate:.3f}: rule FPR {rule[:, 1].mean():.2f} %, accepted "
                  f"{rule[:, 2].mean():.1f} sd {rule[:, 2].std():.2f} %, threshold sd {rule[:, 0].std():.4f} | "
                  "Pareto tail at "
                  f"{tail[0, 3]:.4f}: FPR {tail[:, 1].mean():.2f} %, accepted {tail[:, 2].mean():.1f} sd "
                  f"{tail[:, 2].std():.2f} %, threshold sd {tail[:, 0].std():.4f}")
    return 0


def _halves(null: np.ndarray, right: np.ndarray, splits: list[np.ndarray], estimate, rate: float) -> np.ndarray:
    """Per split: threshold, false-positive rate on the held-out half (%), right answers accepted (%), rate."""
    out = []
    for order in splits:
        fit, held = null[order[: len(null) // 2]], null[order[len(null) // 2:]]
        t = estimate(fit, rate)
        out.append((t, 100 * (held >= t).mean(), 100 * (right >= t).mean(), rate))
    return np.asarray(out)


if __name__ == "__main__":
    sys.exit(main())
