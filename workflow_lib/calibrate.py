"""No-match threshold: calibrated on queries whose song is not in the database, for a target false-positive rate.

The match score (mean cosine similarity of the query's segments with the aligned database segments, see
``search.py``) of a query from an unknown song is the best of many chance alignments, so its distribution depends
strongly on the query length: a 1 s query's best chance score is a single nearest-neighbour similarity, a 10 s
query's is an average over 19 segments and much lower. The threshold is therefore calibrated per query length (in
segments): it is the ``1 - target_fpr`` quantile of the out-of-database scores of that length, and lengths between
calibrated ones are interpolated. The stored null scores also give each answer a confidence: the fraction of
out-of-database queries of that length that score lower (one minus an empirical p-value).

Null queries come from songs that are in the manifest but not in the index (``evaluate.py`` keeps the songs used
here apart from the ones used to measure the false-positive rate), degraded like evaluation queries but with the
*training* noise and IR banks, plus a share of pure background-noise queries (the microphone hears only the room).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_text_atomic

log = logging.getLogger(__name__)

FORMAT = "nafp-threshold/1"


@dataclass
class Calibration:
    """Per-length thresholds (``n_segments`` ascending) and the null scores they came from."""

    n_segments: list[int]
    thresholds: list[float]
    null_scores: list[list[float]]
    target_fpr: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.n_segments:
            raise ValueError("calibration has no lengths")
        if len(self.n_segments) != len(self.thresholds) or len(self.n_segments) != len(self.null_scores):
            raise ValueError("calibration: n_segments, thresholds and null_scores differ in length")
        if list(self.n_segments) != sorted(set(self.n_segments)):
            raise ValueError(f"calibration: n_segments must be strictly increasing, got {self.n_segments}")
        self._sorted = [np.sort(np.asarray(s, dtype=np.float64)) for s in self.null_scores]

    # -- use ----------------------------------------------------------------------------------------------------
    def threshold(self, n_segments: int) -> float:
        """Threshold for a query of ``n_segments`` (linear between calibrated lengths, clamped outside them: a
        query longer than the longest calibrated one keeps that length's threshold, which is conservative)."""
        return float(np.interp(n_segments, self.n_segments, self.thresholds))

    def confidence(self, score: float, n_segments: int) -> float:
        """Fraction of out-of-database queries of this length scoring below ``score`` (interpolated like the
        threshold)."""
        cdf = [float(np.searchsorted(s, score, side="left")) / len(s) if len(s) else 0.0 for s in self._sorted]
        return float(np.clip(np.interp(n_segments, self.n_segments, cdf), 0.0, 1.0))

    # -- storage ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "target_fpr": self.target_fpr, "meta": self.meta,
                "lengths": [{"n_segments": int(n), "threshold": round(float(t), 6), "n_queries": len(s),
                             "null_scores": [round(float(v), 5) for v in s]}
                            for n, t, s in zip(self.n_segments, self.thresholds, self.null_scores)]}

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1))

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
            lengths = d["lengths"]
            return cls([int(x["n_segments"]) for x in lengths], [float(x["threshold"]) for x in lengths],
                       [list(map(float, x["null_scores"])) for x in lengths], float(d["target_fpr"]),
                       dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed threshold file ({exc})") from exc


def fit_calibration(scores_by_length: dict[int, list[float]], target_fpr: float,
                    meta: dict[str, Any] | None = None) -> Calibration:
    """Thresholds from null scores grouped by query length in segments.

    The threshold is the smallest score above which at most ``target_fpr`` of the null scores lie ("higher"
    quantile, so the empirical false-positive rate never exceeds the target). Thresholds are then made
    non-increasing in length: a longer query never needs a higher score than a shorter one, which removes
    sampling noise between neighbouring lengths in the safe direction.
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    lengths = sorted(k for k, v in scores_by_length.items() if len(v))
    if not lengths:
        raise ValueError("no null scores to calibrate on")
    raw = []
    for n in lengths:
        s = np.asarray(scores_by_length[n], dtype=np.float64)
        if len(s) * target_fpr < 1:
            log.warning("calibration: only %d null queries of %d segments: the %.3g false-positive target is finer "
                        "than one query, so the threshold is the highest null score", len(s), n, target_fpr)
        # Strictly above the k-th largest score, where k = floor(n * fpr) may be exceeded.
        k = int(np.floor(len(s) * target_fpr))
        srt = np.sort(s)
        raw.append(float(np.nextafter(srt[len(s) - 1 - k], np.inf)))
    thr = np.maximum.accumulate(np.asarray(raw)[::-1])[::-1]
    return Calibration(lengths, [float(t) for t in thr], [list(map(float, scores_by_length[n])) for n in lengths],
                       target_fpr, dict(meta or {}))


# ------------------------------------------------------------------------------------------------ null queries

def collect_null_scores(searcher, songs, noise_bank, ir_bank, plan, n_per_length: int, noise_share: float,
                        seed: int) -> dict[int, list[float]]:
    """Best sequence-search score of out-of-database queries, grouped by query length in segments.

    ``songs`` (``song_id, path, duration_s``) are outside the database; each query takes a random song, start,
    length and condition of ``plan`` (an ``evaluate.QueryPlan``), degraded with the given (training) banks. A share
    ``noise_share`` of the queries is background noise alone, at a random level.
    """
    from tqdm import tqdm

    from . import SAMPLE_RATE
    from .degrade import degrade, limit_peak
    from .evaluate import draw_songs, iter_song_audio, pick_start

    rng = np.random.default_rng([seed, 7])
    lengths = list(plan.lengths_s)
    conds = plan.conditions()
    if noise_bank is None or len(noise_bank) == 0:
        noise_share = 0.0
        conds = [c for c in conds if c.snr_db is None] or conds
    if ir_bank is None or len(ir_bank) == 0:
        conds = [c for c in conds if not c.reverb]
    if not conds:
        raise ValueError("calibration: every condition needs a noise or IR bank that is empty")
    n_total = n_per_length * len(lengths)
    is_noise = rng.random(n_total) < noise_share
    if len(songs) == 0:
        if noise_bank is None or len(noise_bank) == 0:
            raise ValueError("calibration: no songs outside the database and no noise bank: nothing to calibrate on "
                             "(leave some songs out of the database, e.g. through the split fractions)")
        log.warning("calibration: no songs outside the database; the threshold is fitted on background noise only, "
                    "so its false-positive rate on unknown music is not controlled")
        is_noise[:] = True
    scores: dict[int, list[float]] = {}
    bar = tqdm(total=n_total, desc="calibration queries", mininterval=10)

    def score(x: np.ndarray) -> None:
        res = searcher.search(searcher.embed(x), "sequence")
        scores.setdefault(res.n_segments, []).append(res.best.score if res.best else -1.0)
        bar.update()

    song_q = np.flatnonzero(~is_noise)
    if len(song_q):
        which = draw_songs(songs["duration_s"].to_numpy(), len(song_q), max(lengths), rng)
        for pos, audio in iter_song_audio(songs, which):
            if audio is None:
                continue
            for k in song_q[which == pos]:
                qrng = np.random.default_rng([seed, 11, int(k)])
                n = int(round(lengths[k % len(lengths)] * SAMPLE_RATE))
                start = pick_start(audio, n, qrng, grid=False)
                if start is None:
                    continue
                cond = conds[int(qrng.integers(len(conds)))]
                try:
                    x, _ = degrade(audio, start, n, plan.degradation(cond, qrng), qrng, noise_bank, ir_bank)
                except ValueError as exc:  # e.g. a silent noise excerpt: the SNR is undefined
                    log.info("calibration query %d skipped: %s", k, exc)
                    continue
                score(x)
    for k in np.flatnonzero(is_noise):
        qrng = np.random.default_rng([seed, 13, int(k)])
        n = int(round(lengths[k % len(lengths)] * SAMPLE_RATE))
        x = noise_bank.random_excerpt(qrng, n)
        level = 10 ** qrng.uniform(-2.0, -0.7)  # RMS from quiet room (-40 dBFS) to loud (-14 dBFS)
        x = limit_peak(x * (level / max(float(np.sqrt(np.mean(x ** 2))), 1e-9)))
        score(x)
    bar.close()
    return scores


def run_calibration(out_path, results_dir, songs_path, splits_path, index_meta_path, noise_prefix, ir_prefix,
                    search_cfg: dict, eval_cfg: dict, threads: int = 1) -> Calibration:
    """Snakemake entry for the ``calibrate`` rule: fit the no-match threshold and write it as JSON."""
    import pandas as pd
    import torch

    from .clipbank import ClipBank
    from .evaluate import QueryPlan, database_song_ids, out_of_db_songs, search_kwargs
    from .model_io import model_checksum
    from .search import Searcher

    cal = search_cfg["calibration"]
    results_dir = Path(results_dir)
    model_path = results_dir / "model" / "model.pt"
    torch.set_num_threads(max(1, threads))
    searcher = Searcher.from_paths(model_path, results_dir / "index", None, None, **search_kwargs(search_cfg))
    plan = QueryPlan.from_config(eval_cfg)
    songs, splits = pd.read_parquet(songs_path), pd.read_parquet(splits_path)
    pool = out_of_db_songs(songs, splits, database_song_ids(index_meta_path), plan.seed, "calibration")
    noise = ClipBank(noise_prefix) if noise_prefix else None
    irs = ClipBank(ir_prefix) if ir_prefix else None
    log.info("calibration: %d songs outside the database, %d queries per length, %.0f %% background noise only",
             len(pool), cal["queries_per_length"], 100 * cal["noise_share"])
    scores = collect_null_scores(searcher, pool, noise, irs, plan, cal["queries_per_length"], cal["noise_share"],
                                 cal["seed"])
    meta = {"model_checksum": model_checksum(model_path), "n_songs": len(pool),
            "songs": "manifest songs outside the database (calibration half)",
            "noise_share": cal["noise_share"], "search": {k: search_cfg[k] for k in ("top_k", "nprobe", "max_candidates")
                                                          if k in search_cfg}}
    calib = fit_calibration(scores, cal["target_fpr"], meta)
    calib.save(out_path)
    for n, t, s in zip(calib.n_segments, calib.thresholds, calib.null_scores):
        log.info("threshold for %d segments: %.4f (null scores: median %.3f, max %.3f, n=%d)", n, t,
                 float(np.median(s)), float(np.max(s)), len(s))
    return calib
