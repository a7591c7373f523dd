"""Incremental database edits on a results folder (the ``nafp db`` command).

``add`` fingerprints new audio files with the folder's model, appends them to the built index without retraining
and adds them to the catalogue; ``remove`` deletes songs by id. Both also leave a record that the workflow reads, so
a later ``build_index`` (e.g. after new shards) keeps the edits:

- ``<results>/fingerprints/added/*.parquet``: fingerprints of songs added here (same format as the shards, with
  their catalogue rows in the metadata); ``build_index`` and ``catalogue`` take them as inputs.
- ``<results>/fingerprints/removed_songs.txt``: ids removed here, one per line; ``build_index`` leaves them out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from workflow_lib import HOP_S, SEGMENT_S
from workflow_lib.common.atomic import write_text_atomic
from workflow_lib.common.background import ordered_map
from workflow_lib.common.layout import ResultsLayout
from workflow_lib.common.locks import folder_lock
from workflow_lib.common.progress import progress
from workflow_lib.audio.files import AUDIO_EXTENSIONS, missing_path_message
from workflow_lib.database.catalogue import build_catalogue, upsert_catalogue
from workflow_lib.database.fingerprint_file import ModelMismatchError
from workflow_lib.database.index import FingerprintDB, read_sidecar
from workflow_lib.database.index_build import add_to_index, remove_from_index
from workflow_lib.database.other_music import is_other_music
from workflow_lib.database.removed import read_removed_songs
from workflow_lib.data.folders import is_utf8, not_utf8_problem, walk_files
from workflow_lib.data.manifest import check_song, copy_reason, identical_copies, song_id_for

log = logging.getLogger(__name__)

ADDED_COLLECTION = "added"


def collect_audio_files(paths: Iterable[str | Path], problems: list[dict] | None = None) -> list[Path]:
    """Audio files named directly or found below folders (the manifest's walker: hidden files skipped, folder links
    followed); a missing path is an error. Links that loop or are broken, and names that are not UTF-8, are added
    to ``problems``."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.exists() and not is_utf8(p):  # its path could not be stored in the catalogue
            if problems is not None:
                problems.append(not_utf8_problem(p, folder=p.is_dir()))
        elif p.is_dir():
            files, probs = walk_files(p)
            if problems is not None:
                problems.extend(probs)
            found = [f for f in files if f.suffix.lower() in AUDIO_EXTENSIONS]
            if not found:
                log.warning("no audio files under %s", p)
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(missing_path_message(p, "no such file or folder"))
    return list(dict.fromkeys(f.resolve() for f in out))


def added_song_id(path: Path) -> str:
    """Id of a song added from the command line: its absolute path in the ``added`` collection."""
    return song_id_for(ADDED_COLLECTION, path.resolve().as_posix())


def _write_removed(layout: ResultsLayout, ids: set[str]) -> None:
    text = "".join(f"{s}\n" for s in sorted(ids))
    write_text_atomic(layout.removed, "# song ids removed with `nafp db remove`; build_index leaves them out\n" + text)


def _layout(results: str | Path | ResultsLayout) -> ResultsLayout:
    return results if isinstance(results, ResultsLayout) else ResultsLayout(Path(results))


def add_files(results: str | Path | ResultsLayout, inputs: Iterable[str | Path], *, batch_size: int = 256,
              device: str = "auto", threads: int = 1, replace: bool = False, min_duration_s: float = 3.0,
              silence_dbfs: float = -60.0) -> dict[str, Any]:
    """Fingerprint audio files and add them to the database of ``results`` (no retraining).

    Files go through the manifest's checks (``data.manifest.check_song``: readable to the end, long enough, not
    silent) and files whose audio is already in the database (same bytes as a song's file, whatever its name) are
    skipped; every skip comes back with its reason. The edit holds the index folder's lock and commits in an order
    a kill cannot break: the fingerprints file, then the catalogue rows, then the index (one commit, see
    ``index.write_folder``); a rerun after a kill cleans up what the killed run left and adds the songs again.
    """
    layout = _layout(results)
    with folder_lock(layout.index):
        _clean_after_kill(layout)
        info = read_sidecar(layout.index)
        problems: list[dict] = []
        files = collect_audio_files(inputs, problems)
        skipped = [dict(p) for p in problems]
        if not files and not skipped:
            raise ValueError("no audio files to add")
        usable = []
        # each file is decoded to its end, by ``threads`` processes
        jobs = [(f, min_duration_s, silence_dbfs) for f in files]
        checked = progress(ordered_map(_check_one, jobs, threads, processes=True), total=len(files),
                           desc="check files", unit="file", mininterval=5)
        for f, (_, reason) in zip(files, checked):
            if reason is not None:
                skipped.append({"path": str(f), "reason": reason})
            else:
                usable.append(f)
        songs = pd.DataFrame({"song_id": [added_song_id(f) for f in usable], "path": [str(f) for f in usable]})
        db = FingerprintDB.load(layout.index)
        present = [s for s in songs["song_id"] if db.song_position(s) >= 0]
        del db
        if present and not replace:
            first = songs.set_index("song_id").loc[present[0], "path"]
            raise ValueError(f"{first} is already in the database; use --replace to re-add it" if len(present) == 1
                             else f"{len(present)} of these files are already in the database (e.g. {first}); use "
                             "--replace to re-add them")
        dups = content_duplicates([Path(p) for p in songs["path"]], layout, exclude=set(present))
        for path, (sid, other) in dups.items():
            skipped.append({"path": str(path), "reason": copy_reason(other) if sid is None else
                            f"already in the database as song {sid}, indexed from its folder"
                            if Path(other).resolve() == path else
                            f"same audio as song {sid} already in the database ({other})"})
        songs = songs[~songs["path"].isin({str(p) for p in dups})].reset_index(drop=True)
        if songs.empty:
            return {"added": [], "skipped": skipped, "fingerprints": 0, "file": None}
        # The model stage is imported only now: `db list`, `info` and `remove` never load torch (seconds to import).
        import torch

        from workflow_lib.database.extract import extract_songs, load_model

        torch.set_num_threads(max(1, threads))
        fingerprinter, identity = load_model(layout.model, device)
        if identity.checksum != info["model_checksum"]:
            raise ModelMismatchError(f"{layout.model} (model {identity.checksum}) is not the model the index in "
                                     f"{layout.index} was built with ({info['model_checksum']})")
        catalogue = build_catalogue(songs)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        digest = hashlib.sha1("\n".join(sorted(songs["song_id"])).encode()).hexdigest()[:8]
        out = layout.added / f"added-{stamp}-{digest}.parquet"
        cache_dir = layout.added.parent / ".cache" / out.stem
        try:
            meta = extract_songs(fingerprinter, identity, songs, out, batch_size=batch_size, reuse=False,
                                 cache_dir=cache_dir, extra={"catalogue": catalogue.to_dict(orient="records")})
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)  # a one-off extraction: nothing to reuse later
        skipped += meta.skipped
        if meta.n_songs == 0:
            out.unlink(missing_ok=True)
            return {"added": [], "skipped": skipped, "fingerprints": 0, "file": None}
        ok = set(meta.sources)
        upsert_catalogue(layout.catalogue, catalogue[catalogue["song_id"].isin(ok)])  # before the index: a kill
        add_to_index(layout.index, [out], threads=threads, replace=replace, lock=False)  # leaves no nameless song
        removed = read_removed_songs([layout.removed])
        if removed & ok:  # re-added songs are no longer removed
            _write_removed(layout, removed - ok)
        return {"added": sorted(ok), "skipped": skipped, "fingerprints": meta.n_rows, "file": str(out)}


def _check_one(job: tuple[Path, float, float]) -> tuple[dict | None, str | None]:
    """``check_song`` in a worker process (``common.background.ordered_map``)."""
    return check_song(*job)


def _clean_after_kill(layout: ResultsLayout) -> None:
    """What a killed ``add`` left: its extraction cache, and a fingerprints file whose songs never reached the
    index (the rerun fingerprints them again; kept, the file would add them twice at the next build)."""
    cache = layout.added.parent / ".cache"
    if cache.is_dir():
        for d in cache.glob("added-*"):
            shutil.rmtree(d, ignore_errors=True)
    if not layout.added.is_dir():
        return
    for f in layout.added.glob(".*"):
        f.unlink(missing_ok=True)
    added = sorted(layout.added.glob("*.parquet"))
    if not added:  # nothing to check against the index: it is not loaded
        return
    import pyarrow.parquet as pq

    db = FingerprintDB.load(layout.index)
    removed = read_removed_songs([layout.removed])
    # An add writes its file, then edits the index: a killed one left a file newer than the index. An older file
    # none of whose songs is in the index holds songs removed since (dropped: adding one again must not find its
    # old fingerprints), or songs now indexed from their folder (kept: build_index leaves them to the folder).
    edited_ns = (layout.index / "index.json").stat().st_mtime_ns
    for f in added:
        try:
            ids = set(pq.read_table(f, columns=["song_id"]).column("song_id").to_pylist())
        except Exception:  # a half-written file cannot exist (atomic writes), but a foreign one might
            continue
        if not ids or any(db.song_position(s) >= 0 for s in ids):
            continue
        if f.stat().st_mtime_ns > edited_ns:
            log.warning("%s: fingerprints of an add that was killed before it reached the index: removed", f)
            f.unlink()
        elif ids <= removed:
            log.info("%s: every song of it was removed since: deleted", f)
            f.unlink()


def content_duplicates(paths: list[Path], layout: ResultsLayout, exclude: set[str] = frozenset()
                       ) -> dict[Path, tuple[str | None, str]]:
    """New files whose bytes equal a database song's file (any name, any folder) or an earlier new file's: path ->
    (the song's id, or None for a copy inside ``paths``; the file it copies). ``data.manifest.identical_copies``
    compares them, database files first, so a copy of a database song is named as one."""
    from workflow_lib.database.catalogue import load_catalogue

    stored: list[tuple[str, str]] = []
    if layout.catalogue.exists() and paths:
        cat = load_catalogue(layout.catalogue).reset_index(drop=True)
        db = FingerprintDB.load(layout.index)
        # A file re-added as itself (--replace) is not its own copy: its song is in ``exclude``. A file the
        # workflow indexed from its folder, added by its path, is one (else the song would be in twice).
        stored = [(str(sid), p) for sid, p in zip(cat["song_id"], cat["path"])
                  if sid not in exclude and db.song_position(str(sid)) >= 0 and isinstance(p, str)]
    rows, song_of = [], {}
    for sid, p in stored:
        try:
            rows.append({"path": p, "size_bytes": os.stat(p).st_size})
        except OSError:  # a database song whose file is gone: nothing to compare
            continue
        song_of[p] = sid
    n_stored = len(rows)
    rows += [{"path": str(p), "size_bytes": p.stat().st_size} for p in paths]
    return {paths[i - n_stored]: (song_of.get(first), first)
            for i, first in identical_copies(rows).items() if i >= n_stored}


def song_ids_of(results: str | Path | ResultsLayout, refs: Iterable[str]) -> list[str]:
    """Song ids for what a user names: a song id, the path of a song's file (it need not exist any more: the file
    may be gone), or a folder (every song whose file was below it), matched with the catalogue's paths. A
    reference that matches nothing is passed on as it is, for the caller to report."""
    from workflow_lib.database.catalogue import load_catalogue

    layout = _layout(results)
    refs = list(refs)
    cat = load_catalogue(layout.catalogue) if layout.catalogue.exists() else None
    known = set(cat["song_id"].astype(str)) if cat is not None else set()
    if cat is None or all(r in known for r in refs):
        return list(dict.fromkeys(refs))
    # A path both with its folders' links resolved and with the file's own link too: a song may have been stored
    # either way (the manifest keeps a linked file's name, `db add` its target) and be named either way.
    gone = read_removed_songs([layout.removed])  # the catalogue keeps removed songs' rows
    forms = pd.DataFrame([(sid, f) for sid, p in zip(cat["song_id"].astype(str), cat["path"].astype(str))
                          if sid not in gone for f in _path_forms(p)], columns=["song_id", "path"])
    out: list[str] = []
    for ref in refs:
        if ref in known:
            out.append(ref)
            continue
        ref_forms = _path_forms(os.path.expanduser(ref))
        below = os.path.realpath(os.path.expanduser(ref)).rstrip(os.sep) + os.sep
        hit = forms["path"].isin(ref_forms) | forms["path"].str.startswith(below)
        out += forms.loc[hit, "song_id"].drop_duplicates().tolist() or [ref]
    return list(dict.fromkeys(out))


def _path_forms(path: str) -> set[str]:
    """``path`` absolute with its folders' links resolved, and with its own link resolved too."""
    head, name = os.path.split(os.path.abspath(path))
    return {os.path.join(os.path.realpath(head), name), os.path.realpath(path)}


def remove_songs(results: str | Path | ResultsLayout, song_ids: Iterable[str], *, threads: int = 1
                 ) -> tuple[list[str], list[str]]:
    """Remove songs from the database of ``results`` by id, file or folder (``song_ids_of``); returns (removed,
    not found)."""
    layout = _layout(results)
    song_ids = song_ids_of(layout, song_ids)
    with folder_lock(layout.index):
        _clean_after_kill(layout)  # before this edit makes a killed add's file look older than the index
        removed, missing = remove_from_index(layout.index, song_ids, threads=threads, lock=False)
        if removed:
            _write_removed(layout, read_removed_songs([layout.removed]) | set(removed))
    return removed, missing


def database_info(results: str | Path | ResultsLayout) -> dict[str, Any]:
    """Counts, model, factory, sizes and the edit history of a results folder's database (``songs`` and ``hours``:
    the collection's; ``other_music_songs``: the model's other music indexed beside it, ``database.other_music``)."""
    layout = _layout(results)
    db = FingerprintDB.load(layout.index)
    files = {p.name: p.stat().st_size for p in layout.index.iterdir() if p.is_file() and not p.name.startswith(".")}
    added = sorted(layout.added.glob("*.parquet")) if layout.added.is_dir() else []
    other_songs = np.array([is_other_music(s) for s in db.song_ids], bool)
    other, other_rows = int(other_songs.sum()), int(db.rows.counts[other_songs].sum())
    return {"index": str(layout.index), "model_checksum": db.model_checksum, "factory": db.factory,
            "nprobe": None if db.exact else db.nprobe, "songs": db.n_songs - other,
            "other_music_songs": other, "fingerprints": db.ntotal, "dim": db.dim,
            "hours": round((db.ntotal - other_rows) * HOP_S / 3600, 2), "file_bytes": files,
            "disk_bytes_per_fingerprint": round(sum(files.values()) / max(db.ntotal, 1), 1),
            "memory_bytes": db.memory_bytes(), "built_at": db.info.get("built_at"),
            "build_seconds": db.info.get("build_seconds"), "trained": db.info.get("trained"),
            "added_files": len(added), "removed_songs": len(read_removed_songs([layout.removed])),
            "history": db.info.get("history", [])}


def list_songs(results: str | Path | ResultsLayout) -> pd.DataFrame:
    """Every song in the database: id, title, artist, duration (s, from its fingerprints), file, and how many tracks
    its cue sheet names (an album kept as one file; 0 for a song of its own)."""
    from workflow_lib.data.cuesheet import tracks_from_json
    from workflow_lib.database.catalogue import load_catalogue

    layout = _layout(results)
    db = FingerprintDB.load(layout.index)
    seconds = (db.rows.counts - 1) * HOP_S + SEGMENT_S
    songs = pd.DataFrame({"song_id": db.song_ids.astype(str), "duration_s": seconds})
    songs = songs[[not is_other_music(s) for s in songs["song_id"]]]  # never an answer: not the collection's
    if layout.catalogue.exists():
        cat = load_catalogue(layout.catalogue).reset_index(drop=True)[["song_id", "title", "artist", "path", "tracks"]]
        songs = songs.merge(cat, on="song_id", how="left")
    else:
        songs = songs.assign(title=None, artist=None, path=None, tracks=None)
    songs["tracks"] = [len(tracks_from_json(t)) for t in songs["tracks"]]
    return songs[["song_id", "title", "artist", "duration_s", "path", "tracks"]].sort_values(
        ["artist", "title", "song_id"], na_position="last")
