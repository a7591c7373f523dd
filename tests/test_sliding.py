"""The scan's window searches made for a chunk of hops at once (``search.sliding``) answer as the listener's own
search of each hop does."""

from __future__ import annotations

import numpy as np
import pytest

from tests.search_helpers import songs_sharing_a_part
from workflow_lib.database.vectors import normalize
from workflow_lib.search.ranking import find_neighbours, ranked_window_and_tail
from workflow_lib.search import sliding
from workflow_lib.search.sliding import SlidingWindowSearch, ranked_sliding_windows


def _db_and_recording(seed: int = 5):
    """Three 80-segment songs (c shares a part with a) and a 'recording': a, talk-like noise, b, a silent gap, c."""
    rng = np.random.default_rng(seed)
    db, vec = songs_sharing_a_part(rng)

    def noisy(rows):
        return normalize(vec[rows] + 0.5 * rng.standard_normal((len(rows), 16)).astype(np.float32))

    emb = np.concatenate([noisy(np.arange(5, 30)), normalize(rng.standard_normal((12, 16)).astype(np.float32)),
                          noisy(np.arange(100, 130)), np.zeros((3, 16), np.float32), noisy(np.arange(165, 190))])
    return db, emb


def _same(got, want):
    assert got.mode == want.mode and got.n_segments == want.n_segments
    assert [(c.song_id, c.start_segment, c.support, c.votes) for c in got.candidates] == \
        [(c.song_id, c.start_segment, c.support, c.votes) for c in want.candidates]
    # The similarities are the same dot products, summed in the same order; only BLAS's blocking may differ.
    assert [c.score for c in got.candidates] == pytest.approx([c.score for c in want.candidates], abs=1e-6)


@pytest.mark.parametrize("top_k, max_candidates", [(3, 200), (8, 200), (8, 30)])  # 30: windows keep their best
def test_every_full_window_is_answered_as_its_own_search_answers_it(top_k, max_candidates):
    db, emb = _db_and_recording()
    nb = find_neighbours(db, emb, top_k)
    active = emb.any(axis=1)
    found = ranked_sliding_windows(db, emb, active, nb, 9, 3, max_candidates, 10)
    full = [t for t in range(8, len(emb)) if active[t - 8:t + 1].all()]
    assert sorted(found) == full  # every window of nine heard segments, none that holds the silent gap
    for t in full:
        window, tail = ranked_window_and_tail(db, emb[t - 8:t + 1], 3, top_k, max_candidates, 10)
        _same(found[t][0], window)
        _same(found[t][1], tail)


def test_chunks_fed_one_after_another_give_the_windows_across_their_edges(monkeypatch):
    db, emb = _db_and_recording(seed=6)
    nb = find_neighbours(db, emb, 5)
    active = emb.any(axis=1)
    whole = ranked_sliding_windows(db, emb, active, nb, 9, 3, 200, 10)
    search = SlidingWindowSearch(db, 9, 3, 200, 10)
    pieces: dict = {}
    for a, b in [(0, 4), (4, 17), (17, 18), (18, 60), (60, len(emb))]:
        got = search.add(a, emb[a:b], active[a:b], nb[a:b])
        assert all(a <= t < b for t in got)  # each hop answered once, with the chunk that ends its window
        pieces.update(got)
    monkeypatch.setattr(sliding, "PIECE_SEGMENTS", 7)  # a long chunk is taken a piece at a time
    in_pieces = SlidingWindowSearch(db, 9, 3, 200, 10).add(0, emb, active, nb)
    for got in (pieces, in_pieces):
        assert sorted(got) == sorted(whole)
        for t in whole:
            _same(got[t][0], whole[t][0])
            _same(got[t][1], whole[t][1])


def test_windows_without_a_tail_of_their_own_are_left_to_the_listener():
    db, emb = _db_and_recording()
    nb = find_neighbours(db, emb, 8)
    active = emb.any(axis=1)
    assert ranked_sliding_windows(db, emb, active, nb, 3, 3, 200, 10) == {}  # no tail shorter than the window
    assert ranked_sliding_windows(db, emb[:5], active[:5], nb[:5], 9, 3, 200, 10) == {}  # shorter than a window
