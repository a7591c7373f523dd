"""Time the calibrate stage's null queries (``evaluation.calibration.null_candidates``) on a `nafp index` folder.

Usage: .venv/bin/python bench/calibration_speed.py RESULTS [--queries N] [--threads T] [--repeats R]
RESULTS: a folder made by `nafp index` (its config.yaml, index, manifest, split, noise and room banks). Prints the
wall time of each repeat and a digest of the candidate scores, which must not change with the code's speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--queries", type=int, default=1000, help="null queries per length (default 1000, as nafp index)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from workflow_lib.common.cpu_process import setup_cpu_process

    setup_cpu_process()
    import yaml

    from workflow_lib.common.layout import BUNDLED_MODELS
    from workflow_lib.evaluation.calibration import null_candidates

    r = args.results
    cfg = yaml.safe_load((r / "config.yaml").read_text())
    model = BUNDLED_MODELS[cfg["model"]["source"]] if cfg["model"]["source"] in BUNDLED_MODELS else r / "model/model.pt"
    search = {**cfg["search"], "device": "cpu", "batch_size": cfg["search"].get("batch_size", 256)}
    search["calibration"] = {**search["calibration"], "queries_per_length": args.queries}
    print(f"{r}: {args.queries} queries per length, {args.threads} threads; load average {os.getloadavg()[0]:.2f}")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        cands, _ = null_candidates(model, r / "index", r / "manifest/songs.parquet", r / "split/splits.parquet",
                                   r / "noise/train", r / "irs/train", search, cfg["evaluate"], threads=args.threads)
        digest = hashlib.sha1(json.dumps(sorted(cands.items())).encode()).hexdigest()[:10]
        print(f"wall {time.perf_counter() - t0:.1f} s, scores digest {digest}")


if __name__ == "__main__":
    main()
