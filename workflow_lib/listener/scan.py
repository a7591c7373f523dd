"""Batch monitoring: every song in a long recording, with where it starts and ends in the recording and in the song.

The recording is decoded and fingerprinted in chunks (bounded memory for the audio), every segment's nearest
database segments are found in one batched search per chunk, and the segments are fed through the listener's own
decision logic (``core.ListenerCore.push_segments``: the same windows, thresholds, hysteresis and song-change
handling as live listening, one implementation for stream and file), as fast as the CPU allows. Its declared matches
say which song plays and at which alignment; each is then followed at that alignment, segment by segment, as far as
the song goes (``_refine``): the listener names a song only when a whole window beats every other song, so in noise
or under talk it names a long playing late and in pieces, and holds a song until its window has let go of it, while
the aligned similarity of each segment with the song's matching segment shows where the song really starts and ends
(``listener.follow``: a declared stretch is followed outward from where that similarity last holds in it). An
occurrence shorter than SHORT_PLAY_S is kept only where that similarity holds up (SHORT_PLAY_SIMILARITY). Stretches
between occurrences are gaps, labelled ``silence`` or ``no match`` (unknown music or talk).

The fingerprints of the whole recording are kept for that refinement, as float16: about 0.5 MB per minute of
recording, twice that in two views (the audio itself is never held whole).

``whitened``: the recording is also scanned whitened (``whitened_stream``: the listener's ``StreamingView``, a
predictor refitted every 0.5 s on the newest 5 s, whose inverse filter takes a resonant space's ringing out, after
the noise gate when the view has it), by a second listener core with its own windows and following; both cores are
held to the calibration's two-view thresholds, and a whitened occurrence counts where the recording as it is has
none (``merge_views``). It fingerprints every second twice (bench/README.md, "Scanning in two views").
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Iterator

import numpy as np

from workflow_lib import HOP_S, SAMPLE_RATE, SEGMENT_S
from workflow_lib.audio.segments import QUERY_LEVEL_DBFS, segment_levels_db
from workflow_lib.common.background import ordered_map, prefetch
from workflow_lib.listener.core import ListenerCore
from workflow_lib.listener.decisions import CONTINUATION_TOLERANCE_S, Heard, by_alignment
from workflow_lib.listener.settings import ListenConfig
from workflow_lib.listener.follow import alignment_runs, similarity_at
from workflow_lib.listener.views import two_views_missing
from workflow_lib.model.embed import embed_segments, iter_segment_chunks
from workflow_lib.search.copies import SAME_MUSIC_SCORE, stored_similarity
from workflow_lib.search.ranking import (Neighbours, find_neighbours, offset_shifts, runner_up_neighbours,
                                         search_embeddings)
from workflow_lib.search.sliding import SlidingWindowSearch

log = logging.getLogger(__name__)

# An occurrence shorter than SHORT_PLAY_S is kept only if its aligned similarity with the song (median over its
# segments) reaches SHORT_PLAY_SIMILARITY: a short stretch is weak evidence, as a short query needs a higher
# threshold. The scan's commonest false alarm at 10 dB is a song outside the database named, for 3-22 s at a time,
# as a database track of the same game (same composer and samples, not the same recording): the median of such
# occurrences' aligned similarity is 0.59, of right occurrences under 15 s 0.75 (bundled model, programme seeds
# 0-47; bench/README.md, "A short play must hold").
SHORT_PLAY_S = 15.0
SHORT_PLAY_SIMILARITY = 0.55
# Every occurrence, searched whole as one query (its segments in sequence, as a file query searches), must name its
# own song first, or a song that holds the same music there (``_named_whole``): the listener declared it on windows
# of a few seconds and the following then extended it; when the whole stretch is more like another song, it was a
# look-alike. The same music: a recording indexed twice (two files of one song score a hair apart, and either may
# lead), told by the two songs' stored fingerprints at their alignments, whose mean similarity reaches the twin rule's
# ``search.duplicates.MIN_SCORE``. Of 1376 occurrences on programme seeds 0-71 (bundled model) every right one
# passes and 5 of 37 wrong ones fail; it is rare (on seeds 72-119 it dropped one occurrence in the 384 programmes of
# the two models) but costs nothing right, and the scan's neighbour lists make it cheap (bench/README.md, "An
# occurrence must name its own song").


@dataclass
class Occurrence:
    """One detected occurrence of a song in the recording."""

    start_s: float  # in the recording
    end_s: float
    song_id: str
    title: str | None
    artist: str | None
    song_start_s: float  # where in the song the occurrence starts and ends
    song_end_s: float
    confidence: float  # the best confidence while it was held (search.answers.Match.confidence)
    kind: str = "song"
    whitened: bool = False  # found in the whitened view only (a scan in two views: merge_views)
    # A song that is an album kept as one file (a cue sheet, ``data.cuesheet``): the track playing (named in
    # ``title``/``artist`` by ``listener.tracks``), where it starts in the file, and the album's own title.
    track: int | None = None
    track_start_s: float | None = None
    album: str | None = None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Gap:
    start_s: float
    end_s: float
    kind: str  # "silence" or "no match" (unknown music, talk, or too weak to name)


@dataclass
class ScanResult:
    name: str
    duration_s: float
    occurrences: list[Occurrence]
    gaps: list[Gap]
    compute_s: float
    stats: dict[str, Any] = field(default_factory=dict)

    def timeline(self) -> list[Occurrence | Gap]:
        return sorted(self.occurrences + self.gaps, key=lambda r: r.start_s)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per timeline row (occurrence or gap), the fields of both kinds (None where they do not apply)."""
        out = []
        for r in self.timeline():
            d = {"file": self.name, "kind": r.kind, "start_s": round(r.start_s, 2), "end_s": round(r.end_s, 2),
                 "song_id": None, "title": None, "artist": None, "song_start_s": None, "song_end_s": None,
                 "confidence": None, "whitened": None, "track": None, "track_start_s": None, "album": None}
            if isinstance(r, Occurrence):
                d.update({k: v for k, v in asdict(r).items() if k in d and k not in ("kind", "start_s", "end_s")})
                for k in ("song_start_s", "song_end_s", "confidence", "track_start_s"):
                    d[k] = None if d[k] is None else round(float(d[k]), 3)
            out.append(d)
        return out

    @property
    def best(self) -> Occurrence | None:
        """The occurrence a single answer for the whole file should name: the longest, then the surest."""
        return max(self.occurrences, key=lambda o: (o.duration_s, o.confidence), default=None)


def fingerprint_workers(threads: int, device: Any) -> int:
    """How many chunks ``scan_chunks`` should fingerprint at once for ``threads`` CPU threads; sets torch's thread
    count to match. On the CPU, one chunk per thread, each on one torch thread: two such workers scan 10-15 %
    faster than one chunk at a time on two torch threads, whose small convolutions wait on each other
    (bench/README.md, "Deciding a chunk of hops at once"); on an accelerator, one chunk at a time."""
    import torch

    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    on_cpu = torch.device(device).type == "cpu"
    torch.set_num_threads(1 if on_cpu else threads)
    return threads if on_cpu else 1


def scan_chunks(searcher, chunks: Iterable[np.ndarray], config: ListenConfig | None = None, name: str = "",
                exclude_songs: set[str] | None = None, min_duration_s: float = 0.0, workers: int = 1,
                whitened: bool = False) -> ScanResult:
    """Scan a stream of consecutive 8 kHz chunks (e.g. ``audio.files.iter_audio`` of a file). ``exclude_songs``
    are searched as if they were not in the database (the monitoring benchmark's unknown music). Occurrences
    shorter than ``min_duration_s`` are left out (their time becomes a gap), as broadcast monitoring reports only
    plays of some length: a few seconds of a song that shares passages or samples with the one playing are the
    scan's commonest false alarm (bench/README.md, "The missed seconds, and a shortest play"). ``workers``: chunks
    fingerprinted and searched at once (``fingerprint_workers``); the result does not depend on it. ``whitened``:
    also scan the recording whitened, as the listener hears a stream in two views (``merge_views``): for a
    recording made in a small, tiled or resonant room."""
    if not min_duration_s >= 0:  # NaN too: it would silently drop every occurrence
        raise ValueError(f"the shortest occurrence reported must be 0 s or more, got {min_duration_s:g}")
    config = (config or ListenConfig()).for_scan()
    t0 = time.perf_counter()
    n_views = 2 if whitened else 1
    view = whitened_view(searcher) if whitened else None
    passes = [_ViewPass(searcher, config, exclude_songs, n_views) for _ in range(n_views)]
    samples = 0

    def counted(it: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal samples
        for c in it:
            samples += len(c)
            yield c

    def views() -> Iterator[tuple[int, int, np.ndarray]]:
        """(view, first segment, segments) of every view, the views' chunks in turn (the whitened view lags by at
        most its held-back start, so the two stay in step and in bounded memory)."""
        if n_views == 1:
            for first, segs in iter_segment_chunks(counted(chunks)):
                yield 0, first, segs
            return
        plain, white = itertools.tee(counted(chunks), 2)
        for a, b in itertools.zip_longest(iter_segment_chunks(plain),
                                          iter_segment_chunks(whitened_stream(white, view))):
            for k, item in ((0, a), (1, b)):
                if item is not None:
                    yield k, *item

    def searched_chunk(item: tuple[int, int, np.ndarray]) -> tuple:
        k, first, segs = item
        levels = segment_levels_db(segs)
        emb = embed_segments(searcher.fingerprinter, segs, searcher.batch_size, searcher.device, config.silence_dbfs,
                             levels, QUERY_LEVEL_DBFS)
        nb = find_neighbours(searcher.db, emb, searcher.top_k, exclude_songs or None)
        return (k, first, emb, levels, nb,
                runner_up_neighbours(searcher.db, emb, nb, searcher.top_k, exclude_songs or None))

    def searched() -> Iterator[tuple]:
        for k, first, emb, lev, nb, runner_up in ordered_map(searched_chunk, views(), workers):
            yield k, first, emb, lev, nb, runner_up, passes[k].window_search(first, emb, lev, nb)

    # Decoding, the whitening, the model, the index search and the window searches of the next chunks run in a
    # background thread (its workers fingerprinting and searching chunks side by side) while the decisions (the
    # cores' Python) go through this one.
    for k, first, emb, lev, nb, runner_up, ranked in prefetch(searched(), depth=2):
        passes[k].push(first, emb, lev, nb, runner_up, ranked)
    lev_all = passes[0].levels()
    duration = samples / SAMPLE_RATE
    found = [p.occurrences(config, exclude_songs) for p in passes]
    occurrences = [o for o in (found[0] if n_views == 1 else merge_views(*found)) if o.duration_s >= min_duration_s]
    gaps = _gaps(occurrences, lev_all, duration, config.silence_dbfs)
    result = ScanResult(name, duration, occurrences, gaps, time.perf_counter() - t0,
                        {"segments": passes[0].n_segments, "decisions": passes[0].core.decisions, "views": n_views})
    log.info("%s: %.1f min scanned in %.1f s (%.0fx realtime, %d view%s): %d occurrences", name or "stream",
             duration / 60, result.compute_s, duration / max(result.compute_s, 1e-9), n_views,
             "s" if n_views > 1 else "", len(occurrences))
    return result


class _ViewPass:
    """One view's pass over the recording: its listener core, its window searches, and what the following of its
    declared songs needs (every segment's fingerprint, level and neighbour lists)."""

    def __init__(self, searcher, config: ListenConfig, exclude_songs: set[str] | None, views: int):
        self.searcher = searcher
        # the core's own end cut left out: the following refines both edges from every fingerprint (_refine)
        self.core = ListenerCore(searcher, config, exclude_songs=exclude_songs or (), views=views, cut_ends=False)
        self.windows = SlidingWindowSearch(searcher.db, self.core.n_window, self.core.n_tail,
                                           searcher.max_candidates, searcher.n_results)
        self._embs: list[np.ndarray] = []
        self._levels: list[np.ndarray] = []
        self._neighbours: list[Neighbours] = []
        self.n_segments = 0

    def window_search(self, first: int, emb: np.ndarray, lev: np.ndarray, nb: Neighbours):
        """The chunk's window searches (run ahead of the decisions, in the producer thread)."""
        return self.windows.add(first, emb, self.core.heard_segments(emb, lev), nb)

    def push(self, first: int, emb: np.ndarray, lev: np.ndarray, nb: Neighbours, runner_up, ranked) -> None:
        self.core.push_segments(first, emb, lev, nb, runner_up=runner_up, ranked=ranked)
        self._embs.append(emb.astype(np.float16))
        self._levels.append(lev)
        self._neighbours.append(nb)
        self.n_segments = first + len(emb)

    def levels(self) -> np.ndarray:
        return np.concatenate(self._levels) if self._levels else np.zeros(0)

    def occurrences(self, config: ListenConfig, exclude_songs: set[str] | None) -> list[Occurrence]:
        """The view's occurrences, once the stream has ended."""
        self.core.finish()
        emb = np.concatenate(self._embs) if self._embs else np.zeros((0, 1), np.float16)
        neighbours = Neighbours.concat(self._neighbours) if self._neighbours else None
        return _refine(self.searcher, self.core.heard, emb, config, exclude_songs, neighbours)


# The whitened view of a recording: the listener's (``search.whiten.StreamingView``) over the recording in steps of
# REFIT_S, so that its noise estimate and predictor follow the recording as they do a stream; a whitened occurrence
# counts only where no occurrence of the recording as it is lies (``merge_views``), and only where that leaves
# MIN_WHITENED_S or more of it.
WHITENED_REFIT_S = 0.5
MIN_WHITENED_S = 2.0


def whitened_view(searcher):
    """The searcher's whitened view (``search.whiten.WhitenedView``) for a scan in two views. Raises ValueError when
    it is off or the calibration has no two-view thresholds (``views.two_views_missing``)."""
    problem = two_views_missing(searcher)
    if problem is not None:
        raise ValueError(problem)
    return searcher.whitened_view


def whitened_stream(chunks: Iterable[np.ndarray], view) -> Iterator[np.ndarray]:
    """The recording's consecutive chunks in the whitened ``view`` (``WhitenedView.stream``), fed to it in steps of
    WHITENED_REFIT_S whatever the chunks' sizes (so the estimates change at the same places however the recording
    is read); the first ``view.min_query_s`` seconds come out late, together; after them every sample comes out,
    the last ones when the recording ends."""
    stream = view.stream(refit_s=WHITENED_REFIT_S)
    step = int(round(WHITENED_REFIT_S * SAMPLE_RATE))
    carry = np.zeros(0, np.float32)
    for chunk in chunks:
        buf = np.concatenate([carry, np.asarray(chunk, np.float32)])
        whole = len(buf) // step * step
        out = [stream.push(buf[i:i + step]) for i in range(0, whole, step)]
        carry = buf[whole:]
        if out:
            yield np.concatenate(out)
    # the rest; empty for a recording shorter than min_query_s: it has no whitened view, as a query
    yield np.concatenate([stream.push(carry), stream.flush()])


def merge_views(plain: list[Occurrence], whitened: list[Occurrence]) -> list[Occurrence]:
    """One timeline from both views' occurrences: every occurrence of the recording as it is, and the stretches of
    the whitened view's that none of them covers (at least MIN_WHITENED_S; the song times moved with the cut), as
    the listener shows the whitened view's match only where the plain view has none (``whitened`` marks them). A
    song followed on from one view into the other is one occurrence (``merge_continuations``; marked by where it
    starts)."""
    taken = sorted((o.start_s, o.end_s) for o in plain)
    out = [replace(o) for o in plain]
    for o in whitened:
        for a, b in _uncovered(o.start_s, o.end_s, taken):
            if b - a >= MIN_WHITENED_S:
                out.append(replace(o, start_s=a, end_s=b, song_start_s=o.song_start_s + (a - o.start_s),
                                   song_end_s=o.song_end_s - (o.end_s - b), whitened=True))
    return merge_continuations(out)


def _uncovered(a: float, b: float, taken: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The parts of ``[a, b)`` outside the sorted intervals ``taken``."""
    out = []
    for s, e in taken:
        if e <= a or s >= b:
            continue
        if s > a:
            out.append((a, s))
        a = max(a, e)
    if a < b:
        out.append((a, b))
    return out


def _refine(searcher, heard: list[Heard], emb: np.ndarray, config: ListenConfig,
            exclude_songs: set[str] | None = None, neighbours: Neighbours | None = None) -> list[Occurrence]:
    """Occurrences from the listener's declared matches, each followed at its alignment as far as the song goes.

    The listener names a song only when a whole window beats every other song in the database, so in noise or
    talk it names a long playing in pieces, and late. Once the song and its alignment are known, whether each
    segment still belongs to it is a much easier question: its aligned similarity with the song's matching
    segment, against what the song scores there at other alignments (``follow.alignment_runs``). Consecutive
    declarations of one song form a group; each alignment of the group claims the stretch where its similarity
    holds, the alignment that explains most of the group first (a song with a repeated chorus is sometimes declared
    at the chorus's other place: that alignment explains less and is absorbed), and a second playing of the song
    (another alignment) keeps its own stretch. Occurrences shorter than SHORT_PLAY_S whose median aligned
    similarity is under SHORT_PLAY_SIMILARITY are left out, and so are those that, searched whole, name another
    song first (``_named_whole``; ``exclude_songs`` as the listener searched, ``neighbours``: every segment's
    neighbour lists when the scan kept them, so that search needs no index search of its own).
    """
    db = searcher.db
    catalogue = getattr(searcher, "catalogue", {}) or {}
    n = len(emb)
    tol = max(2, config.offset_tolerance_hops)
    island = int(round(config.follow_island_s / HOP_S))  # segments that must hold beyond a dip to cross it
    trim = config.held_past_end_hops  # how long the listener may hold a song past its end
    pieces = [(h, *_core(h, n)) for h in sorted((p for h in heard for p in by_alignment(h)), key=lambda h: h.start_s)]
    pieces = [p for p in pieces if p[2] >= p[1]]
    groups: list[list] = []
    for p in pieces:  # consecutive declarations of one song, nothing else declared between them
        if groups and groups[-1][-1][0].song_id == p[0].song_id:
            groups[-1].append(p)
        else:
            groups.append([p])
    out: list[Occurrence] = []
    for gi, group in enumerate(groups):
        # how far the group may reach: up to the neighbouring groups' declared stretches
        lo = max(p[2] for p in groups[gi - 1]) + 1 if gi else 0
        hi = min(p[1] for p in groups[gi + 1]) - 1 if gi + 1 < len(groups) else n - 1
        lo, hi = min(lo, min(p[1] for p in group)), max(hi, max(p[2] for p in group))
        out += _follow_group(db, catalogue, group, emb, lo, hi, tol, island, trim)
    out.sort(key=lambda o: o.start_s)
    for prev, nxt in zip(out, out[1:]):  # refined edges of neighbours may overlap: they meet half way
        if nxt.start_s < prev.end_s:
            mid = (nxt.start_s + prev.end_s) / 2
            prev.song_end_s -= prev.end_s - mid
            prev.end_s = mid
            nxt.song_start_s += mid - nxt.start_s
            nxt.start_s = mid
    merged = merge_continuations([o for o in out if o.end_s > o.start_s])
    held = [o for o in merged if o.duration_s >= SHORT_PLAY_S or _aligned_median(db, o, emb) >= SHORT_PLAY_SIMILARITY]
    return [o for o in held if _named_whole(searcher, o, emb, exclude_songs, neighbours)]


def _segments(o: Occurrence) -> tuple[int, int]:
    """The first and last segment of an occurrence."""
    a, b = int(round(o.start_s / HOP_S)), int(round((o.end_s - SEGMENT_S) / HOP_S))
    return a, max(a, b)


def _named_whole(searcher, o: Occurrence, emb: np.ndarray, exclude_songs: set[str] | None = None,
                 neighbours: Neighbours | None = None) -> bool:
    """Whether the occurrence's segments, searched as one sequence query, rank its song first, or a song holding
    the same music at that place."""
    a, b = _segments(o)
    result = search_embeddings(searcher.db, emb[a:b + 1].astype(np.float32), searcher.top_k, "sequence",
                               searcher.max_candidates, searcher.n_results, exclude_songs or None,
                               neighbours=None if neighbours is None else neighbours[a:b + 1],
                               runner_up=False, place_offsets=False)
    best = result.best
    if best is None:
        return False
    if best.song_id == o.song_id:
        return True
    own_start = int(round(o.song_start_s / HOP_S))
    return stored_similarity(searcher.db, o.song_id, own_start, best.song_id, best.start_segment,
                             b - a + 1) >= SAME_MUSIC_SCORE


def _aligned_median(db, o: Occurrence, emb: np.ndarray) -> float:
    """The median similarity of an occurrence's segments with the song's segments at its alignment (0 where the
    song has none)."""
    a, b = _segments(o)
    anchor = int(round((o.song_start_s - o.start_s) / HOP_S))
    q = emb[a:b + 1].astype(np.float32)
    raw = np.nan_to_num(similarity_at(db, db.song_position(o.song_id), a + anchor, q), nan=0.0)
    return float(np.median(raw)) if len(raw) else 0.0


def _follow_group(db, catalogue: dict, group: list, emb: np.ndarray, lo: int, hi: int,
                  tol: int, island: int = 0, trim: int = 0) -> list[Occurrence]:
    """The occurrences of one group of consecutive declarations of a song, within segments ``lo..hi``: each
    alignment claims the stretch from its first to its last run (one playing: the song's time ran on with the clock
    through the weak stretches between them, and no other song was declared there), the alignment covering most
    first; what is left to a later alignment counts only where it holds one of that alignment's declarations."""
    song_id = group[0][0].song_id
    code = db.song_position(song_id)
    if code < 0:
        return []
    candidates = []
    for anchor, members in _alignments(group, tol):
        runs = alignment_runs(db, code, anchor, emb, lo, hi, [(a - lo, b - lo) for _, a, b in members], island,
                               trim)
        covered = np.zeros(hi - lo + 1, bool)
        for a, b in runs:
            covered[a:b + 1] = True
        candidates.append((int(covered.sum()), anchor, members, runs))
    title, artist = catalogue.get(song_id, (group[0][0].title, group[0][0].artist))
    claimed = np.zeros(hi - lo + 1, bool)
    out = []
    for _, anchor, members, runs in sorted(candidates, key=lambda c: -c[0]):
        confidence = max(float(h.max_confidence) for h, _, _ in members)
        for a, b in _free_spans(claimed, min(r[0] for r in runs), max(r[1] for r in runs)):
            if not any(a <= cb - lo and ca - lo <= b for _, ca, cb in members):
                continue
            claimed[a:b + 1] = True
            a, b = a + lo, b + lo
            # The song position between the hops, where this stretch's aligned similarity peaks.
            at = anchor + float(offset_shifts(emb[a:b + 1], db, np.array([code]), np.array([a + anchor]))[0])
            out.append(Occurrence(a * HOP_S, b * HOP_S + SEGMENT_S, song_id, title, artist,
                                  (a + at) * HOP_S, (b + at) * HOP_S + SEGMENT_S, confidence))
    return out


def _core(h: Heard, n: int) -> tuple[int, int]:
    """The segments a declared match covers (first, last)."""
    j0 = int(round(h.start_s / HOP_S))
    return j0, min(n - 1, max(j0, int(round((h.end_s - SEGMENT_S) / HOP_S))))


def _alignments(group: list, tol: int) -> list[tuple[int, list]]:
    """The group's declarations clustered by alignment (anchors within ``tol`` hops are one alignment, the
    anchor of its longest declaration standing for it)."""
    clusters: list[list] = []
    for p in sorted(group, key=lambda p: p[0].anchor):
        if clusters and p[0].anchor - clusters[-1][-1][0].anchor <= tol:
            clusters[-1].append(p)
        else:
            clusters.append([p])
    return [(max(c, key=lambda p: p[2] - p[1])[0].anchor, c) for c in clusters]


def _free_spans(claimed: np.ndarray, a: int, b: int) -> list[tuple[int, int]]:
    """The unclaimed stretches of ``a..b`` at least two segments long."""
    free = ~claimed[a:b + 1]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], free.astype(np.int8), [0]])))
    return [(a + int(s), a + int(e) - 1) for s, e in zip(edges[::2], edges[1::2]) if e - s >= 2]


def merge_continuations(occurrences: list[Occurrence], tolerance_s: float = CONTINUATION_TOLERANCE_S
                        ) -> list[Occurrence]:
    """Join each occurrence to the previous one when both are the same song, they touch (at most ``tolerance_s``
    apart in the recording) and the song continues where it left off (its jump differs from the recording's by at
    most ``tolerance_s``). A song that restarts or jumps to a repeated section stays a separate occurrence."""
    out: list[Occurrence] = []
    for o in sorted(occurrences, key=lambda o: o.start_s):
        prev = out[-1] if out else None
        if (prev is not None and o.song_id == prev.song_id and o.start_s - prev.end_s <= tolerance_s
                and abs((o.song_start_s - prev.song_end_s) - (o.start_s - prev.end_s)) <= tolerance_s):
            prev.end_s, prev.song_end_s = max(prev.end_s, o.end_s), max(prev.song_end_s, o.song_end_s)
            prev.confidence = max(prev.confidence, o.confidence)
        else:
            out.append(o)
    return out


def _gaps(occurrences: list[Occurrence], levels: np.ndarray, duration_s: float, silence_dbfs: float) -> list[Gap]:
    """The stretches between occurrences (at least a segment long), labelled by how much of them is silent."""
    edges = [0.0] + [x for o in occurrences for x in (o.start_s, o.end_s)] + [duration_s]
    out = []
    for a, b in zip(edges[::2], edges[1::2]):
        if b - a < HOP_S:
            continue
        seg = levels[int(a / HOP_S):max(int(a / HOP_S) + 1, int((b - SEGMENT_S) / HOP_S) + 1)]
        silent = float(np.mean(seg <= silence_dbfs)) if len(seg) else 1.0
        out.append(Gap(a, b, "silence" if silent >= 0.8 else "no match"))
    return out


def plot_timeline(result: ScanResult, path, width_in: float = 12.0) -> None:
    """Songs as coloured bars over the recording's time, confidence underneath (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workflow_lib.common.atomic import atomic_path

    songs = list(dict.fromkeys(o.song_id for o in result.occurrences))
    colours = plt.get_cmap("tab20")
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(width_in, 1.6 + 0.3 * max(1, len(songs))), sharex=True,
                                  gridspec_kw={"height_ratios": [max(1, len(songs)), 1.5]})
    scale = 60.0 if result.duration_s > 600 else 1.0
    for o in result.occurrences:
        y = songs.index(o.song_id)
        ax.barh(y, (o.end_s - o.start_s) / scale, left=o.start_s / scale, color=colours(y % 20), height=0.7)
        axc.plot([o.start_s / scale, o.end_s / scale], [o.confidence] * 2, color=colours(y % 20), linewidth=3)
    for g in result.gaps:
        if g.kind == "silence":
            ax.axvspan(g.start_s / scale, g.end_s / scale, color="0.92", zorder=0)
    labels = []
    for sid in songs:
        o = next(o for o in result.occurrences if o.song_id == sid)
        labels.append((f"{o.title} - {o.artist}" if o.title and o.artist else (o.title or sid))[:40])
    ax.set_yticks(range(len(songs)), labels, fontsize=8)
    ax.invert_yaxis()
    n_occ, n_songs = len(result.occurrences), len(songs)
    ax.set_title(f"{result.name}: {n_occ} occurrence{'s' if n_occ != 1 else ''} of {n_songs} "
                 f"song{'s' if n_songs != 1 else ''} (grey: silence)", fontsize=10)
    axc.set_ylim(0, 1.05)
    axc.set_ylabel("confidence", fontsize=8)
    axc.set_xlabel("recording time (min)" if scale == 60 else "recording time (s)")
    axc.set_xlim(0, result.duration_s / scale)
    for a in (ax, axc):
        a.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
