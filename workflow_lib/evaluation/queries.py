"""Cutting, degrading and writing the evaluation's query files, and their table.

Protocol (NAFP-style, see docs/ARCHITECTURE.md "evaluate"): start points are drawn uniformly over all query
positions of a group's songs (so long songs get more); each start is used for every query length and every
condition (``plan.QueryPlan``), so the lengths and conditions of one start share their music. Starts are
sample-exact, not on the 0.5 s segment grid, unless ``grid_aligned`` is set: a real query is never aligned with the
database. Degradations use the *test* (held-out) noise and impulse-response banks.

Groups (``songs``): ``unseen`` (``n_starts``), ``trained`` (``n_trained_starts``) and ``unknown``
(``n_out_of_db_starts``; ``exclude_song`` names the song the search must skip).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from workflow_lib import SAMPLE_RATE
from workflow_lib.common.atomic import write_parquet_atomic
from workflow_lib.audio.files import write_audio
from workflow_lib.common.progress import progress
from workflow_lib.data.clipbank import ClipBank
from workflow_lib.evaluation.degrade import degrade, ir_pool
from workflow_lib.evaluation.plan import Condition, QueryPlan
from workflow_lib.database.catalogue import song_paths
from workflow_lib.search.duplicates import format_exclusion, twins_of, unknown_exclusion
from workflow_lib.evaluation.songs import (database_song_ids, draw_songs, iter_song_audio, pick_start, query_songs,
                                           trained_songs, unknown_songs)

log = logging.getLogger(__name__)

GROUPS = ("unseen", "trained", "unknown")
QUERY_COLUMNS = ["query_id", "group", "song_id", "in_db", "source_song_id", "exclude_song", "start_s",
                 "start_sample", "length_s", "condition", "snr_db", "room", "ir", "highpass_hz", "lowpass_hz", "eq",
                 "codec", "speed", "compress", "level_db", "file"]


def usable_conditions(plan: QueryPlan, noise_bank: ClipBank | None, ir_bank: ClipBank | None, *,
                      stage: str = "evaluate", drop_level: int = logging.WARNING) -> list[Condition]:
    """The plan's conditions that the held-out banks can serve; the others are dropped and logged at
    ``drop_level`` (e.g. no measured room rings longer than 1.5 s: a warning for an evaluation, which then reports
    fewer conditions; only a note for the calibration, which pools them)."""
    out = []
    for c in plan.conditions:
        if c.snr_db is not None and (noise_bank is None or len(noise_bank) == 0):
            raise ValueError(f"{stage}: condition {c.name!r} needs a non-empty test noise bank")
        if c.room is not None:
            if ir_bank is None or len(ir_bank) == 0:
                raise ValueError(f"{stage}: condition {c.name!r} needs a non-empty test impulse-response bank")
            if not len(ir_pool(ir_bank, c.room)):
                log.log(drop_level, "%s: condition %r dropped: the held-out impulse responses hold no '%s' "
                        "responses", stage, c.name, c.room)
                continue
        out.append(c)
    if not out:
        raise ValueError(f"{stage}: none of the conditions can be served by the held-out banks")
    return out


@dataclass
class _Start:
    group: str
    song_pos: int
    song_id: str
    start: int
    key: int  # seeds everything about this start's queries


def _draw_starts(songs: pd.DataFrame, n: int, plan: QueryPlan, group: str,
                 audio_cb: Callable[[_Start, np.ndarray], None], span_s: float) -> int:
    """Draw ``n`` starts from ``songs`` and call ``audio_cb(start, song_audio)`` for each (songs decoded once)."""
    if n == 0 or songs.empty:
        return 0
    tag = GROUPS.index(group) + 1
    rng = np.random.default_rng([plan.seed, tag])
    which = draw_songs(songs["duration_s"].to_numpy(), n, span_s, rng)
    done = 0
    for pos, audio in iter_song_audio(songs, which):
        if audio is None:
            continue
        for key in np.flatnonzero(which == pos):
            srng = np.random.default_rng([plan.seed, tag, int(key)])
            start = pick_start(audio, int(round(span_s * SAMPLE_RATE)), srng, plan.grid_aligned,
                               shortest=int(round(min(plan.lengths_s) * SAMPLE_RATE)))
            if start is None:
                log.info("song %s: no non-silent %g s excerpt found; start %d dropped", songs.iloc[pos]["song_id"],
                         span_s, key)
                continue
            audio_cb(_Start(group, pos, str(songs.iloc[pos]["song_id"]), start, int(key)), audio)
            done += 1
    return done


def write_query_set(out_dir: str | Path, groups: dict[str, pd.DataFrame], plan: QueryPlan,
                    noise_bank: ClipBank | None, ir_bank: ClipBank | None,
                    twins: dict[str, frozenset[str]] | None = None) -> pd.DataFrame:
    """Cut, degrade and write every query file under ``out_dir/audio`` and the table ``out_dir/queries.parquet``.

    ``groups`` maps ``unseen`` / ``trained`` / ``unknown`` to their songs. Files go to a hidden partial folder
    named after the plan; a killed run resumes there (finished files are complete, being written atomically) and
    only the finished set is renamed into place.
    """
    out_dir = Path(out_dir)
    conds = usable_conditions(plan, noise_bank, ir_bank)
    banks = [[b.meta["name"].astype(str).tolist(), b.lengths.tolist()] if b is not None else None
             for b in (noise_bank, ir_bank)]
    digest = plan.digest([{g: sorted(s["song_id"]) for g, s in groups.items()}, banks])
    partial = out_dir / f".partial-{digest}"
    for old in out_dir.glob(".partial-*"):
        if old != partial:
            shutil.rmtree(old, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    counts = {"unseen": plan.n_starts, "trained": plan.n_trained_starts, "unknown": plan.n_out_of_db_starts}
    n_total = sum(counts[g] for g in groups) * len(plan.lengths_s) * len(conds)
    bar = progress(total=n_total, desc="queries", unit="query", mininterval=10)
    # A start must leave room for the longest query played at the fastest speed.
    span_s = max(plan.lengths_s) * max(c.max_speed for c in conds)

    def cut(st: _Start, audio: np.ndarray) -> None:
        prefix = {"unseen": "q", "trained": "t", "unknown": "x"}[st.group]
        for li, length_s in enumerate(plan.lengths_s):
            n = int(round(length_s * SAMPLE_RATE))
            for ci, cond in enumerate(conds):
                qid = f"{prefix}{st.key:05d}_{li:02d}{ci:02d}"
                rng = np.random.default_rng([plan.seed, GROUPS.index(st.group), st.key, li, ci])
                spec = plan.degradation(cond, rng)
                rel = f"audio/{qid}.flac"
                target = partial / f"{qid}.flac"
                try:
                    query, info = degrade(audio, st.start, n, spec, rng, noise_bank, ir_bank)
                except ValueError as exc:  # e.g. a silent noise excerpt: the SNR is undefined
                    log.warning("query %s (song %s at %.2f s) skipped: %s", qid, st.song_id,
                                st.start / SAMPLE_RATE, exc)
                    bar.update()
                    continue
                if not target.exists():
                    write_audio(target, query)
                in_db = st.group != "unknown"
                rows.append({"query_id": qid, "group": st.group, "song_id": st.song_id if in_db else None,
                             "in_db": in_db, "source_song_id": st.song_id,
                             "exclude_song": None if in_db else format_exclusion(
                                 unknown_exclusion(st.song_id, twins or {})),
                             "start_s": st.start / SAMPLE_RATE,
                             "start_sample": st.start, "length_s": float(length_s), "condition": cond.name,
                             "snr_db": np.nan if spec.snr_db is None else spec.snr_db, "room": spec.room,
                             "ir": info["ir"],
                             "highpass_hz": np.nan if spec.highpass_hz is None else spec.highpass_hz,
                             "lowpass_hz": np.nan if spec.lowpass_hz is None else spec.lowpass_hz,
                             "eq": "; ".join(f"{f:.0f} Hz {g:+.1f} dB" for f, _, g in spec.eq) or None,
                             "codec": spec.codec, "speed": spec.speed,
                             "compress": None if spec.compress is None else f"{spec.compress[0]:.1f}:1 at "
                                                                            f"{spec.compress[1]:.0f} dB",
                             "level_db": np.nan if spec.level_db is None else spec.level_db, "file": rel})
                bar.update()

    done = {g: _draw_starts(songs, counts[g], plan, g, cut, span_s) for g, songs in groups.items()}
    bar.close()
    if done.get("unseen", 0) == 0:
        raise ValueError("no query could be cut from the unseen database songs (all unreadable, silent or too "
                         "short)")
    if plan.n_out_of_db_starts and done.get("unknown", 0) == 0:
        log.warning("no unknown-song queries: there are no usable songs for them, so the false-positive rate "
                    "cannot be measured")
    table = pd.DataFrame(rows, columns=QUERY_COLUMNS)
    audio_dir = out_dir / "audio"
    if audio_dir.exists():
        shutil.rmtree(audio_dir)
    partial.rename(audio_dir)
    write_parquet_atomic(table, out_dir / "queries.parquet")
    log.info("query set: %d queries (starts: %s), %d conditions, lengths %s s", len(table), done, len(conds),
             ", ".join(f"{x:g}" for x in plan.lengths_s))
    return table


def query_groups(songs: pd.DataFrame, splits: pd.DataFrame | None, db_ids: set[str], plan: QueryPlan
                 ) -> dict[str, pd.DataFrame]:
    """The songs of each query group (see ``songs``)."""
    groups = {"unseen": query_songs(songs, splits, db_ids, plan.query_splits),
              "unknown": unknown_songs(songs, splits, plan.seed, "evaluation")}
    if plan.n_trained_starts:
        groups["trained"] = trained_songs(songs, splits, db_ids)
    return groups


def make_query_set(out_dir: str | Path, songs_path: str | Path, splits_path: str | Path | None,
                   index_meta_path: str | Path, noise_prefix: str | Path | None, ir_prefix: str | Path | None,
                   cfg: dict[str, Any]) -> pd.DataFrame:
    """Snakemake entry for the ``eval_queries`` rule."""
    plan = QueryPlan.from_config(cfg)
    songs = pd.read_parquet(songs_path)
    splits = pd.read_parquet(splits_path) if splits_path else None
    groups = query_groups(songs, splits, database_song_ids(index_meta_path), plan)
    log.info("query songs: %s", {g: len(s) for g, s in groups.items()})
    noise = ClipBank(noise_prefix) if noise_prefix else None
    irs = ClipBank(ir_prefix) if ir_prefix else None
    # An unknown song is searched without its own fingerprints and without its twins' (search.duplicates).
    twins = twins_of(Path(index_meta_path).parent, groups["unknown"]["song_id"].astype(str), song_paths(songs)) \
        if len(groups.get("unknown", ())) and plan.n_out_of_db_starts else {}
    return write_query_set(out_dir, groups, plan, noise, irs, twins)
