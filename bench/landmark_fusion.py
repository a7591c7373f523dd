"""What would landmark hashes add to the neural answer? (issue 11: resonant spaces; issue 12: accepted right answers)

The neural model survives diffuse reverb and noise; audfprint's landmarks survive the narrow ringing resonances that
break it (issue 11's held-out set: 67-100 % of 3-5 s queries in the resonant space, against 41-65 %). This applies
two fusion rules to an evaluation run's stored answers of both systems on the very same query files
(``eval/results_neural.parquet`` and ``eval/results_audfprint.parquet``, the run made with
``evaluate.baseline_audfprint: true``), for several landmark counts C:

- *landmarks first*: when audfprint's best song has at least C time-consistent hashes, it is the answer and it is
  accepted; otherwise the neural answer and its no-match rule stand;
- *neural first*: the neural answer when its rule accepts it; otherwise audfprint's best song when it has C hashes;
  otherwise the neural best guess, not accepted.

Printed per rule: the issue's target lines (the evaluation's own ``target_checks``), song-level top-1 per condition
and length on unseen database songs, and the false-positive rate per condition on the unknown songs (audfprint
leaves the query's own song out as the neural search does, so a count of C on an unknown song is a false positive).

    .venv/bin/python bench/landmark_fusion.py RESULTS [--counts 5 8 12 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_lib.evaluation.metrics import compute_metrics, target_checks  # noqa: E402
from workflow_lib.evaluation.neural import NEURAL  # noqa: E402


def fuse(neural: pd.DataFrame, landmarks: pd.DataFrame, count: int, rule: str) -> pd.DataFrame:
    """The neural rows with audfprint's answer taken where ``rule`` says, relabelled as the neural system."""
    a = landmarks.set_index("query_id").reindex(neural["query_id"])
    # a query audfprint did not answer (no row: NaN) has no hashes
    n_hashes = a["top_scores"].map(lambda v: float(v[0]) if isinstance(v, (list, np.ndarray)) and len(v) else 0.0)
    n_hashes = n_hashes.to_numpy()
    strong = n_hashes >= count
    if rule == "landmarks first":
        take = strong
    elif rule == "neural first":
        take = strong & ~neural["is_match"].astype(bool).to_numpy()
    else:
        raise ValueError(rule)
    out = neural.copy()
    for col in ("top_songs", "top_offsets_s"):
        out[col] = [lv if t else nv for t, lv, nv in zip(take, a[col].to_numpy(), out[col].to_numpy())]
    out["is_match"] = out["is_match"].astype(bool).to_numpy() | take
    out["taken_from_landmarks"] = take
    return out


def song_table(metrics: pd.DataFrame) -> pd.DataFrame:
    g = metrics[(metrics["group"] == "unseen")]
    return (g.pivot_table(index="condition", columns="length_s", values="song_top1", sort=False) * 100).round(1)


def fpr_by_condition(metrics: pd.DataFrame) -> pd.Series:
    g = metrics[metrics["group"] == "unknown"]
    return (g.groupby("condition", sort=False)
            .apply(lambda x: np.average(x["fpr"], weights=x["n_queries"]), include_groups=False) * 100).round(2)


def report(label: str, queries: pd.DataFrame, results: pd.DataFrame) -> list[str]:
    metrics = compute_metrics(queries, results)
    lines = [f"## {label}", ""]
    for target, measured, ok in target_checks(metrics, pd.DataFrame()):
        if "latency" in target or "audfprint" in target:
            continue
        lines.append(f"- {target}: {measured} ({'met' if ok else 'missed'})")
    if "taken_from_landmarks" in results:
        lines.append(f"- answers taken from the landmarks: {int(results['taken_from_landmarks'].sum())} of "
                     f"{len(results)}")
    lines += ["", "song top-1 % on unseen songs, per length (s):", song_table(metrics).to_string(), "",
              "false positives % per condition (unknown songs):", fpr_by_condition(metrics).to_string(), ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="the evaluation run's results folder")
    ap.add_argument("--counts", type=int, nargs="+", default=[5, 8, 12, 20])
    args = ap.parse_args()
    ev = args.results / "eval"
    queries = pd.read_parquet(ev / "queries" / "queries.parquet")
    neural = pd.read_parquet(ev / "results_neural.parquet")
    neural = neural[(neural["system"] == NEURAL) & (neural["mode"] == "sequence")].reset_index(drop=True)
    landmarks = pd.read_parquet(ev / "results_audfprint.parquet")
    lines = report("neural (the run's answers)", queries, neural)
    lines += report("audfprint alone", queries, landmarks.assign(system=NEURAL, mode="sequence"))
    for rule in ("landmarks first", "neural first"):
        for c in args.counts:
            lines += report(f"{rule}, at least {c} hashes", queries, fuse(neural, landmarks, c, rule))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
