"""Does the no-match threshold keep its false-positive rate on an evaluation's held-out conditions? (issue 12)

Applies a calibration to an evaluation run's stored answers (``eval/results_neural.parquet``: every answer's
candidate scores and the views it was picked from) and prints the false-positive rate on the unknown songs (all,
per condition, per length) and the share of the unseen database songs' right best guesses it accepts (3-10 s at
0-10 dB, the issue's target, and 1 s), for each length's own thresholds and for thresholds made non-increasing in
length (the rule before 2026-12-04, and the listener's).

The calibration is the run's own threshold file or, with ``--banks FOLDER``, the calibrate rule's null queries
collected again with the run's songs, model and settings but another folder's noise and impulse-response banks
(``FOLDER/noise/train``, ``FOLDER/irs/train``; e.g. what `nafp index` uses: run ``snakemake
results/noise/train.npy results/irs/train.npy`` in an empty folder with the default config), cached as
``FOLDER/calibration_candidates.pkl``.

    .venv/bin/python bench/calibration_transfer.py RESULTS [--banks FOLDER] [--model models/nafp-small.pt]
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from decision_statistic import n_segments  # noqa: E402
from workflow_lib.evaluation.metrics import snr_of  # noqa: E402
from workflow_lib.search.threshold import Calibration, decision_statistic  # noqa: E402


def collect(results: Path, banks: Path, model: Path) -> Calibration:
    from workflow_lib.common.config import run_config
    from workflow_lib.evaluation.calibration import fit_from_candidates, null_candidates

    cfg, _ = run_config(results)
    search = {k: v for k, v in cfg["search"].items() if k != "mode"}
    cache = banks / "calibration_candidates.pkl"
    if not cache.exists():
        found = null_candidates(model, results / "index", results / "manifest" / "songs.parquet",
                                results / "split" / "splits.parquet", banks / "noise" / "train",
                                banks / "irs" / "train", search, cfg["evaluate"], threads=2)
        tmp = cache.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(found))
        tmp.replace(cache)
    cands, meta = pickle.loads(cache.read_bytes())
    cal = search["calibration"]
    return fit_from_candidates(cands, cal["statistic"], cal["target_fpr"], meta)


def measure(answers: pd.DataFrame, cal: Calibration) -> str:
    thr = np.array([cal.for_views(v).threshold(n) for v, n in zip(answers["views"], answers["n_seg"])])
    a = answers.assign(accepted=answers["decision"].to_numpy() >= thr)
    unknown = a[a["group"] == "unknown"]
    right = a[(a["group"] == "unseen") & a["right"]]
    noisy = right["condition"].map(lambda c: snr_of(c) is not None and snr_of(c) <= 10)
    per_cond = unknown.groupby("condition")["accepted"].mean() * 100
    per_len = unknown.groupby("length_s")["accepted"].mean() * 100
    return (f"  thresholds {[round(t, 3) for t in cal.thresholds]}"
            + (f", two views {[round(t, 3) for t in cal.two_views.thresholds]}" if cal.two_views else "")
            + f"\n  false positives {100 * unknown['accepted'].mean():.2f} % ({int(unknown['accepted'].sum())} of "
            f"{len(unknown)}); per condition {per_cond.min():.2f}-{per_cond.max():.2f} % ("
            f"{int(per_cond.between(0.5, 2.0).sum())} of {len(per_cond)} inside 0.5-2 %); by length "
            + " / ".join(f"{v:.2f}" for v in per_len) + " %"
            f"\n  right best guesses accepted at 0-10 dB: 3-10 s "
            f"{100 * right[noisy & right['length_s'].between(3, 10)]['accepted'].mean():.1f} %, 1 s "
            f"{100 * right[noisy & (right['length_s'] == 1)]['accepted'].mean():.1f} %")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="results/ folder of an evaluation run")
    ap.add_argument("--banks", type=Path, help="a folder holding noise/train and irs/train banks to calibrate with")
    ap.add_argument("--model", type=Path, default=Path("models/nafp-small.pt"))
    args = ap.parse_args()
    r = args.results
    q = pd.read_parquet(r / "eval" / "queries" / "queries.parquet")
    a = pd.read_parquet(r / "eval" / "results_neural.parquet").merge(q, on="query_id")
    a = a[a["mode"] == "sequence"].copy()
    cal = collect(r, args.banks, args.model) if args.banks else Calibration.load(r / "index" / "threshold.json")
    a["n_seg"] = a["length_s"].map(n_segments)
    a["decision"] = [decision_statistic(list(t), cal.statistic) for t in a["top_scores"]]
    a["right"] = [len(t) > 0 and t[0] == s for t, s in zip(a["top_songs"], a["song_id"])]
    source = f"null queries with the banks of {args.banks}" if args.banks else "the run's own threshold file"
    print(f"{r}: {int((a['group'] == 'unknown').sum())} unknown-song and {int((a['group'] == 'unseen').sum())} "
          f"unseen-song answers; calibration: {source}\n")
    print("each length its own threshold (as fitted now):\n" + measure(a, cal))
    print("non-increasing in length (the rule before; the listener's):\n" + measure(a, cal.non_increasing()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
