"""Song-level top-1 (%) of ablation variants side by side, per condition and query length, from each variant's
``metrics.parquet`` (written by bench/ablation_eval.sh): unseen songs, sequence search.

    .venv/bin/python bench/ablation_table.py runs/ablation new log-cmn shipped
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def table(root: Path, variants: list[str], metric: str = "song_top1") -> pd.DataFrame:
    cols = {}
    for v in variants:
        m = pd.read_parquet(root / v / "metrics.parquet")
        m = m[(m["system"] == "neural") & (m["mode"] == "sequence") & (m["group"] == "unseen")]
        piv = m.pivot_table(index="condition", columns="length_s", values=metric, sort=False)
        cols[v] = piv.apply(lambda r: " / ".join(f"{100 * x:.0f}" for x in r), axis=1)
        cols[v]["mean of rows"] = f"{100 * piv.to_numpy().mean():.1f}"
    return pd.DataFrame(cols)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="folder holding one sub-folder per variant")
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--metric", default="song_top1")
    args = ap.parse_args(argv)
    print(table(args.root, args.variants, args.metric).to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
