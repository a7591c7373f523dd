"""Three checks of a finished evaluation's answers: what its figures could still hide, and what could still move them.

    .venv/bin/python bench/answer_checks.py runs/devx_quiet/results [--lengths 1 3]

1. *False positives that are the same audio.* Every accepted answer to an unknown song's query, with the
   correlation of the query's clean audio against the named song's audio around the named offset
   (``search.duplicates.audio_correlation``; 0.9 or more: the unknown song holds the named song's samples, which no
   fingerprint can tell apart, so such a "false positive" would be right).
2. *How far down the right song sits.* For unseen songs' queries per condition and length: the share whose right
   song is among the top 1, 2, 3, 5 and 10 candidates (what any re-ranking of the candidates could reach).
3. *The query's place between the database's 0.5 s hops.* Song-level and exact-offset top-1 by the query start's
   distance to the nearest grid point, for the rooms (10 / 5 / 0 dB + room) and clean queries; for the clean ones,
   how many right-song answers at a wrong offset land on a repeat of the query's audio
   (``evaluation.repeats.same_audio_answers``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib.evaluation.metrics import EXACT_TOL_S, score_results  # noqa: E402
from workflow_lib import HOP_S  # noqa: E402

ROOMS = ("10 dB + room", "5 dB + room", "0 dB + room")


def false_positive_audio(answers: pd.DataFrame, songs: pd.DataFrame) -> None:
    from workflow_lib.audio.files import load_audio
    from workflow_lib.database.catalogue import song_paths
    from workflow_lib.evaluation.repeats import correlation_at
    from workflow_lib.evaluation.shared_audio import SLACK_S

    fp = answers[answers["false_positive"]]
    print(f"1. accepted answers to unknown songs' queries: {len(fp)} of {int((answers['group'] == 'unknown').sum())}")
    path = song_paths(songs)
    cache: dict[str, np.ndarray] = {}

    def audio(song: str) -> np.ndarray:
        if song not in cache:
            cache[song] = load_audio(path[song])
        return cache[song]

    rows = []
    for x in fp.itertuples():
        correlation = correlation_at(audio(str(x.source_song_id)), x.start_s, x.length_s, audio(str(x.best)),
                                     x.top_offset_s, SLACK_S)
        rows.append((x.condition, x.length_s, str(x.best), np.nan if correlation is None else correlation))
    table = pd.DataFrame(rows, columns=["condition", "length_s", "named", "correlation"])
    if len(table):
        print(table.sort_values("correlation", ascending=False).head(8).round(3).to_string(index=False))
        print(f"   at 0.9 or more (the same audio): {int((table['correlation'] >= 0.9).sum())} of {len(table)}")


def right_song_rank(answers: pd.DataFrame, lengths: list[float]) -> None:
    seen = answers[answers["group"] == "unseen"]
    rank = [list(t).index(s) + 1 if s in list(t) else 99 for t, s in zip(seen["top_songs"], seen["song_id"])]
    seen = seen.assign(rank=rank)
    print("\n2. unseen songs' queries whose right song is among the top k candidates (%)")
    print(f"   {'condition':<26}{'length':>7}" + "".join(f"{f'top {k}':>8}" for k in (1, 2, 3, 5, 10)))
    for (cond, length), g in seen[seen["length_s"].isin(lengths)].groupby(["condition", "length_s"]):
        shares = "".join(f"{(g['rank'] <= k).mean() * 100:8.1f}" for k in (1, 2, 3, 5, 10))
        print(f"   {cond:<26}{length:>6g}s{shares}")


def grid_place(answers: pd.DataFrame, songs: pd.DataFrame) -> None:
    from workflow_lib.evaluation.repeats import same_audio_answers

    seen = answers[answers["group"] == "unseen"].copy()
    phase = seen["start_s"] % HOP_S
    seen["to_grid"] = np.minimum(phase, HOP_S - phase)
    bins = pd.cut(seen["to_grid"], [-0.001, 0.0625, 0.125, 0.1875, HOP_S / 2 + 0.001])
    print("\n3. song-level / exact-offset top-1 (%) by the query start's distance to the grid (s)")
    for name, keep in (("rooms, 1 s", seen["condition"].isin(ROOMS) & (seen["length_s"] == 1.0)),
                       ("rooms, 3 s", seen["condition"].isin(ROOMS) & (seen["length_s"] == 3.0)),
                       ("clean, every length", seen["condition"] == "clean")):
        g = seen[keep].groupby(bins[keep], observed=True)
        cells = "  ".join(f"{str(b)}: {x['song_top1'].mean() * 100:.1f} / {x['seg_top1_exact'].mean() * 100:.1f} "
                          f"(n {len(x)})" for b, x in g)
        print(f"   {name:<20} {cells}")
    clean = seen[seen["condition"] == "clean"]
    clean = clean.assign(repeat=same_audio_answers(clean, songs, EXACT_TOL_S))
    for far, g in clean.groupby(clean["to_grid"] > 0.1875):
        miss = g[g["song_top1"] & ~g["seg_top1_exact"]]
        print(f"   clean, {'more than' if far else 'within'} 0.1875 s of the grid: exact "
              f"{g['seg_top1_exact'].mean() * 100:.1f} %; {len(miss)} right-song answers at a wrong offset, "
              f"{int(miss['repeat'].sum())} of them on a repeat of the query's audio")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder whose evaluation has finished")
    ap.add_argument("--lengths", type=float, nargs="+", default=[1.0, 3.0], help="query lengths for check 2 (s)")
    args = ap.parse_args()
    ev = args.results / "eval"
    answers = pd.read_parquet(ev / "results_neural.parquet")
    queries = pd.read_parquet(ev / "queries" / "queries.parquet")
    # the evaluation's own per-query flags (song_top1, seg_top1_exact, false_positive, top_offset_s)
    answers = score_results(queries, answers[answers["mode"] == "sequence"])
    answers = answers.assign(best=answers["top_songs"].str[0])
    songs = pd.read_parquet(args.results / "manifest" / "songs.parquet")
    false_positive_audio(answers, songs)
    right_song_rank(answers, args.lengths)
    grid_place(answers, songs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
