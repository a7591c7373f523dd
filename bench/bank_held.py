"""Which songs of the bundled other music a database holds: the calibration's check (``null_bank.held_songs``)
against the truth, per bank song.

The calibration leaves out the bank's queries of a song the database holds (their own song would answer them, and
a threshold fitted on them rejects right answers). A database holds a bank song when a file of it is indexed: here
told by the file's name, which is the bank song's title. For every results folder, each bank song's queries are
searched as ``null_bank.bank_candidates`` searches them, and the script prints, per bank song: the share of its
queries whose best candidate is one database song (any alignment), the share at one alignment of one song, the
share at one alignment or a place where that song repeats the music (``held_songs``' rule), whether the rule calls
it held, and whether it is. Then the extremes: the least support of a held song, the most of one not held; and
what the check costs, with and without the repeats (after one search of the bank).

    .venv/bin/python bench/bank_held.py RESULTS... [--bank models/nafp-small.null.npz]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib.api import Database  # noqa: E402
from workflow_lib.evaluation.null_bank import (NullBank, bank_answers, best_answers, held_songs,  # noqa: E402
                                               same_music_in, song_support)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--bank", default=str(Path(__file__).resolve().parents[1] / "models" / "nafp-small.null.npz"))
    args = ap.parse_args()
    bank = NullBank.load(args.bank)
    titles = [s["title"] for s in bank.meta["songs"]]
    for results in args.results:
        db = Database.open(results)
        stems = {Path(p).stem for p in db.songs["path"]}
        searcher = db.searcher
        best = best_answers([searcher.search_views(bank.views(i), "sequence") for i in range(len(bank.queries))])
        same_music = same_music_in(searcher.db)
        t0 = time.perf_counter()
        held_songs(bank, best)
        t1 = time.perf_counter()
        called = held_songs(bank, best, same_music)
        t2 = time.perf_counter()
        print(f"{results}: {len(db.songs)} songs; {sum(t in stems for t in titles)} of the {len(titles)} bank songs "
              f"held; the rule calls {len(called)} held")
        print(f"  {'bank song':52s} {'queries':>7s} {'named':>6s} {'aligned':>7s} {'or repeat':>9s}  rule  truth")
        rows = []
        for k, title in enumerate(titles):
            idx = bank.queries.index[bank.queries["song"] == k]
            found = bank_answers(bank, best, idx)
            named = Counter(f[0] for f in found).most_common(1)[0][1] if found else 0
            row = (named / len(idx), song_support(found) / len(idx), song_support(found, same_music) / len(idx))
            rows.append((title in stems, row))
            print(f"  {title[:52]:52s} {len(idx):7d} {row[0]:6.2f} {row[1]:7.2f} {row[2]:9.2f}  "
                  f"{'held' if k in called else '-':4s}  {'held' if title in stems else '-'}")
        for held, word, pick in ((True, "least of a held song", min), (False, "most of one not held", max)):
            mine = [r for h, r in rows if h == held]
            if mine:
                print(f"  {word}: named {pick(r[0] for r in mine):.2f}, aligned {pick(r[1] for r in mine):.2f}, "
                      f"or repeat {pick(r[2] for r in mine):.2f}")
        print(f"  the check: {t1 - t0:.2f} s at one alignment, {t2 - t1:.2f} s with the repeats")


if __name__ == "__main__":
    main()
