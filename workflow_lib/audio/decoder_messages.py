"""Messages a C decoder prints on the process's stderr, counted instead of flooding the console.

libsndfile decodes MP3 with libmpg123, which writes a line such as ``[src/libmpg123/layer3.c:...] error:
part2_3_length (832) too large for available bit count (728)`` straight to file descriptor 2 for every damaged
frame it skips: hundreds per ordinary MP3 collection (issue 16.2). The decode goes on and the frame is concealed,
so each line is harmless on its own; what matters is how many a file has. ``captured_stderr`` redirects fd 2 into a
temporary file around one decoder call, sorts what was written there into decoder messages (counted, returned) and
anything else (passed on to the real stderr afterwards, so nothing another part of the program writes is lost).

The redirect is process-wide, so one lock serialises it: two threads redirecting at once could otherwise restore
each other's descriptors in the wrong order.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Iterator

# Lines that come from a decoder library rather than from this program: libmpg123 prefixes its errors with the
# source position ("[src/libmpg123/layer3.c:...] error: ...") and its resync notices with "Note: ".
DECODER_MARKERS = ("libmpg123", "mpg123:")
DECODER_PREFIXES = ("[src/", "Note: ", "Warning: Encountered more data", "Warning: Real sample count",
                    "Warning: Xing stream size")
KEEP_EXAMPLES = 3

_lock = threading.RLock()


@dataclass
class DecoderMessages:
    """What the decoder printed while a file was read: a count and the first few lines as examples."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.count += 1
        if len(self.examples) < KEEP_EXAMPLES:
            self.examples.append(line)

    def summary(self) -> str:
        return f"{self.count} decoder message{'s' if self.count != 1 else ''}" + \
            (f", e.g. {self.examples[0]!r}" if self.examples else "")


def is_decoder_line(line: str) -> bool:
    return line.startswith(DECODER_PREFIXES) or any(m in line for m in DECODER_MARKERS)


@contextlib.contextmanager
def captured_stderr(messages: DecoderMessages) -> Iterator[None]:
    """Run the body with fd 2 sent to a temporary file; decoder lines are added to ``messages``, the rest goes on
    to the real stderr when the body ends (in order, a little later)."""
    with _lock:
        try:
            sys.stderr.flush()  # what Python buffered so far belongs before the redirect
        except (AttributeError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all (a daemon with fd 2 closed): nothing to protect
            yield
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                except (AttributeError, ValueError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                other = bytearray()
                for raw in capture.read().splitlines(keepends=True):
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if is_decoder_line(line):
                        messages.add(line)
                    else:
                        other += raw
                if other:
                    os.write(2, bytes(other))
