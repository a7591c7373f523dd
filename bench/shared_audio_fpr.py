"""False positives on unknown songs per condition and length, with and without the answers that name a song holding
the query's own audio (``evaluation.shared_audio``), from a finished evaluation's metrics table.

    .venv/bin/python bench/shared_audio_fpr.py runs/NAME [--system neural]

"counted before" is every accepted answer to an unknown song's query (the evaluation before the check); "shared
audio" those whose named song holds the query's audio at the named offset; "fpr" what the evaluation reports now.
Needs a metrics table written with the songs' audio (the ``evaluate`` rule reads it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="the workflow's working directory (holds results/eval/metrics.parquet)")
    ap.add_argument("--system", default="neural")
    args = ap.parse_args()
    m = pd.read_parquet(Path(args.run) / "results/eval/metrics.parquet")
    unk = m[(m.group == "unknown") & (m.system == args.system)].copy()
    if unk.empty:
        raise SystemExit(f"no unknown-song rows of system {args.system!r} in {args.run}")
    if "shared_audio" not in unk or unk["shared_audio"].isna().all():
        raise SystemExit("this metrics table was written without the songs' audio: no shared-audio check")
    unk["accepted"] = ((unk.fpr + unk.shared_audio) * unk.n_queries).round().astype(int)
    unk["shared"] = (unk.shared_audio * unk.n_queries).round().astype(int)
    unk["fpr_before_%"] = 100 * (unk.fpr + unk.shared_audio)
    unk["fpr_%"] = 100 * unk.fpr
    cols = ["condition", "length_s", "n_queries", "accepted", "shared", "fpr_before_%", "fpr_%"]
    print(unk[cols].round(2).to_string(index=False))
    total = unk[["n_queries", "accepted", "shared"]].sum()
    by_condition = unk.groupby("condition", sort=False)[["n_queries", "accepted", "shared"]].sum()
    before = 100 * by_condition.accepted / by_condition.n_queries
    after = 100 * (by_condition.accepted - by_condition.shared) / by_condition.n_queries
    print(f"\nall: {int(total.accepted)} accepted of {int(total.n_queries)}, {int(total.shared)} of them shared audio; "
          f"fpr {100 * total.accepted / total.n_queries:.2f} % counted before, "
          f"{100 * (total.accepted - total.shared) / total.n_queries:.2f} % now")
    print(f"per condition (all lengths): {before.min():.2f}-{before.max():.2f} % counted before, "
          f"{after.min():.2f}-{after.max():.2f} % now")
    print((pd.DataFrame({"before_%": before, "now_%": after}).round(2)).to_string())


if __name__ == "__main__":
    main()
