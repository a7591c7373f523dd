"""The manifest's scan of a music folder (every file decoded to its end and measured) by 1..N worker processes.

Usage: .venv/bin/python bench/manifest_scan.py [FOLDER] [--workers 1 2 ...] [--repeats R]
Default folder: ../shared/corpus/dev/music. Prints the wall time per worker count (best of R) and checks that every
worker count gives the same songs table.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from workflow_lib.data.manifest import build_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dev_music = Path(__file__).resolve().parents[1] / "../shared/corpus/dev/music"
    ap.add_argument("folder", nargs="?", default=str(dev_music))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"folder: {args.folder}; CPUs: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}")
    first = None
    for workers in args.workers:
        walls = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            songs, rejected = build_manifest([("music", args.folder)], workers=workers)
            walls.append(time.perf_counter() - t0)
        if first is None:
            first = songs
            hours = songs.duration_s.sum() / 3600
            print(f"songs: {len(songs)} ({hours:.2f} h), rejected: {len(rejected)}")
        same = songs.equals(first)
        best = min(walls)
        print(f"workers {workers}: {best:.1f} s (runs: {', '.join(f'{w:.1f}' for w in walls)}), "
              f"{hours * 3600 / best:.0f}x realtime, same table as the first: {same}")
        if not same:
            raise SystemExit("the songs table depends on the number of workers")


if __name__ == "__main__":
    main()
