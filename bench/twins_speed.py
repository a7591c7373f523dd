"""How long the calibration's twin search takes, by worker count (``search.duplicates.find_twins``).

Before its null queries, the calibration searches every song it calibrates on for twins (songs holding the same
music or passages: ``search.duplicates``); `nafp index` calibrates on every song of the collection, so this grows
with it. Times ``find_twins`` over the first ``--songs`` songs of a results folder's database (their audio from its
manifest, for the shared-passage check) with each ``--workers`` count in turn, ``--repeats`` times, and checks that
every count finds the same table.

    .venv/bin/python bench/twins_speed.py RESULTS [--songs 200] [--workers 1 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from workflow_lib.database.index import FingerprintDB  # noqa: E402
from workflow_lib.database.catalogue import song_paths  # noqa: E402
from workflow_lib.search.duplicates import find_twins  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--songs", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    db = FingerprintDB.load(args.results / "index")
    paths = song_paths(pd.read_parquet(args.results / "manifest" / "songs.parquet"))
    ids = [str(s) for s in db.song_ids][:args.songs]
    print(f"{len(ids)} of {db.n_songs} database songs searched for twins")
    tables = {}
    for r in range(args.repeats):
        for w in args.workers:
            t0 = time.perf_counter()
            tables[w] = find_twins(db, ids, paths, w)
            print(f"workers {w}, run {r + 1}: {time.perf_counter() - t0:.1f} s ({len(tables[w])} twin rows)")
    first = tables[args.workers[0]]
    print("same table for every worker count:", all(t.equals(first) for t in tables.values()))


if __name__ == "__main__":
    main()
