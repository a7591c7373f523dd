"""Snakemake's own bookkeeping lines kept out of `nafp index`'s terminal, everything else passed through as it comes.

Snakemake prints a dozen lines per run that say nothing to someone indexing music ("Building DAG of jobs...",
"Select jobs to execute...", "Execute 1 jobs..." after every stage). They cannot be silenced by a flag alone:
``--quiet all`` also hides its errors (a misspelt config key then fails without a word). So `nafp index` reads the
workflow's stderr and drops exactly those lines; the stages' progress bars (``\\r``-updated), warnings and errors go
through at once, unbuffered. ``nafp index -v`` shows everything.
"""

from __future__ import annotations

import re
import signal
import subprocess
from typing import BinaryIO

CHATTER = re.compile(rb"(Using workflow specific profile .* for setting default command line arguments\."
                     rb"|Config file .* is extended by additional config specified via the command line\."
                     rb"|Assuming unrestricted shared filesystem usage\.|Building DAG of jobs\.\.\.|Using shell: .*"
                     rb"|Conda environments: ignored|Select jobs to execute\.\.\.|Execute \d+ jobs?\.\.\."
                     rb"|Complete log\(s\): .*|Elapsed time: .*)")
# How those lines start: a piece of a line that could still become one is held until its end arrives.
_STARTS = (b"Using workflow", b"Config file", b"Assuming unrestricted", b"Building DAG", b"Using shell",
           b"Conda environments", b"Select jobs", b"Execute ", b"Complete log", b"Elapsed time")


class ChatterFilter:
    """Fed the bytes of a stream in pieces of any size; writes them to ``out`` without the chatter lines."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.pending = b""  # the start of a line that may be chatter

    def feed(self, data: bytes) -> None:
        buf, kept, start = self.pending + data, [], 0
        for end in re.finditer(rb"[\r\n]", buf):
            line = buf[start:end.start()]
            if not (end.group() == b"\n" and CHATTER.fullmatch(line)):
                kept.append(buf[start:end.end()])
            start = end.end()
        self.pending = buf[start:]
        if self.pending and not any(s.startswith(self.pending) or self.pending.startswith(s) for s in _STARTS):
            kept.append(self.pending)  # a progress bar's update, or any other line: shown now, not at its end
            self.pending = b""
        if kept:
            self.out.write(b"".join(kept))
            self.out.flush()

    def close(self) -> None:
        if self.pending and not CHATTER.fullmatch(self.pending):
            self.out.write(self.pending)
            self.out.flush()
        self.pending = b""


def run_without_chatter(cmd: list[str], out: BinaryIO, **popen_kw) -> int:
    """Run ``cmd`` with its stderr filtered into ``out``; its exit status. Ctrl-C reaches the workflow as it would
    (the terminal signals the whole process group): here it is only noted, wherever it lands (a KeyboardInterrupt
    between two reads would drop the rest of the stream), the workflow's shutdown is read to the end, and then
    KeyboardInterrupt is raised."""
    interrupted: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    except ValueError:  # not the main thread: Ctrl-C is not delivered here anyway
        previous = None
    try:
        with subprocess.Popen(cmd, stderr=subprocess.PIPE, **popen_kw) as proc:
            filt = ChatterFilter(out)
            while data := proc.stderr.read1(65536):  # a noted signal does not interrupt the read (PEP 475)
                filt.feed(data)
            filt.close()
            rc = proc.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt
    return rc
