"""One recording held twice: whether two songs of the database hold the same music at two places.

A collection often holds a recording under two files (an album track and the same track on a compilation, a FLAC
and an MP3 of it) that are not the same bytes, so both are indexed. A query of that music then finds both at
almost the same score, and a no-match rule that asks the best song to lead the next one would reject it.
``stored_similarity`` compares the two songs' own stored fingerprints at their alignments (no audio needed): two
files of one recording score at least ``SAME_MUSIC_SCORE`` on average, the twin rule's level
(``search.duplicates``), where different music, even of one game's soundtrack, stays below.
"""

from __future__ import annotations

import numpy as np

SAME_MUSIC_SCORE = 0.85
# A candidate this far under the best is not looked at: a lead that large passes the no-match rule whichever song
# trails (calibrated margins of the bundled models: 0.15-0.25), and copies score a hair to 0.12 apart (an 8 kHz
# file and an MP3 of it). It spares the scan's hops, whose runner-ups mostly trail far behind, the look-up.
COPY_GAP = 0.3


def stored_similarity(db, song_a: str, start_a: int, song_b: str, start_b: int, n: int,
                      min_shared: int = 1) -> float:
    """Mean similarity of two songs' stored fingerprints, segment by segment over ``n`` segments from ``start_a``
    of one and ``start_b`` of the other, over the segments both songs hold (0 if there are fewer than
    ``min_shared``)."""
    j = np.arange(n)
    rows_a = db.rows_for(np.full(n, db.song_position(song_a)), start_a + j)
    rows_b = db.rows_for(np.full(n, db.song_position(song_b)), start_b + j)
    both = (rows_a >= 0) & (rows_b >= 0)
    if int(both.sum()) < max(1, min_shared):
        return 0.0
    vectors = np.asarray(db.vectors[rows_a[both]], np.float32)
    return float(np.mean(db.scores(vectors, rows_b[both][:, None])))


def copies_of_best(db, candidates: list, n_segments: int) -> int:
    """How many of the candidates right after the first (``answers.Candidate``, best first) hold the best one's
    music at their alignments over the query's ``n_segments``, every one of them held by both: copies of its
    recording, not other songs (a song that only touches the query's span with its first or last second is no
    copy). The look stops at the first candidate that is no copy, or trails the best by more than COPY_GAP: a copy
    scores about as the best does, so copies come first, and the no-match rule's margin reads the runner-up only."""
    n = 0
    best = candidates[0] if candidates else None
    for c in candidates[1:]:
        if c.score < best.score - COPY_GAP or not holds_same_music(db, best.song_id, best.start_segment, c.song_id,
                                                                  c.start_segment, n_segments):
            break
        n += 1
    return n


def holds_same_music(db, song_a: str, start_a: int, song_b: str, start_b: int, n: int) -> bool:
    """Whether two songs hold one recording's music over ``n`` segments from ``start_a`` of one and ``start_b`` of
    the other: both hold every one of them, and their stored fingerprints score SAME_MUSIC_SCORE on average."""
    return stored_similarity(db, song_a, start_a, song_b, start_b, n, n) >= SAME_MUSIC_SCORE
