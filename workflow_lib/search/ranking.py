"""Search of ready query fingerprints: nearest database segments -> candidate alignments -> exact re-scoring ->
ranked candidate songs (``answers.SearchResult``). Works on embeddings, so the realtime listener and the scan can
search cached ones incrementally; ``search.searcher`` makes them from audio and decides.

Two modes over the same neighbour lists (``k`` nearest database segments for each 1 s query segment at 0.5 s hop):

* ``sequence`` (NAFP's matcher, with pfann's song awareness): every neighbour proposes a candidate alignment
  (song, start = database segment - query segment). Candidates are pre-ranked by the summed similarity of the
  neighbours that support them, and the strongest ``max_candidates`` are re-scored exactly: the mean, over all query
  segments, of the dot product with the database segment at the aligned position (zero where the alignment runs
  off the song), using the uncompressed vectors. The best candidate gives the song and the offset; the offset is
  then placed between the 0.5 s grid points where the aligned score peaks (``subhop``).
* ``vote``: each query segment's nearest neighbour votes for its song; the song with most votes wins (ties: summed
  similarity), its offset is the most common proposed start among its votes. The winner is then scored exactly like
  a sequence candidate, so both modes share one score scale and one no-match threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Protocol

import numpy as np

from workflow_lib.database.other_music import is_other_music
from workflow_lib.search.answers import Candidate, SearchResult
from workflow_lib.search.copies import copies_of_best
from workflow_lib.search.subhop import peak_shift

MODES = ("sequence", "vote")


class Database(Protocol):
    """What the search needs from the fingerprint database (``index.FingerprintDB`` provides it)."""

    song_ids: np.ndarray
    vectors: np.ndarray

    def search(self, queries: np.ndarray, k: int, exclude_song: str | frozenset[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]: ...

    def row_song_index(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def rows_for(self, songs: np.ndarray, segments: np.ndarray) -> np.ndarray: ...

    def song_position(self, song_id: str) -> int: ...

    def scores(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray: ...


def aligned_scores(q: np.ndarray, db: Database, codes: np.ndarray, starts: np.ndarray,
                   chunk_elems: int = 1 << 22, active: np.ndarray | None = None) -> np.ndarray:
    """Mean over query segments ``i`` of ``q[i] . db[song, start + i]`` (0 off the song) for each candidate.

    The mean runs over the ``active`` segments (those above the silence gate; all by default): a query that is
    partly silent is scored on what it heard."""
    j = len(q)
    n_active = int(active.sum()) if active is not None else j
    out = np.empty(len(codes), dtype=np.float32)
    step = max(1, chunk_elems // max(1, j * q.shape[1]))  # bounds the gathered block (~16 MB of float32)
    for a in range(0, len(codes), step):
        out[a:a + step] = aligned_dots(q, db, codes[a:a + step], starts[a:a + step]).sum(axis=0) / max(n_active, 1)
    return out


def aligned_dots(q: np.ndarray, db: Database, codes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``(J, C)``: ``q[i] . db[song, start + i]`` of each query segment ``i`` at each candidate alignment, 0 where
    the alignment runs off the song."""
    rows = db.rows_for(np.broadcast_to(codes[None], (len(q), len(codes))),
                       starts[None] + np.arange(len(q), dtype=np.int64)[:, None])  # row of segment i in candidate c
    dots = db.scores(q, rows)  # exact dot products, -inf off the song
    return np.where(np.isfinite(dots), dots, 0.0)


def count_votes(nb_codes: np.ndarray, nb_starts: np.ndarray, codes: np.ndarray, starts: np.ndarray,
                tolerance: int = 1) -> np.ndarray:
    """For each alignment (``codes[n]``, ``starts[n]``): the query segments (rows of the neighbour lists) that have
    it, +- ``tolerance`` hops, among their neighbours: how many parts of the query independently point at it (the
    count of time-consistent matches a landmark system counts; the tolerance keeps a slightly sped-up query's
    votes)."""
    codes = np.asarray(codes, dtype=np.int64)[:, None, None]
    starts = np.asarray(starts, dtype=np.int64)[:, None, None]
    hit = (nb_codes[None] == codes) & (np.abs(nb_starts[None] - starts) <= tolerance)
    return hit.any(axis=2).sum(axis=1)


def offset_shifts(q: np.ndarray, db: Database, codes: np.ndarray, starts: np.ndarray,
                  active: np.ndarray | None = None, chunk_vectors: int = 1 << 16) -> np.ndarray:
    """Each alignment's sub-hop shift (``subhop.peak_shift``): the mean similarity of the query's (``active``)
    segments at the alignment and one hop either side, over the segments that all three keep on the song (a query
    at the very start or end of a song is placed by the rest of it; one with none left keeps the grid). An
    alignment on the song is not moved before its start."""
    seg = np.flatnonzero(active) if active is not None else np.arange(len(q))
    codes, starts = np.asarray(codes, dtype=np.int64), np.asarray(starts, dtype=np.int64)
    shifts = np.zeros(len(codes))
    if len(seg) == 0:
        return shifts
    qa = np.ascontiguousarray(q[seg], dtype=np.float32)
    step = max(1, chunk_vectors // (3 * len(seg)))  # bounds the gathered vectors (32 MB at 128-d)
    for a in range(0, len(codes), step):
        c, st = codes[a:a + step], starts[a:a + step]
        where = st[None, :, None] + seg[:, None, None] + np.array([-1, 0, 1])  # (segments, candidates, 3)
        rows = db.rows_for(np.broadcast_to(c[None, :, None], where.shape), where)
        dots = db.scores(qa, rows.reshape(len(seg), -1)).reshape(where.shape)  # -inf off the song
        kept = np.isfinite(dots).all(axis=2)
        n_kept = kept.sum(axis=0)
        mean = np.where(kept[:, :, None], dots, 0.0).sum(axis=0) / np.maximum(n_kept, 1)[:, None]
        shift = np.where(n_kept > 0, peak_shift(mean[:, 0], mean[:, 1], mean[:, 2]), 0.0)
        # A peak before the song's start says nothing more precise than "at its start".
        shifts[a:a + step] = np.where(st >= 0, np.maximum(shift, -st), shift)
    return shifts


def _best_per_song(db: Database, codes: np.ndarray, starts: np.ndarray, scores: np.ndarray, support: np.ndarray,
                   n_results: int, nb_codes: np.ndarray, nb_starts: np.ndarray) -> list[Candidate]:
    order = np.lexsort((-support, -scores))  # by score, then support
    _, first = np.unique(codes[order], return_index=True)  # each song's best alignment
    pick = order[np.sort(first)[:n_results]]
    votes = count_votes(nb_codes, nb_starts, codes[pick], starts[pick])
    return [Candidate(str(db.song_ids[c]), int(st), float(sc), float(su), int(v))
            for c, st, sc, su, v in zip(codes[pick], starts[pick], scores[pick], support[pick], votes)]


@dataclass
class Neighbours:
    """The nearest database segments of each query segment: ``sims`` (J, k) exact similarities and ``rows``
    (J, k) database rows, -1 / -inf where fewer were found, and where the segment was silent (a zero vector:
    nothing was searched for it). Computed once per segment, they can be reused by every window that holds it (the
    listener and the scan do)."""

    sims: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> "Neighbours":
        return Neighbours(self.sims[key], self.rows[key])

    @staticmethod
    def concat(parts: list["Neighbours"]) -> "Neighbours":
        return Neighbours(np.concatenate([p.sims for p in parts]), np.concatenate([p.rows for p in parts]))


def find_neighbours(db: Database, emb: np.ndarray, top_k: int = 20,
                    exclude_song: str | frozenset[str] | None = None) -> Neighbours:
    """``top_k`` nearest database segments of every row of ``emb`` (one batched FAISS search; silent rows get
    none)."""
    q = np.ascontiguousarray(emb, dtype=np.float32)
    sims = np.full((len(q), top_k), -np.inf, np.float32)
    rows = np.full((len(q), top_k), -1, np.int64)
    active = np.einsum("ij,ij->i", q, q) > 0 if len(q) else np.zeros(0, bool)
    if active.any():
        found = db.search(q[active], top_k, exclude_song=exclude_song) if exclude_song is not None else \
            db.search(q[active], top_k)
        sims[active], rows[active] = found
    return Neighbours(sims, rows)


def song_set(songs: str | Iterable[str] | None) -> frozenset[str]:
    """An ``exclude_song`` argument (one id, a set of ids, or None) as a set."""
    return frozenset((songs,)) if isinstance(songs, str) else frozenset(songs or ())


@dataclass
class RunnerUpNeighbours:
    """Per query segment: the song that fills its whole neighbour list (``lone``, None where several songs do) and
    its neighbours without that song (``others``; empty rows where ``lone`` is None)."""

    lone: list[str | None]
    others: Neighbours


def runner_up_neighbours(db: Database, emb: np.ndarray, neighbours: Neighbours, top_k: int = 20,
                         exclude_song: str | frozenset[str] | None = None) -> RunnerUpNeighbours:
    """What ``search_embeddings`` looks up, one segment at a time, for a window that only one song fills: each
    such segment's neighbours without that song, found here in one batched search per song (the scan finds them
    for a whole chunk at once). A window has a lone candidate only when every segment's list is filled by the same
    song, so these are all the look-ups it can make. ``exclude_song``: as the search of ``neighbours``."""
    codes, _ = db.row_song_index(neighbours.rows)
    lone_code = np.where((codes >= 0).all(axis=1) & (codes == codes[:, :1]).all(axis=1), codes[:, 0], -1) \
        if codes.size else np.full(len(codes), -1)
    others = Neighbours(np.full(neighbours.sims.shape, -np.inf, np.float32),
                        np.full(neighbours.rows.shape, -1, np.int64))
    base = song_set(exclude_song)
    lone: list[str | None] = [None] * len(lone_code)
    q = np.ascontiguousarray(emb, dtype=np.float32)
    for c in np.unique(lone_code[lone_code >= 0]):
        song = str(db.song_ids[c])
        idx = np.flatnonzero(lone_code == c)
        found = find_neighbours(db, q[idx], top_k, frozenset(base | {song}))
        others.sims[idx], others.rows[idx] = found.sims, found.rows
        for i in idx:
            lone[i] = song
    return RunnerUpNeighbours(lone, others)


def search_embeddings(db: Database, emb: np.ndarray, top_k: int = 20, mode: str = "sequence",
                      max_candidates: int = 200, n_results: int = 10,
                      exclude_song: str | frozenset[str] | None = None,
                      neighbours: Neighbours | None = None, runner_up: bool = True,
                      place_offsets: bool = True) -> SearchResult:
    """Search ``(J, D)`` query fingerprints. Returns up to ``n_results`` candidates, one per song, best first.

    ``exclude_song`` (one id or a set) searches as if those songs were not in the database (leave-one-song-out null
    queries). ``neighbours`` reuses the segments' neighbour lists found earlier (``find_neighbours``) instead of
    searching.

    When one song fills every neighbour list (a second of a long, uniform song), the best other song is looked up
    by a second search without it (``add_runner_up``; ``runner_up=False`` leaves it to the caller), so the answer
    always has a runner-up when the database has one: the no-match rule's margin is the lead over that song, not
    over nothing. Without it, a lone candidate's lead was its whole score, and such queries of unknown songs made
    the calibration's 1 s threshold (margin 0.76) reject almost every right 1 s answer.

    In sequence mode, songs that hold the best song's music at their alignments (``copies.copies_of_best``: one
    recording indexed from two files) are left out of the candidates, and the runner-up is the best other music:
    the two copies score a hair apart, and a lead over its own copy would have rejected the song.

    The offsets are then placed between the 0.5 s grid points (``place_between_hops``); ``place_offsets=False``
    leaves them on the grid (the listener tracks alignments on the grid and never reads them).
    """
    result = _ranked_candidates(db, emb, top_k, mode, max_candidates, n_results, exclude_song, neighbours)
    result = without_copies(db, result, len(emb))
    if runner_up:  # the runner-up is other music: neither an excluded song nor a copy of the best
        result = add_runner_up(db, emb, result, top_k, max_candidates, n_results,
                               song_set(exclude_song) | result.copy_ids)
    return place_between_hops(db, emb, result) if place_offsets else result


def without_copies(db: Database, result: SearchResult, n_segments: int) -> SearchResult:
    """A sequence search's ``result`` (of ``n_segments`` query segments) with the candidates that hold its best
    song's music at their alignments (``copies.copies_of_best``: the run right after the best) moved to
    ``copies``. When the best is other music (``database.other_music``) and a copy is a song of the collection,
    that copy is the best."""
    n = copies_of_best(db, result.candidates, n_segments) if result.mode == "sequence" else 0
    if not n:
        return result
    best, copies, rest = result.candidates[0], result.candidates[1:1 + n], result.candidates[1 + n:]
    if is_other_music(best.song_id) and (own := [c for c in copies if not is_other_music(c.song_id)]):
        # a song of the collection that is also other music of the index: the collection's copy answers
        best, copies = own[0], [c for c in [best, *copies] if c is not own[0]]
    return replace(result, candidates=[best, *rest], copies=copies)


def place_between_hops(db: Database, emb: np.ndarray, result: SearchResult) -> SearchResult:
    """``result`` with each candidate's offset (its copies' too) placed between the grid points, where its aligned
    score peaks (``offset_shifts``). The ranking and the scores stay as they are."""
    placed = result.candidates + result.copies
    if not placed:
        return result
    q = np.ascontiguousarray(emb, dtype=np.float32)
    codes = np.array([db.song_position(c.song_id) for c in placed])
    starts = np.array([c.start_segment for c in placed])
    shifts = offset_shifts(q, db, codes, starts, np.einsum("ij,ij->i", q, q) > 0)
    placed = [replace(c, shift=float(sh)) for c, sh in zip(placed, shifts)]
    result.candidates, result.copies = placed[:len(result.candidates)], placed[len(result.candidates):]
    return result


def add_runner_up(db: Database, emb: np.ndarray, result: SearchResult, top_k: int = 20, max_candidates: int = 200,
                  n_results: int = 10, exclude_song: str | frozenset[str] | None = None) -> SearchResult:
    """``search_embeddings``'s second search, for a ``result`` of the same arguments found with
    ``runner_up=False``: when it has a single candidate, the best other song is appended."""
    if len(result.candidates) == 1 and n_results > 1:
        skip = {result.best.song_id} | song_set(exclude_song)
        # Only the best other song's score is needed: its strongest alignments are enough (a tenth of the budget).
        other = _ranked_candidates(db, emb, top_k, "sequence", max(10, max_candidates // 10), 1, frozenset(skip),
                                   None)
        result.candidates.extend(other.candidates)
    return result


def _neighbour_alignments(db: Database, active: np.ndarray, neighbours: Neighbours
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """For each neighbour of each ``active`` query segment: its song (code), the alignment it implies (song segment
    minus query segment), its similarity (0 where none was found), the codes with -1 there, and where one was found.
    None when no segment has any."""
    seg_index = np.flatnonzero(active)
    sims, rows = neighbours.sims[active], neighbours.rows[active]
    codes, segs = db.row_song_index(rows)  # -1 where FAISS found fewer than k neighbours
    valid = codes >= 0
    if not valid.any():
        return None
    codes = codes.astype(np.int64)
    starts = segs.astype(np.int64) - seg_index[:, None]
    sims = np.where(valid, sims, 0.0).astype(np.float64)
    return codes, starts, sims, np.where(valid, codes, -1), valid


def _sequence_candidates(codes: np.ndarray, starts: np.ndarray, sims: np.ndarray, valid: np.ndarray,
                         max_candidates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The alignments the neighbours point at, by summed similarity (support), at most ``max_candidates``:
    (codes, starts, support, how many alignments there were before the cut)."""
    c, s, w = codes[valid], starts[valid], sims[valid]
    span = int(s.max() - s.min()) + 1
    uniq, first, inv = np.unique(c * span + (s - s.min()), return_index=True, return_inverse=True)
    support = np.bincount(inv, weights=w, minlength=len(uniq))
    keep = np.argsort(-support, kind="stable")[:max_candidates]
    return c[first[keep]], s[first[keep]], support[keep], len(uniq)


def _alignment_keys(codes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return codes.astype(np.int64) * (1 << 32) + (starts.astype(np.int64) + (1 << 31))


def _sequence_ranking(db: Database, q: np.ndarray, active: np.ndarray, found: tuple, max_candidates: int,
                      n_results: int, keep_dots: bool = False
                      ) -> tuple[SearchResult, np.ndarray, np.ndarray, np.ndarray | None]:
    """The sequence search from its neighbours' alignments (``_neighbour_alignments``): (result, candidate codes,
    starts, and with ``keep_dots`` their ``(J, C)`` exact similarities, None when ``max_candidates`` cut some
    alignments off or ``keep_dots`` is false)."""
    codes, starts, sims, nb_codes, valid = found
    j = int(active.sum())
    cand_codes, cand_starts, cand_support, n_alignments = _sequence_candidates(codes, starts, sims, valid,
                                                                               max_candidates)
    dots = None
    if keep_dots and n_alignments <= max_candidates:
        dots = aligned_dots(q, db, cand_codes, cand_starts)
        scores = dots.sum(axis=0) / j  # as aligned_scores sums them
    else:
        scores = aligned_scores(q, db, cand_codes, cand_starts, active=active)
    result = SearchResult("sequence", j, _best_per_song(db, cand_codes, cand_starts, scores, cand_support, n_results,
                                                        nb_codes, starts))
    return result, cand_codes, cand_starts, dots


def ranked_window_and_tail(db: Database, emb: np.ndarray, n_tail: int, top_k: int = 20, max_candidates: int = 200,
                           n_results: int = 10) -> tuple[SearchResult, SearchResult | None]:
    """The listener's two searches of a hop: the window ``emb`` and its newest ``n_tail`` segments (None when the
    window has no more than those), each answered as ``search_embeddings(..., runner_up=False,
    place_offsets=False)`` answers it.

    Every alignment of the newest segments is an alignment of the window (shifted by the segments before them), so
    when the window kept all its alignments (no more than ``max_candidates``) their exact similarities are read from
    the window's instead of being gathered and multiplied a second time; otherwise the newest segments are searched
    on their own (with the window's neighbour lists)."""
    q = np.ascontiguousarray(emb, dtype=np.float32)
    if q.ndim != 2 or not 0 < n_tail < len(q):
        return _ranked_candidates(db, q, top_k, "sequence", max_candidates, n_results, None, None), None
    active = np.einsum("ij,ij->i", q, q) > 0
    neighbours = find_neighbours(db, q, top_k)
    tail_neighbours = neighbours[-n_tail:]

    def tail_alone() -> SearchResult:
        return _ranked_candidates(db, q[-n_tail:], top_k, "sequence", max_candidates, n_results, None,
                                  tail_neighbours)

    found = _neighbour_alignments(db, active, neighbours) if active.any() else None
    if found is None:  # a silent window, or one with no neighbour at all: nothing to share
        return (_ranked_candidates(db, q, top_k, "sequence", max_candidates, n_results, None, neighbours),
                tail_alone())
    window, cand_codes, cand_starts, dots = _sequence_ranking(db, q, active, found, max_candidates, n_results,
                                                              keep_dots=True)
    tail_active = active[-n_tail:]
    tail_found = _neighbour_alignments(db, tail_active, tail_neighbours) if tail_active.any() else None
    if dots is None or tail_found is None:
        return window, tail_alone()
    t_codes, t_starts, t_sims, t_nb_codes, t_valid = tail_found
    t_cand_codes, t_cand_starts, t_support, _ = _sequence_candidates(t_codes, t_starts, t_sims, t_valid,
                                                                     max_candidates)
    shift = len(q) - n_tail
    window_keys = _alignment_keys(cand_codes, cand_starts)
    order = np.argsort(window_keys)
    wanted = _alignment_keys(t_cand_codes, t_cand_starts - shift)
    at = order[np.minimum(np.searchsorted(window_keys[order], wanted), len(order) - 1)]
    if not np.array_equal(window_keys[at], wanted):  # cannot happen while the window kept all its alignments
        return window, tail_alone()
    tail_j = int(tail_active.sum())
    t_scores = dots[shift:, at].sum(axis=0) / tail_j
    return window, SearchResult("sequence", tail_j, _best_per_song(db, t_cand_codes, t_cand_starts, t_scores,
                                                                   t_support, n_results, t_nb_codes, t_starts))


def _ranked_candidates(db: Database, emb: np.ndarray, top_k: int, mode: str, max_candidates: int, n_results: int,
                       exclude_song: str | frozenset[str] | None, neighbours: Neighbours | None) -> SearchResult:
    """``search_embeddings`` without the runner-up look-up."""
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r} (choose from {MODES})")
    q = np.ascontiguousarray(emb, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] == 0:
        return SearchResult(mode, int(q.shape[0]) if q.ndim == 2 else 0, [])
    # Segments below the silence gate were embedded as zero vectors: they are neither searched nor counted.
    active = np.einsum("ij,ij->i", q, q) > 0
    j = int(active.sum())
    if j == 0:
        return SearchResult(mode, 0, [], silent=True)
    if neighbours is None:
        neighbours = find_neighbours(db, q, top_k, exclude_song)
    elif len(neighbours) != len(q):
        raise ValueError(f"{len(neighbours)} neighbour lists for {len(q)} query segments")
    found = _neighbour_alignments(db, active, neighbours)
    if found is None:
        return SearchResult(mode, j, [])
    if mode == "sequence":
        return _sequence_ranking(db, q, active, found, max_candidates, n_results)[0]
    codes, starts, sims, nb_codes, valid = found
    top = valid[:, 0]
    c0, s0, w0 = codes[top, 0], starts[top, 0], sims[top, 0]
    song_codes, inv = np.unique(c0, return_inverse=True)
    votes = np.bincount(inv, minlength=len(song_codes)).astype(np.float64)
    simsum = np.bincount(inv, weights=w0, minlength=len(song_codes))
    rank = np.lexsort((-simsum, -votes))[:n_results]
    cand_starts = np.empty(len(rank), dtype=np.int64)
    for n, r in enumerate(rank):  # most common start among this song's votes (ties: higher summed similarity)
        mine = inv == r
        st, st_inv = np.unique(s0[mine], return_inverse=True)
        cand_starts[n] = st[np.lexsort((-np.bincount(st_inv, weights=w0[mine]), -np.bincount(st_inv)))[0]]
    # The vote decides the ranking; the exact aligned score only measures the winner for the no-match rule.
    scores = aligned_scores(q, db, song_codes[rank], cand_starts, active=active)
    agree = count_votes(nb_codes, starts, song_codes[rank], cand_starts)
    return SearchResult(mode, j, [Candidate(str(db.song_ids[c]), int(st), float(sc), float(v), int(a))
                                  for c, st, sc, v, a in zip(song_codes[rank], cand_starts, scores, votes[rank],
                                                             agree)])
