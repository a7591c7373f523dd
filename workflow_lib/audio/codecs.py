"""Low-bitrate lossy codecs, in process: audio -> encoded bytes -> audio at 8 kHz, realigned with the input.

Streams, broadcasts, voice calls and voice-note apps deliver music through codecs at 8-32 kbit/s, which smear
transients, cut bands and add pre-echo. libsndfile (through ``soundfile``, already the project's decoder) writes and
reads MP3 (LAME/mpg123), Opus, Vorbis and GSM 06.10 in memory, several hundred times faster than realtime, so no
external program is needed. (AAC would need ffmpeg; it is left out, MP3 and Opus at these rates are harsher.)

``CODECS`` names each setting with its measured bitrate at 8 kHz mono. The decoded signal is shifted back by the
codec's delay (found by cross-correlation), so sample ``i`` of the output still belongs to sample ``i`` of the input.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from workflow_lib import SAMPLE_RATE
from workflow_lib.audio.decoder_messages import DecoderMessages, captured_stderr


@dataclass(frozen=True)
class Codec:
    name: str
    format: str
    subtype: str
    compression_level: float | None = None  # libsndfile's 0 (best) .. 1 (smallest); sets the bitrate
    kbps: float = 0.0  # measured at 8 kHz mono, for the record


CODECS: dict[str, Codec] = {c.name: c for c in (
    Codec("mp3-16k", "MP3", "MPEG_LAYER_III", 0.9, 16.2),
    Codec("mp3-32k", "MP3", "MPEG_LAYER_III", 0.5, 32.7),
    Codec("opus-8k", "OGG", "OPUS", 0.99, 7.7),
    Codec("opus-20k", "OGG", "OPUS", 0.95, 20.1),
    Codec("vorbis-21k", "OGG", "VORBIS", 0.99, 21.2),
    Codec("gsm", "WAV", "GSM610", None, 13.0),  # GSM 06.10 full rate: the classic mobile-phone voice codec
)}
# Voice-call codecs: what a phone or voice-note chain ends with.
PHONE_CODECS = ("gsm", "opus-8k", "mp3-16k")
MAX_DELAY = 4000  # samples searched for the codec's delay (MP3 at 8 kHz: 1105)
WRITE_BLOCK = 1 << 16


def encode_decode(audio: np.ndarray, codec: str | Codec, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``audio`` (1-D float) through the codec and back, same length and alignment as the input."""
    c = CODECS[codec] if isinstance(codec, str) else codec
    x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    if len(x) == 0:
        return x.copy()
    buf = io.BytesIO()
    kw = {} if c.compression_level is None else {"compression_level": c.compression_level}
    if c.format == "MP3":
        kw["bitrate_mode"] = "CONSTANT"
    # Written in blocks: libsndfile 1.2's Vorbis encoder crashes (SIGSEGV) when handed 300 s or more in one call.
    with sf.SoundFile(buf, "w", sr, 1, format=c.format, subtype=c.subtype, **kw) as f:
        for i in range(0, len(x), WRITE_BLOCK):
            f.write(x[i:i + WRITE_BLOCK])
    buf.seek(0)
    with captured_stderr(DecoderMessages()):  # a low-bitrate MP3's decoder notices are expected, not news
        y, _ = sf.read(buf, dtype="float32")
    y = y[:, 0] if y.ndim > 1 else y
    delay = codec_delay(x, y)
    y = y[delay:delay + len(x)]
    if len(y) < len(x):
        y = np.pad(y, (0, len(x) - len(y)))
    return y.astype(np.float32)


def codec_delay(x: np.ndarray, y: np.ndarray, max_delay: int = MAX_DELAY) -> int:
    """Lag (0..max_delay samples) at which ``y`` best matches ``x``, by FFT cross-correlation of a few seconds."""
    n = min(len(x), len(y), 5 * SAMPLE_RATE)
    if n < 64:
        return 0
    size = 1 << int(np.ceil(np.log2(n + max_delay + n)))
    corr = np.fft.irfft(np.fft.rfft(y[:n + max_delay], size) * np.conj(np.fft.rfft(x[:n], size)), size)
    return int(np.argmax(corr[:max_delay + 1]))
