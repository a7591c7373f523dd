"""Audio piped in (``nafp query -``, ``nafp scan -``): WAV is streamed as it arrives (``arecord``, ``ffmpeg -f wav -``,
a stream that may never end); a compressed file piped whole (``cat clip.mp3 | nafp query -``) is told by its first
bytes, spooled to a temporary file and decoded as a file of that format, so it gets the file decoder's checks
(truncation, ffmpeg for MP4/AAC) rather than a second decoder of its own."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import BinaryIO, Iterator

import numpy as np

from workflow_lib import SAMPLE_RATE
from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.files import iter_audio, iter_wav_stream

PIPE_HINT = "pipe WAV, MP3, FLAC, Ogg (Vorbis, Opus) or MP4/AAC, or convert first: ffmpeg -i INPUT -f wav -"


def format_of(head: bytes) -> str | None:
    """The file extension that the first 12 bytes of a compressed audio file stand for, or None."""
    if head.startswith(b"ID3"):
        return ".mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG frame's sync word
        return ".aac" if head[1] & 0x06 == 0 else ".mp3"  # layer bits 00: ADTS AAC, else MPEG layer I-III
    if head.startswith(b"fLaC"):
        return ".flac"
    if head.startswith(b"OggS"):
        return ".ogg"  # libsndfile tells Vorbis from Opus inside the Ogg container itself
    if head[4:8] == b"ftyp":
        return ".m4a"
    return None


class _Rewound:
    """A stream whose first bytes, read to look at them, are read again."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        if 0 <= n <= len(self.head):
            out, self.head = self.head[:n], self.head[n:]
            return out
        out, self.head = self.head, b""
        return out + self.stream.read(-1 if n < 0 else n - len(out))


def iter_piped_audio(stream: BinaryIO, sr: int = SAMPLE_RATE, name: str = "stdin") -> Iterator[np.ndarray]:
    """Mono float32 chunks at ``sr`` from audio piped into ``stream``; errors name the stream as ``name``."""
    head = stream.read(12)
    suffix = format_of(head)
    if suffix is None:
        if head and head[:4] not in (b"RIFF", b"RF64"):
            raise AudioDecodeError(f"{name}: not audio that can be read from a pipe (it starts with {head!r}); "
                                   f"{PIPE_HINT}")
        yield from iter_wav_stream(_Rewound(head, stream), sr, name=name)  # WAV, or nothing: it says which
        return
    fd, spool = tempfile.mkstemp(prefix="nafp-piped-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(head)
            shutil.copyfileobj(stream, out, 1 << 20)
        try:
            yield from iter_audio(spool, sr)
        except AudioDecodeError as exc:  # named as the user knows it, not by the spool's name
            raise AudioDecodeError(str(exc).replace(spool, f"{name} ({suffix[1:]})")) from None
    finally:
        os.unlink(spool)
