"""The listener's two searches of every hop of a recording, made for a whole chunk of hops at once (the scan).

Every hop, ``listener.core.ListenerCore`` searches the window of its newest segments and that window's newest
``n_tail`` segments (``searcher.ranked_window_and_tail``): some forty small numpy calls a hop, which were most of
the batch scan's decision time (bench/README.md, "Deciding a chunk of hops at once"). A scan knows its segments
before it decides, so for each hop whose window is the full sliding window of ``n_window`` active segments (all
hops but the first few after silence or after the window was cut to its tail), both searches are made here for a
chunk of hops in a few array operations, with the candidates, scores, support and votes that
``ranked_window_and_tail`` gives (``tests/test_sliding.py``). The core takes them where its window is that window
and searches on its own otherwise.

Alignments are kept as anchors (song segment minus recording segment), which every window holding a segment
shares: each (segment, song, anchor) similarity is computed once for all the windows that ask for it.
"""

from __future__ import annotations

import numpy as np

from workflow_lib.search.answers import Candidate, SearchResult
from workflow_lib.search.ranking import Database, Neighbours


# Segments searched together at most (2 minutes): their windows' similarity look-ups, about (segments x a few
# hundred) database vectors, are gathered at once.
PIECE_SEGMENTS = 256


class SlidingWindowSearch:
    """Feed consecutive chunks of a recording's segments (``add``); get the window and tail searches of each hop
    whose window is ``n_window`` active segments, keyed by the window's newest segment. The last ``n_window - 1``
    segments of a chunk are carried into the next one, so windows across chunk edges are answered too."""

    def __init__(self, db: Database, n_window: int, n_tail: int, max_candidates: int = 200, n_results: int = 10):
        self.db = db
        self.n_window = n_window
        self.n_tail = n_tail
        self.max_candidates = max_candidates
        self.n_results = n_results
        self._carry: tuple[int, np.ndarray, np.ndarray, Neighbours] | None = None

    def add(self, first: int, emb: np.ndarray, active: np.ndarray, neighbours: Neighbours
            ) -> dict[int, tuple[SearchResult, SearchResult]]:
        """Segments ``first``.. (fingerprints, which of them the listener counts as heard, neighbour lists) ->
        {newest segment of a window: (window search, tail search)}. A long chunk (a whole file) is taken
        ``PIECE_SEGMENTS`` at a time, which bounds the similarity look-ups held at once."""
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        active = np.asarray(active, dtype=bool)
        out: dict[int, tuple[SearchResult, SearchResult]] = {}
        for a in range(0, len(emb), PIECE_SEGMENTS):
            b = a + PIECE_SEGMENTS
            out.update(self._add(first + a, emb[a:b], active[a:b], neighbours[a:b]))
        return out

    def _add(self, first: int, emb: np.ndarray, active: np.ndarray, neighbours: Neighbours
             ) -> dict[int, tuple[SearchResult, SearchResult]]:
        if self._carry is not None and self._carry[0] + len(self._carry[1]) == first:
            c_first, c_emb, c_active, c_nb = self._carry
            start, emb = c_first, np.concatenate([c_emb, emb])
            active, neighbours = np.concatenate([c_active, active]), Neighbours.concat([c_nb, neighbours])
        else:
            start = first
        keep = max(0, min(len(emb), self.n_window - 1))
        self._carry = (start + len(emb) - keep, emb[len(emb) - keep:], active[len(emb) - keep:],
                       neighbours[len(emb) - keep:])
        found = ranked_sliding_windows(self.db, emb, active, neighbours, self.n_window, self.n_tail,
                                       self.max_candidates, self.n_results)
        return {start + t: pair for t, pair in found.items() if start + t >= first}


def ranked_sliding_windows(db: Database, emb: np.ndarray, active: np.ndarray, neighbours: Neighbours,
                           n_window: int, n_tail: int, max_candidates: int = 200, n_results: int = 10
                           ) -> dict[int, tuple[SearchResult, SearchResult]]:
    """For each segment ``t`` of ``emb`` that ends ``n_window`` segments in a row that are all ``active``:
    ``ranked_window_and_tail(db, emb[t - n_window + 1:t + 1], n_tail, ...)``'s two answers, keyed by ``t``.
    Windows whose window or tail has no neighbour at all are left out (that search answers them by another path),
    and everything when ``n_tail`` is not shorter than the window."""
    n_seg = len(neighbours)
    j = n_window
    if not 0 < n_tail < j or n_seg < j or len(emb) != n_seg:
        return {}
    run = np.concatenate([[0], np.cumsum(np.asarray(active, dtype=np.int64))])
    starts = np.flatnonzero(run[j:] - run[:-j] == j)  # first segment of each window
    if len(starts) == 0:
        return {}
    codes, segs = db.row_song_index(neighbours.rows)
    valid = codes >= 0
    codes = np.where(valid, codes, -1).astype(np.int64)
    anchors = segs.astype(np.int64) - np.arange(n_seg, dtype=np.int64)[:, None]
    sims = np.where(valid, neighbours.sims, 0.0).astype(np.float64)
    shift = j - n_tail
    # A window with more alignments than max_candidates keeps its strongest; its tail is then searched on its own
    # (ranked_window_and_tail's tail_alone), which is what the tail's own alignments give here in every case.
    win = _alignments(starts, 0, j, codes, anchors, sims, valid, max_candidates)
    tail = _alignments(starts, shift, n_tail, codes, anchors, sims, valid, max_candidates)
    both = np.intersect1d(win[0], tail[0])  # windows with candidates in both searches
    if len(both) == 0:
        return {}
    win, tail = _only(win, both), _only(tail, both)
    win_scores, tail_scores = _aligned_means(db, emb, starts, [(win, 0, j), (tail, shift, n_tail)])
    ids = db.song_ids
    ranked = []  # per search: {window: its candidates, best first}
    for (w, c, a, support), scores, first_row, n_rows in ((win, win_scores, 0, j),
                                                          (tail, tail_scores, shift, n_tail)):
        pick = _best_per_song(w, c, support, scores, n_results)
        votes = _votes(starts[w[pick]] + first_row, n_rows, c[pick], a[pick], codes, anchors)
        per_window: dict[int, list[Candidate]] = {}
        for p, v in zip(pick, votes):  # start_segment counts from the search's own first segment
            per_window.setdefault(int(w[p]), []).append(Candidate(
                str(ids[c[p]]), int(a[p] + starts[w[p]] + first_row), float(scores[p]), float(support[p]), int(v)))
        ranked.append(per_window)
    return {int(starts[wi]) + j - 1: (SearchResult("sequence", j, ranked[0].get(int(wi), [])),
                                      SearchResult("sequence", n_tail, ranked[1].get(int(wi), [])))
            for wi in both}


def _alignments(starts: np.ndarray, first_row: int, n_rows: int, codes: np.ndarray, anchors: np.ndarray,
                sims: np.ndarray, valid: np.ndarray, max_candidates: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The candidate alignments of rows ``first_row``.. (``n_rows``) of each window: (window, song code, anchor,
    support), each window's by support, ties in (song, anchor) order, its strongest ``max_candidates``, as
    ``searcher._sequence_candidates`` ranks and keeps one window's (the support summed in the same order, so to the
    same bits)."""
    seg = starts[:, None] + first_row + np.arange(n_rows)  # (windows, rows)
    sel = valid[seg]  # (windows, rows, k), flattened window by window, row by row, as one window's search reads it
    w = np.broadcast_to(np.arange(len(starts))[:, None, None], sel.shape)[sel]
    c, a, s = codes[seg][sel], anchors[seg][sel], sims[seg][sel]
    if len(c) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros(0)
    a_min = int(a.min())
    span, n_codes = int(a.max()) - a_min + 1, int(c.max()) + 1
    key = (w * n_codes + c) * span + (a - a_min)
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    support = np.bincount(inv.ravel(), weights=s, minlength=len(first))
    order = np.lexsort((-support, w[first]))  # stable: ties keep the (song, anchor) order of the keys
    order = order[_rank_in_window(w[first[order]]) < max_candidates]
    pick = first[order]
    return w[pick], c[pick], a[pick], support[order]


def _only(found: tuple, windows: np.ndarray) -> tuple:
    keep = np.isin(found[0], windows)
    return tuple(x[keep] for x in found)


def _aligned_means(db: Database, emb: np.ndarray, starts: np.ndarray, searches: list) -> list[np.ndarray]:
    """Each search's candidates' mean similarity over its rows: ``q[segment] . db[song, segment + anchor]``, 0 off
    the song, summed row by row as ``ranking.aligned_dots(...).sum(axis=0)`` sums them. Each (segment, song,
    anchor) is computed once for every window and search that holds it."""
    keys, layout = [], []
    n_codes = int(max(int(c.max()) if len(c) else 0 for (_, c, _, _), _, _ in searches)) + 1
    a_lo = min(int(a.min()) if len(a) else 0 for (_, _, a, _), _, _ in searches)
    a_span = max(int(a.max()) if len(a) else 0 for (_, _, a, _), _, _ in searches) - a_lo + 1
    for (w, c, a, _), first_row, n_rows in searches:
        seg = starts[w][:, None] + first_row + np.arange(n_rows)  # (candidates, rows)
        keys.append(((seg * n_codes + c[:, None]) * a_span + (a[:, None] - a_lo)).ravel())
        layout.append(seg.shape)
    uniq, inv = np.unique(np.concatenate(keys), return_inverse=True)
    seg_u, rest = np.divmod(uniq, n_codes * a_span)  # ascending segments
    code_u, anchor_u = np.divmod(rest, a_span)
    # One row of database rows per segment, as a window's search lays them out: one batched product per segment.
    per_seg = np.bincount(seg_u, minlength=len(emb))
    col = np.arange(len(uniq)) - (np.cumsum(per_seg) - per_seg)[seg_u]
    rows = np.full((len(emb), int(per_seg.max())), -1, np.int64)
    rows[seg_u, col] = db.rows_for(code_u, seg_u + anchor_u + a_lo)
    dots = db.scores(emb, rows)[seg_u, col]
    dots = np.where(np.isfinite(dots), dots, 0.0)
    out, at = [], 0
    for shape in layout:
        d = dots[inv.ravel()[at:at + shape[0] * shape[1]]].reshape(shape)
        at += shape[0] * shape[1]
        total = d[:, 0].copy()
        for r in range(1, shape[1]):  # row by row, the order of a (rows, candidates) sum over its first axis
            total += d[:, r]
        out.append(total / shape[1])
    return out


def _best_per_song(w: np.ndarray, c: np.ndarray, support: np.ndarray, scores: np.ndarray,
                   n_results: int) -> np.ndarray:
    """Indices of each window's best alignment per song (by score, then support), songs in that order, at most
    ``n_results`` a window; windows in ascending order (``searcher._best_per_song``, for many windows)."""
    if len(w) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((-support, -scores, w))
    n_codes = int(c.max()) + 1
    _, first = np.unique(w[order] * n_codes + c[order], return_index=True)
    first.sort()
    return order[first[_rank_in_window(w[order[first]]) < n_results]]


def _rank_in_window(windows: np.ndarray) -> np.ndarray:
    """For entries grouped by window (``windows`` ascending): each one's place within its window (0, 1, ...)."""
    return np.arange(len(windows)) - np.searchsorted(windows, windows, side="left")


def _votes(first_seg: np.ndarray, n_rows: int, codes_p: np.ndarray, anchors_p: np.ndarray, codes: np.ndarray,
           anchors: np.ndarray, tolerance: int = 1) -> np.ndarray:
    """``searcher.count_votes`` for each picked alignment: the rows of its search (from ``first_seg``) with the
    alignment (+- ``tolerance``) among their neighbours."""
    seg = first_seg[:, None] + np.arange(n_rows)
    hit = (codes[seg] == codes_p[:, None, None]) & (np.abs(anchors[seg] - anchors_p[:, None, None]) <= tolerance)
    return hit.any(axis=2).sum(axis=1)
