"""What the listener observes, declares and concludes: a hop's best candidate (``Observation``), a declared song
(``Heard``), the decision after a hop (``Decision``) and a session's summary (``ListenSummary``), with their JSON
forms. Plain records: the commands and the album-track naming read them without the search."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from workflow_lib import HOP_S, SAMPLE_RATE

LISTENING, MATCH, SILENCE = "listening", "match", "silence"


@dataclass(frozen=True)
class Observation:
    """One hop's best candidate. ``anchor`` = song segment - stream segment: constant while a song plays on."""

    song_id: str
    anchor: int
    score: float  # the best candidate's match score
    threshold: float
    confidence: float
    is_match: bool
    n_segments: int
    title: str | None = None
    artist: str | None = None
    by_song: tuple[tuple[str, float], ...] = ()  # best score of each candidate song on the same window
    decision: float = float("nan")  # the no-match rule's statistic of the best candidate

    def song_score(self, song_id: str) -> float:
        """Best score of ``song_id`` at any alignment on this window (-inf when it was not a candidate)."""
        return next((sc for sid, sc in self.by_song if sid == song_id), -math.inf)

    def others(self, song_id: str) -> list[float]:
        """Scores of the other candidate songs on this window, best first (the cohort of ``song_id``)."""
        return [sc for sid, sc in self.by_song if sid != song_id]

    def agrees(self, other: "Observation | Heard | None", tolerance: int) -> bool:
        return other is not None and other.song_id == self.song_id and abs(other.anchor - self.anchor) <= tolerance


@dataclass
class Heard:
    """A declared match: which song, when in the stream and where in the song."""

    song_id: str
    title: str | None
    artist: str | None
    anchor: int
    start_s: float  # stream time of the oldest segment in the window that declared it
    declared_s: float  # stream time at which it was declared
    end_s: float  # stream time of the last hop that supported it
    max_confidence: float
    max_score: float
    hops: int = 1
    # an album image's track (``listener.tracks``): its number, where it starts in the file, the album's title
    track: int | None = None
    track_start_s: float | None = None
    album: str | None = None
    # the alignments held before a resync moved ``anchor``, oldest first: (stream time where it last held: its last
    # supported hop, cut back as an end is where the core keeps recent fingerprints, anchor). The scan follows each
    # at its own place, the summary lists each jump's places apart (``by_alignment``).
    earlier: list[tuple[float, int]] = field(default_factory=list)

    def moved(self, last_held_s: float) -> None:
        """A resync is about to move ``anchor``: the present alignment, last held at ``last_held_s``, is kept."""
        self.earlier.append((last_held_s, self.anchor))

    def song_position(self, stream_s: float) -> float:
        """Position in the song (seconds) at stream time ``stream_s``."""
        return stream_s + self.anchor * HOP_S

    @property
    def song_offset_s(self) -> float:
        """Song time at stream time 0 (where the stream started in the song)."""
        return self.anchor * HOP_S

    @property
    def song_start_s(self) -> float:
        """Where in the song the listening started: at its first alignment (a resync may have moved the anchor
        since, e.g. to the song's start when it was played again)."""
        return self.start_s + (self.earlier[0][1] if self.earlier else self.anchor) * HOP_S

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["earlier"]
        d.update(song_start_s=round(self.song_start_s, 3),
                 song_end_s=round(self.song_position(self.end_s), 3))
        return d


# A listening's song time that moved by at most this much at a resync is one playing (an offset that wandered by a
# hop or two); a larger move is another place of the song (played again, a jump), and the summary lists it apart.
CONTINUATION_TOLERANCE_S = 1.5


def by_alignment(h: Heard, min_jump_s: float = 0.0) -> list[Heard]:
    """A listening as one per place of the song it held: each resync (``Heard.earlier``) that moved its song time
    by more than ``min_jump_s`` ends the piece before it (0: every resync)."""
    places = [*h.earlier, (h.end_s, h.anchor)]
    out: list[Heard] = []
    start_s, moves = h.start_s, []
    for (end_s, anchor), nxt in zip(places, places[1:] + [None]):
        if nxt is not None and abs(nxt[1] - anchor) * HOP_S <= min_jump_s:
            moves.append((end_s, anchor))  # a small move: the same piece goes on
            continue
        out.append(replace(h, anchor=anchor, start_s=start_s, end_s=end_s, earlier=moves,
                           declared_s=max(h.declared_s, start_s)))
        start_s, moves = end_s, []
    return out


@dataclass
class Decision:
    """What the listener concluded after one hop. ``song_*`` fields describe the declared match in state
    ``match`` and the best (not yet trusted) guess otherwise."""

    stream_s: float  # stream time at the end of the newest segment
    state: str  # listening | match | silence
    song_id: str | None
    title: str | None
    artist: str | None
    song_pos_s: float | None  # position in that song at stream_s
    song_offset_s: float | None  # song time at stream time 0 (song_pos_s - stream_s)
    score: float  # the match score (aligned similarity) of what is shown
    threshold: float  # what ``decision`` must reach
    confidence: float
    above_threshold: bool
    streak: int
    n_segments: int
    compute_ms: float
    embed_ms: float
    search_ms: float
    level_dbfs: float
    event: str | None = None  # match (declared), change (another song declared), lost (back to listening)
    window_cut: bool = False  # the window was cut to its tail (music changed)
    overflows: int = 0
    dropped_s: float = 0.0
    decision: float = float("nan")  # the no-match rule's statistic (``statistic``) of what is shown
    statistic: str = "score"
    whitened: bool = False  # what is shown comes from the whitened view of the stream (``views.TwoViewCore``)
    # an album image's track at song_pos_s (``listener.tracks``): its number, where it starts in the file, the album
    track: int | None = None
    track_start_s: float | None = None
    album: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


@dataclass
class ListenSummary:
    heard: list[Heard]
    stream_s: float
    decisions: int
    overflows: int
    dropped_s: float
    compute_ms_p50: float
    compute_ms_p95: float
    compute_ms_max: float
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = _plain({k: v for k, v in asdict(self).items() if k != "heard"})
        d["heard"] = [_plain(h.to_dict()) for h in self.heard]
        return d


def listen_summary(core: Any, overflows: int, dropped_s: float, device: str) -> ListenSummary:
    """The session summary of a listener core (``heard``, ``stream_samples``, ``decisions``, ``compute_ms``): a
    listening that jumped to another place of its song is one heard entry per place (``by_alignment``)."""
    ms = np.asarray(core.compute_ms, dtype=np.float64)
    pct = (lambda q: float(np.percentile(ms, q))) if len(ms) else (lambda q: float("nan"))
    heard = [p for h in core.heard for p in by_alignment(h, CONTINUATION_TOLERANCE_S)]
    return ListenSummary(heard, core.stream_samples / SAMPLE_RATE, core.decisions, overflows, dropped_s,
                         pct(50), pct(95), float(ms.max()) if len(ms) else float("nan"), device)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: floats rounded, NaN/inf as None (JSON has no NaN)."""
    return {k: (round(v, 4) if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in d.items()}
