"""Offsets between the hops: how often the right song's offset is exact on the grid and placed between the hops,
and what the placement costs a search.

    .venv/bin/python bench/offset_placement.py runs/devx_eval_final/results [--per-cell 60] [--lengths 1 3]

Reads an evaluation's query table and audio (``results/eval/queries``), the run's model, index and calibration;
answers up to ``--per-cell`` unseen-song queries of each condition and length twice, with the offsets on the grid
(``place_offsets=False``) and placed (the default), taking turns to go first, and prints per length: the right-song
answers' exact share (offset within 0.25 s) both ways and the search time p50 both ways (embedding excluded).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workflow_lib.audio.files import load_audio
from workflow_lib.common.config import run_config
from workflow_lib.common.layout import ResultsLayout
from workflow_lib.evaluation.metrics import EXACT_TOL_S
from workflow_lib.search.searcher import Searcher
from workflow_lib.search.ranking import search_embeddings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--per-cell", type=int, default=60)
    ap.add_argument("--lengths", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg, _ = run_config(args.results)  # the run's own settings: which model it used
    searcher = Searcher.from_layout(ResultsLayout.of(args.results, cfg))
    qdir = args.results / "eval" / "queries"
    queries = pd.read_parquet(qdir / "queries.parquet")
    queries = queries[(queries["group"] == "unseen") & queries["length_s"].isin(args.lengths)]
    queries = queries.groupby(["condition", "length_s"], sort=False).head(args.per_cell)

    rows = []
    for n, q in enumerate(queries.itertuples()):
        emb = searcher.embed(load_audio(qdir / q.file))
        row = {"length_s": q.length_s}
        # The second search of a query finds the vectors it reads already in the cache: take turns going first.
        for placed in ((False, True) if n % 2 else (True, False)):
            t0 = time.perf_counter()
            res = search_embeddings(searcher.db, emb, searcher.top_k, "sequence", searcher.max_candidates,
                                    searcher.n_results, place_offsets=placed)
            name = "placed" if placed else "grid"
            row[f"{name}_ms"] = (time.perf_counter() - t0) * 1000.0
            best = res.best
            row["right"] = best is not None and best.song_id == q.song_id
            row[f"{name}_exact"] = row["right"] and abs(best.offset_s - q.start_s) <= EXACT_TOL_S + 1e-9
        rows.append(row)
    table = pd.DataFrame(rows)
    print(f"{len(table)} unseen-song queries from {args.results} (up to {args.per_cell} per condition and length)")
    print("length_s  right-song answers  exact on the grid  exact placed  search p50 grid / placed (ms)")
    for length, g in table.groupby("length_s"):
        right = g[g["right"]]
        print(f"{length:8g}  {len(right):18d}  {right['grid_exact'].mean() * 100:16.1f} %"
              f"  {right['placed_exact'].mean() * 100:10.1f} %  {np.median(g['grid_ms']):12.2f} /"
              f" {np.median(g['placed_ms']):.2f}")


if __name__ == "__main__":
    main()
