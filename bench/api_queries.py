"""Clips answered from Python (``workflow_lib.api.Database``) against one `nafp query` process per clip.

    .venv/bin/python bench/api_queries.py --results mydb CLIP...

Prints the time to open the database, then each clip's answer time through the Python interface (from the file,
and from its samples already in memory) and through a `nafp query --json` process, and checks that both give the
same answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import soundfile as sf  # noqa: E402

from workflow_lib.api import Database  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clips", nargs="+")
    ap.add_argument("--results", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    db = Database.open(args.results)
    print(f"open: {time.perf_counter() - t0:.2f} s")
    from_file, from_samples, process, same = [], [], [], 0
    for clip in args.clips:
        t0 = time.perf_counter()
        answer = db.query(clip)
        from_file.append(time.perf_counter() - t0)
        samples, rate = sf.read(clip, dtype="float32")
        t0 = time.perf_counter()
        db.query(samples, sample_rate=rate)
        from_samples.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "workflow_lib.cli.main", "query", clip, "--results",
                              args.results, "--json"], capture_output=True, text=True, check=True).stdout
        process.append(time.perf_counter() - t0)
        same += json.loads(out)["song_id"] == answer["song_id"]
    for label, times in (("Database.query(file)", from_file), ("Database.query(samples)", from_samples),
                         ("nafp query process", process)):
        print(f"{label:<26} median {statistics.median(times) * 1000:7.1f} ms, max {max(times) * 1000:7.1f} ms "
              f"({len(times)} clips)")
    print(f"same song as the command: {same} of {len(args.clips)}")


if __name__ == "__main__":
    main()
