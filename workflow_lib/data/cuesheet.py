"""Cue sheets: the tracks of an album kept as one audio file (an "image", e.g. ``Album.flac`` + ``Album.cue``).

The image stays one song of the database (one file, one song id, offsets into the file); its cue sheet says which
track plays at an offset, so that an answer names the track (``track_at``). A cue sheet is found beside the file
(``Album.cue`` or ``Album.flac.cue``, or any ``.cue`` in the folder whose ``FILE`` line names the file, also under
another extension: a sheet written for ``Album.wav`` still fits ``Album.flac``), else inside the file's tags
(``CUESHEET``, as FLAC and APEv2 rippers embed it).

Parsed here rather than with a library: the format is a few line commands (``FILE``, ``TRACK nn AUDIO``, ``TITLE``,
``PERFORMER``, ``INDEX 01 mm:ss:ff`` at 75 frames a second), and the Python parsers on PyPI (CueParser) render text
templates instead of returning tracks and times. mutagen (already used for tags) reads the embedded sheet's text.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SHEET_EXTENSIONS = {".cue"}  # not music, but not a file to reject either: the catalogue reads them
FRAMES_PER_S = 75  # CD frames in a cue sheet's mm:ss:ff
_LINE = re.compile(r"^\s*([A-Za-z]+)\s*(.*?)\s*$")
_TIME = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})$")


@dataclass(frozen=True)
class Track:
    number: int
    start_s: float  # INDEX 01: where the track starts in its file
    title: str
    artist: str


@dataclass
class CueFile:
    """One ``FILE`` of a sheet and its tracks, with the sheet's album ``TITLE`` and ``PERFORMER``."""

    name: str
    tracks: list[Track] = field(default_factory=list)
    album: str = ""
    performer: str = ""


def _value(rest: str) -> str:
    """A command's argument: the quoted text, else the first word."""
    rest = rest.strip()
    if rest.startswith('"'):
        end = rest.rfind('"')
        return rest[1:end] if end > 0 else rest[1:]
    return rest.split()[0] if rest else ""


def _file_name(rest: str) -> str:
    """``FILE "name.wav" WAVE``: the name, quoted or not (the last word is the file type)."""
    rest = rest.strip()
    if rest.startswith('"'):
        return _value(rest)
    words = rest.rsplit(None, 1)
    return words[0] if len(words) == 2 else rest


def decode_cue(data: bytes) -> str:
    """A sheet's text: UTF-8 (with or without a byte-order mark), else Windows-1252, as Windows rippers wrote it."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def parse_cue(text: str) -> list[CueFile]:
    """The sheet's files with their tracks (those with an ``INDEX 01``); the album's ``PERFORMER`` stands in for a
    track without one, and ``Track N`` for a track without a title."""
    files: list[CueFile] = []
    album = {"title": "", "artist": ""}
    track: dict | None = None

    def close() -> None:
        nonlocal track
        if track is not None and track.get("start_s") is not None and files:
            files[-1].tracks.append(Track(track["number"], track["start_s"],
                                          track.get("title") or f"Track {track['number']}",
                                          track.get("artist") or album["artist"]))
        track = None

    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        command, rest = m.group(1).upper(), m.group(2)
        if command == "FILE":
            close()
            files.append(CueFile(_file_name(rest), album=album["title"], performer=album["artist"]))
        elif command == "TRACK":
            close()
            words = rest.split()
            if words and words[0].isdigit() and files:
                track = {"number": int(words[0]), "start_s": None}
        elif command in ("TITLE", "PERFORMER"):
            key = "title" if command == "TITLE" else "artist"
            (track if track is not None else album)[key] = _value(rest)
        elif command == "INDEX" and track is not None:
            words = rest.split()
            t = _TIME.match(words[1]) if len(words) == 2 else None
            if words and words[0] == "01" and t:
                mm, ss, ff = (int(x) for x in t.groups())
                track["start_s"] = mm * 60 + ss + ff / FRAMES_PER_S
    close()
    return files


def _usable(entry: CueFile, where: str) -> CueFile | None:
    starts = [t.start_s for t in entry.tracks]
    if any(b <= a for a, b in zip(starts, starts[1:])):
        log.warning("%s: the tracks' start times do not rise; its tracks are not used", where)
        return None
    return entry


def _same_stem(a: str, b: str) -> bool:
    return Path(a.replace("\\", "/")).stem.casefold() == Path(b).stem.casefold()


_UNREAD = object()  # ``CueSheets.find`` without the file's tags: it reads them itself


class CueSheets:
    """Finds the tracks of audio files; reads each folder's sheets once."""

    def __init__(self) -> None:
        self._folders: dict[Path, list[tuple[Path, list[CueFile]]]] = {}

    def _sheets(self, folder: Path) -> list[tuple[Path, list[CueFile]]]:
        if folder not in self._folders:
            sheets = []
            try:
                paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SHEET_EXTENSIONS and p.is_file())
            except OSError:
                paths = []
            for p in paths:
                try:
                    sheets.append((p, parse_cue(decode_cue(p.read_bytes()))))
                except OSError as exc:
                    log.warning("%s: unreadable cue sheet (%s)", p, exc)
            self._folders[folder] = sheets
        return self._folders[folder]

    def tracks(self, audio_path: str | Path) -> list[Track]:
        """The tracks of ``audio_path`` (empty when no sheet describes it, or it holds a single track)."""
        entry = self.find(audio_path)
        return entry.tracks if entry is not None else []

    def find(self, audio_path: str | Path, tags=_UNREAD) -> CueFile | None:
        """The sheet's entry for ``audio_path`` (its tracks, the album's title and performer), when a sheet names
        two or more tracks in it. ``tags``: the file's tags as mutagen read them (None: it has none), when the
        caller has them already (the catalogue reads them for the title): the file is not opened again."""
        audio_path = Path(audio_path)
        found: CueFile | None = None
        sheets = self._sheets(audio_path.parent)
        # a sheet named after the file first, then any sheet of the folder whose FILE line names it
        named = [s for s in sheets if s[0].name.casefold() in
                 {audio_path.with_suffix(".cue").name.casefold(), (audio_path.name + ".cue").casefold()}]
        for path, files in named + [s for s in sheets if s not in named]:
            fitting = [f for f in files if _same_stem(f.name, audio_path.name)]
            if not fitting and len(files) == 1 and (path, files) in named:  # a sheet for the file before a rename
                fitting = files
            if fitting:
                found = _usable(fitting[0], str(path))
                break
        if found is None:
            text = embedded_cue(audio_path) if tags is _UNREAD else cue_in_tags(tags)
            files = parse_cue(text) if text else []
            if len(files) == 1:
                found = _usable(files[0], f"{audio_path} (its CUESHEET tag)")
        return found if found is not None and len(found.tracks) > 1 else None


def embedded_cue(path: str | Path) -> str | None:
    """The text of a cue sheet kept in the file's tags (``CUESHEET``), or None."""
    try:
        import mutagen

        f = mutagen.File(str(path))
    except Exception as exc:  # mutagen raises format-specific errors for damaged tags
        log.debug("no readable tags in %s (%s)", path, exc)
        return None
    return cue_in_tags(getattr(f, "tags", None))


def cue_in_tags(tags) -> str | None:
    """The text of the ``CUESHEET`` among tags mutagen read (Vorbis comments, APEv2), or None."""
    if not tags or not hasattr(tags, "keys"):
        return None
    for key in tags.keys():
        if str(key).lower() == "cuesheet":
            value = tags[key]
            value = value[0] if isinstance(value, list) and value else value
            return str(value) if value else None
    return None


def tracks_to_json(tracks: list[Track]) -> str | None:
    return json.dumps([asdict(t) for t in tracks], ensure_ascii=False) if tracks else None


def tracks_from_json(text: str | None) -> list[Track]:
    if not text or not isinstance(text, str):
        return []
    return [Track(**t) for t in json.loads(text)]


def track_at(tracks: list[Track], offset_s: float | None) -> Track | None:
    """The track playing at ``offset_s`` into the file: the last to start at or before it (None before the first,
    in a hidden pregap)."""
    if not tracks or offset_s is None:
        return None
    current = None
    for t in tracks:
        if t.start_s <= offset_s + 1e-6:
            current = t
        else:
            break
    return current
