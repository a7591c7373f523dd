"""A training run's checkpoint (written atomically, resumed only by a run of the same identity: ``run_fingerprint``)
and the starting weights of a fine-tune (``load_initial_weights``)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workflow_lib.common.atomic import atomic_path
from workflow_lib.data.clipbank import ClipBank
from workflow_lib.model.features import FrontendConfig
from workflow_lib.model.model_file import model_checksum, read_model_file
from workflow_lib.model.network import Fingerprinter, ModelConfig
from workflow_lib.training.settings import ADDED_AUGMENT_KEYS, RUNTIME_KEYS, TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "nafp-checkpoint/1"


class CheckpointError(RuntimeError):
    """The training checkpoint cannot be used; the message names the file and what to do."""


def table_digest(*banks: ClipBank | None) -> str:
    h = hashlib.sha256()
    for bank in banks:
        if bank is None:
            h.update(b"none")
            continue
        h.update(np.ascontiguousarray(bank.starts).tobytes())
        h.update(np.ascontiguousarray(bank.lengths).tobytes())
        if "song_id" in bank.meta:
            h.update("\n".join(bank.meta["song_id"].astype(str)).encode())
    return h.hexdigest()


def run_fingerprint(cfg: TrainConfig, model_cfg: ModelConfig, frontend_cfg: FrontendConfig,
                    data_digest: str) -> str:
    """Identity of a training run: a checkpoint is only resumed by a run with the same fingerprint."""
    train_cfg = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_KEYS}
    train_cfg["augment"] = {k: v for k, v in train_cfg["augment"].items()
                            if not (k in ADDED_AUGMENT_KEYS and v == ADDED_AUGMENT_KEYS[k])}
    blob = json.dumps({"train": train_cfg, "model": model_cfg.to_dict(), "frontend": frontend_cfg.to_dict(),
                       "data": data_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: training checkpoint is corrupt or unreadable ({exc}). Delete it to train "
                              "from scratch.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} training checkpoint. Delete it to train from "
                              "scratch.")
    return ckpt


def save_checkpoint(path: Path, fingerprint: str, state: dict[str, Any], model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> None:
    payload = {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, **state,
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


FIRST_CONV = "encoder.blocks.0.conv_t.weight"  # the only weight whose shape follows the front end's channels


def load_initial_weights(model: Fingerprinter, path: str | Path, model_cfg: ModelConfig,
                          frontend_cfg: FrontendConfig) -> None:
    """Start from a model file's weights; refuse one of another architecture or input shape, naming the difference.

    Two front-end changes are allowed, with a warning, because fine-tuning adapts the encoder to them
    (bench/ablate.py starts front-end variants from the bundled model this way): another ``compression`` with the
    same channels, and a channel added after the model's own (``log`` -> ``log+log-cmn``): the new channel's
    first-layer weights start at zero, so the model starts out exactly as it was.
    """
    payload = read_model_file(path)
    other = ModelConfig.from_dict(payload["model_config"])
    other_fe = FrontendConfig.from_dict(payload["frontend_config"])
    if (other.channels, other.dim, other.head_hidden, other.time_strides) != \
            (model_cfg.channels, model_cfg.dim, model_cfg.head_hidden, model_cfg.time_strides):
        raise ValueError(f"train.init: {path} is a {other.preset} model with channels {other.channels}, dim "
                         f"{other.dim}; this run trains {model_cfg.preset} with channels {model_cfg.channels}, dim "
                         f"{model_cfg.dim}: use the same model settings to fine-tune it, or train.init: none")
    differ = {k: (v, getattr(frontend_cfg, k)) for k, v in vars(other_fe).items() if getattr(frontend_cfg, k) != v}
    added = frontend_cfg.compression.split("+")[:other_fe.n_channels] == other_fe.compression.split("+")
    if set(differ) - {"compression", "pcen_t_s"} or (other_fe.n_channels != frontend_cfg.n_channels and not added):
        raise ValueError(f"train.init: {path} was trained on another front end ({differ}, in "
                         f"{other_fe.n_channels} channel(s)); its weights do not fit this run's input")
    state = dict(payload["state_dict"])
    if other_fe.n_channels < frontend_cfg.n_channels:
        w = state[FIRST_CONV]
        grown = w.new_zeros((w.shape[0], frontend_cfg.n_channels, *w.shape[2:]))
        grown[:, :other_fe.n_channels] = w
        state[FIRST_CONV] = grown
    model.load_state_dict(state)
    if differ:
        log.warning("train.init: %s was trained on another front end (%s); fine-tuning adapts it to this one",
                    path, ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in differ.items()))
    log.info("starting from the weights of %s (model %s)", path, model_checksum(path))
