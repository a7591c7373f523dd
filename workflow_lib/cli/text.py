"""Text for terminals: tag strings made safe to print, times, and lines fitted to the terminal's width."""

from __future__ import annotations

import math
import os
import shutil
import sys
import unicodedata


def printable(text: object) -> str:
    """``text`` with control characters shown as escapes: a song tag holding ``ESC[2J`` must not clear the
    screen (tags come from files anyone can write)."""
    s = "" if text is None else str(text)
    return "".join(c if c.isprintable() else _escaped(ord(c)) for c in s)


def _escaped(code: int) -> str:
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8, as Python reads it: shown as that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def count(n: int, noun: str) -> str:
    """``1 song``, ``2 songs`` (English plural by an ``s``)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def fmt_time(s: float | None) -> str:
    """Seconds as m:ss.s (or h:mm:ss for long recordings); '-' for none."""
    if s is None or not math.isfinite(s):
        return "-"
    sign = "-" if s < 0 else ""
    s = round(abs(s), 1)  # rounded before it is split: 59.96 s is 1:00.0, not 0:60.0
    if s >= 3600:
        h, rest = divmod(s, 3600)
        m, sec = divmod(rest, 60)
        return f"{sign}{int(h)}:{int(m):02d}:{sec:04.1f}"
    m, sec = divmod(s, 60)
    return f"{sign}{int(m)}:{sec:04.1f}"


def song_label(title: str | None, artist: str | None, song_id: str | None) -> str:
    title, artist = printable(title) if title else None, printable(artist) if artist else None
    if title and artist:
        return f'"{title}" - {artist}'
    return f'"{title}"' if title else (printable(song_id) if song_id else "?")


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes (wide East Asian characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, with an ellipsis when something was cut."""
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for c in text:
        w = display_width(c)
        if used + w > width - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + "\u2026"


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` columns (a table's column: a wide character takes two)."""
    return text + " " * max(0, width - display_width(text))


def terminal_width(default: int = 80) -> int:
    """Columns of the terminal on stdout, asked now (it may have been resized); ``COLUMNS`` or ``default`` when
    stdout is not a terminal. The terminal itself comes first: a stale exported ``COLUMNS`` (GNU readline sets one
    in the environment that child processes inherit) must not make lines wrap."""
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a terminal, or stdout replaced by an object without a fd
        return shutil.get_terminal_size((default, 24)).columns
