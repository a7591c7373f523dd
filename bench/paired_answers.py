"""Which queries two evaluations of the same query set answer differently (song level), per condition and length.

Two runs of the ``eval_neural`` rule on one seeded query set (the same ``queries.parquet``) differ query by query;
a table of hit rates hides whether a 1-point change is 2 queries moving one way or 20 moving each way. For the
database songs never trained on (group ``unseen``), per condition and query length: the hit rate of each run, the
queries only the second run answers right ("gained") and only the first ("lost"), and the right best guesses the
no-match rule accepts in each.

    .venv/bin/python bench/paired_answers.py QUERIES.parquet BEFORE/results_neural.parquet \\
        AFTER/results_neural.parquet [--min-length 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def right(results: pd.DataFrame, queries: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(best guess is the query's song, and that answer is accepted) per query of ``queries``."""
    r = results[results["mode"] == "sequence"].set_index("query_id").loc[queries.index]
    best = np.array([songs[0] if len(songs) else None for songs in r["top_songs"]], dtype=object)
    hit = best == queries["song_id"].to_numpy()
    return hit, hit & r["is_match"].to_numpy(bool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("queries", type=Path, help="the evaluation's queries.parquet")
    ap.add_argument("before", type=Path, help="results_neural.parquet of the first run")
    ap.add_argument("after", type=Path, help="results_neural.parquet of the second run")
    ap.add_argument("--min-length", type=float, default=0.0, help="only queries at least this long (s)")
    args = ap.parse_args()
    q = pd.read_parquet(args.queries).set_index("query_id")
    q = q[q["in_db"] & (q["group"] == "unseen") & (q["length_s"] >= args.min_length)]
    before, after = pd.read_parquet(args.before), pd.read_parquet(args.after)
    rows = []
    for (condition, length), g in q.groupby(["condition", "length_s"], sort=False):
        (hit0, acc0), (hit1, acc1) = right(before, g), right(after, g)
        rows.append({"condition": condition, "length_s": length, "queries": len(g),
                     "before %": 100 * hit0.mean(), "after %": 100 * hit1.mean(),
                     "gained": int((~hit0 & hit1).sum()), "lost": int((hit0 & ~hit1).sum()),
                     "accepted before %": 100 * acc0.mean(), "accepted after %": 100 * acc1.mean()})
    t = pd.DataFrame(rows).sort_values(["condition", "length_s"])
    print(t.round(1).to_string(index=False))
    print(f"\nall {int(t['queries'].sum())} queries: gained {int(t['gained'].sum())}, lost {int(t['lost'].sum())}")


if __name__ == "__main__":
    main()
