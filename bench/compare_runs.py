"""Side-by-side tables of several evaluations (old vs new model, ablation variants, default-init choices).

    .venv/bin/python bench/compare_runs.py old=runs/devx_eval_old/results/eval/metrics.parquet \\
        new=runs/devx_eval_new/results/eval/metrics.parquet [--metric song_top1 seg_top1_exact accept_right fpr]

Each argument is LABEL=PATH of a ``metrics.parquet`` written by the ``evaluate`` rule (or copied from one). Prints,
per metric, a Markdown table: one row per condition and query length (the unseen-song group for hit rates, the
unknown-song group for the false-positive rate), one column per run, and a last row with the mean over the rows
every run has.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

NAMES = {"song_top1": "song-level top-1 (%)", "seg_top1_exact": "segment top-1 exact, offset within 0.25 s (%)",
         "seg_top1_same_audio": "segment top-1 exact or on a repeat of the query's audio (%)",
         "accept_right": "right best guesses accepted by the no-match rule (%)",
         "fpr": "false-positive rate on unknown songs (%)"}


def load(spec: str) -> tuple[str, pd.DataFrame]:
    label, _, path = spec.partition("=")
    if not path:
        raise SystemExit(f"expected LABEL=PATH, got {spec!r}")
    m = pd.read_parquet(Path(path))
    m = m[(m["system"] == "neural") & (m["mode"] == "sequence")]
    return label, m


def table(runs: list[tuple[str, pd.DataFrame]], metric: str) -> str:
    group = "unknown" if metric == "fpr" else "unseen"
    cols = []
    for label, m in runs:
        g = m[m["group"] == group] if "group" in m else m
        cols.append(g.set_index(["condition", "length_s"])[metric].rename(label) * 100)
    t = pd.concat(cols, axis=1)
    order = list(dict.fromkeys(c for c, _ in t.index))
    t = t.reindex(sorted(t.index, key=lambda k: (order.index(k[0]), k[1])))
    lines = [f"### {NAMES.get(metric, metric)}", "",
             "| condition | length | " + " | ".join(label for label, _ in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    for (cond, length), row in t.iterrows():
        lines.append(f"| {cond} | {length:g} s | " + " | ".join("–" if pd.isna(v) else f"{v:.1f}" for v in row) + " |")
    full = t.dropna()
    lines.append(f"| **mean of {len(full)} rows** | | " + " | ".join(f"**{v:.1f}**" for v in full.mean()) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=path/to/metrics.parquet")
    ap.add_argument("--metric", nargs="+", default=["song_top1", "seg_top1_exact", "accept_right", "fpr"])
    args = ap.parse_args()
    runs = [load(s) for s in args.runs]
    for metric in args.metric:
        print(table(runs, metric))
        print()


if __name__ == "__main__":
    main()
