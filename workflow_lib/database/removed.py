"""The list of songs removed with `nafp db remove` (``fingerprints/removed_songs.txt``): read by the index build
and the catalogue, so that a rebuild keeps them out; written by ``database.edit``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def read_removed_songs(paths: Iterable[str | Path]) -> set[str]:
    """Song ids listed in removal files (one per line, ``#`` comments); missing files count as empty."""
    out: set[str] = set()
    for p in map(Path, paths):
        if p.is_file():
            out |= {line.split("#", 1)[0].strip() for line in p.read_text().splitlines()} - {""}
    return out
