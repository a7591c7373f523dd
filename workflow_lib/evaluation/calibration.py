"""The ``calibrate`` stage: queries of unknown songs, degraded like real use, give the no-match threshold.

Null queries are cut from the calibration half of the unknown-song pool (``songs.unknown_songs``): songs the model
never trained on, whether or not they are in the database, searched with their own fingerprints skipped
(leave-one-song-out), so no song has to be left out of the database for the threshold. Each query takes a random
song, start, length and condition of the evaluation's plan, degraded with the *training* noise and impulse
responses (the test banks stay unseen until the evaluation), plus a share of pure background-noise queries (a
microphone hearing only the room). The threshold file and its fitting live in ``calibrate`` (search's side).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_lib import SAMPLE_RATE
from workflow_lib.audio.segments import n_segments
from workflow_lib.common.background import ordered_map, prefetch
from workflow_lib.common.progress import progress
from workflow_lib.database.catalogue import song_paths
from workflow_lib.search.duplicates import duplicate_groups, find_twins, unknown_exclusion
from workflow_lib.search.threshold import Calibration, decision_statistic, fit_calibration, little_music
from workflow_lib.data.clipbank import ClipBank
from workflow_lib.evaluation.degrade import degrade, limit_peak
from workflow_lib.evaluation.plan import QueryPlan
from workflow_lib.evaluation.queries import usable_conditions
from workflow_lib.evaluation.songs import draw_songs, iter_song_audio, pick_start, unknown_songs

log = logging.getLogger(__name__)


def collect_null_scores(searcher, songs: pd.DataFrame, noise_bank: ClipBank | None, ir_bank: ClipBank | None,
                        plan: QueryPlan, n_per_length: int, noise_share: float, seed: int,
                        twins: dict[str, frozenset[str]] | None = None,
                        workers: int = 1) -> dict[int, list[list[list[float]]]]:
    """Candidate scores (best first) of unknown-song queries, grouped by query length in segments: for each query,
    one list per view searched (``Searcher.search_views``: as it is and, where the whitened view applies, whitened).

    ``songs`` (``song_id, path, duration_s``) are searched leave-one-song-out, and without their ``twins`` (songs
    of the database holding the same music, ``search.duplicates``: naming one is right, not a false positive). A
    share ``noise_share`` of the queries is background noise alone, at a random level. ``workers`` threads make,
    fingerprint and search queries side by side (``common.background.ordered_map``, as the scan does; torch and
    FAISS release the GIL); every query draws from its own seed, so the result does not depend on it.
    """
    rng = np.random.default_rng([seed, 7])
    lengths = list(plan.lengths_s)
    has_noise = noise_bank is not None and len(noise_bank) > 0
    conds = [c for c in plan.conditions if (c.snr_db is None or has_noise)]
    if ir_bank is None or len(ir_bank) == 0:
        conds = [c for c in conds if c.room is None]
    conds = usable_conditions(QueryPlan(conditions=tuple(conds)), noise_bank, ir_bank, stage="calibration",
                              drop_level=logging.INFO) if conds else []
    if not conds:
        raise ValueError("calibration: every condition needs a noise or impulse-response bank that is empty")
    # A collection of short pieces (jingles, sound effects) holds no query of the longest lengths: those lengths are
    # not calibrated, and a longer query takes the longest calibrated length's threshold (``Calibration.threshold``).
    longest = float(songs["duration_s"].max()) if len(songs) else 0.0
    fit = [n for n in lengths if n * max(c.max_speed for c in conds) < longest]
    if len(songs) and fit and len(fit) < len(lengths):
        log.warning("calibration: the longest song is %.1f s, so %s s queries are not calibrated (longer queries "
                    "take the threshold of %g s ones)", longest, ", ".join(f"{n:g}" for n in lengths if n not in fit),
                    max(fit))
        lengths = fit
    if not has_noise:
        noise_share = 0.0
    n_total = n_per_length * len(lengths)
    is_noise = rng.random(n_total) < noise_share
    if len(songs) == 0:
        if not has_noise:
            raise ValueError("calibration: no songs for unknown-song queries and no noise bank: nothing to "
                             "calibrate on")
        log.warning("calibration: no songs for unknown-song queries; the threshold is fitted on background noise "
                    "only, so its false-positive rate on unknown music is not controlled")
        is_noise[:] = True
    scores: dict[int, list[list[float]]] = {}
    bar = progress(total=n_total, desc="calibration queries", unit="query", mininterval=10)
    span_s = max(lengths) * max(c.max_speed for c in conds)

    def search(x: np.ndarray, n_nominal: int, exclude: str | frozenset[str] | None):
        return searcher.search_views(searcher.embed_views(x), "sequence", exclude), n_nominal

    def record(found) -> None:
        if found is not None:
            views, n_nominal = found
            # Grouped by the query's nominal length (samples asked for, not the degraded clip's, which a speed
            # change stretches): a partly quiet query searches fewer segments (the silence gate), and answering it
            # interpolates between the calibrated lengths; a stray group of a few queries would not.
            if views[0].n_segments:  # a query the silence gate emptied is answered "silence", not by the threshold
                scores.setdefault(max(1, n_segments(n_nominal)), []).append([[c.score for c in r.candidates]
                                                                             for r in views])
        bar.update()

    def song_query(audio: np.ndarray, sid: str, k: int):
        qrng = np.random.default_rng([seed, 11, int(k)])
        n = int(round(lengths[k % len(lengths)] * SAMPLE_RATE))
        cond = conds[int(qrng.integers(len(conds)))]
        spec = plan.degradation(cond, qrng)
        start = pick_start(audio, int(np.ceil(n * spec.speed)) + 1, qrng, grid=False)
        if start is None:
            return None
        try:
            x, _ = degrade(audio, start, n, spec, qrng, noise_bank, ir_bank)
        except ValueError as exc:  # e.g. a silent noise excerpt: the SNR is undefined
            log.info("calibration query %d skipped: %s", k, exc)
            return None
        return search(x, n, unknown_exclusion(sid, twins or {}))

    def noise_query(k: int):
        qrng = np.random.default_rng([seed, 13, int(k)])
        n = int(round(lengths[k % len(lengths)] * SAMPLE_RATE))
        x = noise_bank.random_excerpt(qrng, n)
        level = 10 ** qrng.uniform(-2.0, -0.7)  # RMS from quiet room (-40 dBFS) to loud (-14 dBFS)
        x = limit_peak(x * (level / max(float(np.sqrt(np.mean(x ** 2))), 1e-9)))
        return search(x, n, None)

    song_q = np.flatnonzero(~is_noise)
    if len(song_q):
        which = draw_songs(songs["duration_s"].to_numpy(), len(song_q), span_s, rng)
        # the next song is decoded while this one's queries are searched
        for pos, audio in prefetch(iter_song_audio(songs, which), depth=1):
            if audio is None:
                continue
            sid = str(songs.iloc[pos]["song_id"])
            for found in ordered_map(lambda k: song_query(audio, sid, k), song_q[which == pos], workers):
                record(found)
    for found in ordered_map(noise_query, np.flatnonzero(is_noise), workers):
        record(found)
    bar.close()
    return scores


def fit_from_candidates(candidates: dict[int, list[list[list[float]]]], statistic: str, target_fpr: float,
                        meta: dict) -> Calibration:
    """The threshold of ``statistic`` from the null queries' candidate scores (``collect_null_scores``): for the
    queries as they are and, at the lengths where queries were also searched whitened, for the better of the two
    views (``Calibration.two_views``)."""
    plain = {n: [decision_statistic(views[0], statistic) for views in qs] for n, qs in candidates.items()}
    calib = fit_calibration(plain, target_fpr, meta, statistic)
    both = {n: [max(decision_statistic(v, statistic) for v in views) for views in qs]
            for n, qs in candidates.items() if any(len(views) > 1 for views in qs)}
    if both:
        calib.two_views = fit_calibration(both, target_fpr, {}, statistic, warn=False)  # the same queries
    return calib


def null_candidates(model_path, index_dir, songs_path, splits_path, noise_prefix, ir_prefix, search_cfg: dict,
                    eval_cfg: dict, threads: int = 1) -> tuple[dict[int, list[list[list[float]]]], dict]:
    """The ``calibrate`` rule's null queries, searched: their candidate scores by length (``collect_null_scores``)
    and the threshold file's ``meta``. Also what bench/decision_statistic.py refits other rules on. On the CPU,
    ``threads`` queries are handled side by side, each on one torch thread (``listener.scan.fingerprint_workers``:
    small batches gain less from a second torch thread)."""
    from workflow_lib.common.atomic import file_digest
    from workflow_lib.listener.scan import fingerprint_workers
    from workflow_lib.search.searcher import Searcher, searcher_kwargs

    cal = search_cfg["calibration"]
    searcher = Searcher.from_paths(model_path, index_dir, None, None, **searcher_kwargs(search_cfg))
    plan = QueryPlan.from_config(eval_cfg)
    songs = pd.read_parquet(songs_path)
    splits = pd.read_parquet(splits_path) if splits_path and Path(splits_path).exists() else None
    share = cal.get("songs", "half")
    pool = unknown_songs(songs, splits, plan.seed, "all" if share == "all" else "calibration")
    null_minutes = float(pool["duration_s"].sum()) / 60.0 if len(pool) else 0.0
    if advice := little_music(len(pool), null_minutes):
        log.warning("calibration: the no-match rule is %s", advice)
    noise = ClipBank(noise_prefix) if noise_prefix else None
    irs = ClipBank(ir_prefix) if ir_prefix else None
    log.info("calibration: %d unknown songs (searched leave-one-song-out), %d queries per length, %.0f %% "
             "background noise only, statistic %s", len(pool), cal["queries_per_length"], 100 * cal["noise_share"],
             cal["statistic"])
    # the audio of every song of the run (database songs included) lets shared passages be checked
    twins = duplicate_groups(find_twins(searcher.db, pool["song_id"].astype(str), song_paths(songs), max(1, threads)))
    candidates = collect_null_scores(searcher, pool, noise, irs, plan, cal["queries_per_length"],
                                     cal["noise_share"], cal["seed"], twins,
                                     workers=fingerprint_workers(max(1, threads), searcher.device))
    meta = {"model_checksum": file_digest(model_path), "n_songs": len(pool), "database_songs": searcher.db.n_songs,
            "songs_with_twins": sorted(s for s in twins if s in set(pool["song_id"].astype(str))),
            "songs": "songs not trained on, searched leave-one-song-out "
                     + ("(all of them: not evaluated)" if share == "all" else "(calibration half)"),
            "unknown_songs": share, "null_minutes": round(null_minutes, 1),
            "noise_share": cal["noise_share"], "conditions": [c.name for c in plan.conditions],
            "whitened_view": searcher.whitened_view.to_dict(),
            "search": {k: search_cfg[k] for k in ("top_k", "nprobe", "max_candidates") if k in search_cfg}}
    return candidates, meta


def run_calibration(out_path, model_path, index_dir, songs_path, splits_path, noise_prefix, ir_prefix,
                    search_cfg: dict, eval_cfg: dict, threads: int = 1, table_path=None) -> Calibration:
    """Snakemake entry for the ``calibrate`` rule: fit the no-match threshold and write it as JSON (and, with
    ``table_path``, its per-length table as CSV). When nothing it reads has changed since the last calibration of
    this index folder (``calibration_cache``: e.g. only tags or modification times did), that one is reused."""
    from workflow_lib.common.atomic import write_csv_atomic
    from workflow_lib.evaluation.calibration_cache import CalibrationCache, calibration_key
    from workflow_lib.model.embed import resolve_device

    cal = search_cfg["calibration"]
    device = str(resolve_device(search_cfg.get("device", "auto")))
    settings = {"search": search_cfg, "evaluate": eval_cfg, "device": device}
    key = calibration_key(model_path, index_dir, songs_path, splits_path, noise_prefix, ir_prefix, settings)
    cache = CalibrationCache(Path(index_dir) / ".cache")
    if cache.restore(key, out_path, table_path):
        log.info("calibration: the model, the index's vectors, the songs' audio, the noise and rooms, the settings "
                 "and the code are those of the last calibration; its threshold is reused (key %s)", key)
        return Calibration.load(out_path)
    candidates, meta = null_candidates(model_path, index_dir, songs_path, splits_path, noise_prefix, ir_prefix,
                                       search_cfg, eval_cfg, threads)
    calib = fit_from_candidates(candidates, cal["statistic"], cal["target_fpr"], meta)
    calib.save(out_path)
    if table_path is not None:
        write_csv_atomic(calib.table(), table_path)
    cache.store(key, calib)
    for views, c in [(1, calib)] + ([(2, calib.two_views)] if calib.two_views is not None else []):
        for n, t, s in zip(c.n_segments, c.thresholds, c.null_scores):
            log.info("threshold for %d segments, %d view(s): %s >= %.4f (null values: median %.3f, max %.3f, n=%d)",
                     n, views, c.statistic, t, float(np.median(s)), float(np.max(s)), len(s))
    return calib
