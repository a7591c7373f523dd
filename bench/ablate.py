"""Augmentation ablation (issue 11): train the recipe with one component switched off at a time, same data, same
steps, and write each model for the evaluation.

The banks come from one workflow run (song banks with their codec copy, noise and impulse responses), so every
variant trains on the same songs and responses:

    .venv/bin/snakemake --cores 2 --configfile config/examples/dev_extra.yaml --directory runs/devx \\
        results/model/audio/train_codec.npy results/model/audio/val_codec.npy results/noise/train.npy \\
        results/irs/train.npy
    .venv/bin/python bench/ablate.py --results runs/devx/results --out bench/out/ablation --epochs 2 \\
        --threads 1 new no-resonant no-long-ir no-device no-codec no-speed no-compress no-low-snr old-chain

Each variant is the recipe of ``config/config.yaml`` (``train.augment``) with the overrides below; the schedule is
fixed in epochs (``train.schedule: epochs``), so every variant takes the same number of steps whatever the load of
the machine. A killed variant resumes from its checkpoint; a finished one is skipped. ``--init MODEL`` fine-tunes a
trained model instead (with ``--lr`` / ``--warmup-epochs`` for its schedule); ``--partner MODEL`` trains it
as the second member of an ensemble with MODEL held fixed (``workflow_lib/training/partner.py``). The variants in
``FRONTENDS`` keep
the recipe and change the front end instead (``features.FrontendConfig.compression``: PCEN, or log-mel and PCEN
as two input channels; or the log-mel with each band's mean removed). A name in both tables takes both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workflow_lib.common.cpu_process import setup_cpu_process

setup_cpu_process(keep_buffers=True)  # before torch loads

import yaml  # noqa: E402

from workflow_lib.common.logs import setup_logging  # noqa: E402
from workflow_lib.training.settings import TrainConfig  # noqa: E402
from workflow_lib.training.train import RULE_KEYS, train_model  # noqa: E402
from workflow_lib.model.features import FrontendConfig  # noqa: E402
from workflow_lib.model.network import model_config_from  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Each variant switches one component of the new recipe off (back to what the old recipe did).
VARIANTS: dict[str, dict] = {
    "new": {},
    "no-resonant": {"resonant_share": 0.0},
    "no-long-ir": {"max_ir_s": 1.0},
    "no-device": {"device_ir_prob": 0.0, "eq_bands": [1, 1], "eq_gain_db": [-12.0, 12.0], "eq_prob": 0.5},
    "no-codec": {"codec_prob": 0.0},
    "no-speed": {"speed_prob": 0.0},
    "no-compress": {"compress_prob": 0.0},
    "no-low-snr": {"snr_db": [0.0, 10.0]},
    "speed-0.1": {"speed_prob": 0.1},  # the speed changes at a third of their share (they cost rooms at 0.3)
    # more resonant spaces (the weak spot) and fewer speed views (which cost the resonant space at one epoch):
    # meant for fine-tuning a trained model (--init) that already holds speed changes
    "resonant-more-speed-0.1": {"resonant_share": 0.6, "speed_prob": 0.1},
    # more resonant spaces, speed views at the recipe's share: a second fine-tuning stage that wins back the speed
    # change the one above gave up
    "resonant-more": {"resonant_share": 0.6},
    # with the two-channel front end of the same name (FRONTENDS): half the pairs lose the log channel, so the
    # band-centred one has to learn to carry a match (fine-tune the bundled model with --init)
    "log-logcmn-drop": {"first_channel_drop_prob": 0.5},
    # with the front end of the same name: the band-centred model given the log, and twice the resonant views
    "logcmn-log-resonant": {"resonant_share": 0.6},
    # a share of the views whitened as the search's second view whitens a query (augment.lpc_whiten_rows): meant
    # for fine-tuning the bundled model (--init), whose whitened view already wins the resonant space
    "whiten-0.3": {"whiten_prob": 0.3},
    "whiten-0.5": {"whiten_prob": 0.5},  # half of them: the resonant space is where the whitened view wins
    # every new component off: the old chain on the new data and impulse-response bank
    "old-chain": {"resonant_share": 0.0, "max_ir_s": 1.0, "device_ir_prob": 0.0, "eq_bands": [1, 1],
                  "eq_gain_db": [-12.0, 12.0], "eq_prob": 0.5, "codec_prob": 0.0, "speed_prob": 0.0,
                  "compress_prob": 0.0, "snr_db": [0.0, 10.0]},
}
# Variants of the front end (``features.FrontendConfig``) rather than of the augmentation: the full recipe.
FRONTENDS: dict[str, dict] = {
    # per-channel energy normalisation instead of the log: a band that only rings on is flattened by its own past
    "pcen": {"compression": "pcen"},
    # both, as two input channels: the log-mel that holds up in rooms and noise, the PCEN that holds up in ringing
    "log-pcen": {"compression": "log+pcen"},
    # the log kept, each band's mean over the window removed: the colouring goes, noise stays compressed
    # (bench/frontend_invariance.py screened it ahead of the PCENs)
    "log-cmn": {"compression": "log-cmn"},
    # both, as two channels; meant for fine-tuning the bundled model (--init): its weights for the log channel, zero
    # for the new one, so the start is the bundled model itself
    "log-logcmn": {"compression": "log+log-cmn"},
    "log-logcmn-drop": {"compression": "log+log-cmn"},
    # the other way round: fine-tune a band-centred model (--init, e.g. log-cmn's) with the log added as a second
    # channel, zero weights at the start: it starts where the ringing is held and may take the log where noise needs it
    "logcmn-log": {"compression": "log-cmn+log"},
    "logcmn-log-resonant": {"compression": "log-cmn+log"},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", choices=sorted({*VARIANTS, *FRONTENDS}))
    ap.add_argument("--results", required=True, help="results/ folder of the run that built the banks")
    ap.add_argument("--out", default="bench/out/ablation")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--init", help="fine-tune this model file instead of training from scratch")
    ap.add_argument("--lr", type=float, help="learning rate (default: the config's)")
    ap.add_argument("--warmup-epochs", type=float, help="warm-up in epochs (default: the config's)")
    ap.add_argument("--partner", help="train each variant as the second member of an ensemble with this model file "
                                      "(held fixed; workflow_lib/training/partner.py)")
    ap.add_argument("--partner-weight", type=float, default=0.5,
                    help="the trained model's weight in that ensemble (default 0.5)")
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    base = {k: v for k, v in cfg["train"].items() if k not in RULE_KEYS}
    base.update({"schedule": "epochs", "max_epochs": args.epochs, "patience": 0, "max_minutes": 100000.0,
                 "batch_size": 256})
    base.update({k: v for k, v in (("lr", args.lr), ("warmup_epochs", args.warmup_epochs)) if v is not None})
    r = Path(args.results)
    for name in args.variants:
        out = Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        log = setup_logging(out / "train.log")
        if (out / "model.pt").exists():
            log.info("%s: already trained", name)
            continue
        augment = VARIANTS.get(name, {})
        train = dict(base, augment=dict(base["augment"], **augment))
        (out / "recipe.json").write_text(json.dumps(
            dict(train, init=args.init, partner=args.partner, partner_weight=args.partner_weight), indent=1))
        log.info("variant %s: %s%s", name, augment or "the full recipe",
                 f", front end {FRONTENDS[name]}" if name in FRONTENDS else "")
        train_model(r / "model" / "audio" / "train", r / "model" / "audio" / "val", r / "noise" / "train",
                    r / "irs" / "train", out / "model.pt", out / "metrics.csv", out / "training_curves.png",
                    out / "checkpoints" / "last.pt", TrainConfig.from_dict(train), model_config_from("small"),
                    FrontendConfig(**FRONTENDS.get(name, {})), threads=args.threads, init_from=args.init,
                    partner=args.partner, partner_weight=args.partner_weight)
    return 0


if __name__ == "__main__":
    sys.exit(main())
