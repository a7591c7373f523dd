"""Scan music folders into a song table; unusable files go to a rejected table with the reason."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from workflow_lib.common.atomic import atomic_path, file_digest, write_csv_atomic
from workflow_lib.common.background import ordered_map
from workflow_lib.common.progress import progress
from workflow_lib.data.cuesheet import SHEET_EXTENSIONS
from workflow_lib.data.folders import is_utf8, not_utf8_folder, shown, walk_files
from workflow_lib.data.split import UNKNOWN_COLLECTION
from workflow_lib import SAMPLE_RATE, SEGMENT_SAMPLES
from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.files import AUDIO_EXTENSIONS, audio_info, decoder_id, ffmpeg_missing_for, iter_audio
from workflow_lib.audio.decoder_messages import DecoderMessages
from workflow_lib.audio.segments import LEVEL_BAND_LOW_HZ, SILENCE_DBFS, frame, segment_levels_db

log = logging.getLogger(__name__)

SONG_COLUMNS = ["song_id", "collection", "root", "rel_path", "path", "duration_s", "sample_rate", "channels",
                "format", "size_bytes", "decoder_messages", "mtime_ns", "peak_dbfs", "loudest_dbfs", "audio_digest"]
# What decoding a file measured (``measure_song``): kept from one scan to the next (``Measurements``), so a rerun
# does not decode an unchanged file again and judges it with the thresholds of the day.
MEASURED = ["duration_s", "sample_rate", "channels", "format", "size_bytes", "decoder_messages", "mtime_ns",
            "peak_dbfs", "loudest_dbfs", "audio_digest"]
REJECTED_COLUMNS = ["path", "reason"]
# Audio files the scan rejects (too short, silent, unreadable) are warnings up to this many, then log lines.
WARN_REJECTED = 10


def song_id_for(collection: str, rel_path: str) -> str:
    """Stable id from the collection name and the path relative to its folder (see docs/ARCHITECTURE.md)."""
    return hashlib.sha1(f"{collection}/{rel_path}".encode()).hexdigest()[:16]


def find_files(root: Path) -> list[Path]:
    """Every regular file below ``root`` (see ``walk_files``); the problems are logged."""
    files, problems = walk_files(root)
    for prob in problems:
        log.warning("skipped %s: %s", prob["path"], prob["reason"])
    return files


def check_song(path: Path, min_duration_s: float, silence_dbfs: float) -> tuple[dict | None, str | None]:
    """Return (row fields, None) for a usable song or (None, reason) for a rejected one (``measure_song``, then
    ``judge_song``)."""
    fields, reason = measure_song(path)
    if fields is not None:
        reason = judge_song(fields, min_duration_s, silence_dbfs)
    return (fields, None) if reason is None else (None, reason)


def measure_song(path: Path, st: os.stat_result | None = None) -> tuple[dict | None, str | None]:
    """Decode the whole file once: (measured fields, None), or (None, reason) when it cannot be a song at all.

    Decoding to the end is what proves a file readable and tells its level; at several hundred times realtime it is
    cheap next to everything after it. ``decoder_messages`` counts the lines the decoder printed meanwhile
    (libmpg123's skipped damaged frames: harmless in ones and twos, a sign of a badly damaged file in hundreds); they
    are not printed. ``audio_digest`` hashes the decoded samples, after the decoder's id (``decoder_id``): a file
    whose tags were edited keeps it, so the extraction reuses its fingerprints (``database.extract``). ``st``: the
    file's ``stat`` when the caller has it already.
    """
    suffix = path.suffix.lower()
    if suffix not in AUDIO_EXTENSIONS:
        return None, f"not an audio file (extension {suffix or 'none'})"
    if ffmpeg_missing_for(path):
        return None, f"{suffix} needs ffmpeg, which is not installed"
    try:
        st = st or path.stat()
    except OSError as exc:  # gone since the folder was listed (a network share, a sync client)
        return None, f"unreadable: {exc.strerror or exc}"
    if st.st_size == 0:
        return None, "empty file"
    messages = DecoderMessages()
    digest = hashlib.sha1(f"{SAMPLE_RATE} float32 mono\n".encode())
    try:
        info = audio_info(path, messages)
        peak, loudest, n = 0.0, -np.inf, 0
        for chunk in iter_audio(path, messages=messages):
            n += len(chunk)
            if len(chunk):
                digest.update(np.ascontiguousarray(chunk, dtype=np.float32).data)
                peak = max(peak, float(np.max(np.abs(chunk))))
                # whole seconds side by side (not the 0.5 s hop): half the cost, and a file that passes here
                # has at least one second the search can use
                segments = frame(chunk, hop=SEGMENT_SAMPLES) if len(chunk) >= SEGMENT_SAMPLES else chunk[None, :]
                loudest = max(loudest, float(np.max(segment_levels_db(segments))))
    except AudioDecodeError as exc:
        return None, f"unreadable: {exc}"
    return {"duration_s": n / SAMPLE_RATE, "sample_rate": info.sample_rate, "channels": info.channels,
            "format": suffix.lstrip("."), "size_bytes": st.st_size, "decoder_messages": messages.count,
            "mtime_ns": st.st_mtime_ns, "peak_dbfs": 20 * np.log10(peak) if peak > 0 else -np.inf,
            "loudest_dbfs": loudest,
            "audio_digest": f"{decoder_id(path)}-{digest.hexdigest()[:20]}"}, None


def judge_song(fields: dict, min_duration_s: float, silence_dbfs: float) -> str | None:
    """Why a measured file is not a usable song, or None."""
    if fields["duration_s"] < min_duration_s:
        return f"too short: {fields['duration_s']:.2f} s < {min_duration_s} s"
    if fields["peak_dbfs"] < silence_dbfs:
        return f"silent: peak {fields['peak_dbfs']:.1f} dBFS < {silence_dbfs} dBFS"
    if fields["loudest_dbfs"] < SILENCE_DBFS:  # every fingerprint would be the silence gate's zero vector: never found
        return (f"silent to the model: no second reaches the silence gate's {SILENCE_DBFS:.0f} dBFS (the loudest: "
                f"{fields['loudest_dbfs']:.1f}; what is below {LEVEL_BAND_LOW_HZ:.0f} Hz, hum, DC or rumble, does "
                "not count)")
    return None


class Measurements:
    """What decoding each file measured (``measure_song``), kept from one scan to the next: a file with the same
    path, size and modification time as before (what ``make`` and rsync trust too) is not decoded again.

    ``save_to``: where the measurements are kept; during a long scan what was measured so far is written there
    every ``SAVE_INTERVAL_S``, so a scan killed half-way decodes only the rest when it is run again."""

    COLUMNS = ["path", *MEASURED]
    SAVE_INTERVAL_S = 60.0

    def __init__(self, previous: pd.DataFrame | None = None, save_to: Path | None = None):
        ok = previous is not None and set(self.COLUMNS) <= set(previous.columns)  # an older table gives none
        self.before = {r["path"]: r for r in previous[self.COLUMNS].to_dict("records")} if ok else {}
        self.rows: list[dict] = []
        self.reused = 0
        self.save_to = save_to
        self._saved_at = time.monotonic()

    def _unchanged(self, path: Path) -> tuple[dict | None, os.stat_result | None]:
        """The last scan's fields of ``path`` if the file is as it was then (else None), and its ``stat``."""
        old = self.before.get(str(path))
        try:
            st = path.stat()
            same = old is not None and (st.st_size, st.st_mtime_ns) == (old["size_bytes"], old["mtime_ns"])
        except OSError:
            st, same = None, False
        # a file measured through ffmpeg is decoded again (and so rejected) once ffmpeg is gone
        if same and not ffmpeg_missing_for(path):
            return {k: old[k] for k in MEASURED}, st
        return None, st

    def measure_all(self, paths: list[Path], workers: int = 1, desc: str = "scan") -> list[tuple[dict | None,
                                                                                                   str | None]]:
        """``measure_song`` of each path, in order: unchanged files from the last scan, the others decoded by up
        to ``workers`` processes."""
        out: list[tuple[dict | None, str | None]] = [(None, None)] * len(paths)
        todo: list[tuple[int, Path, os.stat_result | None]] = []
        for i, path in enumerate(paths):
            fields, st = self._unchanged(path)
            if fields is None:
                todo.append((i, path, st))
            else:
                self.reused += 1
                out[i] = (fields, None)
                self.rows.append({"path": str(path), **fields})
        measured = progress(ordered_map(_measure_one, [(path, st) for _, path, st in todo], workers, processes=True),
                            total=len(todo), desc=desc, unit="file", mininterval=5)
        for (i, path, _), (fields, reason) in zip(todo, measured):
            out[i] = (fields, reason)
            if fields is not None:
                self.rows.append({"path": str(path), **fields})
            if self.save_to is not None and time.monotonic() - self._saved_at >= self.SAVE_INTERVAL_S:
                self.save(partial=True)
        return out

    def table(self, partial: bool = False) -> pd.DataFrame:
        """This scan's measurements; ``partial``: with the last scan's for the files not reached yet."""
        rows = self.rows
        if partial:
            done = {r["path"] for r in rows}
            rows = rows + [{"path": p, **{k: r[k] for k in MEASURED}} for p, r in self.before.items()
                           if p not in done]
        return pd.DataFrame(rows, columns=self.COLUMNS)

    def save(self, partial: bool = False) -> None:
        """Write the measurements to ``save_to`` (temp file, then rename)."""
        assert self.save_to is not None
        self.save_to.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.save_to) as tmp:
            self.table(partial).to_parquet(tmp, index=False)
        self._saved_at = time.monotonic()


def _measure_one(job: tuple[Path, os.stat_result | None]) -> tuple[dict | None, str | None]:
    """``measure_song`` in a worker process (``common.background.ordered_map``)."""
    return measure_song(*job)


def _unused_song_id(collection: str, root: Path, rel: str, seen: dict[str, str]) -> str:
    """The song id of ``rel`` below ``root``. Two folders of a collection can hold the same relative path
    (``01.mp3`` in two albums given as two folders): the first keeps the plain id, the next is told apart by its
    folder's name and, should that be shared too, by the folder's whole path."""
    for key in (rel, f"{root.name}/{rel}", f"{root.as_posix()}/{rel}"):
        sid = song_id_for(collection, key)
        if sid not in seen:
            return sid
    raise AssertionError(f"{root / rel}: no free song id")  # unreachable: each folder is scanned once


def build_manifest(collections: Iterable[tuple[str, str | Path]], min_duration_s: float = 3.0,
                   silence_dbfs: float = -60.0, skip_dirs: Iterable[str | Path] = (),
                   measurements: Measurements | None = None, workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan ``(collection, folder)`` pairs into (songs, rejected) tables; folders in ``skip_dirs`` (the run's own
    results folder, when it lies inside a music folder) are not scanned. ``measurements``: the last scan's, so that
    unchanged files are not decoded again (and this scan's are added to it). ``workers``: processes that decode."""
    skip_dirs = list(skip_dirs)
    measurements = measurements or Measurements()
    rows, rejected = [], []
    seen: dict[str, str] = {}
    collections = [(c, Path(r).resolve()) for c, r in collections]
    scanned: set[Path] = set()
    found: list[tuple[str, Path, Path]] = []  # (collection, folder, file): every folder is listed before decoding
    for collection, root in collections:
        if not root.is_dir():
            raise FileNotFoundError(f"{collection} folder does not exist or is not a folder: {shown(root)}")
        if not is_utf8(root):
            raise ValueError(f"{collection} folder {not_utf8_folder(root, 'its')}")
        outer = [r for c, r in collections if c == collection and r != root and root.is_relative_to(r)]
        if root in scanned or outer:  # its files are found once, below the outer folder (ids stay as they were)
            log.warning("%s is %s: scanned once", root, f"inside {outer[0]}" if outer else "listed twice")
            continue
        scanned.add(root)
        files, problems = walk_files(root, skip_dirs)
        for prob in problems:
            log.warning("rejected %s: %s", prob["path"], prob["reason"])
        rejected.extend(problems)
        log.info("%s: %d files under %s", collection, len(files), root)
        # cue sheets: the catalogue reads them
        found.extend((collection, root, f) for f in files if f.suffix.lower() not in SHEET_EXTENSIONS)
    measured = measurements.measure_all([f for _, _, f in found], workers)
    audio_rejected = 0
    for (collection, root, path), (fields, reason) in zip(found, measured):
        if fields is not None:
            reason = judge_song(fields, min_duration_s, silence_dbfs)
        if reason is not None:
            # Cover art, rip logs and playlists beside the music (hundreds in a real collection): a line each in
            # the log file and rejected.csv, counted at the end of `nafp index`; a warning each would bury the
            # audio files that could not be used. Those warn, the first WARN_REJECTED of them: a folder of sound
            # effects or stingers too short to be songs would scroll by a line each.
            audio = path.suffix.lower() in AUDIO_EXTENSIONS
            audio_rejected += audio
            loud = audio and audio_rejected <= WARN_REJECTED
            log.log(logging.WARNING if loud else logging.INFO, "rejected %s: %s", path, reason)
            rejected.append({"path": str(path), "reason": reason})
            continue
        rel = path.relative_to(root).as_posix()
        sid = _unused_song_id(collection, root, rel, seen)
        seen[sid] = str(path)
        rows.append({"song_id": sid, "collection": collection, "root": str(root), "rel_path": rel,
                     "path": str(path), **fields})
    if audio_rejected > WARN_REJECTED:
        log.warning("... and %d more audio files rejected (the manifest's log and rejected.csv list every one)",
                    audio_rejected - WARN_REJECTED)
    for i, first in sorted(identical_copies(rows).items(), reverse=True):
        reason = copy_reason(first)
        log.warning("rejected %s: %s", rows[i]["path"], reason)
        rejected.append({"path": rows[i]["path"], "reason": reason})
        del rows[i]
    if measurements.before:
        log.info("%d files unchanged since the last scan: not decoded again", measurements.reused)
    songs = pd.DataFrame(rows, columns=SONG_COLUMNS)
    noisy = songs[songs.decoder_messages > 0]
    if len(noisy):
        worst = noisy.sort_values("decoder_messages", ascending=False).iloc[0]
        log.info("%d of %d songs made the decoder report damaged frames (%d messages in all, most %d in %s); they "
                 "were skipped and concealed, so the songs are kept (manifest column decoder_messages)",
                 len(noisy), len(songs), int(noisy.decoder_messages.sum()), int(worst.decoder_messages), worst.path)
    return songs, pd.DataFrame(rejected, columns=REJECTED_COLUMNS)


def copy_reason(first: str) -> str:
    """Why a file that ``identical_copies`` found is left out (the manifest and ``nafp db add`` alike)."""
    return f"copy: the same bytes as {first}"


def identical_copies(rows: list[dict]) -> dict[int, str]:
    """Rows whose file has the same bytes as a kept row's (index -> the kept row's path). One song twice in a
    collection would be two database songs that a query names at random, and could fall into the train and the test
    split at once; ``nafp db add`` refuses such copies too. Only files of equal size are read (SHA-256).

    Of the copies below one folder of the collection (rows with the same ``root``), the kept row is the first that
    no symbolic link below that folder leads to: a link's name (a playlist folder's "01 - link.mp3") is not the
    song's own, and an untagged song takes its title from its file name. Otherwise rows keep their order (a folder
    given first, a database song before a new file)."""
    by_size: dict[int, list[int]] = {}
    first_of_root: dict[str | None, int] = {}
    for i, r in enumerate(rows):
        by_size.setdefault(int(r["size_bytes"]), []).append(i)
        first_of_root.setdefault(r.get("root"), i)

    def keep_order(i: int) -> tuple[int, bool, int]:
        return first_of_root[rows[i].get("root")], _linked_below_root(rows[i]), i

    out: dict[int, str] = {}
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        by_digest: dict[str, list[int]] = {}
        for i in same_size:
            try:
                by_digest.setdefault(file_digest(rows[i]["path"], 64), []).append(i)
            except OSError:  # gone since it was checked: the extraction skips it, and says so
                continue
        for copies in by_digest.values():
            kept = min(copies, key=keep_order)
            out.update((i, rows[kept]["path"]) for i in copies if i != kept)
    return out


def _linked_below_root(row: dict) -> bool:
    """Whether a symbolic link below the row's folder (the file, or a folder between) leads to its file."""
    if "root" not in row:
        return False
    return os.path.realpath(row["path"]) != os.path.join(os.path.realpath(row["root"]), row["rel_path"])


def write_manifest(music_dirs: list[str], distractor_dirs: list[str], songs_out: str | Path,
                   rejected_out: str | Path, min_duration_s: float, silence_dbfs: float,
                   rejected_csv: str | Path | None = None, skip_dirs: Iterable[str | Path] = (),
                   unknown_dirs: Iterable[str] = (), workers: int = 1) -> pd.DataFrame:
    """Scan the folders into ``songs_out`` and ``rejected_out`` (Parquet), and the rejected files with their
    reasons as ``rejected_csv`` too (what a user reads). ``skip_dirs``: see ``build_manifest``. Songs of
    ``unknown_dirs`` are the collection ``unknown`` (``data.unknown_dirs``: only ever searched as unknown music).

    What decoding measured is kept beside it (``.cache/``, which Snakemake does not delete before a rerun as it does
    the outputs): the next scan decodes only the files that changed since, and a scan killed half-way only those
    it had not reached (``Measurements.save_to``). ``workers``: processes that decode (``data.scan_threads``)."""
    collections = ([("music", d) for d in music_dirs] + [("distractor", d) for d in distractor_dirs]
                   + [(UNKNOWN_COLLECTION, d) for d in unknown_dirs])
    kept = measurements_path(songs_out)
    measurements = Measurements(_read_previous(kept), save_to=kept)
    songs, rejected = build_manifest(collections, min_duration_s, silence_dbfs, skip_dirs, measurements, workers)
    if (songs["collection"] == UNKNOWN_COLLECTION).all():  # also when there are no songs at all
        raise ValueError(f"no usable songs found in {[*music_dirs, *distractor_dirs]} "
                         f"({len(rejected)} files rejected; see the log for reasons)")
    with atomic_path(songs_out) as tmp:
        songs.to_parquet(tmp, index=False)
    measurements.save()
    with atomic_path(rejected_out) as tmp:
        rejected.to_parquet(tmp, index=False)
    if rejected_csv is not None:
        write_csv_atomic(rejected, rejected_csv)
    log.info("manifest: %d songs (%.2f h), %d rejected", len(songs), songs.duration_s.sum() / 3600, len(rejected))
    return songs


def measurements_path(songs_out: str | Path) -> Path:
    """Where a scan's measurements are kept for the next one."""
    return Path(songs_out).parent / ".cache" / "measured.parquet"


def _read_previous(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(path) if path.is_file() else None
    except (OSError, ValueError) as exc:  # damaged: every file is decoded again, as on the first scan
        log.warning("ignoring the last scan's measurements %s (%s)", path, exc)
        return None


def list_audio_files(dirs: Iterable[str | Path]) -> list[Path]:
    """Audio files below each folder (for noise, speech and IR folders); other files are logged and skipped."""
    out: list[Path] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise FileNotFoundError(f"folder does not exist or is not a folder: {root}")
        for p in find_files(root):
            if p.suffix.lower() in AUDIO_EXTENSIONS:
                out.append(p)
            else:
                log.info("skipping non-audio file %s", p)
    return out
