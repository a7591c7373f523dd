"""Print the evaluation figures of a finished workflow run (issue 5 benchmark).

    .venv/bin/python bench/eval_report.py runs/eval_dev

Reads ``results/eval/{queries/queries.parquet, results_*.parquet, metrics.parquet}``, the model's training log and
the calibrated threshold, and prints: what was run, the acceptance targets, song-level top-1 and segment-level
exact tables per condition and length for every system, the false-positive rate, latencies, and how the no-match
statistic separates in- from out-of-database queries (area under the ROC curve per length).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib.evaluation.metrics import target_checks  # noqa: E402


def table(m: pd.DataFrame, value: str, scale: float = 100.0, fmt: str = "{:6.1f}") -> str:
    m = m[m[value].notna()]  # hit rates of the database groups, rates of the unknown one
    lengths = sorted(m["length_s"].unique())
    lines = [f"{'system / condition':38s}" + "".join(f"{x:>7g}s" for x in lengths)]
    for (system, mode, group, cond), g in m.groupby(["system", "mode", "group", "condition"], sort=False):
        v = g.set_index("length_s")[value]  # one row per length within a song group (unseen, trained)
        label = f"{system} {mode} / {cond}" + ("" if group == "unseen" else f" ({group})")
        lines.append(f"{label:38s}" +
                     "".join(" " + fmt.format(v[x] * scale) if x in v.index else "      -" for x in lengths))
    return "\n".join(lines)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="the workflow's working directory (holds results/)")
    args = ap.parse_args()
    r = Path(args.run) / "results"
    queries = pd.read_parquet(r / "eval/queries/queries.parquet")
    results = pd.concat([pd.read_parquet(p) for p in sorted((r / "eval").glob("results_*.parquet"))],
                        ignore_index=True)
    metrics = pd.read_parquet(r / "eval/metrics.parquet")
    # From the per-condition rates, so that answers of audio the named song holds (left out there when the report
    # read the songs' audio, evaluation.shared_audio) are left out here too.
    unk = metrics[metrics.group == "unknown"].assign(hits=lambda f: f.fpr * f.n_queries)
    fpr = (unk.groupby(["system", "mode", "length_s"])[["n_queries", "hits"]].sum().reset_index()
           .rename(columns={"n_queries": "n_out_of_db"}).assign(fpr=lambda f: f.hits / f.n_out_of_db))
    idx = json.loads((r / "index/index.json").read_text())
    print(f"database: {idx['n_songs']} songs, {idx['ntotal']} fingerprints, index {idx['factory']}")
    print(f"queries: {int(queries.in_db.sum())} in the database ({queries[queries.in_db].song_id.nunique()} songs), "
          f"{int((~queries.in_db).sum())} outside ({queries[~queries.in_db].source_song_id.nunique()} songs)")
    log = Path(args.run) / "logs/train.log"
    if log.exists():
        epochs = [line.split("INFO workflow_lib.training.train: ")[1].strip() for line in log.read_text().splitlines()
                  if "workflow_lib.training.train: epoch" in line or "wrote results/model" in line]
        print("training:", *epochs[-3:], sep="\n  ")
    thr = json.loads((r / "index/threshold.json").read_text())
    print("no-match thresholds (segments: score):",
          ", ".join(f"{x['n_segments']}: {x['threshold']:.3f}" for x in thr["lengths"]),
          f"(target FPR {thr['target_fpr']}, {thr['meta'].get('n_songs')} calibration songs)")
    print("\n== targets")
    for name, val, ok in target_checks(metrics, fpr):
        print(f"  [{'met' if ok else ('NOT met' if ok is not None else 'n/a')}] {name}: {val}")
    print("\n== song-level top-1 (%)\n" + table(metrics, "song_top1"))
    print("\n== segment-level top-1 exact, offset within 0.25 s (%)\n" + table(metrics, "seg_top1_exact"))
    print("\n== song-level top-10 (%)\n" + table(metrics[metrics.system == "neural"], "song_top10"))
    print("\n== top-1 accepted by the no-match rule (%)\n" + table(metrics, "song_top1_accepted"))
    f = fpr.copy()
    f["condition"], f["group"] = "all", "unknown"
    print("\n== false-positive rate on out-of-database queries (%)\n" + table(f, "fpr", fmt="{:6.2f}"))
    clean = metrics[metrics.condition == metrics.condition.iloc[0]]
    print(f"\n== latency p50 ms, condition {clean.condition.iloc[0]!r}: fingerprint/analysis + search")
    print(table(clean, "latency_p50_ms", 1.0))
    print("search only, p50 / p95 ms")
    print(table(clean, "search_p50_ms", 1.0, "{:6.2f}"))
    print(table(clean, "search_p95_ms", 1.0, "{:6.2f}"))
    # How well the no-match score separates songs in the database from songs outside it, per length.
    m = results[(results.system == "neural") & (results["mode"] == "sequence")].merge(queries, on="query_id")
    print("\n== neural no-match score: AUC in-database (right song) vs out-of-database, per length")
    for length, g in m.groupby("length_s"):
        right = g[g.in_db & (g.top_songs.map(lambda v: v[0] if len(v) else None) == g.song_id)]
        print(f"  {length:g} s: AUC {auc(right.score.to_numpy(), g[~g.in_db].score.to_numpy()):.4f} "
              f"(n={len(right)} vs {int((~g.in_db).sum())})")


if __name__ == "__main__":
    main()
