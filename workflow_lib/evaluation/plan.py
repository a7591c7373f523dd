"""The query plan: which query lengths and which named listening conditions the evaluation (and the no-match
calibration) cut queries for, from the ``evaluate:`` config section.

A condition is a capture chain (see ``degrade``): ``snr_db`` background noise, ``room`` an impulse-response pool
(``room``, ``long``, ``real``, ``real long``, ``resonant``), ``device`` the recording device (``bandlimit``: random
band limits for ``bandlimit_prob`` of the queries, as a cheap microphone; ``phone``: a 300-3400 Hz phone band with
a random 2-4 band EQ of up to +-12 dB), ``codec`` a transmission codec (``phone``: one of the voice-call codecs, or a
codec name), ``speed`` a playback speed range, ``compress`` broadcast compression of the source and ``level_db`` a
range for the capture's level relative to the song as mastered (a quiet capture: music played softly or far from
the microphone, recorded as 16-bit audio).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from workflow_lib.data.acoustics import random_eq_biquads
from workflow_lib.audio.codecs import CODECS, PHONE_CODECS
from workflow_lib.evaluation.degrade import IR_POOLS, Degradation
from workflow_lib.common.config import check_keys

DEVICES = ("bandlimit", "phone")
PHONE_BAND_HZ = ((250.0, 400.0), (3000.0, 3600.0))
PHONE_EQ_DB = (-12.0, 12.0)
COMPRESS_RATIO = (2.0, 8.0)
COMPRESS_THRESHOLD_DB = (-30.0, -10.0)


@dataclass(frozen=True)
class Condition:
    name: str
    snr_db: float | None = None
    room: str | None = None
    device: str | None = None
    codec: str | None = None
    speed: tuple[float, float] | None = None
    compress: bool = False
    level_db: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("evaluate.conditions: every condition needs a name")
        if self.room is not None and self.room not in IR_POOLS:
            raise ValueError(f"condition {self.name!r}: room must be one of {IR_POOLS}, got {self.room!r}")
        if self.device is not None and self.device not in DEVICES:
            raise ValueError(f"condition {self.name!r}: device must be one of {DEVICES}, got {self.device!r}")
        if self.codec is not None and self.codec != "phone" and self.codec not in CODECS:
            raise ValueError(f"condition {self.name!r}: codec must be 'phone' or one of {sorted(CODECS)}")
        if self.speed is not None:
            lo, hi = (float(v) for v in self.speed)
            if not 0.5 < lo <= hi < 2.0:
                raise ValueError(f"condition {self.name!r}: speed must be a range within (0.5, 2)")
            object.__setattr__(self, "speed", (lo, hi))
        if self.level_db is not None:
            lo, hi = (float(v) for v in self.level_db)
            if not -90.0 <= lo <= hi <= 0.0:
                raise ValueError(f"condition {self.name!r}: level_db must be a range within [-90, 0] dB, got "
                                 f"{list(self.level_db)}")
            object.__setattr__(self, "level_db", (lo, hi))

    @property
    def is_clean(self) -> bool:
        return self == Condition(self.name)

    @property
    def max_speed(self) -> float:
        return self.speed[1] if self.speed else 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Condition":
        check_keys(d, (f.name for f in fields(cls)), f"evaluate.conditions ({d})")
        d = dict(d)
        for key in ("speed", "level_db"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        if d.get("snr_db") is not None:
            d["snr_db"] = float(d["snr_db"])
        return cls(**d)


# What a user's queries go through (config/config.yaml lists the same; a config may give its own list).
DEFAULT_CONDITIONS = (
    Condition("clean"),
    Condition("10 dB + room", 10.0, "room", "bandlimit"),
    Condition("5 dB + room", 5.0, "room", "bandlimit"),
    Condition("0 dB + room", 0.0, "room", "bandlimit"),
    Condition("5 dB + long reverb", 5.0, "long"),
    Condition("0 dB + long reverb", 0.0, "long"),
    Condition("5 dB + real long reverb", 5.0, "real long"),
    Condition("resonant", None, "resonant"),
    Condition("5 dB + resonant", 5.0, "resonant"),
    Condition("phone", 10.0, "room", "phone", "phone"),
    Condition("speed +-5 % + 10 dB", 10.0, "room", None, None, (0.95, 1.05), True),
    Condition("quiet 10 dB + room", 10.0, "room", "bandlimit", level_db=(-45.0, -30.0)),
)


@dataclass(frozen=True)
class QueryPlan:
    """The ``evaluate:`` config section's query-set keys."""

    seed: int = 0
    n_starts: int = 2000  # starts in unseen database songs (the songs of query_splits)
    n_trained_starts: int = 0  # starts in database songs the model was trained on (reported apart)
    n_out_of_db_starts: int = 500  # starts in songs searched as unknown (leave-one-song-out)
    lengths_s: tuple[float, ...] = (1, 3, 5, 10)
    conditions: tuple[Condition, ...] = field(default=DEFAULT_CONDITIONS)
    bandlimit_prob: float = 0.5
    highpass_hz: tuple[float, float] = (100.0, 500.0)
    lowpass_hz: tuple[float, float] = (2500.0, 3800.0)
    grid_aligned: bool = False
    query_splits: tuple[str, ...] = ("test",)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "QueryPlan":
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in cfg.items():
            if k not in names:
                continue
            if k == "conditions":
                v = tuple(c if isinstance(c, Condition) else Condition.from_dict(c) for c in v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[k] = v
        plan = cls(**kw)
        if not plan.lengths_s or min(plan.lengths_s) < 0.5:
            raise ValueError(f"evaluate.lengths_s: need lengths of at least 0.5 s, got {list(plan.lengths_s)}")
        if not plan.conditions:
            raise ValueError("evaluate.conditions: no conditions")
        names_seen = [c.name for c in plan.conditions]
        if len(set(names_seen)) != len(names_seen):
            raise ValueError(f"evaluate.conditions: names must be unique, got {names_seen}")
        return plan

    def degradation(self, cond: Condition, rng: np.random.Generator) -> Degradation:
        """The random draws of one query under ``cond`` (band limits, EQ, codec, speed, compression, level)."""
        if cond.is_clean:
            return Degradation()
        hp = lp = None
        eq: tuple = ()
        if cond.device == "bandlimit" and rng.random() < self.bandlimit_prob:
            hp = float(rng.uniform(*self.highpass_hz))
            lp = float(rng.uniform(*self.lowpass_hz))
        elif cond.device == "phone":
            hp = float(rng.uniform(*PHONE_BAND_HZ[0]))
            lp = float(rng.uniform(*PHONE_BAND_HZ[1]))
            eq = tuple(random_eq_biquads(rng, (2, 4), PHONE_EQ_DB))
        codec = cond.codec
        if codec == "phone":
            codec = PHONE_CODECS[int(rng.integers(len(PHONE_CODECS)))]
        speed = float(rng.uniform(*cond.speed)) if cond.speed else 1.0
        comp = (float(rng.uniform(*COMPRESS_RATIO)), float(rng.uniform(*COMPRESS_THRESHOLD_DB))) \
            if cond.compress else None
        # drawn last, so a condition without a level draws what it drew before level_db existed
        level = float(rng.uniform(*cond.level_db)) if cond.level_db else None
        return Degradation(cond.snr_db, cond.room, hp, lp, eq, codec, speed, comp, level)

    def digest(self, extra: Any = None) -> str:
        blob = json.dumps([asdict(self), extra], sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]
