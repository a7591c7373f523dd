"""No-match threshold: calibrated on queries of unknown songs, for a target false-positive rate.

The decision statistic (``STATISTICS``, chosen by measurement, see bench/README.md) is computed from a search's
ranked candidates (one per song): ``score`` is the best candidate's match score (mean cosine similarity of the
query's segments with the aligned database segments, see ``search.py``); ``margin`` is how far the best candidate
stands above the runner-up song (the search always finds one when the database holds another song, see
``ranking.search_embeddings``); ``z`` is that distance in units of the spread of the other candidates. Its null
distribution (queries of songs that are not in the database, or searched with their own fingerprints skipped)
depends on the query length, so the threshold is calibrated per query length (in segments): it is the
``1 - target_fpr`` quantile of the null values of that length, and lengths between calibrated ones are
interpolated. The stored null values also give each answer a confidence: the fraction of unknown-song queries of
that length that score lower (one minus an empirical p-value). The null queries themselves are cut and searched by
``evaluation.calibration``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workflow_lib import HOP_S, SEGMENT_S
from workflow_lib.common.atomic import write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

FORMAT = "nafp-threshold/1"
STATISTICS = ("score", "margin", "z")
# The statistic the calibrate rule uses unless configured (search.calibration.statistic); bench/README.md has the
# measurement that chose it.
DEFAULT_STATISTIC = "margin"
# Cohort of a 'z' statistic: the other candidates' scores (at least this many, else a fixed spread is assumed).
MIN_COHORT = 3
DEFAULT_SPREAD = 0.05


def decision_statistic(scores: list[float] | np.ndarray, statistic: str) -> float:
    """The no-match rule's statistic from a search's candidate scores, best first (one candidate per song)."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown decision statistic {statistic!r} (choose from {STATISTICS})")
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return float("-inf")
    if statistic == "score":
        return float(s[0])
    rest = s[1:]
    if statistic == "margin":
        return float(s[0] - (rest[0] if len(rest) else 0.0))
    spread = float(rest.std()) if len(rest) >= MIN_COHORT else DEFAULT_SPREAD
    centre = float(rest.mean()) if len(rest) else 0.0
    return float((s[0] - centre) / max(spread, 1e-3))


@dataclass
class Calibration:
    """Per-length thresholds (``n_segments`` ascending) and the null scores they came from.

    ``two_views``: the same null queries decided by the better of two views (the query as it is and whitened,
    ``search.whiten``), which lifts null values too, so queries searched that way are held to their own thresholds
    (``for_views``); None in files fitted before the whitened view existed, or without it."""

    n_segments: list[int]
    thresholds: list[float]
    null_scores: list[list[float]]
    target_fpr: float
    meta: dict[str, Any] = field(default_factory=dict)
    statistic: str = "score"
    two_views: "Calibration | None" = None

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"calibration: unknown statistic {self.statistic!r} (choose from {STATISTICS})")
        if not self.n_segments:
            raise ValueError("calibration has no lengths")
        if len(self.n_segments) != len(self.thresholds) or len(self.n_segments) != len(self.null_scores):
            raise ValueError("calibration: n_segments, thresholds and null_scores differ in length")
        if list(self.n_segments) != sorted(set(self.n_segments)):
            raise ValueError(f"calibration: n_segments must be strictly increasing, got {self.n_segments}")
        self._sorted = [np.sort(np.asarray(s, dtype=np.float64)) for s in self.null_scores]

    # -- use ----------------------------------------------------------------------------------------------------
    def for_views(self, views: int) -> "Calibration":
        """The thresholds for an answer picked from ``views`` views of the query (1: as it is; 2: also whitened)."""
        if views == 1:
            return self
        if views == 2 and self.two_views is not None:
            return self.two_views
        raise ValueError(f"this calibration has no thresholds for answers picked from {views} views")

    def threshold(self, n_segments: int) -> float:
        """Threshold for a query of ``n_segments`` (linear between calibrated lengths, clamped outside them: a
        query longer than the longest calibrated one keeps that length's threshold, which is conservative; between
        a length that accepts any leading song and one that does not, the stricter: ``_between_lengths``)."""
        return _between_lengths(n_segments, self.n_segments, self.thresholds)

    def non_increasing(self) -> "Calibration":
        """This calibration with each length's threshold raised to the highest of the longer lengths' (the two-view
        set's too): a longer window never needs a higher statistic than a shorter one. The listener and the scan
        keep this rule (their window and its newest seconds were tuned and measured with it)."""
        thr = np.maximum.accumulate(np.asarray(self.thresholds, dtype=np.float64)[::-1])[::-1]
        return replace(self, thresholds=[float(t) for t in thr],
                       two_views=self.two_views.non_increasing() if self.two_views is not None else None)

    def upper_point(self, n_segments: int, fpr: float) -> float:
        """The statistic at or above which at most ``fpr`` of this length's null values lie (placed as
        ``fit_calibration`` places a threshold, interpolated between lengths like ``threshold``)."""
        return _between_lengths(n_segments, self.n_segments, [_upper_point(s, fpr) for s in self._sorted])

    def confidence(self, score: float, n_segments: int) -> float:
        """Fraction of out-of-database queries of this length scoring below ``score`` (interpolated like the
        threshold)."""
        cdf = [float(np.searchsorted(s, score, side="left")) / len(s) if len(s) else 0.0 for s in self._sorted]
        return float(np.clip(np.interp(n_segments, self.n_segments, cdf), 0.0, 1.0))

    # -- storage ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {"format": FORMAT, "statistic": self.statistic, "target_fpr": self.target_fpr, "meta": self.meta,
               "lengths": self._lengths()}
        if self.two_views is not None:
            out["two_views"] = {"lengths": self.two_views._lengths()}
        return out

    def _lengths(self) -> list[dict[str, Any]]:
        return [{"n_segments": int(n), "threshold": round(float(t), 6), "n_queries": len(s),
                 "null_scores": [round(float(v), 5) for v in s]}
                for n, t, s in zip(self.n_segments, self.thresholds, self.null_scores)]

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

    def table(self) -> "pd.DataFrame":
        """One row per calibrated query length: what the no-match rule asks of a query (for people to read)."""
        import pandas as pd

        parts = [(1, self)] + ([(2, self.two_views)] if self.two_views is not None else [])
        return pd.concat([pd.DataFrame({
            "query_s": [SEGMENT_S + (n - 1) * HOP_S for n in c.n_segments], "n_segments": c.n_segments, "views": views,
            "statistic": c.statistic, "threshold": [round(shown(t), 4) for t in c.thresholds],  # np.round overflows
            "target_fpr": c.target_fpr, "null_queries": [len(s) for s in c.null_scores],
            "null_median": [round(float(np.median(s)), 4) if len(s) else None for s in c.null_scores],
            "null_max": [round(float(np.max(s)), 4) if len(s) else None for s in c.null_scores]})
            for views, c in parts], ignore_index=True)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no-match threshold file not found: {path} (run the 'calibrate' rule)") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if d.get("format") != FORMAT:
            raise ValueError(f"{path}: format {d.get('format')!r}, expected {FORMAT!r}")
        try:
            fpr, statistic = float(d["target_fpr"]), str(d.get("statistic", "score"))

            def part(lengths: list[dict], meta: dict) -> "Calibration":
                return cls([int(x["n_segments"]) for x in lengths], [float(x["threshold"]) for x in lengths],
                           [list(map(float, x["null_scores"])) for x in lengths], fpr, meta, statistic)

            calib = part(d["lengths"], dict(d.get("meta", {})))
            if d.get("two_views") is not None:
                calib.two_views = part(d["two_views"]["lengths"], {})
            return calib
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed threshold file ({exc})") from exc


# The null distribution depends on the database: more songs, more chances for an unknown query to look like one.
# Songs added after the calibration are searchable at once; past this growth the threshold should be refitted.
RECALIBRATE_GROWTH = 2.0


def _calibration_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` of the threshold file at ``path``; empty when it is missing or cannot be read."""
    try:
        meta = json.loads(Path(path).read_text()).get("meta", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def recalibration_advice(path: str | Path, n_songs_now: int) -> str | None:
    """A sentence telling the user to rerun the calibration when the database has grown ``RECALIBRATE_GROWTH``
    times (or shrunk to half) since the threshold in ``path`` was fitted; None when it still fits (or is unknown)."""
    try:
        calibrated = int(_calibration_meta(path).get("database_songs", 0))
    except (ValueError, TypeError):
        return None
    if calibrated <= 0 or n_songs_now <= 0:
        return None
    ratio = n_songs_now / calibrated
    if 1 / RECALIBRATE_GROWTH < ratio < RECALIBRATE_GROWTH:
        return None
    return (f"the no-match threshold was calibrated on a database of {calibrated} songs, now {n_songs_now}: its "
            "false-positive rate no longer holds; recalibrate (run `nafp index` again on the same folders, or the "
            "workflow's calibrate rule: snakemake results/index/threshold.json --forcerun calibrate)")


# Below these the calibration's unknown songs are too little music to stand for the music a database does not hold.
# Measured with the bundled model (bench/README.md, "A small collection's no-match rule"), clean clips of other music
# accepted for a 1 % target: 3-13 % when calibrated on 10 songs (35 minutes), 2-7 % on 102 pieces of 3-8 s (16
# minutes), 1.5-3 % on 13 songs (45 minutes) or more.
FEW_NULL_SONGS = 20
FEW_NULL_MINUTES = 45.0


def little_music(n_songs: int, minutes: float | None) -> str | None:
    """A sentence when the calibration's unknown songs (``n_songs``, ``minutes`` of music in all; None: not
    recorded, as in threshold files before 2026-12-06) are too few or too short to hold its false-positive rate."""
    if n_songs >= FEW_NULL_SONGS and (minutes is None or minutes >= FEW_NULL_MINUTES):
        return None
    amount = f"{n_songs} song(s)" + (f" ({minutes:.0f} min of music)" if minutes is not None else "")
    return (f"calibrated on {amount}: too little to stand for the music the database does not "
            "hold, so more of it than the target may be answered (measured: 3-13 % of clean clips after a "
            f"calibration on 10 songs, for a 1 % target). Give it other music to calibrate on, {FEW_NULL_SONGS} "
            f"songs and {FEW_NULL_MINUTES:g} minutes or more in all: nafp index --unknown-music DIR "
            "(data.unknown_dirs)")


def little_music_advice(path: str | Path) -> str | None:
    """``little_music`` for the calibration in ``path`` (None when it has enough, or cannot be read)."""
    meta = _calibration_meta(path)
    try:
        n_songs, minutes = int(meta["n_songs"]), meta.get("null_minutes")
    except (ValueError, TypeError, KeyError):
        return None
    advice = little_music(n_songs, None if minutes is None else float(minutes))
    if advice and "bundled_other_music" not in meta:  # calibrated before the bundled model shipped other music
        advice += ("; or run `nafp index` again: with a bundled model it now also calibrates on other music "
                   "shipped with the model")
    return advice


def calibration_music(path: str | Path) -> dict[str, Any] | None:
    """What the calibration in ``path`` searched as other music: ``songs``, ``minutes`` (None where not recorded)
    and ``shipped_songs``, those of the other music shipped with the model (``evaluation.null_bank``); None when
    the file cannot be read or does not say."""
    meta = _calibration_meta(path)
    try:
        bundled = meta.get("bundled_other_music") or {}
        minutes = meta.get("null_minutes")
        return {"songs": int(meta["n_songs"]), "minutes": None if minutes is None else float(minutes),
                "shipped_songs": int(bundled.get("songs", 0))}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


# A threshold below this accepts any song of the collection that leads: the float just above -inf, where other music
# answered more than the target share of a length's null queries. No statistic comes near it (a z-score's spread is
# at least 1e-3).
ANY_LEADER = -1e9


def shown(threshold: float) -> float:
    """A threshold as people read it: one that accepts any leading song (``ANY_LEADER``) is -inf (printed, the float
    just above -inf has 309 digits, and numpy rounding it overflows, with a warning in the middle of `nafp index`)."""
    return float("-inf") if threshold < ANY_LEADER else float(threshold)


def _between_lengths(n_segments: float, lengths: list[int], values: list[float]) -> float:
    """A per-length value for ``n_segments``: linear between the calibrated lengths around it, clamped outside them.
    Where one of the two accepts any leading song (``ANY_LEADER``) and the other does not, the other's: a line
    towards -1.8e308 would accept any leading song at every length between, for a rate calibrated at neither."""
    i = int(np.searchsorted(lengths, n_segments))
    if 0 < i < len(lengths) and lengths[i] != n_segments:
        lo, hi = values[i - 1], values[i]
        if (lo < ANY_LEADER) != (hi < ANY_LEADER):
            return float(max(lo, hi))
    return float(np.interp(n_segments, lengths, values))


def _upper_point(sorted_scores: np.ndarray, fpr: float) -> float:
    """Strictly above the k-th largest of ``sorted_scores`` (ascending), where k = floor(n * fpr) may be exceeded:
    at most a share ``fpr`` of them lies at or above it. No scores: +inf."""
    n = len(sorted_scores)
    if n == 0:
        return float("inf")
    k = int(np.floor(n * fpr))
    return float(np.nextafter(sorted_scores[n - 1 - k], np.inf))


def fit_calibration(scores_by_length: dict[int, list[float]], target_fpr: float,
                    meta: dict[str, Any] | None = None, statistic: str = "score", warn: bool = True) -> Calibration:
    """Thresholds from null scores grouped by query length in segments.

    The threshold is the smallest score above which at most ``target_fpr`` of the null scores lie ("higher"
    quantile, so the empirical false-positive rate never exceeds the target), for each length on its own null
    scores. The margin's null values rise with the length (bundled model, dev + extra: 1 % points 0.099 / 0.124 /
    0.138 at 1 / 3 / 5 s), so thresholds once made non-increasing in length held 1 and 3 s queries to the 5 s one
    and ran them at a fifth to a third of their target (bench/README.md, "Each length its own threshold");
    ``Calibration.non_increasing`` still does that (the listener's rule, measured with it). ``warn``: log the
    lengths with too few null scores for the target (off for a second fit of the same queries).
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    lengths = sorted(k for k, v in scores_by_length.items() if len(v))
    if not lengths:
        raise ValueError("no null scores to calibrate on")
    raw = [_upper_point(np.sort(np.asarray(scores_by_length[n], dtype=np.float64)), target_fpr) for n in lengths]
    few = [f"{len(scores_by_length[n])} of {n} segment(s)" for n in lengths
           if len(scores_by_length[n]) * target_fpr < 1]
    if few and warn:
        log.warning("calibration: only %s null queries: the %.3g false-positive target is finer than one query, so "
                    "the threshold is the highest null score (ask for more than %d queries per length: "
                    "search.calibration.queries_per_length, nafp index --queries-per-length)",
                    ", ".join(few), target_fpr, int(np.ceil(1.0 / target_fpr)))
    return Calibration(lengths, raw, [list(map(float, scores_by_length[n])) for n in lengths], target_fpr,
                       dict(meta or {}), statistic)
