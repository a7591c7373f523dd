"""Answers about an album kept as one file, named by their track (``data.cuesheet``, ``database.catalogue.TrackNames``).

The database knows the album image as one song; these functions rename what the scan and the listener report: a
stretch of the image is cut where its tracks change, and each piece takes the track's title and artist, its number,
where it starts in the file (``track_start_s``) and the album's title (``album``). Times in the song stay times in
the file, so the song id and its offsets keep one meaning.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Iterator

from workflow_lib.listener.decisions import Decision, Heard, ListenSummary

if TYPE_CHECKING:  # the scan module loads the model code (torch); the listener's display needs none of it
    from workflow_lib.listener.scan import Occurrence, ScanResult


def track_cuts(song_start_s: float, song_end_s: float, bounds: list[float]) -> Iterator[tuple[float, float]]:
    """The pieces of the song span ``song_start_s..song_end_s`` between the track starts ``bounds``."""
    cuts = [song_start_s, *(b for b in bounds if song_start_s < b < song_end_s), song_end_s]
    yield from zip(cuts, cuts[1:])


def track_fields(names, song_id: str | None, song_s: float | None, title: str | None,
                 artist: str | None) -> dict | None:
    """What names an answer at ``song_s`` into the song ``song_id`` (titled ``title`` by ``artist``) when it is an
    album image: the track's title and artist (the album's where the track has none), its number and start, and
    the album's title; None for a song of its own."""
    track = names.at(song_id, song_s) if names else None
    if track is None:
        return None
    return {"title": track.title, "artist": track.artist or artist, "track": track.number,
            "track_start_s": track.start_s, "album": title}


def _named(item, names, song_s: float):
    """``item`` (an occurrence, heard song or decision) with the names of the track at ``song_s``, if any."""
    fields = track_fields(names, item.song_id, song_s, item.title, item.artist)
    return item if fields is None else replace(item, **fields)


def scan_by_tracks(result: ScanResult, names) -> ScanResult:
    """The scan with each occurrence of an album image cut where its tracks change: a row per track."""
    if not names:
        return result
    out: list[Occurrence] = []
    for o in result.occurrences:
        if not names.bounds(o.song_id):  # a song of its own: as it was found
            out.append(o)
            continue
        # recording seconds per song second (1 unless the recording was sped up or slowed down)
        rate = (o.end_s - o.start_s) / max(o.song_end_s - o.song_start_s, 1e-9)
        for a, b in track_cuts(o.song_start_s, o.song_end_s, names.bounds(o.song_id)):
            piece = replace(o, start_s=o.start_s + (a - o.song_start_s) * rate,
                            end_s=o.start_s + (b - o.song_start_s) * rate, song_start_s=a, song_end_s=b)
            out.append(_named(piece, names, a))
    return replace(result, occurrences=out)


def summary_by_tracks(summary: ListenSummary, names) -> ListenSummary:
    """The listener's summary with each song heard in an album image cut where its tracks change."""
    if not names:
        return summary
    heard: list[Heard] = []
    for h in summary.heard:
        if not names.bounds(h.song_id):
            heard.append(h)
            continue
        for a, b in track_cuts(h.song_position(h.start_s), h.song_position(h.end_s), names.bounds(h.song_id)):
            start, end = a - h.song_offset_s, b - h.song_offset_s
            piece = replace(h, start_s=start, end_s=end, declared_s=max(h.declared_s, start))
            heard.append(_named(piece, names, a))
    return replace(summary, heard=heard)


def decision_by_track(d: Decision, names) -> Decision:
    """One decision named by the track at its position in the song."""
    if not names or d.song_id is None or d.song_pos_s is None:
        return d
    return _named(d, names, d.song_pos_s)
