"""Write-then-rename helpers so that a killed stage never leaves a half-written output."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Iterator


# Temporary names carry their writer (host and process id), so a later writer of the same file can tell the
# leftovers of a killed one (a dead process on this host) from a live writer's file, here or on another node that
# shares the folder.
_HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def _writer_prefix(final: Path, pid: int | None = None) -> str:
    return f".{final.name}.{_HOST}-{os.getpid() if pid is None else pid}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_killed_writers_temporaries(final: str | os.PathLike) -> list[Path]:
    """Remove what ``atomic_path(final)`` left when its writer was killed before the rename: temporary files of
    ``final`` whose writing process, on this host, is gone. Returns them."""
    final = Path(final)
    mine = re.compile(re.escape(f".{final.name}.{_HOST}-") + r"(\d+)\.")
    removed = []
    for p in final.parent.glob(f".{glob.escape(final.name)}.{_HOST}-*"):
        m = mine.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary file keeps the final suffix (some writers, e.g. numpy or matplotlib, pick the format from it).
    What a killed writer of ``final`` left is removed first (``remove_killed_writers_temporaries``), so the same
    command run again after a kill leaves no temporary file behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_killed_writers_temporaries(final)
    fd, tmp = tempfile.mkstemp(prefix=_writer_prefix(final), suffix=suffix if suffix is not None else final.suffix,
                               dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the output the permissions a plain open() would (0666 minus the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def new_npy_map(path: str | os.PathLike, dtype, shape: tuple[int, ...]):
    """A new ``.npy`` file mapped for writing (``np.lib.format.open_memmap``), its blocks reserved on the disk first.

    A map writes a sparse file: the file system finds each block only when a page is written back, and on a full
    disk the writing process then dies of SIGBUS, which tells the user nothing. ``os.posix_fallocate`` reserves the
    whole file at once, so a full disk is an ``OSError`` (ENOSPC) that says how much was needed and what was free.
    """
    import errno
    import shutil

    import numpy as np

    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
        error = None
    except OSError as exc:  # without fallocate on this file system, blocks are found as pages are written
        error = None if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS) else exc
    finally:
        os.close(fd)
    if error is None:
        return arr
    del arr
    if error.errno != errno.ENOSPC:
        raise error
    folder = Path(path).resolve().parent
    os.truncate(path, 0)  # what the failed reservation took is not counted as used (the caller removes the file)
    raise OSError(errno.ENOSPC, f"no space left on the disk of {folder}: {size / 1e6:.0f} MB needed, "
                  f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free") from None


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text)


def write_parquet_atomic(table, final: str | os.PathLike) -> None:
    """A pandas table as Parquet, without its index."""
    with atomic_path(final) as tmp:
        table.to_parquet(tmp, index=False)


def write_csv_atomic(table, final: str | os.PathLike) -> None:
    """A pandas table as CSV (the readable copy of a Parquet output: opens in any spreadsheet or ``column``)."""
    with atomic_path(final) as tmp:
        table.to_csv(tmp, index=False)


def file_digest(path: str | os.PathLike, length: int = 16) -> str:
    """SHA-256 of a file's bytes, first ``length`` hex digits (model checksums, cache keys of partial results)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]
