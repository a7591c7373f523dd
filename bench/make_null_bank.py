"""Make the bank of other music's null queries shipped beside a model (``evaluation.null_bank``).

    .venv/bin/python bench/make_null_bank.py --results runs/devx_quiet/results \
        --root /work/nafp-extra/corpus/music --songs 40 --per-length 400 \
        --model models/nafp-small.pt --out models/nafp-small.null.npz

The songs are the first ``--songs`` (by song id) of the results folder's ``test`` split under ``--root``: songs the
model never trained on (``--index``: an index made with ``--model`` where the results folder's own was made with
another; only its dimension is used). Queries are cut and degraded as the ``calibrate`` rule cuts its own (the
default config's lengths and conditions), with that folder's training noise and impulse responses, and
fingerprinted with the default search settings' whitened view. Prints what it wrote.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from workflow_lib.common.atomic import file_digest  # noqa: E402
from workflow_lib.common.config import load_config  # noqa: E402
from workflow_lib.data.clipbank import ClipBank  # noqa: E402
from workflow_lib.evaluation.null_bank import make_null_bank  # noqa: E402
from workflow_lib.evaluation.plan import QueryPlan  # noqa: E402
from workflow_lib.listener.scan import fingerprint_workers  # noqa: E402
from workflow_lib.search.searcher import Searcher, searcher_kwargs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, type=Path,
                    help="a results folder: its songs, splits, training noise and rooms")
    ap.add_argument("--index", type=Path, default=None,
                    help="an index folder made with --model (default: the results folder's own)")
    ap.add_argument("--root", required=True, help="the music folder the songs come from")
    ap.add_argument("--songs", type=int, default=40)
    ap.add_argument("--per-length", type=int, default=400)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    cfg, _ = load_config()
    songs = pd.read_parquet(args.results / "manifest" / "songs.parquet")
    splits = pd.read_parquet(args.results / "split" / "splits.parquet")
    songs = songs.merge(splits, on="song_id")
    pick = songs[(songs["split"] == "test") & (songs["root"] == str(Path(args.root).resolve()))]
    pick = pick.sort_values("song_id").head(args.songs).reset_index(drop=True)
    if len(pick) < args.songs:
        raise SystemExit(f"only {len(pick)} test-split songs under {args.root}")
    pick = pick.assign(title=pick["rel_path"].map(lambda p: Path(p).stem))
    searcher = Searcher.from_paths(args.model, args.index or args.results / "index", None, None,
                                   **searcher_kwargs(cfg["search"]))
    t0 = time.perf_counter()
    bank = make_null_bank(searcher, pick, ClipBank(args.results / "noise" / "train"),
                          ClipBank(args.results / "irs" / "train"), QueryPlan.from_config(cfg["evaluate"]),
                          args.per_length, args.seed, file_digest(args.model),
                          fingerprint_workers(args.threads, searcher.device))
    bank.save(args.out)
    per_len = bank.queries.groupby("n_nominal").size()
    print(f"{args.out}: {len(bank.queries)} queries of {len(pick)} songs ({bank.minutes:.0f} min), "
          f"{len(bank.embeddings)} fingerprints, {args.out.stat().st_size / 1e6:.1f} MB, "
          f"{time.perf_counter() - t0:.0f} s; per length (samples): {per_len.to_dict()}")


if __name__ == "__main__":
    main()
