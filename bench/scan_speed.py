"""``nafp scan``'s speed, run after run, with the CPU time the hypervisor took from this machine meanwhile.

    .venv/bin/python bench/scan_speed.py RECORDING --results DB [--runs 15] [--threads 2]

Each run is the real command (``python -m workflow_lib.cli.main scan RECORDING --results DB``) in a fresh process;
its realtime factor is the one the command prints (the scan itself, model and index already loaded). On a virtual
machine the same run takes 40 % longer when the host lends this machine's cores to others: Linux counts that time
as *steal* (``/proc/stat``), so each run's share of stolen CPU time is printed beside its speed, and the summary gives
the median over every run and over the runs that had the CPU nearly to themselves (steal under 5 %). Every run's
timeline must be the same; the script stops if one differs.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUIET_STEAL = 0.05  # a run whose stolen share is below this had the CPU (nearly) to itself


def cpu_ticks() -> tuple[int, int]:
    """(stolen, total) CPU ticks since boot, all cores (``/proc/stat``'s first line)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return fields[7], sum(fields)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recording", help="an audio file to scan")
    ap.add_argument("--results", required=True, help="a database folder (nafp index or the workflow's results)")
    ap.add_argument("--runs", type=int, default=15, help="how many scans (default: 15)")
    ap.add_argument("--threads", type=int, default=2, help="nafp scan --threads (default: 2)")
    args = ap.parse_args()
    if not Path("/proc/stat").exists():
        sys.exit("this benchmark reads /proc/stat (Linux only)")

    cmd = [sys.executable, "-m", "workflow_lib.cli.main", "scan", args.recording, "--results", args.results,
           "--threads", str(args.threads)]
    print(" ".join(cmd))
    first_timeline, first_head = None, ""
    runs = []  # (x realtime, stolen share, wall s)
    for i in range(1, args.runs + 1):
        stolen0, total0 = cpu_ticks()
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        stolen1, total1 = cpu_ticks()
        if out.returncode != 0:
            sys.exit(f"run {i} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
        head, _, timeline = out.stdout.partition("\n")
        m = re.search(r"\((\d+)x realtime\)", head)
        if not m:
            sys.exit(f"run {i}: no realtime factor in {head!r}")
        if first_timeline is None:
            first_timeline, first_head = timeline, head
        elif timeline != first_timeline:
            sys.exit(f"run {i}: the timeline differs from run 1's")
        steal = (stolen1 - stolen0) / max(total1 - total0, 1)
        runs.append((int(m.group(1)), steal, wall))
        print(f"run {i:2d}: {m.group(1):>4}x realtime, {steal:5.1%} of CPU time stolen, {wall:5.1f} s wall",
              flush=True)

    def summary(label: str, rows: list) -> None:
        if not rows:
            print(f"{label}: no runs")
            return
        x = [r[0] for r in rows]
        print(f"{label}: {len(rows)} runs, median {statistics.median(x):.0f}x realtime ({min(x)}-{max(x)}x), "
              f"{sum(v >= 200 for v in x)} at 200x or more")

    print(f"run 1 said: {first_head}")
    summary("every run", runs)
    summary(f"runs with under {QUIET_STEAL:.0%} stolen", [r for r in runs if r[1] < QUIET_STEAL])
    summary(f"runs with {QUIET_STEAL:.0%} or more stolen", [r for r in runs if r[1] >= QUIET_STEAL])


if __name__ == "__main__":
    main()
