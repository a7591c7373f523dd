"""Answers whose offset lands on a repeat of the same audio in the right song.

Songs repeat themselves: a loop, a chorus rendered from the same samples, a bar played twice. When a query's audio
occurs at two places of its song, an answer naming the other place is as right as the one the query was cut from,
and no fingerprint (ours, audfprint's) can tell the two apart. The strict segment-level metric
(``seg_top1_exact``) counts such answers wrong; ``seg_top1_same_audio`` counts them right when the song's own audio
says so, and both are reported. In the dev + extra corpus (game and demo-scene music, much of it looped) this is
about a quarter of the right-song answers with a wrong offset (15-40 % by condition and length).

The audio decides, not the fingerprint: the song's clean audio where the query was cut from must correlate at
``SAME_AUDIO_CORRELATION`` or more with its audio at the answer's offset (searched within the exact tolerance, the
same slack an exact answer has). Only right-song answers whose offset is off count; each song is decoded once.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from workflow_lib import SAMPLE_RATE
from workflow_lib.evaluation.songs import iter_song_audio
from workflow_lib.search.duplicates import audio_correlation

log = logging.getLogger(__name__)

# Measured on the 2,261 right-song answers with a wrong offset of the dev + extra evaluation (unseen songs, all
# conditions; 0.25 s search): the correlations are bimodal, 24 % at 0.95-1.0 (the same samples played again), 56 %
# under 0.7, 8 % between 0.85 and 0.95. 0.9 sits in the trough.
SAME_AUDIO_CORRELATION = 0.9


def correlation_at(source: np.ndarray, start_s: float, length_s: float, other: np.ndarray, offset_s: float,
                   slack_s: float) -> float | None:
    """How well ``other`` holds ``source``'s audio from ``start_s`` for ``length_s`` within ``slack_s`` of
    ``offset_s`` (``search.duplicates.audio_correlation``); None where either stretch runs past its audio's end."""
    start, n = int(round(start_s * SAMPLE_RATE)), int(round(length_s * SAMPLE_RATE))
    at, slack = int(round(offset_s * SAMPLE_RATE)), int(round(slack_s * SAMPLE_RATE))
    window = source[start:start + n]
    there = other[max(0, at - slack):max(0, at + n + slack)]
    return audio_correlation(window, there) if len(window) == n and len(there) >= n else None


def same_audio_answers(scored: pd.DataFrame, songs: pd.DataFrame, tol_s: float,
                       min_correlation: float = SAME_AUDIO_CORRELATION) -> pd.Series:
    """Per row of ``scored`` (``metrics.score_results``' table): True where the best guess is the right song, its
    offset is more than ``tol_s`` off, and the song's audio within ``tol_s`` of that offset is the query's own
    audio again (correlation >= ``min_correlation``). ``songs``: ``song_id`` and ``path`` of the database songs;
    a song missing there or unreadable is not checked (its rows stay False, logged)."""
    flags = pd.Series(False, index=scored.index)
    off = scored["top_offset_s"]
    todo = scored[scored["song_top1"] & ~scored["seg_top1_exact"] & off.notna()]
    if todo.empty:
        return flags
    songs = songs.reset_index(drop=True)
    position = {str(s): i for i, s in enumerate(songs["song_id"])}
    missing = sorted(set(todo["song_id"].astype(str)) - set(position))
    if missing:
        log.warning("same-audio check: %d songs not in the song table, their answers not checked", len(missing))
    order = np.array(sorted({position[s] for s in todo["song_id"].astype(str) if s in position}), dtype=int)
    # A dict, not GroupBy.get_group: pandas 3.1 raised KeyError for the key of a one-row group.
    by_song = {song: rows for song, rows in todo.groupby(todo["song_id"].astype(str))}
    for pos, audio in iter_song_audio(songs, order):
        if audio is None:
            continue
        rows = by_song[str(songs.iloc[pos]["song_id"])]
        for idx, start_s, length_s, offset_s in zip(rows.index, rows["start_s"], rows["length_s"],
                                                     rows["top_offset_s"]):
            correlation = correlation_at(audio, start_s, length_s, audio, offset_s, tol_s)
            flags[idx] = correlation is not None and correlation >= min_correlation
    log.info("same-audio check: %d of %d right-song answers with a wrong offset land on a repeat of the query's audio",
             int(flags.sum()), len(todo))
    return flags
