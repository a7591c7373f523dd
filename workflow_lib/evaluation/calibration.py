"""The ``calibrate`` stage: queries of unknown songs, degraded like real use, give the no-match threshold.

Null queries are cut from the calibration half of the unknown-song pool (``songs.unknown_songs``): songs the model
never trained on, whether or not they are in the database, searched with their own fingerprints skipped
(leave-one-song-out), so no song has to be left out of the database for the threshold. Each query takes a random
song, start, length and condition of the evaluation's plan, degraded with the *training* noise and impulse
responses (the test banks stay unseen until the evaluation), plus a share of pure background-noise queries (a
microphone hearing only the room). With ``search.calibration.bundled_other_music`` (``nafp index``), the null
queries shipped beside the model are added, weighed as their songs' minutes (``null_bank``): a small collection is
too little music on its own. The threshold file and its fitting live in ``search.threshold``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_lib.database.catalogue import song_paths
from workflow_lib.database.other_music import count_other_music
from workflow_lib.search.duplicates import duplicate_groups, find_twins
from workflow_lib.search.threshold import Calibration, decision_statistic, fit_calibration, little_music, shown
from workflow_lib.data.clipbank import ClipBank
from workflow_lib.common.layout import null_bank_path
from workflow_lib.evaluation.null_bank import bank_candidates, usable_bank, weigh_bank
from workflow_lib.evaluation.null_queries import null_queries, record_null_views
from workflow_lib.evaluation.plan import QueryPlan
from workflow_lib.evaluation.songs import unknown_songs

log = logging.getLogger(__name__)


def collect_null_scores(searcher, songs: pd.DataFrame, noise_bank: ClipBank | None, ir_bank: ClipBank | None,
                        plan: QueryPlan, n_per_length: int, noise_share: float, seed: int,
                        twins: dict[str, frozenset[str]] | None = None,
                        workers: int = 1) -> dict[int, list[list[list[float]]]]:
    """Candidate scores (best first) of unknown-song queries, grouped by query length in segments: for each query,
    one list per view searched (``Searcher.search_views``: as it is and, where the whitened view applies, whitened).

    ``songs`` (``song_id, path, duration_s``) are searched leave-one-song-out, and without their ``twins`` (songs
    of the database holding the same music, ``search.duplicates``: naming one is right, not a false positive). A
    share ``noise_share`` of the queries is background noise alone, at a random level (``null_queries``).
    """
    scores: dict[int, list[list[list[float]]]] = {}

    def search(x: np.ndarray, n_nominal: int, exclude, origin):
        return searcher.search_views(searcher.embed_views(x), "sequence", exclude), n_nominal

    for found in null_queries(songs, noise_bank, ir_bank, plan, n_per_length, noise_share, seed, search, twins,
                              workers):
        if found is not None:
            record_null_views(scores, *found)
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
    noise = ClipBank(noise_prefix) if noise_prefix else None
    irs = ClipBank(ir_prefix) if ir_prefix else None
    workers = fingerprint_workers(max(1, threads), searcher.device)
    log.info("calibration: %d unknown songs (searched leave-one-song-out), %d queries per length, %.0f %% "
             "background noise only, statistic %s", len(pool), cal["queries_per_length"], 100 * cal["noise_share"],
             cal["statistic"])
    # the audio of every song of the run (database songs included) lets shared passages be checked
    twins = duplicate_groups(find_twins(searcher.db, pool["song_id"].astype(str), song_paths(songs), max(1, threads)))
    candidates = collect_null_scores(searcher, pool, noise, irs, plan, cal["queries_per_length"],
                                     cal["noise_share"], cal["seed"], twins, workers=workers)
    n_songs, null_minutes = len(pool), float(pool["duration_s"].sum()) / 60.0 if len(pool) else 0.0
    bundled = None
    if cal.get("bundled_other_music") and (bank := usable_bank(model_path, searcher, plan.lengths_s)) is not None:
        more, bundled = bank_candidates(searcher, bank, workers)
        candidates, bundled["weights"] = weigh_bank(candidates, more, null_minutes, bundled["minutes"], cal["seed"])
        n_songs, null_minutes = n_songs + bundled["songs"], null_minutes + bundled["minutes"]
        log.info("calibration: %d queries of %d songs of the bundled other music (%.0f min) added",
                 bundled["queries"], bundled["songs"], bundled["minutes"])
    if advice := little_music(n_songs, null_minutes):
        log.warning("calibration: the no-match rule is %s", advice)
    collection = searcher.db.n_songs - count_other_music(searcher.db.song_ids)  # the model's other music aside
    meta = {"model_checksum": file_digest(model_path), "n_songs": n_songs, "database_songs": collection,
            "songs_with_twins": sorted(s for s in twins if s in set(pool["song_id"].astype(str))),
            "songs": "songs not trained on, searched leave-one-song-out "
                     + ("(all of them: not evaluated)" if share == "all" else "(calibration half)"),
            "unknown_songs": share, "null_minutes": round(null_minutes, 1), "bundled_other_music": bundled,
            "noise_share": cal["noise_share"], "conditions": [c.name for c in plan.conditions],
            "whitened_view": searcher.whitened_view.to_dict(),
            "search": {k: search_cfg[k] for k in ("top_k", "nprobe", "max_candidates") if k in search_cfg}}
    return candidates, meta


def run_calibration(out_path, model_path, index_dir, songs_path, splits_path, noise_prefix, ir_prefix,
                    search_cfg: dict, eval_cfg: dict, threads: int = 1, table_path=None) -> Calibration:
    """Snakemake entry for the ``calibrate`` rule: fit the no-match threshold and write it as JSON (and, with
    ``table_path``, its per-length table as CSV). When nothing it reads has changed since the last calibration of
    this index folder (``calibration_cache``: e.g. only tags or modification times did), that one is reused."""
    from workflow_lib.common.atomic import file_digest, write_csv_atomic
    from workflow_lib.evaluation.calibration_cache import CalibrationCache, calibration_key
    from workflow_lib.model.embed import resolve_device

    cal = search_cfg["calibration"]
    device = str(resolve_device(search_cfg.get("device", "auto")))
    bank = null_bank_path(model_path) if cal.get("bundled_other_music") else None
    settings = {"search": search_cfg, "evaluate": eval_cfg, "device": device,
                "bundled_other_music": file_digest(bank) if bank is not None and bank.is_file() else None}
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
                     n, views, c.statistic, shown(t), float(np.median(s)), float(np.max(s)), len(s))
    return calib
