"""The ``train:`` config section (``TrainConfig``), and which of its settings change what a run computes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from workflow_lib.common.config import check_keys
from workflow_lib.training.augment import AugmentConfig
from workflow_lib.training.batches import view_workers

# Settings that only affect how/where a run executes, not what it computes: changing them keeps the checkpoint.
RUNTIME_KEYS = {"device", "max_minutes", "amp", "patience", "eval_batch", "checkpoint_minutes", "view_workers"}
# Augmentation options added after checkpoints existed, with the value that leaves training as it was: at that
# value they stay out of a run's fingerprint, so a run killed before the option existed still resumes.
ADDED_AUGMENT_KEYS = {k: getattr(AugmentConfig(), k)
                      for k in ("first_channel_drop_prob", "whiten_prob", "whiten_fit_s", "whiten_order")}


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    device: str = "auto"
    max_epochs: int = 12
    max_minutes: float = 4.0
    batch_size: int = 128  # views per step: anchors + positives (the paper's 640 = 320 pairs)
    lr: float = 2e-3
    weight_decay: float = 1e-6
    warmup_epochs: float = 0.2
    min_lr_ratio: float = 0.01
    temperature: float = 0.05
    patience: int = 4
    val_queries: int = 500
    amp: bool = True
    eval_batch: int = 256
    checkpoint_minutes: float = 10.0  # also save mid-epoch this often, so a kill loses at most this (0: every step)
    view_workers: int | str = "auto"  # processes drawing batches (training/batches.py); auto: none on a CPU
    schedule: str = "time"  # "time": cosine fitted to the epochs max_minutes allows; "epochs": over max_epochs
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.device not in {"auto", "cpu", "cuda"}:
            raise ValueError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.schedule not in {"time", "epochs"}:
            raise ValueError(f"train.schedule must be time or epochs, got {self.schedule!r}")
        if self.batch_size < 4 or self.batch_size % 2:
            raise ValueError(f"train.batch_size must be an even number >= 4 (anchors + positives), got "
                             f"{self.batch_size}")
        if self.max_epochs < 1 or self.lr <= 0 or self.temperature <= 0 or self.max_minutes <= 0:
            raise ValueError("train: max_epochs, lr, temperature and max_minutes must be positive")
        if self.checkpoint_minutes < 0:
            raise ValueError(f"train.checkpoint_minutes must be >= 0, got {self.checkpoint_minutes}")
        view_workers(self.view_workers, torch.device("cpu"))  # refuses a bad setting now, not at the first epoch

    @property
    def batch_pairs(self) -> int:
        return self.batch_size // 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        check_keys(d, (f.name for f in fields(cls)), "train config")
        d = dict(d)
        if "augment" in d:
            d["augment"] = AugmentConfig.from_dict(d["augment"])
        return cls(**d)
