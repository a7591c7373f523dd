"""Song and offset search: query audio -> segment fingerprints -> neighbours -> aligned re-scoring -> answer.

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

The score of the answer is compared with a threshold calibrated on out-of-database queries (``calibrate.py``).
Queries of 3 s or more are also searched whitened (``whiten.py``: a resonant space's ringing taken out) and the
answer is the view the no-match rule trusts more, held to the thresholds calibrated for that pick.
``search_embeddings`` works on ready embeddings so the realtime listener can search cached ones incrementally.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

import numpy as np

from workflow_lib import HOP_SAMPLES, SAMPLE_RATE, SEGMENT_SAMPLES
from workflow_lib.audio.segments import QUERY_LEVEL_DBFS, QUERY_SILENCE_DBFS, frame, segment_levels_db
from workflow_lib.common.layout import ResultsLayout, is_bundled
from workflow_lib.database.other_music import is_other_music
from workflow_lib.search.copies import copies_of_best
from workflow_lib.search.subhop import peak_shift
from workflow_lib.search.threshold import Calibration, decision_statistic
from workflow_lib.search.whiten import WhitenedView

if TYPE_CHECKING:  # pandas and the catalogue module load when a catalogue is read
    import pandas as pd

    from workflow_lib.database.catalogue import TrackNames

log = logging.getLogger(__name__)

MODES = ("sequence", "vote")
HOP_S = HOP_SAMPLES / SAMPLE_RATE
# Queries shorter than this are refused; between it and 1 s they are zero-padded to one segment.
MIN_QUERY_SAMPLES = SEGMENT_SAMPLES // 2
# A query whose answer as it is already reaches what only this share of unknown-song queries reach with the better of
# both views is not whitened (``Searcher.settled``): most matches, at about half the fingerprinting time
# (bench/README.md, "A settled answer needs no second view").
SETTLED_FPR = 0.001


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


@dataclass(frozen=True)
class Candidate:
    song_id: str
    start_segment: int
    score: float  # mean aligned cosine similarity over the query's segments
    support: float  # sequence: summed neighbour similarity; vote: number of votes
    votes: int = 0  # query segments with the aligned database segment (+-1 hop) among their nearest neighbours
    shift: float = 0.0  # where between the neighbouring alignments the score peaks, in hops (``subhop``)

    @property
    def offset_s(self) -> float:
        """Song position of the query's start (s): the aligned segment's, moved to the score's peak."""
        return (self.start_segment + self.shift) * HOP_S


@dataclass
class SearchResult:
    """Ranked candidates (best first; at most one per song) for one query."""

    mode: str
    n_segments: int
    candidates: list[Candidate]
    silent: bool = False  # every query segment was below the silence gate: nothing was searched
    # 2: held to the better-of-two-views rule (searched whitened too, unless settled as it is: ``Searcher.settled``)
    views: int = 1
    whitened: bool = False  # these candidates are the whitened view's
    # songs that hold the best candidate's music at their alignments (one recording indexed from two files), best
    # first: left out of ``candidates`` (``without_copies``), so the no-match rule reads the best other music
    copies: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def copy_ids(self) -> frozenset[str]:
        return frozenset(c.song_id for c in self.copies)

    @property
    def other_music_leads(self) -> bool:
        """The best candidate is the index's other music (``database.other_music``): no match, whatever its scores."""
        return self.best is not None and is_other_music(self.best.song_id)


@dataclass(frozen=True)
class BestGuess:
    """A candidate song of a search, with its offset and match score: the strongest is the answer's best guess,
    whether or not the no-match rule accepted it."""

    song_id: str
    title: str | None
    artist: str | None
    offset_s: float
    score: float


@dataclass(frozen=True)
class Match:
    """The answer for one query.

    ``song_id``, ``title``, ``artist`` and ``offset_s`` are set only when the no-match rule accepts the best
    candidate (``is_match``); otherwise they are None and ``reason`` says why (``silence``, ``no candidates``,
    ``below threshold``, ``other music``: the index's other music, ``database.other_music``, leads). ``best_guess``
    holds the strongest candidate of the collection, if any (none for ``other music``). ``confidence`` has one
    meaning everywhere (query, listen, scan): the share of calibration queries of unknown songs of this length
    whose decision statistic is lower than this answer's, i.e. 1 - its empirical p-value under "the song is not in
    the database"; 0.99 means 1 unknown-song query in 100 scores as high (among queries searched in as many
    ``views``; an answer settled as it is, ``Searcher.settled``, is scored on that view: about 0.999 or more).
    ``score`` is the best candidate's match score (mean aligned cosine similarity), ``decision`` the
    calibrated statistic compared with ``threshold``.
    """

    song_id: str | None
    title: str | None
    artist: str | None
    offset_s: float | None
    confidence: float
    is_match: bool
    n_segments: int
    seconds_taken: float
    mode: str
    score: float = float("nan")
    threshold: float = float("nan")
    timings: dict[str, float] = field(default_factory=dict)
    decision: float = float("nan")
    best_guess: BestGuess | None = None
    reason: str | None = None
    views: int = 1  # 2: the better-of-two-views rule (``SearchResult.views``); the threshold is the one for it
    whitened: bool = False  # the answer came from the whitened view
    # the answering view's candidate songs, best first (the best guess first of them; ``Searcher.n_results`` at most)
    candidates: tuple[BestGuess, ...] = ()
    # other songs of the database that hold the best guess's recording (``SearchResult.copies``), best first
    copies: tuple[BestGuess, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# ------------------------------------------------------------------------------------------------ the searcher

def _pad_query(audio: np.ndarray) -> np.ndarray:
    """Queries between half a segment and one segment are zero-padded to one segment; shorter ones refused."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"query audio must be 1-D mono, got shape {audio.shape}")
    if len(audio) < MIN_QUERY_SAMPLES:
        raise ValueError(f"query too short: {len(audio) / SAMPLE_RATE:.2f} s (at least "
                         f"{MIN_QUERY_SAMPLES / SAMPLE_RATE:.1f} s needed)")
    if len(audio) < SEGMENT_SAMPLES:
        audio = np.pad(audio, (0, SEGMENT_SAMPLES - len(audio)))
    return audio


def loudest_second_dbfs(audio_8k: np.ndarray) -> float | None:
    """The level of a query's loudest second as its silence gate measures it (None for digital silence): what a
    "no match (silence)" answer heard."""
    loudest = float(np.max(segment_levels_db(frame(_pad_query(audio_8k))), initial=-np.inf))
    return round(loudest, 1) if np.isfinite(loudest) else None


class Searcher:
    """Model + fingerprint database + catalogue + no-match calibration: ``identify(audio_8k) -> Match``.

    Build it with ``Searcher.from_results("results")`` (or ``from_paths``); the pieces can also be passed directly
    (tests, the listener).
    """

    def __init__(self, fingerprinter, db: Database,
                 catalogue: dict[str, tuple[str | None, str | None]] | None = None,
                 calibration: Calibration | None = None, top_k: int = 20, max_candidates: int = 200,
                 mode: str = "sequence", batch_size: int = 64, device: str = "auto",
                 fallback_threshold: float = 0.5, n_results: int = 10,
                 whitened_view: WhitenedView | None = WhitenedView(), tracks: TrackNames | None = None,
                 song_paths: dict[str, str] | None = None):
        from workflow_lib.database.catalogue import TrackNames
        from workflow_lib.model.embed import resolve_device

        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r} (choose from {MODES})")
        self.device = resolve_device(device)
        self.fingerprinter = fingerprinter.to(self.device).eval()
        self.db = db
        self.catalogue = catalogue or {}
        # the tracks of album images (``database.catalogue.TrackNames``): the commands name answers by track
        self.tracks = tracks if tracks is not None else TrackNames({})
        # song_id -> the file it was fingerprinted from (the catalogue's path): the commands' answers name it
        self.song_paths = song_paths or {}
        self.calibration = calibration
        self.top_k, self.max_candidates, self.mode = top_k, max_candidates, mode
        self.batch_size, self.n_results = batch_size, n_results
        self.fallback_threshold = fallback_threshold
        self.whitened_view = whitened_view or WhitenedView(order=0)
        made = WhitenedView.recorded((calibration.meta.get("whitened_view") if calibration is not None else None) or {})
        if calibration is not None and calibration.two_views is not None and made \
                and made != self.whitened_view.to_dict():
            log.warning("the whitened view is set up as %s, but the no-match threshold was calibrated with %s: "
                        "queries are searched as they are until it is recalibrated (run `nafp index` again on the "
                        "same folders, or the workflow's calibrate rule)", self.whitened_view.to_dict(), made)
            self.calibration = replace(calibration, two_views=None)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_paths(cls, model_path: str | Path, index_dir: str | Path, catalogue_path: str | Path | None = None,
                   threshold_path: str | Path | None = None, nprobe: int | None = None,
                   **kwargs: Any) -> "Searcher":
        from workflow_lib.database.index import FingerprintDB
        from workflow_lib.model.model_file import load_fingerprinter, model_checksum

        from workflow_lib.model.embed import embedding_dim, resolve_device

        device = resolve_device(kwargs.get("device", "auto"))
        checksum = model_checksum(model_path)
        # Refuses an index built by another model (the fingerprints would not be comparable).
        db = FingerprintDB.load(index_dir, nprobe=nprobe, expect_model=checksum)
        fingerprinter = load_fingerprinter(model_path, device)
        dim = embedding_dim(fingerprinter, device)
        if dim != db.dim:
            raise ValueError(f"{model_path} makes {dim}-d fingerprints but {index_dir} holds {db.dim}-d ones: "
                             "rebuild the index with this model")
        from workflow_lib.database.catalogue import TrackNames, load_catalogue, song_paths

        table = load_catalogue(catalogue_path) if catalogue_path else None
        catalogue = catalogue_titles(table) if table is not None else None
        calibration = None
        if threshold_path is not None and not Path(threshold_path).exists():
            log.warning("%s not found: using the fixed fallback threshold %.2f on the match score; run the "
                        "'calibrate' rule for a threshold with a known false-positive rate", threshold_path,
                        kwargs.get("fallback_threshold", 0.5))
        elif threshold_path is not None:
            calibration = Calibration.load(threshold_path)
            cal_ck = calibration.meta.get("model_checksum")
            if cal_ck and cal_ck != checksum:
                raise ValueError(f"{threshold_path} was calibrated for model {cal_ck}, not {checksum}: "
                                 "rerun the 'calibrate' rule")
            used = {"top_k": kwargs.get("top_k", 20), "nprobe": nprobe,
                    "max_candidates": kwargs.get("max_candidates", 200)}
            differ = {k: (v, used[k]) for k, v in calibration.meta.get("search", {}).items()
                      if k in used and v != used[k]}
            if differ:
                log.warning("search settings differ from the calibration's (calibrated, now): %s; the "
                            "false-positive rate of the no-match rule may differ from its target", differ)
        kwargs["device"] = str(device)
        return cls(fingerprinter, db, catalogue, calibration, tracks=TrackNames.from_catalogue(table),
                   song_paths=song_paths(table) if table is not None else None, **kwargs)

    @classmethod
    def from_layout(cls, layout: ResultsLayout, **kwargs: Any) -> "Searcher":
        """A results folder's model (wherever ``model.source`` put it), index, catalogue and threshold."""
        if is_bundled(layout.model):
            from workflow_lib.model.model_file import verify_checksum

            verify_checksum(layout.model)
        return cls.from_paths(layout.model, layout.index, layout.catalogue, layout.threshold, **kwargs)

    @classmethod
    def from_results(cls, results: str | Path = "results", **kwargs: Any) -> "Searcher":
        """The standard layout written by the workflow, with the run's own model (see docs/ARCHITECTURE.md)."""
        return cls.from_layout(ResultsLayout(Path(results)), **kwargs)

    # -- use ----------------------------------------------------------------------------------------------------
    def embed(self, audio_8k: np.ndarray) -> np.ndarray:
        from workflow_lib.model.embed import embed_audio

        return embed_audio(self.fingerprinter, _pad_query(audio_8k), self.batch_size, self.device, QUERY_SILENCE_DBFS,
                           QUERY_LEVEL_DBFS)

    def search(self, emb: np.ndarray, mode: str | None = None,
               exclude_song: str | frozenset[str] | None = None) -> SearchResult:
        return search_embeddings(self.db, emb, self.top_k, mode or self.mode, self.max_candidates, self.n_results,
                                 exclude_song)

    def warm_up(self) -> None:
        """Do the first-call set-up now (the model's allocations; the predictor's scipy imports, a fifth of a second),
        so that no answer's time includes it."""
        self.embed(np.zeros(SAMPLE_RATE, dtype=np.float32))
        if self.whitened_view.enabled:
            self.whitened_view.make(np.random.default_rng(0).standard_normal(SEGMENT_SAMPLES).astype(np.float32))

    def embed_views(self, audio_8k: np.ndarray, whitened: bool = True,
                    timings: dict[str, float] | None = None) -> list[np.ndarray]:
        """Fingerprints of the query as it is and, when ``whitened`` and the whitened view applies to its length,
        of the query whitened (``WhitenedView.make``: gated, then whitened). ``timings`` (when given) gains the
        milliseconds spent."""
        t = timings if timings is not None else {}
        audio = _pad_query(audio_8k)
        t0 = time.perf_counter()
        embs = [self.embed(audio)]
        t["embed_ms"] = t.get("embed_ms", 0.0) + (time.perf_counter() - t0) * 1000.0
        if whitened and self.whitened_view.applies(len(audio)):
            embs.append(self.embed_whitened(audio, t))
        return embs

    def embed_whitened(self, audio_8k: np.ndarray, timings: dict[str, float] | None = None) -> np.ndarray:
        """Fingerprints of the query whitened (``embed_views``' second view); ``timings`` gains ``whiten_ms`` and
        the fingerprinting time in ``embed_ms``."""
        t = timings if timings is not None else {}
        t0 = time.perf_counter()
        audio = self.whitened_view.make(_pad_query(audio_8k))
        t1 = time.perf_counter()
        emb = self.embed(audio)
        t["whiten_ms"] = t.get("whiten_ms", 0.0) + (t1 - t0) * 1000.0
        t["embed_ms"] = t.get("embed_ms", 0.0) + (time.perf_counter() - t1) * 1000.0
        return emb

    def search_view(self, emb: np.ndarray, mode: str | None = None,
                    exclude_song: str | frozenset[str] | None = None, whitened: bool = False,
                    timings: dict[str, float] | None = None) -> SearchResult:
        """``search`` of one view's fingerprints, marked ``whitened`` as asked; ``timings`` gains ``search_ms``."""
        t0 = time.perf_counter()
        result = self.search(emb, mode, exclude_song)
        if timings is not None:
            timings["search_ms"] = timings.get("search_ms", 0.0) + (time.perf_counter() - t0) * 1000.0
        return replace(result, whitened=True) if whitened else result

    def search_views(self, embs: list[np.ndarray], mode: str | None = None,
                     exclude_song: str | frozenset[str] | None = None,
                     timings: dict[str, float] | None = None) -> list[SearchResult]:
        """Search each view's fingerprints (``embed_views``; the whitened view's result has ``whitened`` set). A
        query the silence gate empties is not searched whitened: silence stays silence."""
        out = [self.search_view(embs[0], mode, exclude_song, False, timings)]
        if not out[0].silent:
            out += [self.search_view(e, mode, exclude_song, True, timings) for e in embs[1:]]
        return out

    def pick_view(self, results: list[SearchResult]) -> SearchResult:
        """The view with the larger decision statistic (the first on ties), marked with how many were searched."""
        if len(results) == 1:
            return results[0]
        stats = [self.decision(r) for r in results]
        return replace(results[int(np.argmax(stats))], views=len(results))

    def two_views(self, n_samples: int, mode: str | None = None) -> bool:
        """Whether ``search_audio`` searches a query of ``n_samples`` in both views: in ``sequence`` mode (the one
        the calibrate rule searches its null queries in), when the whitened view applies to its length and the
        calibration holds thresholds for that pick (otherwise its false-positive rate would not be known). A
        ``vote`` answer ranks songs by votes, so its runner-up can score far below the winner on a whitened query of
        nothing known: that mode keeps one view."""
        return ((mode or self.mode) == "sequence" and self.calibration is not None
                and self.calibration.two_views is not None and self.whitened_view.applies(n_samples))

    def settled(self, result: SearchResult) -> bool:
        """Whether the query as it is (``result``) already answers for both views, so the whitened view need not be
        made: its decision statistic reaches the value that only ``SETTLED_FPR`` of the calibration's unknown-song
        queries reach with the better of the two views (and the two-view threshold). The better of two can only be
        higher, so such a query is accepted either way; what the whitened view could still change is which song is
        named, and only if a second song led its runner-up by as much, which unknown songs almost never do."""
        if self.calibration is None or self.calibration.two_views is None or not result.candidates:
            return False
        both = self.calibration.two_views
        bar = max(both.upper_point(result.n_segments, SETTLED_FPR), both.threshold(result.n_segments))
        return self.decision(result) >= bar

    def answer_views(self, plain: SearchResult, whitened: Callable[[], SearchResult] | None) -> SearchResult:
        """The answer from the query as it is (``plain``) and, when ``whitened`` is given (``two_views``), its
        whitened view's result, asked for only when ``plain`` is neither silent nor ``settled`` (a settled answer
        is marked ``views`` = 2: it is held to the two-view rule it already passes)."""
        if whitened is None or plain.silent:
            return plain
        if self.settled(plain):
            return replace(plain, views=2)
        return self.pick_view([plain, whitened()])

    def search_audio(self, audio_8k: np.ndarray, mode: str | None = None,
                     exclude_song: str | frozenset[str] | None = None,
                     timings: dict[str, float] | None = None) -> SearchResult:
        """Search 8 kHz query audio: as it is and, where ``two_views`` says so and the first answer is not already
        ``settled``, also whitened, keeping the view with the larger decision statistic (``views`` = 2 on the
        result)."""
        audio = _pad_query(audio_8k)
        plain = self.search_view(self.embed_views(audio, False, timings)[0], mode, exclude_song, False, timings)

        def whitened() -> SearchResult:
            return self.search_view(self.embed_whitened(audio, timings), mode, exclude_song, True, timings)

        return self.answer_views(plain, whitened if self.two_views(len(audio), mode) else None)

    def threshold(self, n_segments: int, views: int = 1) -> float:
        return self.calibration.for_views(views).threshold(n_segments) if self.calibration \
            else self.fallback_threshold

    @property
    def statistic(self) -> str:
        return self.calibration.statistic if self.calibration is not None else "score"

    def decision(self, result: SearchResult) -> float:
        """The no-match rule's statistic for this result (``calibrate.decision_statistic``); -inf when the best
        candidate is other music (``database.other_music``: never an answer)."""
        if result.other_music_leads:
            return float("-inf")
        return decision_statistic([c.score for c in result.candidates], self.statistic)

    def decide(self, result: SearchResult, seconds_taken: float = 0.0,
               timings: dict[str, float] | None = None) -> Match:
        """Turn ranked candidates into an answer with the no-match rule applied."""
        best = result.best
        thr = self.threshold(result.n_segments, result.views)
        if best is None or result.other_music_leads:  # (other music found: no song of the collection plays)
            reason = "other music" if best is not None else "silence" if result.silent else "no candidates"
            return Match(None, None, None, None, 0.0, False, result.n_segments, seconds_taken, result.mode,
                         float("nan"), thr, timings or {}, float("nan"), None, reason, result.views, result.whitened)
        stat = self.decision(result)
        if self.calibration is not None:
            conf = self.calibration.for_views(result.views).confidence(stat, result.n_segments)
        else:  # uncalibrated: the raw score is the only honest number there is
            conf = float(np.clip(best.score, 0.0, 1.0))
        ranked, copies = (tuple(BestGuess(c.song_id, *self.catalogue.get(c.song_id, (None, None)), c.offset_s,
                                          c.score) for c in found if not is_other_music(c.song_id))
                          for found in (result.candidates, result.copies))
        guess = ranked[0]
        if stat >= thr:
            return Match(best.song_id, guess.title, guess.artist, best.offset_s, conf, True, result.n_segments,
                         seconds_taken, result.mode, best.score, thr, timings or {}, stat, guess, None, result.views,
                         result.whitened, ranked, copies)
        return Match(None, None, None, None, conf, False, result.n_segments, seconds_taken, result.mode,
                     best.score, thr, timings or {}, stat, guess, "below threshold", result.views, result.whitened,
                     ranked, copies)

    def identify_embeddings(self, emb: np.ndarray, mode: str | None = None) -> Match:
        """Answer for ready ``(J, D)`` fingerprints, e.g. the listener's cached ones of the last few seconds."""
        t0 = time.perf_counter()
        result = self.search(emb, mode)
        dt = time.perf_counter() - t0
        return self.decide(result, dt, {"search_ms": dt * 1000.0})

    def identify_detailed(self, audio_8k: np.ndarray, mode: str | None = None) -> tuple[Match, SearchResult]:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        result = self.search_audio(audio_8k, mode, timings=timings)
        return self.decide(result, time.perf_counter() - t0, timings), result

    def identify(self, audio_8k: np.ndarray, mode: str | None = None) -> Match:
        """8 kHz mono query -> best song, offset and confidence (``is_match`` False below the threshold)."""
        return self.identify_detailed(audio_8k, mode)[0]


def searcher_kwargs(search_cfg: dict) -> dict:
    """``Searcher.from_paths`` keyword arguments from the ``search:`` config section."""
    keys = ("top_k", "nprobe", "max_candidates", "batch_size", "fallback_threshold", "device", "mode")
    kw = {k: search_cfg[k] for k in keys if k in search_cfg}
    if "whitened_view" in search_cfg:
        kw["whitened_view"] = WhitenedView.from_config(search_cfg["whitened_view"])
    return kw


def catalogue_titles(table: pd.DataFrame) -> dict[str, tuple[str | None, str | None]]:
    """song_id -> (title, artist) of a catalogue (``database.catalogue.load_catalogue``; empty fields become None):
    what an answer shows."""
    return {str(s): (str(t) if t else None, str(a) if a else None)
            for s, t, a in zip(table["song_id"], table["title"], table["artist"])}
