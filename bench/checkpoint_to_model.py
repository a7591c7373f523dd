"""Write a model file from a training checkpoint's best weights (a stopped run's best epoch so far), so that it can
be evaluated, bundled or fine-tuned (``train.init: <path>``) before the run finishes.

    python bench/checkpoint_to_model.py CHECKPOINT OUT.pt [--preset small] [--compression log]

The model settings must be the run's (preset, channels, dim, head_hidden; the front end's compression, e.g.
``log-cmn`` for that variant of bench/ablate.py); loading the weights checks the shapes, not the compression.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workflow_lib.model.features import COMPRESSIONS, FrontendConfig  # noqa: E402
from workflow_lib.model.model_file import save_model  # noqa: E402
from workflow_lib.model.network import Fingerprinter, model_config_from  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--compression", default="log", choices=COMPRESSIONS)
    args = ap.parse_args()
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if ckpt.get("best_state") is None:
        sys.exit(f"{args.checkpoint}: no finished epoch yet")
    model_cfg, frontend_cfg = model_config_from(args.preset), FrontendConfig(compression=args.compression)
    Fingerprinter(model_cfg, frontend_cfg).load_state_dict(ckpt["best_state"])  # refuses other settings
    best = ckpt["history"][ckpt["best_epoch"] - 1]
    meta = {"format_version": 1, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "epochs": len(ckpt["history"]), "best_epoch": ckpt["best_epoch"], "stop_reason": "exported from checkpoint",
            "schedule_epochs": ckpt["horizon_epochs"], "train_minutes": ckpt["elapsed_s"] / 60,
            "fingerprint": ckpt["fingerprint"], "init_from": None,
            **{k: best[k] for k in ("val_top1", "val_near", "val_song", "val_loss") if k in best}}
    save_model(args.out, ckpt["best_state"], model_cfg, frontend_cfg, meta)
    print(f"wrote {args.out}: best epoch {ckpt['best_epoch']} of {len(ckpt['history'])} finished "
          f"(schedule {ckpt['horizon_epochs']} epochs), val top-1 {best.get('val_top1')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
