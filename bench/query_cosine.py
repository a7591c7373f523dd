#!/usr/bin/env python
"""How far a degraded 1 s query lands from its database segment: the cosine a trained model gives real queries.

    .venv/bin/python bench/query_cosine.py --results runs/train_dev/results [--queries 2000] [--snr 0 10]

``bench/index_scale.py`` measures index recall for synthetic queries at a chosen cosine with their source segment.
This script says which cosine real queries have: validation-song segments, cut with the training jitter (up to
0.2 s off the grid) and degraded with the *held-out test* noise and impulse responses at the given SNR range (plus
the training chain's band-limiting, EQ and gain), are embedded with the trained model and compared with the clean
database fingerprint of the segment they came from, and with the best other segment anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_lib.common.cpu_process import setup_cpu_process  # noqa: E402

setup_cpu_process()  # before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workflow_lib.training.augment import AugmentConfig  # noqa: E402
from workflow_lib.data.clipbank import ClipBank  # noqa: E402
from workflow_lib.model.model_file import load_fingerprinter, read_model_file  # noqa: E402
from workflow_lib.training.settings import TrainConfig  # noqa: E402
from workflow_lib.training.train import Validator, embed  # noqa: E402
from workflow_lib.training.data import ViewSource  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, help="a results folder with model/model.pt and the banks")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--snr", nargs=2, type=float, default=[0.0, 10.0], help="SNR range in dB")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = Path(args.results)
    model = load_fingerprinter(res / "model" / "model.pt")
    meta = read_model_file(res / "model" / "model.pt").get("train_meta", {})
    aug = AugmentConfig.from_dict(meta.get("config", {}).get("augment", {}))
    aug = dataclasses.replace(aug, snr_db=tuple(args.snr), noise_prob=1.0, reverb_prob=1.0,
                              time_mask_prob=0.0, freq_mask_prob=0.0)
    src = ViewSource(ClipBank(res / "model" / "audio" / "val"), ClipBank(res / "noise" / "test"),
                     ClipBank(res / "irs" / "test"), aug)
    cfg = TrainConfig(val_queries=args.queries, eval_batch=256)
    val = Validator(src, cfg, torch.device("cpu"))
    autocast = {"device_type": "cpu", "dtype": torch.bfloat16, "enabled": False}
    with torch.no_grad():
        q = embed(model, val.queries, 256, torch.device("cpu"), autocast)
        db = val.database(model, autocast)
    sims = q @ db.T
    own = sims[torch.arange(len(q)), torch.as_tensor(val.rows)]
    sims[torch.arange(len(q)), torch.as_tensor(val.rows)] = -2.0
    other = sims.max(1).values
    pct = [5, 25, 50, 75, 95]
    print(f"{len(q)} queries from {len(src.songs)} val songs ({len(db)} database segments), SNR {args.snr[0]:g}-"
          f"{args.snr[1]:g} dB + held-out reverb, model {res / 'model' / 'model.pt'}")
    print("cosine with the own segment, percentiles " + ", ".join(f"p{p} {np.percentile(own.numpy(), p):.3f}"
                                                               for p in pct))
    print("cosine with the best other segment       " + ", ".join(f"p{p} {np.percentile(other.numpy(), p):.3f}"
                                                               for p in pct))
    print(f"segment-level top-1 (own segment scores highest): {float((own > other).float().mean()):.3f}")
    for c in (0.9, 0.8, 0.7, 0.6, 0.5):
        print(f"   share of queries with cosine >= {c:.1f}: {float((own >= c).float().mean()):.3f}")


if __name__ == "__main__":
    main()
