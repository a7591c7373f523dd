"""Realtime listener: names the song playing into a microphone (or a file played like one), continuously.

``ListenerCore.push(audio_8k) -> Decision | None`` is deterministic state, tested without threads (capture and the
worker thread that feeds it are ``worker``). Every 0.5 s hop it embeds the newest 1 s segment (only that one: older
ones are cached), keeps the embeddings of the last ``window_s`` seconds and runs the sequence search of
``search.ranking`` over them. The FAISS neighbours of each cached segment are cached too (``NeighbourCache``), so a
hop costs one segment's embedding, one segment's neighbour search and the aligned re-scoring of the window. What it
observes and decides is held in ``decisions``; its settings are ``settings.ListenConfig``.

Decisions (hysteresis): a hop's best candidate counts when its score passes the no-match threshold for the window's
length (``evaluation.calibration``; with ``max_fpr`` refitted stricter from the calibration's stored null scores,
because the listener asks every hop). A match is declared when ``consistent_hops`` such hops in a row agree on the
song and on its alignment with the stream (the song position must advance with the clock, within
``offset_tolerance_hops``) and the window holds at least ``min_match_s`` of audio; with ``persistent_hops``, also when
one song has led the window at one alignment for that many hops in a row, below the threshold (a drum loop, a song
under loud noise), and it is held while it keeps that lead. With ``redeclare_s``, a song heard within that many
seconds at another place of it needs ``redeclare_hops`` agreeing hops: music resembling a song sets it off again and
again at wandering places. A declared match is held while its own alignment still passes the calibrated threshold
(``search.calibration.target_fpr``, looser than the declaring one: hysteresis, so a held song is not dropped and named
again each time a noisy hop dips under the strict rate) on the window and no other alignment beats it by more than
``resync_margin`` (a repeated chorus scores alike at several offsets; the one the longer history chose stays); the
same song clearly better at another offset for K hops re-synchronises it. It ends after ``release_hops`` hops without
support, at once on silence, or when another song is declared; its end is then cut back to where the song last held at
its alignment (``cut_end``, as the scan follows a song: ``listener.follow``): the window supports a song seconds after
it ended. To follow a song change quickly, the last ``tail_s`` seconds are also searched on their own: when for K hops
they name another song and the held one no longer explains them, the window is cut to them (the older segments belong
to the previous song) and the new song is declared.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import replace
from typing import Any, Iterable, Iterator, Protocol

import numpy as np

from workflow_lib import HOP_S, HOP_SAMPLES, SAMPLE_RATE, SEGMENT_S, SEGMENT_SAMPLES
from workflow_lib.audio.segments import QUERY_LEVEL_DBFS, frame, n_segments, segment_levels_db
from workflow_lib.database.other_music import is_other_music
from workflow_lib.listener.decisions import (LISTENING, MATCH, SILENCE, Decision, Heard, ListenSummary, Observation,
                                             listen_summary)
from workflow_lib.listener.follow import alignment_runs
from workflow_lib.listener.neighbour_cache import NeighbourCache
from workflow_lib.listener.settings import ListenConfig
from workflow_lib.search.answers import Candidate, SearchResult
from workflow_lib.search.copies import holds_same_music
from workflow_lib.search.ranking import (Neighbours, RunnerUpNeighbours, add_runner_up, aligned_scores,
                                         ranked_window_and_tail, without_copies)
from workflow_lib.search.threshold import Calibration, decision_statistic, fit_calibration
from workflow_lib.search.threshold import log as calib_log

log = logging.getLogger(__name__)

# A listening's end is cut (``ListenerCore.cut_end``) from the fingerprints of this many windows before it: a song is
# held at most one window past its end, and the rest tells the song's typical similarity at its alignment.
RECENT_WINDOWS = 4


class SearcherLike(Protocol):
    """What the core needs from ``search.Searcher``."""

    fingerprinter: Any
    db: Any
    device: Any
    batch_size: int
    top_k: int
    max_candidates: int
    n_results: int
    calibration: Calibration | None
    catalogue: dict[str, tuple[str | None, str | None]]

    def threshold(self, n_segments: int) -> float: ...


def listener_calibration(calibration: Calibration | None, max_fpr: float | None) -> Calibration | None:
    """The no-match rule the listener applies to each window.

    A query answers once; the listener asks every 0.5 s, twice (whole window and tail), so at the query's
    false-positive rate it would name songs that are not playing every few minutes of unknown music. With ``max_fpr``
    the thresholds are refitted from the calibration's own stored null scores (``evaluation.calibration``) for that
    stricter per-window rate; ``None`` keeps the calibrated ones. Either way they are made non-increasing in length
    (``Calibration.non_increasing``): the window's newest seconds are held to the whole window's threshold at least,
    the rule the listener's operating point was measured with.

    The rate is that of the null windows that other music in the index does not answer (their statistic is -inf:
    ``database.other_music``): beside a small collection other music answers most of them, and a rate over all of
    them let the listener declare twice as many songs in hours of music the index does not hold (bench/README.md,
    "Other music in the index, built"). Without other music in the index, nothing changes.
    """
    if calibration is None:
        return None
    if max_fpr is None or max_fpr >= calibration.target_fpr:
        return calibration.non_increasing()
    scores = {n: [v for v in s if v > -math.inf] or s for n, s in zip(calibration.n_segments, calibration.null_scores)}
    smallest = min(len(s) for s in scores.values())
    if smallest * max_fpr < 1:
        log.info("listen.max_fpr %.3g is finer than the %d null queries per length of the calibration allow: the "
                 "listener uses the highest null score of each length (rerun 'calibrate' with more "
                 "search.calibration.queries_per_length for a finer rate)", max_fpr, smallest)
    with _quiet(calib_log):
        return fit_calibration(scores, max_fpr, {**calibration.meta, "listener_max_fpr": max_fpr},
                               calibration.statistic).non_increasing()


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class ListenerCore:
    """Deterministic listener state: feed 8 kHz audio in any chunk sizes, get a ``Decision`` per processed hop.

    ``push`` processes every whole new segment in the chunk (embedding them in one batch; when a chunk holds more
    than a window, only the newest window's segments) and returns the decision for the newest one, or None when the
    chunk completed no new segment.
    """

    def __init__(self, searcher: SearcherLike, config: ListenConfig | None = None,
                 exclude_songs: Iterable[str] = (), views: int = 1, cut_ends: bool = True):
        self.searcher = searcher
        self.config = config or ListenConfig()
        self.n_window = self.config.window_segments
        self.n_tail = min(self.config.tail_segments, self.n_window)
        self.n_min = min(n_segments(int(round(self.config.min_match_s * SAMPLE_RATE))), self.n_window)
        self._db = NeighbourCache(searcher.db, capacity=4 * self.n_window, exclude_songs=exclude_songs)
        # views=2: this core is one of two views of the stream (``views.TwoViewCore``), so it is held to the
        # calibration's better-of-two-views thresholds.
        calibration = getattr(searcher, "calibration", None)
        if calibration is not None:
            calibration = calibration.for_views(views)
        self.calibration = listener_calibration(calibration, self.config.max_fpr)
        # Holding a declared match asks for the calibrated rate, not the stricter declaring one (hysteresis).
        self.hold_calibration = listener_calibration(calibration, None)
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute stream sample of _buf[0]
        self._discard = 0  # incoming samples to drop to get back onto the segment grid after a gap
        self._next_seg = 0
        self._window: deque[tuple[int, np.ndarray]] = deque(maxlen=self.n_window)
        # cut_ends: a listening's end is cut back to where its song last held (``cut_end``), from the fingerprints of
        # the last RECENT_WINDOWS windows (the batch scan, which keeps every fingerprint, refines edges itself).
        self._recent: deque[tuple[int, np.ndarray]] | None = \
            deque(maxlen=RECENT_WINDOWS * self.n_window + self.config.release_hops) if cut_ends else None
        self._streak = 0
        self._last_obs: Observation | None = None
        self._misses = 0
        self._tail_streak = 0
        self._last_tail: Observation | None = None
        self._persist = 0  # hops in a row whose window's best is one song at one alignment, ahead of the others
        self._last_best: Observation | None = None
        self._codes: dict[str, int] | None = None
        self._ranked: dict[int, tuple[SearchResult, SearchResult]] = {}
        self.current: Heard | None = None
        self.heard: list[Heard] = []
        self.decisions = 0
        self.compute_ms: deque[float] = deque(maxlen=10_000)

    # -- stream ---------------------------------------------------------------------------------------------------
    @property
    def stream_samples(self) -> int:
        """Samples of 8 kHz stream time received so far (including skipped gaps)."""
        return self._buf_start + len(self._buf) - self._discard

    def skip(self, n_samples: int) -> None:
        """Audio was lost (the worker fell behind the capture): the window restarts after the gap, and stream
        time advances by the gap so reported times stay true."""
        if n_samples <= 0:
            return
        pos = self._buf_start + len(self._buf) + int(n_samples)
        nxt = -(-pos // HOP_SAMPLES)  # first segment that starts at or after the gap
        self._discard = nxt * HOP_SAMPLES - pos
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = nxt * HOP_SAMPLES
        self._next_seg = nxt
        self._window.clear()

    def push(self, audio_8k: np.ndarray) -> Decision | None:
        x = np.asarray(audio_8k, dtype=np.float32).ravel()
        if self._discard:
            cut = min(self._discard, len(x))
            x, self._discard = x[cut:], self._discard - cut
        if len(x) == 0:
            return None
        self._buf = np.concatenate([self._buf, x]) if len(self._buf) else x.copy()
        total = self._buf_start + len(self._buf)
        if total < SEGMENT_SAMPLES:
            return None
        last = (total - SEGMENT_SAMPLES) // HOP_SAMPLES
        if last < self._next_seg:
            return None
        first = max(self._next_seg, last - self.n_window + 1)  # older ones would leave the window at once
        lo = first * HOP_SAMPLES - self._buf_start
        segs = frame(self._buf[lo:lo + (last - first) * HOP_SAMPLES + SEGMENT_SAMPLES])
        levels = segment_levels_db(segs)
        loud = levels > self.config.silence_dbfs

        # Imported here, not at the top: torch takes ~3 s to import, and `nafp --help` or `nafp db list` reach
        # this module through the CLI's parser without ever embedding anything.
        from workflow_lib.model.embed import embed_segments

        t0 = time.perf_counter()
        emb = embed_segments(self.searcher.fingerprinter, segs[loud], self.searcher.batch_size,
                             self.searcher.device, silence_dbfs=None, levels=levels[loud],
                             raise_to_dbfs=QUERY_LEVEL_DBFS) if loud.any() else None
        embed_ms = (time.perf_counter() - t0) * 1000.0
        k = 0
        for j, is_loud in zip(range(first, last + 1), loud):
            if not is_loud:
                self._window.clear()  # silence ends whatever was playing
                continue
            if self._window and self._window[-1][0] != j - 1:
                self._window.clear()  # a gap: alignment with older segments is unknown
            assert emb is not None
            self._enter(j, emb[k])
            k += 1

        keep_from = (last + 1) * HOP_SAMPLES
        self._buf = self._buf[keep_from - self._buf_start:].copy()
        self._buf_start = keep_from
        self._next_seg = last + 1
        return self._decide(last, float(levels[-1]), bool(loud[-1]), embed_ms)

    def push_segments(self, first: int, emb: np.ndarray, levels: np.ndarray,
                      neighbours: "Neighbours | None" = None, embed_ms: float = 0.0,
                      runner_up: "RunnerUpNeighbours | None" = None,
                      ranked: "dict[int, tuple[SearchResult, SearchResult]] | None" = None) -> list[Decision]:
        """Feed segments that were embedded elsewhere (the batch scan): segments ``first``.. of the stream with their
        fingerprints ``emb`` (zero vectors for silent ones), RMS ``levels`` (dBFS) and optionally their neighbour
        lists (found without the core's ``exclude_songs``), and the neighbours without the song that fills a
        segment's whole list (``search.runner_up_neighbours``): the search's runner-up look-up then finds them in
        the cache instead of searching the index one segment at a time. ``ranked``: the window and tail searches
        of hops whose window is the full sliding window, made for the whole chunk at once
        (``search.sliding.SlidingWindowSearch``), keyed by the window's newest segment; the other hops search
        here. Returns one decision per segment (the stream form decides only on the newest of a chunk)."""
        self._ranked = ranked or {}
        out = []
        per = embed_ms / max(1, len(emb))
        heard = self.heard_segments(emb, levels)
        for k in range(len(emb)):
            j = first + k
            loud = bool(heard[k])
            if not loud or (self._window and self._window[-1][0] != j - 1):
                self._window.clear()  # silence ends whatever was playing; a gap loses the alignment
            if loud:
                if neighbours is not None:  # primed as it enters the window: the cache holds a few windows only
                    self._db.prime(emb[k:k + 1], neighbours[k:k + 1], self.searcher.top_k)
                if runner_up is not None and runner_up.lone[k] is not None:
                    self._db.prime(emb[k:k + 1], runner_up.others[k:k + 1], self.searcher.top_k, runner_up.lone[k])
                self._enter(j, emb[k])
            out.append(self._decide(j, float(levels[k]), loud, per))
        self._next_seg = first + len(emb)
        return out

    def _enter(self, j: int, emb: np.ndarray) -> None:
        """Segment ``j``'s fingerprint enters the window (and the recent ones an end is cut by)."""
        self._window.append((j, emb))
        if self._recent is not None:
            self._recent.append((j, emb))

    def heard_segments(self, emb: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Which of these segments (fingerprints, RMS levels in dBFS) ``push_segments`` puts in its window: those
        above the silence level that were fingerprinted (silent ones have zero vectors)."""
        return (np.asarray(levels) > self.config.silence_dbfs) & np.asarray(emb).any(axis=1)

    def finish(self) -> None:
        """End of stream: the open match (if any) stays in ``heard``, ending where its song last held."""
        if self.current is not None:
            self.cut_end(self.current)
        self.current = None

    def cut_end(self, heard: Heard) -> None:
        """A listening that ended: its end moved back to where its song last held at its alignment (``ended_s``)."""
        heard.end_s = self.ended_s(heard)

    def _recent_fingerprints(self, first: int, last: int) -> np.ndarray:
        """The recent fingerprints of stream segments ``first..last`` (a segment not kept, silent or skipped, is a
        zero vector: it holds nothing)."""
        assert self._recent
        emb = np.zeros((last - first + 1, self._recent[0][1].shape[-1]), np.float32)
        for j, e in self._recent:
            if first <= j <= last:
                emb[j - first] = e
        return emb

    def ended_s(self, heard: Heard) -> float:
        """Where a listening's song last held at its present alignment (stream time; at most ``heard.end_s``).

        The listener holds a song while its whole window supports it, so a song followed by other music (or by
        another place of itself) is held up to a window past its end. The recent segments' aligned similarity with
        the song says where it ended (``follow.alignment_runs``, as the scan cuts a declared stretch: by at most one
        window, and only where the alignment holds for at least half of the stretch looked at)."""
        if not self._recent:
            return heard.end_s
        code = self._song_code(heard.song_id)
        start_s = heard.earlier[-1][0] if heard.earlier else heard.start_s  # where its present alignment began
        first = max(int(round(start_s / HOP_S)), self._recent[0][0])
        last = int(round((heard.end_s - SEGMENT_S) / HOP_S))  # its last supported segment
        if code < 0 or last < first:
            return heard.end_s
        emb = self._recent_fingerprints(first, last)
        # (alignment_runs reads the stretch's row 0 as stream segment 0: the anchor is shifted to ``first``)
        (_, end), = alignment_runs(self._db, code, heard.anchor + first, emb, 0, last - first, [(0, last - first)],
                                   trim=self.config.held_past_end_hops)
        return min(heard.end_s, (first + end) * HOP_S + SEGMENT_S)

    def summary(self, overflows: int = 0, dropped_s: float = 0.0, device: str = "") -> ListenSummary:
        return listen_summary(self, overflows, dropped_s, device)

    # -- decisions ------------------------------------------------------------------------------------------------
    @property
    def statistic(self) -> str:
        cal = self.calibration if self.calibration is not None else getattr(self.searcher, "calibration", None)
        return cal.statistic if cal is not None else "score"

    def _search(self, emb: np.ndarray, j0: int) -> tuple[Observation | None, Observation | None]:
        """The window's best candidate and its newest ``n_tail`` segments' best candidate other than the window's
        matched song (None: no candidate, or a window no longer than its tail). The listener follows alignments on
        the hop grid: the offsets are not placed between the hops."""
        s = self.searcher
        ready = self._ranked.pop(j0 + len(emb) - 1, None) if len(emb) == self.n_window else None
        window, tail = ready if ready is not None else \
            ranked_window_and_tail(self._db, emb, self.n_tail, s.top_k, s.max_candidates, s.n_results)
        obs = self._observe(window, emb, j0)
        if tail is None:
            return obs, None
        full_song = obs.song_id if obs is not None and obs.is_match else None
        return obs, self._observe(tail, emb[-self.n_tail:], j0 + len(emb) - self.n_tail, other_than=full_song)

    def _observe(self, result: SearchResult, emb: np.ndarray, j0: int, other_than: str | None = None
                 ) -> Observation | None:
        """A search's best candidate; None when there is none, or when it is ``other_than`` (the caller only
        asks about other songs: the runner-up look-up, which only measures that answer, is then not made)."""
        s = self.searcher
        best = result.best
        if best is None or best.song_id == other_than:
            return None
        kept = without_copies(self._db, result, len(emb))  # as search_embeddings searches a query
        copies = kept.copy_ids
        if other_than in copies:  # the same recording as the song the caller asks past
            return None
        cur = self.current
        if cur is not None and kept.best.song_id != cur.song_id and holds_same_music(
                self._db, kept.best.song_id, kept.best.start_segment, cur.song_id, cur.anchor + j0, len(emb)):
            # The held song's copy leads by a hair: the same recording, observed as the song being held at its own
            # alignment (else the two copies, alternately ahead, would be declared in turn: a change every few hops).
            if other_than == cur.song_id:
                return None
            score = self._held_score(emb, j0, cur)
            assert score is not None  # the index holds the song: its stored fingerprints were just compared
            copies = copies | {kept.best.song_id}
            kept = replace(kept, candidates=[Candidate(cur.song_id, cur.anchor + j0, score, 0.0),
                                             *[c for c in kept.candidates
                                               if c.song_id not in copies and c.song_id != cur.song_id]])
        result = add_runner_up(self._db, emb, kept, s.top_k, s.max_candidates, s.n_results, copies)
        best = result.best
        n = result.n_segments
        # other music of the index leads (``database.other_music``): no song of the collection plays
        stat = float("-inf") if result.other_music_leads else \
            decision_statistic([c.score for c in result.candidates], self.statistic)
        thr, conf = self.threshold(n), self.confidence(stat, n)
        title, artist = getattr(s, "catalogue", {}).get(best.song_id, (None, None))
        return Observation(best.song_id, best.start_segment - j0, float(best.score), thr, conf,
                           bool(stat >= thr), n, title, artist,
                           tuple((c.song_id, float(c.score)) for c in result.candidates), stat)

    def hold_threshold(self, n_segments: int) -> float:
        """What a declared match's own alignment must keep reaching (the calibrated rule, without ``max_fpr``)."""
        if self.hold_calibration is not None:
            return float(self.hold_calibration.threshold(n_segments))
        return self.threshold(n_segments)

    def threshold(self, n_segments: int) -> float:
        """Score a window of ``n_segments`` must reach (the listener's calibration, else the searcher's rule)."""
        if self.calibration is not None:
            return self.calibration.threshold(n_segments)
        return float(self.searcher.threshold(n_segments))

    def confidence(self, decision: float, n_segments: int) -> float:
        """Same meaning as ``search.Match.confidence``: the share of unknown-song calibration queries of this
        length whose statistic is lower."""
        if self.calibration is not None:
            return float(self.calibration.confidence(decision, n_segments))
        cal = getattr(self.searcher, "calibration", None)
        if cal is not None:
            return float(cal.confidence(decision, n_segments))
        return float(np.clip(decision, 0.0, 1.0))  # uncalibrated: the raw score is the only honest number

    def _held_song_fits(self, obs: Observation | None, cur: Heard) -> bool:
        """The held song, at some alignment, passes the threshold (its statistic against the other songs of the
        window) and scores within ``resync_margin`` of the best answer on that window: then another song's lead is
        no evidence of a change."""
        if obs is None:
            return False
        held = obs.song_score(cur.song_id)
        stat = decision_statistic([held] + obs.others(cur.song_id), self.statistic)
        return stat >= self.hold_threshold(obs.n_segments) and held >= obs.score - self.config.resync_margin

    def _song_code(self, song_id: str) -> int:
        if self._codes is None:
            self._codes = {str(sid): i for i, sid in enumerate(self._db.song_ids)}
        return self._codes.get(song_id, -1)

    def _track(self, emb: np.ndarray, j0: int, heard: Heard, obs: Observation | None
               ) -> tuple[float, float, float, float]:
        """The declared match's own alignment on the window: (score, threshold, confidence, statistic). The
        statistic puts that score against the other songs ``obs`` found on the same window."""
        n = len(emb)
        thr = self.hold_threshold(n)
        score = self._held_score(emb, j0, heard)
        if score is None:
            return -1.0, thr, 0.0, -math.inf
        stat = decision_statistic([score] + (obs.others(heard.song_id) if obs is not None else []), self.statistic)
        return score, thr, self.confidence(stat, n), stat

    def _held_score(self, emb: np.ndarray, j0: int, heard: Heard) -> float | None:
        """The window's aligned score with the declared match at its alignment (None: the song left the index)."""
        code = self._song_code(heard.song_id)
        if code < 0:
            return None
        return float(aligned_scores(emb, self._db, np.array([code]), np.array([heard.anchor + j0]))[0])

    def _redeclaring(self, obs: Observation, stream_s: float, persistent: bool) -> bool:
        """``obs``'s song, about to be declared, was heard at another place within ``redeclare_s`` and has not yet
        agreed for ``redeclare_hops``: not declared yet."""
        cfg = self.config
        if cfg.redeclare_s <= 0 or persistent or self._streak >= cfg.redeclare_hops:
            return False
        for h in reversed(self.heard):  # newest first; each ended before the next was declared
            if h.end_s < stream_s - cfg.redeclare_s:
                return False
            if h.song_id == obs.song_id and h is not self.current:
                return abs(h.anchor - obs.anchor) > cfg.offset_tolerance_hops
        return False

    @staticmethod
    def _passes(tracked: tuple[float, float, float, float]) -> bool:
        return tracked[3] >= tracked[1]

    def _decide(self, j_last: int, level: float, loud: bool, embed_ms: float) -> Decision:
        cfg = self.config
        tol = cfg.offset_tolerance_hops
        stream_s = (j_last * HOP_SAMPLES + SEGMENT_SAMPLES) / SAMPLE_RATE
        event: str | None = None
        self.decisions += 1
        if not loud:
            self._streak, self._last_obs = 0, None
            self._tail_streak, self._last_tail = 0, None
            self._persist, self._last_best = 0, None
            if self.current is not None:
                self.cut_end(self.current)
                self.current, event = None, "lost"
            self.compute_ms.append(embed_ms)
            return Decision(stream_s, SILENCE, None, None, None, None, None, float("nan"), float("nan"), 0.0, False,
                            0, 0, embed_ms, embed_ms, 0.0, level, event)

        t0 = time.perf_counter()
        js = [j for j, _ in self._window]
        emb = np.stack([e for _, e in self._window])
        obs, tail = self._search(emb, js[0])
        cur = self.current
        cut = False
        tail_says: Observation | None = None
        if tail is not None and tail.is_match and not (  # (never the window's own song: other_than)
                cur is not None and (self._passes(self._track(emb[-self.n_tail:], js[-self.n_tail], cur, tail))
                                     or self._held_song_fits(tail, cur))):
            tail_says = tail
        # The newest seconds alone name another song than the whole window does, and the song being held no longer
        # explains them. When they keep doing so for K hops, the music changed: the window is cut to them (the
        # older segments would only drag the new song's score down). One hop is not enough: a short window's
        # false positives come far more often than whole-window ones. (The same song at another offset is no
        # reason either: a repeated chorus matches several places of its song equally well.)
        self._tail_streak, self._last_tail = _run(self._tail_streak, self._last_tail, tail_says, tol)
        if tail_says is not None and self._tail_streak >= cfg.consistent_hops:
            for _ in range(len(emb) - self.n_tail):
                self._window.popleft()
            emb, js = emb[-self.n_tail:], js[-self.n_tail:]
            obs, cut = tail_says, True
            # its K agreeing hops count as the new song's streak
            self._streak, self._last_obs = self._tail_streak - 1, tail_says
            self._tail_streak, self._last_tail = 0, None
        tracked = self._track(emb, js[0], cur, obs) if cur is not None else None
        search_ms = (time.perf_counter() - t0) * 1000.0

        # Hysteresis: K agreeing above-threshold hops in a row declare a match.
        self._streak, self._last_obs = _run(self._streak, self._last_obs,
                                            obs if obs is not None and obs.is_match else None, tol)
        # Below the threshold, the same song at the same alignment leading the window hop after hop is evidence of
        # its own: a wrong song's lead comes from a segment or two and wanders once they leave the window.
        self._persist, self._last_best = _run(self._persist, self._last_best,
                                              obs if obs is not None and obs.decision > 0 else None, tol)
        persistent = cfg.persistent_hops is not None and self._persist >= cfg.persistent_hops
        start_s = js[0] * HOP_S
        # A declared match holds while its own alignment still passes the threshold and no other alignment beats
        # it by more than resync_margin: in a repeated section several alignments score alike, and the one that
        # the longer history chose stays.
        supported = tracked is not None and self._passes(tracked) and \
            (obs is None or tracked[0] >= obs.score - cfg.resync_margin)
        # Another song leads, but the held one scores nearly as well: ambiguous, so neither a miss nor a change.
        ambiguous = cur is not None and not supported and obs is not None and obs.song_id != cur.song_id and \
            self._held_song_fits(obs, cur)
        if cur is not None and supported:
            assert tracked is not None
            cur.end_s, cur.hops = stream_s, cur.hops + 1
            cur.max_confidence = max(cur.max_confidence, tracked[2])
            cur.max_score = max(cur.max_score, tracked[0])
            self._misses = 0
        elif ambiguous:
            pass
        elif (self._streak >= cfg.consistent_hops or persistent) and len(js) >= self.n_min and obs is not None:
            if cur is not None and obs.song_id == cur.song_id:
                # Same song, consistently (and clearly) better at another place: the earlier, shorter window was
                # misled by a repeated section, or the player jumped. Correct the offset; same listening. (At the
                # same place it is support: a song held by persistent_hops under the holding threshold.)
                if abs(obs.anchor - cur.anchor) > tol:
                    event = "resync"
                    cur.moved(self.ended_s(cur))
                cur.anchor, cur.end_s, cur.hops = obs.anchor, stream_s, cur.hops + 1
                self._misses = 0
            elif self._redeclaring(obs, stream_s, persistent):
                # Music that resembles a song sets it off again and again at wandering places, each declaration
                # short (bench/README.md, "A song declared again"); the song played again waits a hop or two.
                pass
            else:
                event = "match" if cur is None else "change"
                if cur is not None:
                    self.cut_end(cur)
                self.current = Heard(obs.song_id, obs.title, obs.artist, obs.anchor, start_s, stream_s, stream_s,
                                     obs.confidence, obs.score)
                self.heard.append(self.current)
                self._misses = 0
        elif cur is not None:
            self._misses += 1
            if self._misses >= cfg.release_hops:
                self.cut_end(cur)
                self.current, event = None, "lost"

        compute_ms = embed_ms + search_ms
        self.compute_ms.append(compute_ms)
        cur = self.current
        if cur is not None:
            song_id, title, artist, anchor = cur.song_id, cur.title, cur.artist, cur.anchor
        elif obs is not None and not is_other_music(obs.song_id):
            song_id, title, artist, anchor = obs.song_id, obs.title, obs.artist, obs.anchor
        else:
            song_id = title = artist = anchor = None
        # The numbers shown are those of what is shown: the match's own alignment while it is held, else the best
        # candidate.
        if cur is not None and event is None and tracked is not None:
            score, thr, conf, stat = tracked
        elif obs is not None:
            score, thr, conf, stat = obs.score, obs.threshold, obs.confidence, obs.decision
        else:
            score, thr, conf, stat = float("nan"), self.threshold(len(js)), 0.0, float("nan")
        return Decision(
            stream_s, MATCH if cur is not None else LISTENING, song_id, title, artist,
            None if anchor is None else stream_s + anchor * HOP_S, None if anchor is None else anchor * HOP_S,
            score, thr, conf, bool(obs and obs.is_match), self._streak, len(js), compute_ms, embed_ms, search_ms,
            level, event, cut, decision=stat, statistic=self.statistic)


def _run(hops: int, last: Observation | None, obs: Observation | None, tolerance: int
         ) -> tuple[int, Observation | None]:
    """One hop of a run of agreeing observations (same song, alignment within ``tolerance``): (hops in a row, the
    newest). ``obs`` None (nothing that counts this hop) ends the run."""
    if obs is None:
        return 0, None
    return (hops + 1 if obs.agrees(last, tolerance) else 1), obs
