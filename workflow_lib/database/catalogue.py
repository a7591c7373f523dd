"""Song catalogue: song id -> title, artist, path, so that every answer names a song a person recognises.

Titles and artists come from the file's tags (ID3, Vorbis comments, MP4 atoms... through mutagen) when present, else
from the file name: ``"Artist - Title"`` and ``"source__artist__title"`` patterns are split, a leading track number
is dropped and underscores become spaces. The title is never empty; an unknown artist is ``""``. An album kept as one
file with a cue sheet (``data.cuesheet``) also has its ``tracks``: JSON ``[{number, start_s, title, artist}]``, which
answers use to name the track playing at their offset (``TrackNames``); null for other files.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from workflow_lib.common.atomic import write_parquet_atomic
from workflow_lib.common.progress import progress
from workflow_lib.data.cuesheet import CueSheets, Track, track_at, tracks_from_json, tracks_to_json
from workflow_lib.data.split import UNKNOWN_COLLECTION

log = logging.getLogger(__name__)

COLUMNS = ["song_id", "title", "artist", "path", "tracks"]
REQUIRED = COLUMNS[:4]  # a catalogue written before cue sheets has no ``tracks``
# What the catalogue stage writes; the rule lists it as a param, so a new format reruns the stage after an upgrade
# (2: album tracks, which a sheet kept only in an image's tags would otherwise get at the next change to its folder).
CATALOGUE_FORMAT = "nafp-catalogue/2"
_TRACK_NO = re.compile(r"^\s*\d{1,3}\s*(?:[-._)]\s*|\s+)(?=\S)")


def _first_tag(tags, *keys: str) -> str:
    for key in keys:
        try:
            values = tags.get(key)
        except (KeyError, ValueError):  # some tag formats raise instead of returning None
            values = None
        if values:
            value = str(values[0] if isinstance(values, (list, tuple)) else values).strip()
            if value:
                return value
    return ""


def file_tags(path: str | Path):
    """The file's tags as mutagen reads them (easy keys: ``title``, ``artist``...), or None when it has none or they
    cannot be read."""
    try:
        import mutagen

        f = mutagen.File(str(path), easy=True)
    except Exception as exc:  # mutagen raises format-specific errors for damaged tags
        log.debug("no readable tags in %s (%s)", path, exc)
        return None
    return f.tags if f is not None and f.tags else None


def names_in_tags(tags) -> tuple[str, str]:
    """(title, artist) among ``file_tags``; empty strings where absent."""
    if not tags:
        return "", ""
    return _first_tag(tags, "title"), _first_tag(tags, "artist", "albumartist", "performer")


def read_tags(path: str | Path) -> tuple[str, str]:
    """(title, artist) from the file's tags; empty strings where absent or unreadable."""
    return names_in_tags(file_tags(path))


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("_", " ")).strip(" -.")


def names_from_filename(path: str | Path) -> tuple[str, str]:
    """(title, artist) guessed from the file name."""
    stem = Path(path).stem
    artist = ""
    if " - " in stem:
        artist, title = stem.split(" - ", 1)
        if artist.strip().isdigit():  # "01 - Title": the first part is a track number
            artist = ""
    elif "__" in stem:
        parts = [p for p in stem.split("__") if p.strip("_ ")]
        title = parts[-1] if parts else stem
        artist = parts[-2] if len(parts) > 1 else ""
    else:
        title = stem
    title = _clean(_TRACK_NO.sub("", title)) or _clean(title) or stem
    return title, _clean(artist)


def catalogue_entry(song_id: str, path: str | Path, cues: CueSheets | None = None) -> dict[str, str | None]:
    """The song's row; ``cues`` reads each folder's cue sheets once over many songs. An album image without tags
    takes its title and performer from its cue sheet before its file name."""
    tags = file_tags(path)  # read once: for the names, and for a cue sheet kept in them
    title, artist = names_in_tags(tags)
    sheet = (cues or CueSheets()).find(path, tags)
    if not title and sheet is not None:
        title, artist = sheet.album, artist or sheet.performer
    if not title:
        guess_title, guess_artist = names_from_filename(path)
        title, artist = guess_title, artist or guess_artist
    tracks = tracks_to_json(sheet.tracks) if sheet is not None else None
    return {"song_id": song_id, "title": title, "artist": artist, "path": str(path), "tracks": tracks}


def build_catalogue(songs: pd.DataFrame) -> pd.DataFrame:
    """Rows ``song_id, title, artist, path, tracks`` for a table with ``song_id`` and ``path``."""
    cues = CueSheets()
    rows = [catalogue_entry(sid, path, cues) for sid, path in
            progress(zip(songs["song_id"], songs["path"]), total=len(songs), desc="catalogue", unit="song",
                     mininterval=10)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["tracks"] = table["tracks"].astype(object).where(table["tracks"].notna(), None)  # null, not NaN, in JSON
    return table


def superseded_added_songs(songs: pd.DataFrame, added_rows: pd.DataFrame, removed: set[str] = frozenset()
                           ) -> set[str]:
    """Songs added with ``nafp db add`` whose file is now a song of the music folders (added, then the folder
    indexed again): the folder's song is kept, so that one file is one database song. A folder song that was
    removed (``removed``: `nafp db remove`) keeps nothing in its place, so its added copy stays. ``songs``: the
    manifest's ``song_id, path``."""
    if added_rows.empty:
        return set()
    folder_files = {os.path.realpath(p) for sid, p in zip(songs["song_id"], songs["path"]) if sid not in removed}
    gone = {str(sid) for sid, p in zip(added_rows["song_id"], added_rows["path"])
            if os.path.realpath(p) in folder_files}
    if gone:
        log.info("%d song(s) added with `nafp db add` are files of the music folders now: the folders' songs are "
                 "kept in their place", len(gone))
    return gone


def write_catalogue(songs_path: str | Path, out_path: str | Path,
                    extra: Iterable[pd.DataFrame] = (), removed: set[str] = frozenset()) -> pd.DataFrame:
    """The ``catalogue`` rule: every manifest song but the unknown music (``data.unknown_dirs``: never in the
    database, so never named or removed), plus ``extra`` ready-made rows (songs added from the command line, less
    those ``superseded_added_songs`` finds with the ``removed`` songs); later rows win for a repeated song id."""
    songs = pd.read_parquet(songs_path, columns=["song_id", "path", "collection"])
    songs = songs[songs["collection"] != UNKNOWN_COLLECTION].drop(columns="collection")
    extra = [e[~e["song_id"].isin(superseded_added_songs(songs, e, removed))] for e in extra]
    table = pd.concat([build_catalogue(songs), *[e.reindex(columns=COLUMNS) for e in extra]], ignore_index=True)
    table = table.drop_duplicates("song_id", keep="last").reset_index(drop=True)
    write_parquet_atomic(table, out_path)
    n_tagged = int((table["artist"] != "").sum())
    log.info("catalogue: %d songs (%d with an artist) -> %s", len(table), n_tagged, out_path)
    return table


def load_catalogue(path: str | Path) -> pd.DataFrame:
    """The catalogue indexed by ``song_id``; a clear error when it is missing or lacks columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: catalogue missing; run `snakemake catalogue`")
    table = pd.read_parquet(path)
    missing = set(REQUIRED) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: catalogue lacks columns {sorted(missing)}")
    return table.reindex(columns=[*table.columns, *(c for c in COLUMNS if c not in table.columns)]) \
        .set_index("song_id", drop=False)


def upsert_catalogue(path: str | Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Add or replace rows (by song id) in a catalogue file, atomically; creates the file when missing."""
    path = Path(path)
    old = pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=COLUMNS)
    table = pd.concat([old.reindex(columns=COLUMNS), rows.reindex(columns=COLUMNS)], ignore_index=True)
    table = table.drop_duplicates("song_id", keep="last").reset_index(drop=True)
    write_parquet_atomic(table, path)
    return table


def added_catalogue_rows(fingerprint_paths: Iterable[str | Path]) -> pd.DataFrame:
    """Catalogue rows stored in the metadata of fingerprint files written by ``scripts/db.py add``."""
    from workflow_lib.database.fingerprint_file import read_meta

    rows: list[dict] = []
    for p in fingerprint_paths:
        meta = read_meta(p)
        rows += [r for r in meta.extra.get("catalogue", []) if r["song_id"] in meta.sources]
    return pd.DataFrame(rows, columns=COLUMNS)


def song_paths(songs: pd.DataFrame) -> dict[str, str]:
    """song id -> audio file, from a table with ``song_id`` and ``path`` (a manifest or a catalogue)."""
    return dict(zip(songs["song_id"].astype(str), songs["path"].astype(str)))


class TrackNames:
    """The tracks of the catalogue's album images (songs with a cue sheet): which one plays at an offset."""

    def __init__(self, tracks: dict[str, list[Track]]):
        self.tracks = tracks

    @classmethod
    def from_catalogue(cls, table: pd.DataFrame | None) -> "TrackNames":
        if table is None or "tracks" not in table.columns:
            return cls({})
        return cls({str(sid): tracks_from_json(t) for sid, t in zip(table["song_id"], table["tracks"])
                    if isinstance(t, str) and t})

    def at(self, song_id: str | None, offset_s: float | None) -> Track | None:
        return track_at(self.tracks.get(song_id), offset_s) if song_id in self.tracks else None

    def bounds(self, song_id: str) -> list[float]:
        """Where the song's tracks start (empty for a song without tracks)."""
        return [t.start_s for t in self.tracks.get(song_id, [])]

    def __bool__(self) -> bool:
        return bool(self.tracks)
