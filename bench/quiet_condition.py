"""How a finished evaluation's quiet captures fare, by their level (the conditions with ``level_db``).

    .venv/bin/python bench/quiet_condition.py runs/devx_quiet/results [--against "10 dB + room"] [--bin-db 3]

For the unseen-song queries of every condition with a capture level (``evaluate.conditions[].level_db``), per
level bin and query length: the queries, the best guess right, right and accepted, and the share the silence gate
emptied (no second over ``audio.segments.QUERY_SILENCE_DBFS``: answered "no match (silence)"). ``--against`` names
the condition at full level that the quiet one is a copy of, printed beside it; the unknown-song queries' rate of
false positives per condition closes the output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rates(g: pd.DataFrame) -> str:
    return (f"n {len(g):4d}  right {g['right'].mean() * 100:5.1f} %  accepted {g['accepted'].mean() * 100:5.1f} %  "
            f"silence {g['silent'].mean() * 100:5.1f} %")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder whose evaluation has finished")
    ap.add_argument("--against", default="10 dB + room", help="the full-level condition to print beside")
    ap.add_argument("--bin-db", type=float, default=3.0, help="width of the level bins (dB)")
    args = ap.parse_args()
    ev = args.results / "eval"
    queries = pd.read_parquet(ev / "queries" / "queries.parquet")
    if "level_db" not in queries:
        sys.exit(f"{ev}: its queries were cut before capture levels existed (no level_db column)")
    answers = pd.read_parquet(ev / "results_neural.parquet")
    answers = answers[answers["mode"] == "sequence"]
    m = queries.merge(answers[["query_id", "top_songs", "is_match"]], on="query_id")
    m["silent"] = m["top_songs"].map(len) == 0
    m["right"] = m["in_db"] & np.array([len(t) > 0 and t[0] == s for t, s in zip(m["top_songs"], m["song_id"])])
    m["accepted"] = m["right"] & m["is_match"].astype(bool)
    unseen = m[m["group"] == "unseen"]
    quiet = sorted(unseen.loc[unseen["level_db"].notna(), "condition"].unique())
    if not quiet:
        sys.exit(f"{ev}: no condition with a capture level (evaluate.conditions[].level_db)")
    for cond in quiet:
        q = unseen[unseen["condition"] == cond]
        lo, hi = float(q["level_db"].min()), float(q["level_db"].max())
        edges = np.arange(np.floor(lo / args.bin_db) * args.bin_db, hi + args.bin_db, args.bin_db)
        print(f"== {cond}: capture levels {lo:.1f} to {hi:.1f} dB under the songs' mastered level")
        for length, g in q.groupby("length_s"):
            ref = unseen[(unseen["condition"] == args.against) & (unseen["length_s"] == length)]
            beside = f"   | {args.against}: {rates(ref)}" if len(ref) else ""
            print(f"  {length:g} s, all levels: {rates(g)}{beside}")
            for b, gb in g.groupby(pd.cut(g["level_db"], edges, include_lowest=True), observed=True):
                print(f"    {b.left:6.1f} to {b.right:6.1f} dB: {rates(gb)}")
    unknown = m[m["group"] == "unknown"]
    if len(unknown):
        fpr = unknown.groupby("condition", sort=False)["is_match"].mean() * 100
        print("false positives on unknown songs, % per condition: "
              + ", ".join(f"{c} {v:.2f}" for c, v in fpr.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
