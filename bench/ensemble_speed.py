#!/usr/bin/env python
"""Fingerprinting speed of an ensemble model file with its members sharing one mel spectrogram, against each member
computing its own (``EnsembleFingerprinter.shared_mel``), and of its first member alone; the three are timed in
turn, round after round, so a change in the machine's load falls on all of them alike.

    .venv/bin/python bench/ensemble_speed.py models/nafp-small-pair.pt [--batch 256] [--rounds 15] [--threads 2]

Prints the median and quartiles of milliseconds per batch of 1 s segments, and segments per second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workflow_lib.model.ensemble import EnsembleFingerprinter  # noqa: E402
from workflow_lib.model.model_file import load_fingerprinter  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an ensemble model file (nafp-ensemble/1)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ens = load_fingerprinter(args.model)
    if not isinstance(ens, EnsembleFingerprinter):
        raise SystemExit(f"{args.model} is a single model, not an ensemble")
    if not ens.shared_mel:
        raise SystemExit(f"{args.model}: the members' mel spectrograms differ; nothing to share")
    wav = torch.randn(args.batch, 8000, generator=torch.Generator().manual_seed(0)) * 0.1

    each_own = EnsembleFingerprinter(list(ens.members), ens.weights)  # the same members, the mel not shared
    each_own.shared_mel = False
    variants = {"shared mel": ens, "each member its own mel": each_own, "first member alone": ens.members[0]}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        assert torch.equal(ens(wav), each_own(wav))  # the same fingerprints either way
        for fn in variants.values():  # warm-up
            fn(wav)
        for _ in range(args.rounds):
            for name, fn in variants.items():
                t = time.perf_counter()
                fn(wav)
                times[name].append((time.perf_counter() - t) * 1000)
    print(f"{args.model}, batch {args.batch}, {args.rounds} rounds, {args.threads} threads")
    for name, ms in times.items():
        q1, med, q3 = np.percentile(ms, [25, 50, 75])
        print(f"  {name:<26} {med:7.1f} ms per batch (quartiles {q1:.1f}-{q3:.1f}), "
              f"{args.batch / med * 1000:7.0f} segments/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
