"""Audio decoding: any supported file -> 8 kHz mono float32, streamed in chunks so memory stays bounded.

Decoding uses libsndfile through ``soundfile`` (WAV, FLAC, OGG/Vorbis, Opus, MP3 and more, no external programs) and
resampling uses ``soxr`` (the SoX resampler: high quality, streaming, and several hundred times faster than realtime
on one core). Formats libsndfile cannot read (m4a/aac/wma, ape/wv...) go through ``ffmpeg`` when it is installed
(``audio.ffmpeg``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf
import soxr

from workflow_lib import SAMPLE_RATE
from workflow_lib.audio.decoded import AudioDecodeError, AudioInfo, check_finite
from workflow_lib.audio.decoder_messages import DecoderMessages, captured_stderr
from workflow_lib.audio.ffmpeg import ffprobe_info, has_ffmpeg, iter_ffmpeg

log = logging.getLogger(__name__)

SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".mp3", ".mp2", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc", ".au",
                        ".w64", ".caf"}
# through ffmpeg: AAC/ALAC (m4a, m4b audiobooks), WMA, the lossless and DSD formats of audiophile collections
# (Monkey's Audio, WavPack, TTA, Musepack, DSF/DFF), which libsndfile does not read, and the sound of what phones and
# cameras record (a video's audio stream: MOV, M4V, MKV, AVI, 3GP; AMR voice memos)
FFMPEG_EXTENSIONS = {".m4a", ".m4b", ".aac", ".mp4", ".wma", ".webm", ".mka", ".ape", ".wv", ".tta", ".mpc", ".dsf",
                     ".dff", ".mov", ".m4v", ".mkv", ".avi", ".3gp", ".amr"}
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS


# A WAV header's data size at or above this is a recorder's placeholder for "not known yet" (sox writes about
# 2^31 - 4096, arecord 2^31 - 1, a pipe 2^32 - 1), not a length (``_wav_frames``).
UNKNOWN_WAV_SIZE = 0x7FFF0000
# Bytes per sample of the WAV sample formats a header that declares no audio can be read in (``iter_wav_stream``).
_SUBTYPE_BYTES = {"PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}

# Decoded block size in source frames: large enough to amortise per-call overhead, small enough to bound memory.
_BLOCK_FRAMES = 1 << 18
# A scheme the way pathlib leaves it ("https:/host/..."), for the error of a path that does not exist.
_URL = re.compile(r"^(https?|ftp|rtsp|rtmp|s3|gs):/+", re.IGNORECASE)


def decoder_id(path: str | Path) -> str:
    """Which decoder build turns ``path`` into samples (libsndfile and soxr, or ffmpeg), as 4 hex digits: a digest
    of decoded samples (the manifest's ``audio_digest``) is comparable only with one made by the same build, since
    another version may round a few samples differently."""
    return _decoder_build(_needs_ffmpeg(Path(path)))


@functools.lru_cache(maxsize=None)
def _decoder_build(through_ffmpeg: bool) -> str:
    import hashlib

    if through_ffmpeg:
        try:
            res = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=20,
                                 stdin=subprocess.DEVNULL)
            version = res.stdout.split("\n", 1)[0]
        except (OSError, subprocess.SubprocessError):
            version = "ffmpeg ?"
    else:
        version = f"libsndfile {sf.__libsndfile_version__} soxr {soxr.__version__}"
    return hashlib.sha1(version.encode()).hexdigest()[:4]


def _needs_ffmpeg(path: Path) -> bool:
    return path.suffix.lower() in FFMPEG_EXTENSIONS


def ffmpeg_missing_for(path: Path) -> bool:
    """Whether ``path`` needs ffmpeg to be read and ffmpeg is not installed."""
    return _needs_ffmpeg(path) and not has_ffmpeg()


def missing_path_message(path: Path, missing: str) -> str:
    """Why ``path`` (which does not exist) cannot be read: ``missing``, a link to nothing, or a web address."""
    url = _URL.match(str(path))
    if url:  # pathlib folds "https://" into "https:/": give it back as it was typed
        return f"{url[1]}://{str(path)[url.end():]}: a web address; nafp reads local files (download it first)"
    if path.is_symlink():  # exists() follows the link: say it is the link's target that is gone
        return f"{path}: broken symbolic link (to {os.readlink(path)})"
    return f"{path}: {missing}"


def check_readable(path: Path) -> None:
    """Say plainly what is wrong with a path before any decoder sees it (libsndfile reports an empty or text file
    as "does not exist or is not a regular file (possibly a pipe?)" and an unreadable one as "System error")."""
    if path.is_dir():
        raise AudioDecodeError(f"{path}: is a folder, not an audio file")
    if not path.exists():
        raise AudioDecodeError(missing_path_message(path, "no such file"))
    if not path.is_file():
        raise AudioDecodeError(f"{path}: not a regular file (a pipe or device?)")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise AudioDecodeError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not head:
        raise AudioDecodeError(f"{path}: empty file (0 bytes)")
    if _looks_like_text(head):
        raise AudioDecodeError(f"{path}: a text file, not audio")


def _looks_like_text(head: bytes) -> bool:
    """Printable UTF-8 with no NUL byte: no audio container starts like that (ID3 tags, RIFF, fLaC, OggS all
    carry binary fields within their first bytes)."""
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def audio_info(path: str | Path, messages: DecoderMessages | None = None) -> AudioInfo:
    """Header information without decoding the whole file. Raises AudioDecodeError for unreadable files.
    What the decoder prints on stderr meanwhile is counted into ``messages`` (``decoder_messages``)."""
    path = Path(path)
    check_readable(path)
    if _needs_ffmpeg(path):
        return ffprobe_info(path)
    try:
        with captured_stderr(messages if messages is not None else DecoderMessages()):
            info = sf.info(os.fsencode(path))  # bytes: a name that is not UTF-8 opens too
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError with a terse message
        reason = str(exc).split(": ", 1)[-1] if "Error opening" in str(exc) else str(exc)
        if "possibly a pipe" in reason or "Format not recognised" in reason:
            reason = "format not recognised"
        raise AudioDecodeError(f"{path}: not a readable audio file ({reason})") from exc
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioDecodeError(f"{path}: invalid header (rate {info.samplerate}, channels {info.channels})")
    frames = _wav_frames(path, info) if path.suffix.lower() == ".wav" else int(info.frames)
    return AudioInfo(str(path), frames / info.samplerate, int(info.samplerate), int(info.channels),
                     str(info.format), frames)


def iter_audio(path: str | Path, sr: int = SAMPLE_RATE, chunk_seconds: float = 30.0,
               messages: DecoderMessages | None = None) -> Iterator[np.ndarray]:
    """Yield consecutive mono float32 chunks at ``sr`` (about ``chunk_seconds`` each, the last one shorter).

    Raises AudioDecodeError when the file is unreadable, corrupt, or decodes to far fewer samples than its header
    promises (a truncated file). The decoder's own stderr lines (libmpg123's damaged-frame notices) are counted
    into ``messages`` instead of printed; without ``messages`` their count is logged at DEBUG once per file (the
    manifest counts them for every song, ``decoder_messages`` column).
    """
    path = Path(path)
    if _needs_ffmpeg(path):
        yield from iter_ffmpeg(path, sr, chunk_seconds)
        return
    own = messages is None
    if own:
        messages = DecoderMessages()
    yield from _iter_soundfile(path, sr, chunk_seconds, messages)
    if own and messages.count:
        log.debug("%s: %s", path, messages.summary())


def _iter_soundfile(path: Path, sr: int, chunk_seconds: float, messages: DecoderMessages) -> Iterator[np.ndarray]:
    info = audio_info(path, messages)
    resampler = soxr.ResampleStream(info.sample_rate, sr, 1, dtype="float32", quality="HQ") \
        if info.sample_rate != sr else None
    target = max(1, int(chunk_seconds * sr))
    pending: list[np.ndarray] = []
    n_pending = 0
    decoded = 0
    try:
        with captured_stderr(messages):
            f = sf.SoundFile(os.fsencode(path))
        floating = f.subtype in ("FLOAT", "DOUBLE")
        with f:
            while True:
                with captured_stderr(messages):  # around the decoder call only: the consumer's output is not held
                    block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                last = len(block) < _BLOCK_FRAMES
                if floating:  # integer PCM and the compressed formats' decoders cannot yield NaN or infinity
                    check_finite(block, path, decoded, info.sample_rate)
                decoded += len(block)
                mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                out = resampler.resample_chunk(mono, last=last) if resampler is not None else mono
                if len(out):
                    pending.append(np.ascontiguousarray(out, dtype=np.float32))
                    n_pending += len(out)
                while n_pending >= target:
                    joined = np.concatenate(pending)
                    yield joined[:target]
                    pending, n_pending = [joined[target:]], len(joined) - target
                if last:
                    break
    except AudioDecodeError:
        raise
    except Exception as exc:
        raise AudioDecodeError(f"{path}: decoding failed after {decoded} frames ({exc})") from exc
    if decoded == 0 and info.frames > 0 and path.suffix.lower() == ".wav":
        # a header that declares no audio although the file holds some (``_wav_frames``): read it to its end
        with open(path, "rb") as stream:
            yield from iter_wav_stream(stream, sr, chunk_seconds, str(path))
        return
    # MP3 headers only estimate the length; anything beyond a few percent short means a cut-off file.
    if info.frames > 0 and decoded < 0.95 * info.frames:
        raise AudioDecodeError(f"{path}: truncated: decoded {decoded} of {info.frames} frames")
    if n_pending:
        yield np.concatenate(pending)


def iter_wav_stream(stream: BinaryIO, sr: int = SAMPLE_RATE, chunk_seconds: float = 30.0,
                    name: str = "stdin") -> Iterator[np.ndarray]:
    """Mono float32 chunks at ``sr`` from a WAV byte stream that cannot seek (a pipe, e.g. ``ffmpeg ... -f wav -``).

    Pipes carry a header whose data size is unknown (0 or 0xFFFFFFFF): the data run to the end of the stream.
    PCM 8/16/24/32-bit, float32/64 and WAVE_FORMAT_EXTENSIBLE are read; anything else is a clear error.
    """
    def read_exact(n: int) -> bytes:
        data = stream.read(n)
        if len(data) < n:
            raise AudioDecodeError(f"{name}: truncated WAV header ({len(data)} of {n} bytes)")
        return data

    head = stream.read(12)
    if not head:
        raise AudioDecodeError(f"{name}: empty stream (nothing was piped in); pipe WAV, e.g. ffmpeg -i INPUT -f wav -")
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise AudioDecodeError(f"{name}: not a WAV stream (it starts with {head[:12]!r}); pipe WAV, e.g. "
                               "ffmpeg -i INPUT -f wav -")
    fmt = None
    while True:
        chunk = stream.read(8)
        if len(chunk) < 8:
            raise AudioDecodeError(f"{name}: WAV stream ended before its audio data")
        cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if cid == b"fmt ":
            body = read_exact(size + (size & 1))
            tag, channels, rate = int.from_bytes(body[0:2], "little"), int.from_bytes(body[2:4], "little"), \
                int.from_bytes(body[4:8], "little")
            bits = int.from_bytes(body[14:16], "little")
            if tag == 0xFFFE and size >= 26:
                tag = int.from_bytes(body[24:26], "little")
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            break
        else:
            read_exact(size + (size & 1)) if size < 1 << 20 else stream.read(size + (size & 1))
    if fmt is None:
        raise AudioDecodeError(f"{name}: WAV stream has no format chunk before its data")
    tag, channels, rate, bits = fmt
    dtypes = {(1, 8): np.uint8, (1, 16): "<i2", (1, 32): "<i4", (3, 32): "<f4", (3, 64): "<f8"}
    if (tag, bits) not in dtypes and (tag, bits) != (1, 24):
        raise AudioDecodeError(f"{name}: WAV format {tag} with {bits}-bit samples is not supported (use PCM or "
                               "float)")
    if channels < 1 or rate < 1:
        raise AudioDecodeError(f"{name}: invalid WAV header ({channels} channels, {rate} Hz)")
    width = bits // 8
    frame_bytes = width * channels
    resampler = soxr.ResampleStream(rate, sr, 1, dtype="float32", quality="HQ") if rate != sr else None
    block = max(frame_bytes, int(chunk_seconds * rate) * frame_bytes)
    rest = b""
    frames_read = 0
    while True:
        data = stream.read(block)
        last = not data
        data = rest + (data or b"")
        usable = len(data) - len(data) % frame_bytes
        data, rest = data[:usable], data[usable:]
        if (tag, bits) == (1, 24):
            b = np.frombuffer(data, np.uint8).reshape(-1, 3)
            x = ((b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16))
                 << 8 >> 8).astype(np.float32) / (1 << 23)
        else:
            raw = np.frombuffer(data, dtypes[(tag, bits)])
            x = raw.astype(np.float32)
            if tag == 3:
                check_finite(x.reshape(-1, channels), name, frames_read, rate)
            if tag == 1:
                x = (x - 128.0) / 128.0 if bits == 8 else x / float(1 << (bits - 1))
        mono = x.reshape(-1, channels).mean(axis=1) if channels > 1 else x
        frames_read += len(mono)
        out = resampler.resample_chunk(mono, last=last) if resampler is not None else mono
        if len(out):
            yield np.ascontiguousarray(out, dtype=np.float32)
        if last:
            return


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a whole file to mono float32 at ``sr``."""
    chunks = list(iter_audio(path, sr))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a 1-D array (used for in-memory audio such as microphone input or generated signals)."""
    audio = np.asarray(audio, dtype=np.float32)
    if sr_in == sr_out:
        return audio
    return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def mono_samples(samples: np.ndarray, sample_rate: int, name: str = "samples",
                 channels: int | None = None) -> np.ndarray:
    """Audio already in memory, mixed down as files are (the mean of the channels) to mono float32 at its own rate.

    ``samples``: ``(n,)``, ``(n, channels)`` (soundfile's layout) or ``(channels, n)`` (torchaudio's and
    librosa's): the shorter axis of a 2-D array is its channels, unless ``channels`` says how many there are (a
    stream's blocks, which may be shorter than their channel count). Integer PCM is scaled to [-1, 1). Raises
    ValueError for what is not audio, and AudioDecodeError for NaN or infinite samples."""
    x = np.asarray(samples)
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise ValueError(f"{name}: the sample rate must be a positive integer (Hz), got {sample_rate!r}")
    if x.ndim not in (1, 2):
        raise ValueError(f"{name}: expected samples of shape (n,), (n, channels) or (channels, n), got {x.shape}")
    if np.issubdtype(x.dtype, np.signedinteger):
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    elif np.issubdtype(x.dtype, np.unsignedinteger):  # 8-bit WAV's offset binary
        half = float(np.iinfo(x.dtype).max + 1) / 2
        x = (x.astype(np.float32) - half) / half
    elif not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name}: samples must be numbers (float or integer PCM), got {x.dtype}")
    if x.ndim == 2:
        if channels is None and x.shape[0] < x.shape[1]:
            x = x.T
        elif channels is not None and x.shape[1] != channels:
            raise ValueError(f"{name}: expected blocks of shape (n, {channels}), got {x.shape}")
    elif channels not in (None, 1):
        raise ValueError(f"{name}: expected blocks of shape (n, {channels}), got {x.shape}")
    check_finite(x, name, 0, int(sample_rate))
    mono = x.mean(axis=1) if x.ndim == 2 else x
    return np.ascontiguousarray(mono, dtype=np.float32)


def samples_to_model_audio(samples: np.ndarray, sample_rate: int, name: str = "samples") -> np.ndarray:
    """Audio already in memory as a decoded file comes out of ``load_audio``: mono float32 at ``SAMPLE_RATE``
    (``mono_samples``, then resampled). Raises ValueError (also for no samples at all) or AudioDecodeError."""
    if np.size(samples) == 0:
        raise ValueError(f"{name}: no samples")
    return resample(mono_samples(samples, sample_rate, name), int(sample_rate))


def write_audio(path: str | Path, audio: np.ndarray, sr: int = SAMPLE_RATE,
                tags: dict[str, str] | None = None) -> None:
    """Write float audio as 16-bit PCM (format from the suffix), via a temporary file so it is never half-written.

    ``tags`` (e.g. title, artist, album) are written as file metadata where the format supports it (FLAC, WAV, OGG).
    """
    from workflow_lib.common.atomic import atomic_path

    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    with atomic_path(path) as tmp:
        subtype = "PCM_16" if Path(path).suffix.lower() in {".wav", ".flac"} else None
        with sf.SoundFile(str(tmp), "w", sr, channels, subtype=subtype) as f:
            for key, value in (tags or {}).items():
                setattr(f, key, value)  # soundfile exposes the libsndfile string fields as attributes
            f.write(audio)


def _riff_chunks(f, offset: int):
    """The RIFF chunks of the open file ``f`` from ``offset`` on, as ``(id, data offset, declared size)``, until
    fewer than 8 bytes of chunk header are left."""
    while True:
        f.seek(offset)
        head = f.read(8)
        if len(head) < 8:
            return
        chunk_size = int.from_bytes(head[4:], "little")
        yield head[:4], offset + 8, chunk_size
        offset += 8 + chunk_size + (chunk_size & 1)


def _wav_data_chunk(f, size: int) -> tuple[int, int, int] | None:
    """Where the audio data of the RIFF WAV ``f`` (``size`` bytes) start, the size its header declares for them and
    the bytes that follow to the end of the file: ``(offset, declared, present)``; None for RF64 and other variants,
    or without a data chunk."""
    f.seek(0)
    if f.read(4) != b"RIFF":
        return None
    for chunk_id, offset, declared in _riff_chunks(f, 12):
        if chunk_id == b"data":
            return offset, declared, size - offset
    return None


def _only_chunks(f, offset: int, size: int) -> bool:
    """Whether the bytes of ``f`` (``size`` bytes) from ``offset`` on are whole RIFF chunks (a tag list after an
    empty data chunk) rather than audio."""
    end = offset
    for chunk_id, start, declared in _riff_chunks(f, offset):
        if not chunk_id.isascii() or not chunk_id.decode("ascii").isprintable():
            return False
        end = start + declared + (declared & 1)
    return end == size


def _wav_frames(path: Path, info) -> int:
    """The frames a WAV file holds, with its header checked against the file (``info``: libsndfile's).

    libsndfile silently shortens a cut-off WAV to the bytes present: a header that declares more than the file holds
    is an error (truncated). A recorder writes a size it does not know yet (0, or a placeholder near 2^31 or 2^32:
    sox, arecord, pipes) and puts the real one in when it stops, so a recording stopped hard (killed, power lost)
    keeps the placeholder. Its audio runs to the end of the file and is read, with a warning: a query recorded that
    way is still a query. libsndfile reads the placeholder's frames itself; a declared 0 it reads as empty, so those
    frames are counted here (and ``_iter_soundfile``, finding none decoded, reads the file as a stream)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        found = _wav_data_chunk(f, size)
        if found is None:
            return int(info.frames)
        offset, declared, present = found
        audio_after_empty_header = declared == 0 and present > 0 and not _only_chunks(f, offset, size)
    if audio_after_empty_header:
        width = _SUBTYPE_BYTES.get(info.subtype)
        if width is None:
            raise AudioDecodeError(f"{path}: its header declares no audio, and {info.subtype} samples cannot be "
                                   "read without it")
        frames = present // (width * info.channels)
    elif declared > present and declared >= UNKNOWN_WAV_SIZE:
        frames = int(info.frames)
    elif declared > present:
        raise AudioDecodeError(f"{path}: truncated: header declares {declared} data bytes, file holds {present}")
    else:
        return int(info.frames)
    log.warning("%s: its header was never completed (a recording stopped before it was closed?): reading the %.1f s "
                "of audio the file holds", path, frames / info.samplerate)
    return frames


