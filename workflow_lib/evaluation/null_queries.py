"""The calibration's null queries: cut from songs the database does not hold (or searched leave-one-song-out),
degraded like real use, and handed to whoever searches or keeps them (``calibration.collect_null_scores``,
``null_bank.make_null_bank``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from workflow_lib import SAMPLE_RATE
from workflow_lib.audio.segments import n_segments
from workflow_lib.common.background import ordered_map, prefetch
from workflow_lib.common.progress import progress
from workflow_lib.data.clipbank import ClipBank
from workflow_lib.evaluation.degrade import degrade, limit_peak
from workflow_lib.evaluation.plan import QueryPlan
from workflow_lib.evaluation.queries import usable_conditions
from workflow_lib.evaluation.songs import draw_songs, iter_song_audio, pick_start
from workflow_lib.search.duplicates import unknown_exclusion

log = logging.getLogger(__name__)


def record_null_views(scores: dict[int, list[list[list[float]]]], views, n_nominal: int) -> None:
    """Add one null query's searched views (``Searcher.search_views``) to ``scores``, grouped by the query's nominal
    length (samples asked for, not the degraded clip's, which a speed change stretches): a partly quiet query
    searches fewer segments (the silence gate), and answering it interpolates between the calibrated lengths; a
    stray group of a few queries would not. A query the silence gate emptied is answered "silence", not by the
    threshold: it is left out. A view whose best candidate is other music of the index (``database.other_music``)
    is no match whatever its scores: it is kept with none (its statistic is -inf)."""
    if views[0].n_segments:
        scores.setdefault(max(1, n_segments(n_nominal)), []).append(
            [[] if r.other_music_leads else [c.score for c in r.candidates] for r in views])


def null_queries(songs: pd.DataFrame, noise_bank: ClipBank | None, ir_bank: ClipBank | None, plan: QueryPlan,
                 n_per_length: int, noise_share: float, seed: int, handle, twins=None, workers: int = 1,
                 desc: str = "calibration queries"):
    """The calibration's null queries, made and handed to ``handle(audio, n_nominal, exclude, origin)``; yields what
    it returns, query by query in a fixed order (None for a query that could not be made).

    Each query takes a random song of ``songs``, start, length of ``plan.lengths_s`` and condition of the plan;
    ``exclude`` is what its search must skip (the song and its ``twins``), ``origin`` is ``(row of songs, start in
    seconds)``, or None for one of the ``noise_share`` of queries that are background noise alone, at a random
    level. ``workers`` threads make and handle queries side by side (``common.background.ordered_map``, as the scan
    does; torch and FAISS release the GIL); every query draws from its own seed, so the result does not depend on
    it.
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
    # not cut, and a longer query takes the longest calibrated length's threshold (``Calibration.threshold``) unless
    # other music shipped with the model calibrates it (``null_bank``).
    longest = float(songs["duration_s"].max()) if len(songs) else 0.0
    fit = [n for n in lengths if n * max(c.max_speed for c in conds) < longest]
    if len(songs) and fit and len(fit) < len(lengths):
        log.warning("calibration: the longest song is %.1f s, so no %s s queries are cut from the songs (without "
                    "other music of that length, longer queries take the threshold of %g s ones)", longest,
                    ", ".join(f"{n:g}" for n in lengths if n not in fit), max(fit))
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
    bar = progress(total=n_total, desc=desc, unit="query", mininterval=10)
    span_s = max(lengths) * max(c.max_speed for c in conds)

    def song_query(audio: np.ndarray, pos: int, sid: str, k: int):
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
        return handle(x, n, unknown_exclusion(sid, twins or {}), (pos, start / SAMPLE_RATE))

    def noise_query(k: int):
        qrng = np.random.default_rng([seed, 13, int(k)])
        n = int(round(lengths[k % len(lengths)] * SAMPLE_RATE))
        x = noise_bank.random_excerpt(qrng, n)
        level = 10 ** qrng.uniform(-2.0, -0.7)  # RMS from quiet room (-40 dBFS) to loud (-14 dBFS)
        x = limit_peak(x * (level / max(float(np.sqrt(np.mean(x ** 2))), 1e-9)))
        return handle(x, n, None, None)

    song_q = np.flatnonzero(~is_noise)
    if len(song_q):
        which = draw_songs(songs["duration_s"].to_numpy(), len(song_q), span_s, rng)
        # the next song is decoded while this one's queries are searched
        for pos, audio in prefetch(iter_song_audio(songs, which), depth=1):
            if audio is None:
                continue
            sid = str(songs.iloc[pos]["song_id"])
            for found in ordered_map(lambda k: song_query(audio, pos, sid, k), song_q[which == pos], workers):
                bar.update()
                yield found
    for found in ordered_map(noise_query, np.flatnonzero(is_noise), workers):
        bar.update()
        yield found
    bar.close()
