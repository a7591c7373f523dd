"""The live listener's two views of the stream: as it is, and whitened (a resonant space's ringing taken out).

A query of 3 s or more is searched as it is and whitened (``search.whiten``), and the answer is the view the
no-match rule trusts more. The listener does the same with two ``ListenerCore``s over one stream: one hears the
stream as it is, the other the stream through ``WhitenedView.stream`` (the inverse filter of a predictor refitted
every 0.5 s on the newest 5 s; its steady noise gated out first when ``denoise`` asks). Each declares, holds and
releases on its own, at the calibration's two-view thresholds (the null queries decided by the better of both views:
a song named by either core is held to the rate that a query picked from two views is held to; a window shorter than
the shortest two-view length, such as the 2 s tail, gets that length's threshold, and the benchmark's false
declarations stayed where one view had them). What is shown is the plain core's match when it has one, else the
whitened core's; ``TwoViewCore`` turns the two into one stream of decisions and one list of heard songs, with events
(match / change / lost / resync) from what is shown.
Both cores embed only each hop's newest segment, so the second view costs one more segment's fingerprint, one more
window search and the predictor (1.0 ms per hop in a capture's 50 ms blocks; 2.6 ms with the noise gate).
bench/README.md, "The listener's whitened view", has the measurement.

The batch scan (``listener.scan``) has the same two views when asked (``nafp scan --whitened``): two cores over
the recording and its whitened stream, one timeline from both (``listener.scan.merge_views``). It is not the scan's
default: it fingerprints every segment a second time.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import replace
from typing import Iterable

import numpy as np

from workflow_lib.listener.core import ListenerCore, SearcherLike
from workflow_lib.listener.decisions import MATCH, SILENCE, Decision, Heard, ListenSummary, listen_summary
from workflow_lib.listener.settings import ListenConfig


def two_views_missing(searcher: SearcherLike) -> str | None:
    """Why a stream cannot be followed in two views with this searcher (None: it can): its whitened view is off, or
    its calibration has no two-view thresholds (each view is held to them)."""
    view = getattr(searcher, "whitened_view", None)
    calibration = getattr(searcher, "calibration", None)
    if view is None or not view.enabled:
        return "the whitened view is off (search.whitened_view): a scan has only the recording as it is"
    if calibration is None or calibration.two_views is None:
        return ("this database's calibration has no two-view thresholds: rerun its calibration "
                "(nafp index, or the workflow's calibrate rule) to scan in two views")
    return None


def listener_core(searcher: SearcherLike, config: ListenConfig | None = None,
                  exclude_songs: Iterable[str] = ()) -> "ListenerCore | TwoViewCore":
    """The listener for this searcher: two views when its whitened view is on and its calibration has the two-view
    thresholds (``two_views_missing``), else the stream as it is only."""
    if two_views_missing(searcher) is None:
        return TwoViewCore(searcher, config, exclude_songs)
    return ListenerCore(searcher, config, exclude_songs)


class TwoViewCore:
    """``ListenerCore``'s interface (``push``, ``skip``, ``finish``, ``summary``, ``heard``, ``current``) over two
    cores: ``plain`` hears the stream, ``whitened`` the stream whitened. Decisions come at the same stream times as
    one core's would."""

    def __init__(self, searcher: SearcherLike, config: ListenConfig | None = None,
                 exclude_songs: Iterable[str] = ()):
        view = searcher.whitened_view  # type: ignore[attr-defined]
        self.plain = ListenerCore(searcher, config, exclude_songs, views=2)
        self.whitened = ListenerCore(searcher, config, exclude_songs, views=2)
        self.whitener = view.stream()
        self.config = self.plain.config
        self.current: Heard | None = None
        self._held_by: ListenerCore = self.plain  # the core whose match ``current`` last showed
        self.heard: list[Heard] = []
        self.decisions = 0
        self.compute_ms: deque[float] = deque(maxlen=10_000)

    @property
    def stream_samples(self) -> int:
        return self.plain.stream_samples

    def skip(self, n_samples: int) -> None:
        """Audio was lost: both cores restart their windows after the gap, and the whitener its predictor (the
        seconds it still held back are lost with the gap)."""
        if n_samples <= 0:
            return
        held = self.plain.stream_samples - self.whitened.stream_samples
        self.plain.skip(n_samples)
        self.whitener.reset()
        self.whitened.skip(n_samples + held)

    def push(self, audio_8k: np.ndarray) -> Decision | None:
        t0 = time.perf_counter()
        plain = self.plain.push(audio_8k)
        t1 = time.perf_counter()
        white_audio = self.whitener.push(audio_8k)
        whiten_ms = (time.perf_counter() - t1) * 1000.0
        whitened = self.whitened.push(white_audio) if len(white_audio) else None
        if plain is None:  # no new segment (the whitened core is on the same grid, never ahead)
            return None
        self.decisions += 1
        total_ms = (time.perf_counter() - t0) * 1000.0
        self.compute_ms.append(total_ms)
        # What is shown: the plain core's match, else the whitened core's, else the plain core's best guess.
        # Silence is the stream's own level (the whitened stream's first segment of silence still holds the
        # inverse filter's last response).
        shown, d, core = self.plain.current, plain, self.plain
        if shown is None and self.whitened.current is not None and whitened is not None and plain.state != SILENCE:
            shown, d, core = self.whitened.current, whitened, self.whitened
        event = self._follow(shown, d, core)
        # fingerprinting, the whitening included (as a query's embed_ms counts it)
        embed_ms = plain.embed_ms + whiten_ms + (whitened.embed_ms if whitened is not None else 0.0)
        return replace(d, state=MATCH if self.current is not None else d.state, event=event,
                       whitened=d is whitened, compute_ms=total_ms, embed_ms=embed_ms,
                       search_ms=total_ms - embed_ms)

    def _follow(self, shown: Heard | None, d: Decision, core: ListenerCore) -> str | None:
        """Update what this listener has heard from what is shown now (``core``'s match); the event that makes. A
        listening that ends (or moves to another place of its song) ends where the view that held it last says its
        song last held (``ListenerCore.ended_s``)."""
        cur = self.current
        if shown is None:
            if cur is not None:
                self._held_by.cut_end(cur)
            self.current = None
            return "lost" if cur is not None else None
        held_by, self._held_by = self._held_by, core
        if cur is not None and cur.song_id != shown.song_id:
            held_by.cut_end(cur)
        if cur is None or cur.song_id != shown.song_id:
            # its own list of earlier alignments (the core's goes on with the core's own resyncs)
            self.current = replace(shown, declared_s=d.stream_s, end_s=d.stream_s, hops=1,
                                   earlier=list(shown.earlier))
            self.heard.append(self.current)
            return "match" if cur is None else "change"
        # the same song, held by either core: this listening goes on (at the offset of the core that holds it; a
        # move, by a core's resync or to the other core's offset, is kept as the core keeps its own)
        moved = abs(cur.anchor - shown.anchor) > self.config.offset_tolerance_hops
        if moved:
            cur.moved(held_by.ended_s(cur))
        cur.anchor, cur.end_s, cur.hops = shown.anchor, d.stream_s, cur.hops + 1
        cur.max_confidence = max(cur.max_confidence, shown.max_confidence)
        cur.max_score = max(cur.max_score, shown.max_score)
        return "resync" if moved else None

    def finish(self) -> None:
        if self.current is not None:
            self._held_by.cut_end(self.current)
        self.plain.finish()
        self.whitened.finish()
        self.current = None

    def summary(self, overflows: int = 0, dropped_s: float = 0.0, device: str = "") -> ListenSummary:
        return listen_summary(self, overflows, dropped_s, device)
