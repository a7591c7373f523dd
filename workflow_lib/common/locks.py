"""An exclusive lock on a folder for edits that span several files (``fcntl.flock``: released by the kernel when
the process dies, so a killed edit never leaves a stale lock)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".lock"


class LockedError(RuntimeError):
    """Another process is editing the folder."""


@contextlib.contextmanager
def folder_lock(folder: str | Path, wait: bool = True) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively; ``wait`` False raises ``LockedError`` at once if another process has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockedError(f"{folder} is being edited by another process (nafp db or the workflow); try again "
                              "when it has finished") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def try_lock(folder: str | Path) -> contextlib.AbstractContextManager:
    """``folder_lock`` without waiting, for work that may be skipped when someone else holds it."""
    return folder_lock(folder, wait=False)


_HELD: list[int] = []  # descriptors of locks held for the life of the process
RUN_LOCK = "nafp-run.lock"  # held by every main Snakemake process of this workflow while it lives


def run_alive(snakemake_dir: str | Path) -> bool:
    """Whether a live Snakemake run of this workflow holds ``snakemake_dir`` (the run lock below), now."""
    path = Path(snakemake_dir) / RUN_LOCK
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:  # none yet; or not ours to open, and Snakemake's own check decides
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases it, when it was taken
    return False


def clear_stale_snakemake_locks(snakemake_dir: str | Path = ".snakemake") -> list[str]:
    """Remove Snakemake's directory locks when no live Snakemake process of this workflow owns them.

    Snakemake's locks are plain files: a Snakemake killed with SIGKILL (or a power cut) leaves them, and the next
    run stops with a LockException until someone runs --unlock. Every main Snakemake process of this workflow holds
    an flock on ``.snakemake/nafp-run.lock`` for its whole life (the kernel drops it when the process dies); the
    process that gets it knows that no other run is alive, so any lock files are stale and are removed. A process
    that does not get it leaves everything to Snakemake's own check. Returns the removed lock files.
    """
    d = Path(snakemake_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another run of this workflow is alive: its locks are real
        os.close(fd)
        return []
    _HELD.append(fd)
    locks = d / "locks"
    stale = sorted(locks.glob("*.lock")) if locks.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return [str(f) for f in stale]
