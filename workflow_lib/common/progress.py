"""Progress that reads well wherever it is written.

On a terminal: tqdm's live bar. In a log file, a pipe or a cluster job's log, a bar's carriage-return updates pile up
into one long line, and the clearing around each log line leaves runs of spaces. There, the same tqdm (its counts,
rate and time left) writes a plain line at most every ``LINE_INTERVAL_S``, and a last one when the work ends; work
shorter than that writes none (each stage logs what it did).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, TextIO

from tqdm import tqdm

from workflow_lib.common.logs import TERMINAL_ENV

LINE_INTERVAL_S = 30.0
# tqdm's line formats without the bar (the log line of a bar whose total is known, and of one whose total is not).
_COUNTED = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f} %) in {elapsed}, about {remaining} left{postfix}"
_UNCOUNTED = "{desc}: {n_fmt} {unit} in {elapsed}{postfix}"
_CURSOR_UP = re.compile(r"\x1b\[A")  # how tqdm moves between bars open at once


def on_terminal(stream: Any) -> bool:
    """Whether what is written to ``stream`` is seen on a terminal (directly, or through `nafp index`)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return os.environ.get(TERMINAL_ENV) == "1" and "SLURM_JOB_ID" not in os.environ


class _Lines:
    """A text stream for tqdm that writes each of its in-place updates as a line of its own: the updates are split
    at their carriage returns, and blank clears and repeats of the last line are dropped."""

    def __init__(self, out: TextIO):
        self.out = out
        self.last = ""

    @property
    def encoding(self) -> str | None:  # tqdm draws with ASCII when the stream cannot take its block characters
        return getattr(self.out, "encoding", None)

    def write(self, text: str) -> int:
        for piece in re.split(r"[\r\n]", _CURSOR_UP.sub("", text)):
            piece = piece.rstrip()
            if piece and piece != self.last:
                self.out.write(piece + "\n")
                self.last = piece
        return len(text)

    def flush(self) -> None:
        getattr(self.out, "flush", lambda: None)()


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, written as lines where no terminal shows it (module docstring)."""
    out = kwargs.get("file") or sys.stderr
    if out is None or on_terminal(out):
        return tqdm(iterable, **kwargs)
    if "disable" in kwargs and kwargs["disable"] is None:  # tqdm's "only on a terminal"
        kwargs["disable"] = True
    total = kwargs.get("total")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    interval = max(kwargs.get("mininterval") or 0.0, LINE_INTERVAL_S)
    # miniters=1: the clock is read at every update, so tqdm's monitor thread, which would write a line of its own
    # just before the update's, has nothing to catch up on.
    kwargs.update(file=_Lines(out), mininterval=interval, miniters=1, delay=max(kwargs.get("delay") or 0.0, interval))
    kwargs.setdefault("bar_format", _COUNTED if total else _UNCOUNTED)
    return tqdm(iterable, **kwargs)
