"""Which decision statistic makes the no-match rule hold its false-positive rate across listening conditions
(issue 12)? Reads an evaluation run's queries and neural answers (every candidate's score is stored), and for each
statistic (``calibrate.STATISTICS``):

1. fits per-length thresholds for the target rate on the unknown-song queries of one half of the unknown songs
   (pooled over every condition, as the calibrate rule does), and
2. measures, on the other half, the false-positive rate per condition, and on the database songs never trained on,
   the share of right best guesses that pass (per condition).

Usage: .venv/bin/python bench/decision_statistic.py runs/devx_eval_old/results [--fpr 0.01]
The halves swap and both results are averaged, so every unknown song is used once for fitting and once for testing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_lib.search.threshold import STATISTICS, decision_statistic, fit_calibration
from workflow_lib.data.split import unit_hash

SEG_PER_S = 2  # 0.5 s hop


def n_segments(length_s: float) -> int:
    return int(round((length_s - 1) * SEG_PER_S)) + 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results/ folder of an evaluation run")
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--mode", default="sequence")
    args = ap.parse_args(argv)
    r = Path(args.results)
    q = pd.read_parquet(r / "eval" / "queries" / "queries.parquet")
    res = pd.read_parquet(r / "eval" / "results_neural.parquet")
    res = res[res["mode"] == args.mode].merge(q, on="query_id")
    res["n_seg"] = res["length_s"].map(n_segments)
    unknown = res[res["group"] == "unknown"].copy()
    unseen = res[res["group"] == "unseen"].copy()
    unseen["right"] = [len(t) > 0 and t[0] == s for t, s in zip(unseen["top_songs"], unseen["song_id"])]
    unknown["half"] = [unit_hash(f"stat/{s}", 0) < 0.5 for s in unknown["source_song_id"]]
    conds = list(dict.fromkeys(q["condition"]))
    print(f"{len(unknown)} unknown-song queries ({unknown.source_song_id.nunique()} songs), {len(unseen)} unseen "
          f"database queries; target false-positive rate {args.fpr:g}; mode {args.mode}\n")
    rows = []
    for stat in STATISTICS:
        unknown["v"] = [decision_statistic(list(t), stat) for t in unknown["top_scores"]]
        unseen["v"] = [decision_statistic(list(t), stat) for t in unseen["top_scores"]]
        fp = {c: [] for c in conds}
        acc = {c: [] for c in conds}
        for fit_half in (True, False):
            fit = unknown[unknown["half"] == fit_half]
            test = unknown[unknown["half"] != fit_half]
            cal = fit_calibration({n: g["v"].tolist() for n, g in fit.groupby("n_seg")}, args.fpr, {}, stat)
            thr_u = test["n_seg"].map(cal.threshold)
            thr_s = unseen["n_seg"].map(cal.threshold)
            for c in conds:
                m = test["condition"] == c
                fp[c].append(float((test.loc[m, "v"] >= thr_u[m]).mean()) if m.any() else np.nan)
                m = (unseen["condition"] == c) & unseen["right"] & unseen["length_s"].between(3, 10)
                acc[c].append(float((unseen.loc[m, "v"] >= thr_s[m]).mean()) if m.any() else np.nan)
        for c in conds:
            rows.append({"statistic": stat, "condition": c, "fpr": np.nanmean(fp[c]), "accept_right": np.nanmean(acc[c])})
    t = pd.DataFrame(rows)
    for col, title in (("fpr", "false-positive rate (%) per condition"),
                       ("accept_right", "right best guesses accepted, 3-10 s queries (%)")):
        piv = t.pivot(index="condition", columns="statistic", values=col).reindex(conds) * 100
        print(f"## {title}\n")
        print(piv.round(2).to_string())
        print()
    summary = t.groupby("statistic").agg(fpr_min=("fpr", "min"), fpr_max=("fpr", "max"),
                                         accept_mean=("accept_right", "mean"), accept_min=("accept_right", "min"))
    print("## summary (%)\n")
    print((summary * 100).round(2).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
