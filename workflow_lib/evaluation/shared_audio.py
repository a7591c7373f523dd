"""Accepted answers to unknown songs' queries that name a song holding the query's own audio.

An unknown song is searched without its own fingerprints and without its twins' (``search.duplicates``: songs of
the database holding the same recording, or sharing passages that the song-level check finds). A shorter shared
passage can still slip through: a game track that reuses a few seconds of another's rendered audio. A query cut from
that passage is rightly named by any fingerprint (ours, audfprint's), and counting the answer as a false positive
would blame the no-match rule for the collection. Music that is only related (one soundtrack's tracks arranged
from the same samples: 0.6-0.84 in the dev + extra corpus) stays a false positive.

The audio decides, as for the twins and the repeats: the query's clean audio (where it was cut from its song) must
correlate at ``SAME_AUDIO_CORRELATION`` or more with the named song's audio around the named offset (within
``slack_s``, for the hop grid and the alignment). Only accepted answers of the unknown group are checked; each
song is decoded once or twice. The calibration's null queries are not checked: the same check of the null values
that set the thresholds found none in the dev + extra evaluation and cost 6 % of the calibration's time
(bench/README.md, "Answers of audio the named song holds").
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import pandas as pd

from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.files import load_audio
from workflow_lib.evaluation.repeats import SAME_AUDIO_CORRELATION, correlation_at

log = logging.getLogger(__name__)

SLACK_S = 1.0


def shared_audio_answers(scored: pd.DataFrame, songs: pd.DataFrame, slack_s: float = SLACK_S,
                         min_correlation: float = SAME_AUDIO_CORRELATION) -> pd.Series:
    """Per row of ``scored`` (``metrics.score_results``' table): True where an unknown song's query was accepted
    and the named song's audio within ``slack_s`` of the named offset is the query's own clean audio (correlation
    >= ``min_correlation``); the query's song is its ``source_song_id``. ``songs``: ``song_id`` and ``path`` of
    every song (database and unknown); a song missing there or unreadable is not checked (its rows stay False,
    logged)."""
    flags = pd.Series(False, index=scored.index)
    todo = scored[scored["false_positive"] & scored["top_offset_s"].notna()]
    if todo.empty:
        return flags
    if "source_song_id" not in todo:
        log.warning("shared-audio check: the query table names no source songs, %d answers not checked", len(todo))
        return flags
    path = dict(zip(songs["song_id"].astype(str), songs["path"].astype(str)))

    @lru_cache(maxsize=16)  # a query's song and the few songs its answers name, not the whole collection
    def audio(song_id: str) -> np.ndarray | None:
        if song_id not in path:
            log.warning("shared-audio check: song %s is not in the song table, its answers not checked", song_id)
            return None
        try:
            return load_audio(path[song_id])
        except AudioDecodeError as exc:
            log.warning("shared-audio check: song %s not checked: %s", song_id, exc)
            return None

    for idx, row in todo.sort_values("source_song_id").iterrows():  # one query song after another: cached
        mine, named = audio(str(row["source_song_id"])), audio(str(row["top_songs"][0]))
        if mine is not None and named is not None:
            correlation = correlation_at(mine, row["start_s"], row["length_s"], named, row["top_offset_s"], slack_s)
            flags[idx] = correlation is not None and correlation >= min_correlation
    log.info("shared-audio check: %d of %d accepted answers to unknown songs' queries name a song holding the "
             "query's audio", int(flags.sum()), len(todo))
    return flags
