"""Batch monitoring: every song in a long recording, with where it starts and ends in the recording and in the song.

The recording is decoded and fingerprinted in chunks (bounded memory for the audio), every segment's nearest
database segments are found in one batched search per chunk, and the segments are fed through the listener's own
decision logic (``core.ListenerCore.push_segments``: the same windows, thresholds, hysteresis and song-change
handling as live listening, one implementation for stream and file), as fast as the CPU allows. Its declared matches
become occurrences; each one's boundaries are then refined segment by segment: the window-level decision smears a
boundary by the window length, while the aligned similarity of each segment with the song's matching segment shows
where the song really starts and ends. Stretches between occurrences are gaps, labelled ``silence`` or ``no
match`` (unknown music or talk).

The fingerprints of the whole recording are kept for that refinement, as float16: about 0.5 MB per minute of
recording (the audio itself is never held whole).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from workflow_lib import HOP_SAMPLES, SAMPLE_RATE, SEGMENT_SAMPLES
from workflow_lib.listener.core import ListenConfig, ListenerCore
from workflow_lib.model.embed import iter_embed_chunks
from workflow_lib.search.searcher import find_neighbours

log = logging.getLogger(__name__)

HOP_S = HOP_SAMPLES / SAMPLE_RATE
SEGMENT_S = SEGMENT_SAMPLES / SAMPLE_RATE
# A segment belongs to an occurrence when its aligned similarity with the song reaches this share of the
# occurrence's typical (median) similarity, and at least MIN_SEGMENT_SIM.
EDGE_SHARE = 0.5
MIN_SEGMENT_SIM = 0.2


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
    confidence: float  # the best confidence while it was held (search.searcher.Match.confidence)
    kind: str = "song"

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
                 "confidence": None}
            if isinstance(r, Occurrence):
                d.update({k: v for k, v in asdict(r).items() if k in d and k != "kind"})
                for k in ("song_start_s", "song_end_s", "confidence"):
                    d[k] = round(float(d[k]), 3)
            out.append(d)
        return out

    @property
    def best(self) -> Occurrence | None:
        """The occurrence a single answer for the whole file should name: the longest, then the surest."""
        return max(self.occurrences, key=lambda o: (o.duration_s, o.confidence), default=None)


def scan_chunks(searcher, chunks: Iterable[np.ndarray], config: ListenConfig | None = None, name: str = "",
                exclude_songs: set[str] | None = None) -> ScanResult:
    """Scan a stream of consecutive 8 kHz chunks (e.g. ``audio.files.iter_audio`` of a file). ``exclude_songs``
    are searched as if they were not in the database (the monitoring benchmark's unknown music)."""
    config = config or ListenConfig()
    t0 = time.perf_counter()
    core = ListenerCore(searcher, config)
    embs: list[np.ndarray] = []
    levels: list[np.ndarray] = []
    n_seg = 0
    samples = 0

    def counted(it: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal samples
        for c in it:
            samples += len(c)
            yield c

    for first, emb, lev in iter_embed_chunks(searcher.fingerprinter, counted(chunks), searcher.batch_size,
                                             searcher.device, with_levels=True, silence_dbfs=config.silence_dbfs):
        nb = find_neighbours(searcher.db, emb, searcher.top_k, exclude_songs or None)
        core.push_segments(first, emb, lev, nb)
        embs.append(emb.astype(np.float16))
        levels.append(lev)
        n_seg = first + len(emb)
    core.finish()
    emb_all = np.concatenate(embs) if embs else np.zeros((0, 1), np.float16)
    lev_all = np.concatenate(levels) if levels else np.zeros(0)
    duration = samples / SAMPLE_RATE
    occurrences = _refine(searcher, core.heard, emb_all, config)
    gaps = _gaps(occurrences, lev_all, duration, config.silence_dbfs)
    result = ScanResult(name, duration, occurrences, gaps, time.perf_counter() - t0,
                        {"segments": n_seg, "decisions": core.decisions})
    log.info("%s: %.1f min scanned in %.1f s (%.0fx realtime): %d occurrences", name or "stream", duration / 60,
             result.compute_s, duration / max(result.compute_s, 1e-9), len(occurrences))
    return result


def _refine(searcher, heard: list, emb: np.ndarray, config: ListenConfig) -> list[Occurrence]:
    """Occurrences from the listener's declared matches, boundaries refined by per-segment aligned similarity."""
    db = searcher.db
    catalogue = getattr(searcher, "catalogue", {}) or {}
    n = len(emb)
    reach = config.window_segments  # how far a boundary may move: the window that smeared it
    out: list[Occurrence] = []
    for h in heard:
        code = db.song_position(h.song_id)
        j0 = int(round(h.start_s / HOP_S))
        j1 = max(j0, int(round((h.end_s - SEGMENT_S) / HOP_S)))
        lo, hi = max(0, j0 - reach), min(n - 1, j1 + reach)
        if code < 0 or hi < lo:
            continue
        js = np.arange(lo, hi + 1)
        rows = db.rows_for(np.full(len(js), code), js + h.anchor)
        q = emb[lo:hi + 1].astype(np.float32)
        sims = np.where(rows >= 0, db.scores(q, rows[:, None])[:, 0], 0.0)
        sims = np.where(np.isfinite(sims), sims, 0.0)
        core = sims[j0 - lo:j1 - lo + 1]
        typical = float(np.median(core[core > 0])) if np.any(core > 0) else 0.0
        level = max(EDGE_SHARE * typical, MIN_SEGMENT_SIM)
        inside = sims >= level
        # two segments in a row mark a boundary: one stray match is not the song starting
        pair = inside[:-1] & inside[1:] if len(inside) > 1 else inside
        hits = np.flatnonzero(pair)
        if len(hits):
            a, b = int(js[hits[0]]), int(js[hits[-1] + 1 if len(inside) > 1 else hits[-1]])
        else:
            a, b = j0, j1
        title, artist = catalogue.get(h.song_id, (h.title, h.artist))
        out.append(Occurrence(a * HOP_S, b * HOP_S + SEGMENT_S, h.song_id, title, artist,
                              (a + h.anchor) * HOP_S, (b + h.anchor) * HOP_S + SEGMENT_S, float(h.max_confidence)))
    out.sort(key=lambda o: o.start_s)
    for prev, nxt in zip(out, out[1:]):  # refined edges of neighbours may overlap: they meet half way
        if nxt.start_s < prev.end_s:
            mid = (nxt.start_s + prev.end_s) / 2
            prev.song_end_s -= prev.end_s - mid
            prev.end_s = mid
            nxt.song_start_s += mid - nxt.start_s
            nxt.start_s = mid
    return merge_continuations([o for o in out if o.end_s > o.start_s])


# Neighbouring occurrences of one song whose song time runs on with the recording's (within this much) are one
# occurrence: the listener re-anchors a held song when its offset wanders by a hop or two (a resync), which is not
# a new playing of it.
CONTINUATION_TOLERANCE_S = 1.5


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
    ax.set_title(f"{result.name}: {len(result.occurrences)} occurrences of {len(songs)} songs "
                 f"(grey: silence)", fontsize=10)
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
