"""The ffmpeg fallback of ``audio.files``: formats libsndfile cannot read (m4a/aac/wma, ape/wv, a video's sound...)
decoded by an ``ffmpeg`` child process, its header read by ``ffprobe``. A damaged file cannot hang it: the child's
error output is drained on its own thread, its decoding errors are counted (too many: corrupt), and the time spent
waiting for it is capped by the file's duration."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from workflow_lib.audio.decoded import AudioDecodeError, AudioInfo, check_finite

log = logging.getLogger(__name__)

# ffmpeg (m4a/aac/...): a file whose decoder reports more errors than this is rejected as corrupt; waiting for ffmpeg
# is capped at BASE + PER_S x the file's duration (ffmpeg decodes AAC at hundreds of times realtime).
MAX_DECODER_ERRORS = 20
DECODE_TIMEOUT_BASE_S = 60.0
DECODE_TIMEOUT_PER_S = 0.1
PROBE_TIMEOUT_S = 60.0


def has_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def _require_ffmpeg(path: Path) -> None:
    if not has_ffmpeg():
        raise AudioDecodeError(f"{path}: {path.suffix} files need ffmpeg, which is not installed "
                               "(apt-get install ffmpeg)")


def _ffmpeg_line(line: str, path: Path | None = None) -> str:
    """One ffmpeg error line without the demuxer's ``[mov,mp4,... @ 0x55d...]`` prefix nor the file's own name
    (the message that quotes it names the file already)."""
    line = re.sub(r"^\[[^\]]* @ 0x[0-9a-fA-F]+\]\s*", "", line.strip())
    return line[len(f"{path}: "):] if path is not None and line.startswith(f"{path}: ") else line


def _ffmpeg_message(text: str, path: Path | None = None) -> str:
    """ffmpeg's error output as one readable line: each line cleaned (``_ffmpeg_line``), repeats dropped, "; "."""
    lines = []
    for raw in text.splitlines():
        line = _ffmpeg_line(raw, path)
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines) or "no message"


def ffprobe_info(path: Path) -> AudioInfo:
    _require_ffmpeg(path)
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
           "stream=sample_rate,channels,codec_name:format=duration", "-of", "default=nw=1", str(path)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=PROBE_TIMEOUT_S,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AudioDecodeError(f"{path}: ffprobe did not finish reading the header within {PROBE_TIMEOUT_S:.0f} s "
                               "(damaged file?)") from None
    fields = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    if res.returncode != 0 or "sample_rate" not in fields:
        raise AudioDecodeError(f"{path}: ffprobe found no audio stream ({_ffmpeg_message(res.stderr, path)[:200]})")
    rate, channels = int(fields["sample_rate"]), int(fields.get("channels", 1))
    try:
        duration = float(fields.get("duration", "nan"))
    except ValueError:
        duration = float("nan")
    return AudioInfo(str(path), duration, rate, channels, fields.get("codec_name", "ffmpeg"),
                     int(duration * rate) if np.isfinite(duration) else -1)


class _StderrDrain(threading.Thread):
    """Reads a child's stderr to the end on its own thread, so the child can never block on a full pipe while we
    read its stdout (the two pipes are drained concurrently). Keeps the first few error lines and counts them."""

    def __init__(self, stream, keep_lines: int = 5):
        super().__init__(daemon=True, name="ffmpeg-stderr")
        self.stream, self.keep_lines = stream, keep_lines
        self.lines: list[str] = []
        self.count = 0

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = _ffmpeg_line(raw.decode(errors="replace"))
            if not line:
                continue
            self.count += 1
            if len(self.lines) < self.keep_lines:
                self.lines.append(line[:200])

    def excerpt(self) -> str:
        return "; ".join(self.lines) or "no message"


def decode_time_limit(duration_s: float) -> float:
    """Wall-clock seconds ffmpeg may spend producing a file's audio before the file is rejected as stuck."""
    return DECODE_TIMEOUT_BASE_S + DECODE_TIMEOUT_PER_S * (duration_s if np.isfinite(duration_s) else 3600.0)


def iter_ffmpeg(path: Path, sr: int, chunk_seconds: float) -> Iterator[np.ndarray]:
    """Decode through ffmpeg. stderr is drained on a thread (a damaged file's error text can exceed the pipe buffer
    and deadlock a reader that drains stdout first); the time spent waiting for ffmpeg is capped; a file that
    decodes with more than ``MAX_DECODER_ERRORS`` errors is rejected as corrupt instead of yielding garbage."""
    info = ffprobe_info(path)
    limit_s = decode_time_limit(info.duration_s)
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(sr), "-f", "f32le",
           "-acodec", "pcm_f32le", "-"]
    chunk_bytes = max(4, int(chunk_seconds * sr) * 4)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        drain = _StderrDrain(proc.stderr)
        drain.start()
        waited = 0.0
        total = 0
        try:
            while True:
                t0 = time.monotonic()
                # A read that outlasts what is left of the budget kills ffmpeg; the read then returns what it has.
                watchdog = threading.Timer(max(0.0, limit_s - waited), proc.kill)
                watchdog.start()
                try:
                    buf = proc.stdout.read(chunk_bytes)
                finally:
                    watchdog.cancel()
                waited += time.monotonic() - t0
                if waited >= limit_s:
                    raise AudioDecodeError(f"{path}: decoding did not finish within {limit_s:.0f} s "
                                           f"(ffmpeg: {drain.excerpt()})")
                if drain.count > MAX_DECODER_ERRORS:
                    raise AudioDecodeError(f"{path}: corrupt: ffmpeg reported more than {MAX_DECODER_ERRORS} "
                                           f"decoding errors ({drain.excerpt()})")
                if not buf:
                    break
                usable = len(buf) - len(buf) % 4
                chunk = np.frombuffer(buf[:usable], dtype="<f4").astype(np.float32)
                check_finite(chunk, path, total // 4, sr)
                total += usable
                yield chunk
            rc = proc.wait(timeout=max(1.0, limit_s - waited))
            drain.join(timeout=5.0)
            if drain.count > MAX_DECODER_ERRORS:
                raise AudioDecodeError(f"{path}: corrupt: ffmpeg reported {drain.count} decoding errors "
                                       f"({drain.excerpt()})")
            if rc != 0 or total == 0:
                raise AudioDecodeError(f"{path}: ffmpeg could not decode it "
                                       f"({drain.excerpt() if drain.count else 'no audio'})")
            if drain.count:
                log.info("%s: ffmpeg reported %d decoding error(s), tolerated: %s", path, drain.count,
                         drain.excerpt())
        except subprocess.TimeoutExpired:
            raise AudioDecodeError(f"{path}: ffmpeg did not exit within {limit_s:.0f} s") from None
        finally:
            if proc.poll() is None:  # an early exit (error, or the caller stopped iterating): never leave it running
                proc.kill()
                proc.wait()
