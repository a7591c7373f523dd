"""The live listener's and the scan's settings: the ``listen:`` config section (``ListenConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from workflow_lib import HOP_S, SAMPLE_RATE, SEGMENT_S
from workflow_lib.audio.segments import QUERY_SILENCE_DBFS, n_segments
from workflow_lib.common.config import check_keys


@dataclass(frozen=True)
class ListenConfig:
    """The ``listen:`` config section (see config/config.yaml for what each key does)."""

    window_s: float = 5.0
    tail_s: float = 2.0
    consistent_hops: int = 2
    min_match_s: float = 2.0
    release_hops: int = 4
    offset_tolerance_hops: int = 1
    resync_margin: float = 0.03
    max_fpr: float | None = 0.005
    # The scan's own max_fpr (``nafp scan`` and the monitoring evaluation; None: max_fpr): a recording is scanned
    # once and its false alarms last, while the microphone gains from answering sooner (bench/README.md, "The
    # whitened-view model shipped").
    scan_max_fpr: float | None = None
    persistent_hops: int | None = None
    # A song declared again within redeclare_s of its last listening's end, at another place of it, needs
    # redeclare_hops agreeing hops (0 s: off; ``ListenerCore._redeclaring``).
    redeclare_s: float = 0.0
    redeclare_hops: int = 4
    follow_island_s: float = 0.0  # the scan's following only (scan._extend); the live listener has none
    silence_dbfs: float = QUERY_SILENCE_DBFS
    ring_s: float = 20.0
    block_s: float = 0.05

    def __post_init__(self) -> None:
        if self.window_s < SEGMENT_S:
            raise ValueError(f"listen.window_s must be at least {SEGMENT_S:g} s (one segment), got {self.window_s}")
        if not SEGMENT_S <= self.tail_s <= self.window_s:
            raise ValueError(f"listen.tail_s must lie in [{SEGMENT_S:g}, window_s={self.window_s:g}] s, "
                             f"got {self.tail_s}")
        if self.consistent_hops < 1 or self.release_hops < 1 or self.offset_tolerance_hops < 0:
            raise ValueError("listen: consistent_hops and release_hops must be >= 1, offset_tolerance_hops >= 0")
        for key in ("max_fpr", "scan_max_fpr"):
            value = getattr(self, key)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"listen.{key} must lie in (0, 1) or be null, got {value}")
        if self.persistent_hops is not None and self.persistent_hops < 1:
            raise ValueError(f"listen.persistent_hops must be at least 1 or null, got {self.persistent_hops}")
        if not self.redeclare_s >= 0 or self.redeclare_hops < 1:  # NaN too
            raise ValueError(f"listen: redeclare_s must be 0 s or more and redeclare_hops at least 1, got "
                             f"{self.redeclare_s} and {self.redeclare_hops}")
        if not self.follow_island_s >= 0:  # NaN too
            raise ValueError(f"listen.follow_island_s must be 0 s or more, got {self.follow_island_s}")
        if not 0 <= self.resync_margin < 1:
            raise ValueError(f"listen.resync_margin must lie in [0, 1), got {self.resync_margin}")
        if not SEGMENT_S <= self.min_match_s <= self.window_s:
            raise ValueError(f"listen.min_match_s must lie in [{SEGMENT_S:g}, window_s={self.window_s:g}] s, "
                             f"got {self.min_match_s}")
        if self.ring_s < 2 * SEGMENT_S or not 0 < self.block_s <= 1:
            raise ValueError("listen: ring_s must be >= 2 s and block_s in (0, 1] s")

    def for_scan(self) -> "ListenConfig":
        """The settings a scan decides with: ``scan_max_fpr`` in place of ``max_fpr`` where it is set."""
        return self if self.scan_max_fpr is None else replace(self, max_fpr=self.scan_max_fpr)

    @property
    def window_segments(self) -> int:
        return n_segments(int(round(self.window_s * SAMPLE_RATE)))

    @property
    def tail_segments(self) -> int:
        return n_segments(int(round(self.tail_s * SAMPLE_RATE)))

    @property
    def held_past_end_hops(self) -> int:
        """How far past a song's end the listener may hold it (one window, in hops): the most an end is cut back."""
        return int(round(self.window_s / HOP_S))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ListenConfig":
        check_keys(d, cls.__dataclass_fields__, "listen config")
        return cls(**d)
