"""Side-by-side tables of several evaluations (old vs new model, ablation variants, default-init choices).

    .venv/bin/python bench/compare_runs.py old=runs/devx_eval_old/results/eval/metrics.parquet \\
        new=runs/devx_eval_new/results/eval/metrics.parquet [--metric song_top1 seg_top1_exact accept_right fpr]

Each argument is LABEL=PATH of a ``metrics.parquet`` written by the ``evaluate`` rule (or copied from one). Prints,
per metric, a Markdown table: one row per condition and query length (the unseen-song group for hit rates, the
unknown-song group for the false-positive rate), one column per run, and a last row with the mean over the rows
every run has. ``--compact`` gives one row per condition instead, the lengths' figures in one cell ("1 s / 3 s /
5 s", whole percent), as the ablation tables of bench/README.md show them.
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


def table(runs: list[tuple[str, pd.DataFrame]], metric: str, compact: bool = False) -> str:
    group = "unknown" if metric == "fpr" else "unseen"
    cols = []
    for label, m in runs:
        g = m[m["group"] == group] if "group" in m else m
        cols.append(g.set_index(["condition", "length_s"])[metric].rename(label) * 100)
    t = pd.concat(cols, axis=1)
    order = list(dict.fromkeys(c for c, _ in t.index))
    t = t.reindex(sorted(t.index, key=lambda k: (order.index(k[0]), k[1])))
    full = t.dropna()
    if compact:
        lengths = " / ".join(f"{length:g}" for length in dict.fromkeys(length for _, length in t.index))
        lines = [f"### {NAMES.get(metric, metric)}, {lengths} s", "",
                 "| condition | " + " | ".join(label for label, _ in runs) + " |", "|---|" + "---|" * len(runs)]
        for cond, rows in t.groupby(level=0, sort=False):
            cells = [" / ".join("–" if pd.isna(v) else f"{v:.0f}" for v in rows[label]) for label, _ in runs]
            lines.append(f"| {cond} | " + " | ".join(cells) + " |")
        lines.append(f"| mean of {len(full)} rows | " + " | ".join(f"{v:.1f}" for v in full.mean()) + " |")
        return "\n".join(lines)
    lines = [f"### {NAMES.get(metric, metric)}", "",
             "| condition | length | " + " | ".join(label for label, _ in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    for (cond, length), row in t.iterrows():
        cells = " | ".join("–" if pd.isna(v) else f"{v:.1f}" for v in row)
        lines.append(f"| {cond} | {length:g} s | {cells} |")
    lines.append(f"| **mean of {len(full)} rows** | | " + " | ".join(f"**{v:.1f}**" for v in full.mean()) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="LABEL=path/to/metrics.parquet")
    ap.add_argument("--metric", nargs="+", default=["song_top1", "seg_top1_exact", "accept_right", "fpr"])
    ap.add_argument("--compact", action="store_true", help="one row per condition, the lengths in one cell")
    args = ap.parse_args()
    runs = [load(s) for s in args.runs]
    for metric in args.metric:
        print(table(runs, metric, args.compact))
        print()


if __name__ == "__main__":
    main()
