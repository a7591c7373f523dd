"""What lies below the music folders: the manifest's walk, and a cheap digest of it that tells when to rescan.

Only the walk and ``os.stat``: no file is opened, so the digest costs milliseconds per thousand files and can be
taken each time the workflow is planned (the manifest rule's ``listing`` parameter: a changed digest reruns the
scan, and unchanged songs' fingerprints are reused by the extraction's cache).
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from pathlib import Path
from typing import Iterable

from workflow_lib.data.cuesheet import SHEET_EXTENSIONS


# Names that are not UTF-8 (a latin-1 name copied from an old disk) cannot be written to the song tables
# (Parquet and JSON hold UTF-8) nor shown as typed; they are named with their bytes escaped and left out.
NOT_UTF8_NAME = "name is not valid UTF-8 (its bytes shown as \\xNN)"
RENAME_TO_UTF8 = "rename it (e.g. convmv -f latin1 -t utf8)"
NOT_UTF8 = f"{NOT_UTF8_NAME}: skipped; {RENAME_TO_UTF8}"  # a file or folder below the music folders


def not_utf8_folder(path: str | Path, what: str = "the folder's") -> str:
    """The error for a folder the user named (a music or results folder) whose name is not UTF-8."""
    return f"{shown(path)}: {what} {NOT_UTF8_NAME}; {RENAME_TO_UTF8}"


def is_utf8(name: str | Path) -> bool:
    """Whether a file name (as Python reads it from the disk) is valid UTF-8."""
    try:
        str(name).encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes come in as lone surrogates
        return False


def shown(path: str | Path) -> str:
    """A path as text that can be stored and printed: bytes that are not UTF-8 as ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def not_utf8_problem(path: str | Path, folder: bool) -> dict:
    """The problem entry (see ``walk_files``) of a file or folder whose name is not UTF-8."""
    kind = "folder" if folder else "file"
    return {"path": shown(path), "reason": f"{kind} {NOT_UTF8}", "hides": kind}


def walk_files(root: Path, skip: Iterable[str | Path] = ()) -> tuple[list[Path], list[dict]]:
    """Every regular file below ``root`` (sorted, hidden files and folders skipped), following symbolic links to
    folders, with loop protection: a folder reached a second time (a link loop, or two links to one folder) is not
    scanned again. The folders themselves come first and the links after them, so a folder that a link also leads to
    is scanned under its own path (a playlist folder linked beside the albums does not rename them). Folders in
    ``skip`` (a results folder kept inside the music folder) are not entered. Returns (files, problems): each
    problem is ``{"path", "reason", "hides"}`` (a loop, a broken link, a folder that cannot be read, a name that is
    not UTF-8), so nothing below the folder is dropped without a word; ``hides`` says what may be left out with it:
    ``"folder"`` (all below it), ``"file"`` (that file) or None (a loop: its folder is scanned once)."""
    files: list[Path] = []
    problems: list[dict] = []
    seen = {os.path.realpath(root)}
    skipped = {os.path.realpath(d) for d in skip} - seen
    links: deque[tuple[str, str]] = deque()  # (link, its target): entered once every folder without one is walked

    def unreadable(exc: OSError) -> None:  # os.walk would skip the folder without a word
        problems.append({"path": shown(exc.filename), "reason": f"folder cannot be read ({exc.strerror}): skipped",
                         "hides": "folder"})

    def walk(top: str | Path) -> None:
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable):
            keep = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                full = os.path.join(dirpath, d)
                real = os.path.realpath(full)
                if real in skipped:
                    continue
                if not is_utf8(d):
                    problems.append(not_utf8_problem(full, folder=True))
                elif os.path.islink(full):
                    links.append((full, real))
                elif not already_scanned(full, real):  # a folder inside a linked one may be the collection's own
                    keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                p = Path(dirpath) / name
                if not is_utf8(name):
                    problems.append(not_utf8_problem(p, folder=False))
                elif p.is_file():
                    files.append(p)
                elif p.is_symlink():
                    problems.append({"path": shown(p), "reason": f"broken symbolic link (to {shown(os.readlink(p))})",
                                     "hides": "file"})

    def already_scanned(full: str, real: str) -> bool:
        if real in seen:
            problems.append({"path": shown(full), "reason": f"symbolic link to a folder already scanned "
                             f"({shown(real)}): skipped, not scanned twice", "hides": None})
            return True
        seen.add(real)
        return False

    walk(root)
    while links:
        full, real = links.popleft()
        if not already_scanned(full, real):
            walk(full)
    return sorted(files), problems


def audio_files_below(root: Path, skip: Iterable[str | Path] = ()) -> list[Path]:
    """The files below ``root`` with an audio file's extension, as ``walk_files`` finds them (sorted)."""
    return audio_below(root, skip)[0]


def audio_below(root: Path, skip: Iterable[str | Path] = ()) -> tuple[list[Path], list[dict]]:
    """``audio_files_below`` and what may hide audio from it (``walk_files``'s problems): folders that cannot be
    read or whose name is not UTF-8, and broken links and files not named in UTF-8 with an audio file's extension
    (a link loop hides nothing, its folder is scanned once)."""
    return _audio_of(*walk_files(root, skip))


def _audio_of(files: list[Path], problems: list[dict]) -> tuple[list[Path], list[dict]]:
    from workflow_lib.audio.files import AUDIO_EXTENSIONS  # here: planning a run without music needs no decoders

    hidden = [p for p in problems if p["hides"] == "folder"
              or (p["hides"] == "file" and Path(p["path"]).suffix.lower() in AUDIO_EXTENSIONS)]
    return [p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS], hidden


def audio_listing_digest(folders: Iterable[str | Path], skip: Iterable[str | Path] = ()) -> str:
    """A digest of the audio files below ``folders`` as the manifest walks them (``audio_below``, with ``skip``),
    and of the cue sheets among them (``data.cuesheet``: they name an album image's tracks): path, size and
    modification time of each, and what hides audio from the walk. It changes when a file is added, removed,
    replaced or edited; a missing folder is part of it (the manifest stage then says so)."""
    skip = list(skip)
    h = hashlib.sha1()
    for folder in folders:
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            h.update(b"no folder " + os.fsencode(root) + b"\n")
            continue
        found, problems = walk_files(root, skip)
        files, hidden = _audio_of(found, problems)
        for path in files + [p for p in found if p.suffix.lower() in SHEET_EXTENSIONS]:
            try:
                st = path.stat()
            except OSError:  # gone since the walk: the next plan sees it
                continue
            h.update(os.fsencode(path) + f"\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        for problem in hidden:  # a file the scan will name as left out (a name not in UTF-8...) is a change too
            h.update(f"{problem['path']}\t{problem['reason']}\n".encode())
    return h.hexdigest()[:16]
