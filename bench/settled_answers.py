"""What does skipping the whitened view for settled answers save, and does it change any answer? (issues 11, 13)

A query of 3 s or more is searched as it is and whitened, and the view with the larger margin answers
(``Searcher.search_audio``). When the answer as it is already reaches what only ``SETTLED_FPR`` of the calibration's
unknown-song queries reach with the better of both views (``Searcher.settled``), the whitened view is not made.
This answers an evaluation run's own query files both ways, taken in turn on the same machine (so load moves both
alike), one torch thread: the query as it is, then both views always (the rule before), then the settled rule.
It prints per condition and length the share of queries settled, the answers that differ, and the median time to
answer (fingerprinting and search; decoding excluded).

    .venv/bin/python bench/settled_answers.py RESULTS [--model models/nafp-small.pt] [--per-cell 60]
        [--conditions clean "10 dB + room" ...] [--lengths 3 5 10] [--group unseen]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_lib.audio.files import load_audio  # noqa: E402
from workflow_lib.search.duplicates import parse_exclusion  # noqa: E402
from workflow_lib.search.searcher import Searcher  # noqa: E402


def answer(searcher: Searcher, audio: np.ndarray, settle: bool, exclude: str | frozenset[str] | None
           ) -> tuple[float, str | None, bool, bool, bool]:
    """(milliseconds, best song, accepted, settled, whitened) for one query, with or without the settled rule."""
    t0 = time.perf_counter()
    if settle:
        res = searcher.search_audio(audio, exclude_song=exclude)
        settled = res.views == 2 and not res.whitened and searcher.settled(res)
    else:  # the rule before: both views whenever two_views says so
        embs = searcher.embed_views(audio, searcher.two_views(len(audio)))
        res = searcher.pick_view(searcher.search_views(embs, exclude_song=exclude))
        settled = False
    ms = (time.perf_counter() - t0) * 1000.0
    m = searcher.decide(res)
    return ms, (m.best_guess.song_id if m.best_guess else None), m.is_match, settled, res.whitened


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="results/ folder of an evaluation run (eval/queries, index)")
    ap.add_argument("--model", type=Path, default=Path("models/nafp-small.pt"))
    ap.add_argument("--per-cell", type=int, default=60, help="queries per condition and length")
    ap.add_argument("--conditions", nargs="+", default=["clean", "10 dB + room", "0 dB + room", "resonant"])
    ap.add_argument("--lengths", type=float, nargs="+", default=[3.0, 5.0, 10.0])
    ap.add_argument("--group", default="unseen", help="unseen (database songs never trained on) or unknown")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    r = args.results
    searcher = Searcher.from_paths(args.model, r / "index", None, r / "index" / "threshold.json")
    if searcher.calibration is None or searcher.calibration.two_views is None:
        print("this run's threshold file has no two-view thresholds: nothing to compare", file=sys.stderr)
        return 1
    searcher.warm_up()
    q = pd.read_parquet(r / "eval" / "queries" / "queries.parquet")
    q = q[(q["group"] == args.group) & q["condition"].isin(args.conditions) & q["length_s"].isin(args.lengths)]
    q = q.groupby(["condition", "length_s"], sort=False).head(args.per_cell)
    rows = []
    for i, x in enumerate(q.itertuples(), 1):
        audio = load_audio(r / "eval" / "queries" / x.file)
        exclude = parse_exclusion(getattr(x, "exclude_song", None))  # unknown songs: leave-one-song-out
        before = answer(searcher, audio, False, exclude)
        after = answer(searcher, audio, True, exclude)
        rows.append({"condition": x.condition, "length_s": x.length_s, "ms_before": before[0], "ms_after": after[0],
                     "settled": after[3], "same_song": before[1] == after[1], "same_accept": before[2] == after[2],
                     "right_before": before[1] == x.song_id, "right_after": after[1] == x.song_id})
        if i % 100 == 0:
            print(f"{i}/{len(q)} queries", file=sys.stderr, flush=True)
    t = pd.DataFrame(rows)
    out = t.groupby(["condition", "length_s"], sort=False).agg(
        queries=("settled", "size"), settled_pct=("settled", "mean"), p50_ms_both_views=("ms_before", "median"),
        p50_ms_settled_rule=("ms_after", "median"), other_song=("same_song", lambda s: int((~s).sum())),
        other_decision=("same_accept", lambda s: int((~s).sum())),
        top1_before=("right_before", "mean"), top1_after=("right_after", "mean"))
    for c in ("settled_pct", "top1_before", "top1_after"):
        out[c] = (100 * out[c]).round(1)
    print(f"{len(t)} {args.group} queries of {r}; model {args.model}; one torch thread\n")
    print(out.round(1).to_string())
    print(f"\nall: {100 * t['settled'].mean():.1f} % settled; median {t['ms_before'].median():.1f} -> "
          f"{t['ms_after'].median():.1f} ms, mean {t['ms_before'].mean():.1f} -> {t['ms_after'].mean():.1f} ms; "
          f"{int((~t['same_song']).sum())} other best songs, {int((~t['same_accept']).sum())} other decisions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
