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


def copies_of_best(db, candidates: list, n_segments: int) -> set[str]:
    """The candidates after the first (``searcher.Candidate``, best first) that hold the best one's music at their
    alignments over the query's ``n_segments``, every one of them held by both: copies of its recording, not other
    songs (a song that only touches the query's span with its first or last second is no copy)."""
    if len(candidates) < 2:
        return set()
    best = candidates[0]
    return {c.song_id for c in candidates[1:]
            if stored_similarity(db, best.song_id, best.start_segment, c.song_id, c.start_segment, n_segments,
                                 n_segments) >= SAME_MUSIC_SCORE}
