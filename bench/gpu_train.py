"""Train on a machine where Snakemake and the corpus are absent (the `device` tool's GPU), from carried banks.

    python3 bench/gpu_train.py BANK_DIR OUT_DIR --recipe config/recipes/small_dev_extra.yaml bench/gpu_finetune.yaml
        [--init models/nafp-small.pt] [--max-minutes M]

BANK_DIR holds the banks `bench/gpu_pack.py unpack` rebuilt (train, val, noise, irs: the workflow's train rule's
inputs); the config is config/config.yaml with the recipes merged over it in order (Snakemake's --configfile merge).
Writes OUT_DIR/{model.pt, metrics.csv, curves.png, train.log}; the checkpoint stays in BANK_DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from workflow_lib.common.config import DEFAULT_CONFIG, merge, read_yaml  # noqa: E402
from workflow_lib.common.logs import setup_logging  # noqa: E402
from workflow_lib.training.train import train_from_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("banks", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--recipe", nargs="+", default=[])
    ap.add_argument("--init", type=Path)
    ap.add_argument("--max-minutes", type=float)
    ap.add_argument("--device")
    a = ap.parse_args()
    cfg = read_yaml(DEFAULT_CONFIG)
    for r in a.recipe:  # in order, as Snakemake merges --configfile files
        cfg = merge(cfg, read_yaml(r))
    train = cfg["train"]
    if a.max_minutes is not None:
        train["max_minutes"] = a.max_minutes
    if a.device:
        train["device"] = a.device
    a.out.mkdir(parents=True, exist_ok=True)
    setup_logging(a.out / "train.log")
    model = {k: v for k, v in cfg["model"].items() if k != "source"}
    train_from_config(a.banks / "train", a.banks / "val", a.banks / "noise", a.banks / "irs", a.out / "model.pt",
                      a.out / "metrics.csv", a.out / "curves.png", a.banks / "checkpoint" / "last.pt", model,
                      train, threads=int(train["threads"]), init_from=a.init)


if __name__ == "__main__":
    main()
