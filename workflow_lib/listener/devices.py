"""Capture sources for the listener: a sound-card input (sounddevice / PortAudio) and a file player.

Both deliver mono float32 blocks at the source's *native* rate to a sink (the listener's ring buffer); the listener
resamples to 8 kHz, so a file and a microphone go through the same path. The PortAudio callback only mixes to mono
and copies: it never waits on the model.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.files import audio_info, iter_audio

log = logging.getLogger(__name__)


class ListenerError(RuntimeError):
    """The listener cannot run (no device, busy device, a capture failure); the message says what to do."""


def _sounddevice():
    """Import sounddevice with a clear message when PortAudio itself is missing."""
    try:
        import sounddevice as sd
    except OSError as exc:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise ListenerError(f"PortAudio is not available ({exc}); install it (Debian: apt-get install "
                            "libportaudio2) or play a file with --input FILE") from exc
    return sd


def list_input_devices() -> list[dict[str, Any]]:
    """Input-capable devices: index, name, host API, input channels, native rate, whether it is the default."""
    sd = _sounddevice()
    try:
        default_in = sd.default.device[0]
    except Exception:  # no default device configured
        default_in = -1
    apis = sd.query_hostapis()
    out = []
    for i, d in enumerate(sd.query_devices()):
        if d["max_input_channels"] > 0:
            out.append({"index": i, "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
                        "channels": int(d["max_input_channels"]), "sample_rate": float(d["default_samplerate"]),
                        "default": i == default_in})
    return out


def format_device_list(devices: list[dict[str, Any]] | None = None) -> str:
    try:
        devices = list_input_devices() if devices is None else devices
    except ListenerError as exc:
        return f"  (cannot list devices: {exc})"
    if not devices:
        return ("  (no input devices found: connect a microphone, check that PulseAudio/PipeWire or ALSA sees it "
                "(`arecord -l`, `pactl list short sources`), or play a file with --input FILE)")
    return "\n".join(f"{'*' if d['default'] else ' '} {d['index']:>3}  {d['name']}  ({d['hostapi']}, "
                     f"{d['channels']} in, {d['sample_rate']:g} Hz)" for d in devices)


def _device_arg(device: str | int | None) -> str | int | None:
    if isinstance(device, str) and device.strip().lstrip("-").isdigit():
        return int(device)
    return device if device not in ("", None) else None


class SoundDeviceSource:
    """Live input from a sound device at its native sample rate, through a PortAudio callback."""

    realtime = True

    def __init__(self, device: str | int | None = None, block_s: float = 0.05):
        sd = _sounddevice()
        self._sd = sd
        dev = _device_arg(device)
        try:
            info = sd.query_devices(dev, "input")
        except (ValueError, sd.PortAudioError) as exc:
            what = f"input device {device!r}" if dev is not None else "a default input device"
            raise ListenerError(f"cannot find {what} ({exc}). Input devices:\n{format_device_list()}") from exc
        self.device_index = int(info["index"])
        self.name = str(info["name"])
        self.sample_rate = int(round(info["default_samplerate"]))
        self.max_channels = int(info["max_input_channels"])
        self.block = max(1, int(round(block_s * self.sample_rate)))
        self.overflows = 0
        self.callbacks = 0
        self._stream = None
        self._error: str | None = None
        self._sink: Callable[[np.ndarray], None] | None = None
        self._last_audio: float | None = None  # time.monotonic() of the last callback (or of the start)

    def _callback(self, indata: np.ndarray, frames: int, t: Any, status: Any) -> None:
        # Runs on PortAudio's thread: count problems, mix to mono, copy into the ring. Nothing else.
        if status.input_overflow:
            self.overflows += 1
        self.callbacks += 1
        self._last_audio = time.monotonic()
        assert self._sink is not None
        self._sink(indata[:, 0] if indata.shape[1] == 1 else indata.mean(axis=1))

    def start(self, sink: Callable[[np.ndarray], None]) -> None:
        sd = self._sd
        self._sink = sink
        last: Exception | None = None
        # Mono first; some hardware (ALSA hw: devices) only opens with its own channel count.
        for channels in dict.fromkeys([1, min(2, self.max_channels), self.max_channels]):
            try:
                self._stream = sd.InputStream(device=self.device_index, channels=channels, dtype="float32",
                                              samplerate=self.sample_rate, blocksize=self.block,
                                              callback=self._callback)
                self._stream.start()
                self._last_audio = time.monotonic()
                log.info("capturing from %s at %d Hz, %d channel(s)", self.name, self.sample_rate, channels)
                return
            except sd.PortAudioError as exc:
                last = exc
                if self._stream is not None:
                    self._stream.close(ignore_errors=True)
                    self._stream = None
        raise ListenerError(f"cannot open input device {self.device_index} '{self.name}' at {self.sample_rate} Hz "
                            f"({last}). Is another program using it? Input devices:\n{format_device_list()}")

    def stop(self) -> None:
        if self._stream is not None:
            try:
                # abort, not stop: a capture has nothing to drain, and draining through ALSA's pulse plugin can
                # wait on the server
                self._stream.abort(ignore_errors=True)
                self._stream.close(ignore_errors=True)
            finally:
                self._stream = None

    def finished(self) -> bool:
        return False

    def seconds_without_audio(self) -> float:
        """Since the last block the device delivered (0 before the start). A stream can stay active while no block
        comes: a device removed under some audio servers, a driver that stalls, a machine that was suspended."""
        return 0.0 if self._last_audio is None else time.monotonic() - self._last_audio

    def error(self) -> str | None:
        # A stream that stopped by itself (device unplugged, server gone) ends the session with a message.
        if self._stream is not None and not self._stream.active and not self._stream.stopped:
            return f"the input stream of '{self.name}' stopped unexpectedly (device removed?)"
        return self._error

    def blocks(self) -> Iterator[np.ndarray]:
        raise RuntimeError("a live device has no blocks to pull")


class FileSource:
    """Plays an audio file into the listener at its native rate: at real speed (a player thread stands in for the
    sound card's callback) or as fast as the worker can take it."""

    def __init__(self, path: str | Path, realtime: bool = True, block_s: float = 0.05):
        self.path = Path(path)
        info = audio_info(self.path)  # AudioDecodeError names the file when it is unreadable
        self.name = f"file {self.path.name}"
        self.sample_rate = int(info.sample_rate)
        self.duration_s = float(info.duration_s)
        self.realtime = realtime
        self.block_s = block_s
        self.overflows = 0  # a file never overflows
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._stop = threading.Event()
        self._error: str | None = None

    def blocks(self) -> Iterator[np.ndarray]:
        # Decoded at the file's own rate (mixed to mono): the listener's resampler does the rest, as for a device.
        for chunk in iter_audio(self.path, sr=self.sample_rate, chunk_seconds=10.0):
            step = max(1, int(round(self.block_s * self.sample_rate)))
            for a in range(0, len(chunk), step):
                yield chunk[a:a + step]

    def start(self, sink: Callable[[np.ndarray], None]) -> None:
        def play() -> None:
            t0, sent = time.perf_counter(), 0
            try:
                for block in self.blocks():
                    if self._stop.is_set():
                        break
                    sink(block)
                    sent += len(block)
                    delay = t0 + sent / self.sample_rate - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
            except AudioDecodeError as exc:  # reported by error() to the worker; it names the file already
                self._error = str(exc)
            except Exception as exc:
                self._error = f"{self.path}: {exc}"
            finally:
                self._done.set()

        self._thread = threading.Thread(target=play, name="file-player", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def finished(self) -> bool:
        return self._done.is_set()

    def seconds_without_audio(self) -> float:
        return 0.0  # a file's player never waits on a device

    def error(self) -> str | None:
        return self._error
