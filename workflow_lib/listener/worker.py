"""The listener's worker: capture -> ring buffer -> resample to 8 kHz -> ``core.ListenerCore``.

Capture never waits on compute: the capture side (a PortAudio callback, or a file player) only copies samples into a
``RingBuffer``; the ``Listener`` drains it in its own thread for live capture (inline for files played as fast as
possible), resamples from the device's native rate with streaming soxr and pushes what arrived into the core, whose
decisions go to a callback. The decision logic itself lives in ``core`` and is tested there without threads.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterator, Protocol

import numpy as np

from workflow_lib import SAMPLE_RATE
from workflow_lib.listener.core import ListenerCore
from workflow_lib.listener.decisions import Decision, ListenSummary
from workflow_lib.listener.devices import ListenerError

log = logging.getLogger(__name__)

# A capture device delivers a block every few tens of milliseconds; this long without one, the user is told.
NO_AUDIO_WARN_S = 5.0


class RingBuffer:
    """Single-producer, single-consumer float32 ring. ``write`` (the capture callback) holds the lock for one copy
    and never waits for the reader; when the reader falls more than ``capacity`` behind, the oldest samples are
    overwritten and ``read`` reports how many were lost."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("ring capacity must be positive")
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._written = 0  # total samples ever written
        self._read = 0  # total samples consumed or dropped
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.dropped = 0

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def write(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        n, cap = len(x), len(self._buf)
        if n == 0:
            return
        with self._lock:
            if n > cap:  # only the newest capacity samples can be kept anyway
                self._written += n - cap
                x, n = x[-cap:], cap
            pos = self._written % cap
            first = min(n, cap - pos)
            self._buf[pos:pos + first] = x[:first]
            self._buf[:n - first] = x[first:]
            self._written += n
        self._ready.set()

    def read(self) -> tuple[np.ndarray, int]:
        """Everything written since the last read (oldest first) and the number of samples lost before it."""
        with self._lock:
            cap = len(self._buf)
            lost = max(0, self._written - self._read - cap)
            start = self._read + lost
            n = self._written - start
            pos = start % cap
            first = min(n, cap - pos)
            out = np.concatenate([self._buf[pos:pos + first], self._buf[:n - first]])
            self._read = self._written
            self._ready.clear()
        self.dropped += lost
        return out, lost

    def pending(self) -> int:
        with self._lock:
            return self._written - self._read

    def wait(self, timeout: float) -> bool:
        """Block until new samples arrive (True) or ``timeout`` seconds pass (False)."""
        return self._ready.wait(timeout)


class CaptureSource(Protocol):
    """Where audio comes from (``devices.SoundDeviceSource``, ``devices.FileSource``)."""

    sample_rate: int
    name: str
    realtime: bool  # False: no capture thread; the worker pulls ``blocks()`` itself, as fast as it can
    overflows: int

    def start(self, sink: Callable[[np.ndarray], None]) -> None: ...

    def stop(self) -> None: ...

    def finished(self) -> bool: ...

    def error(self) -> str | None: ...

    def seconds_without_audio(self) -> float: ...

    def blocks(self) -> Iterator[np.ndarray]: ...


class Listener:
    """Capture -> ring buffer -> (worker) resample -> ``ListenerCore`` -> ``on_decision`` callback."""

    def __init__(self, core: ListenerCore, source: CaptureSource,
                 on_decision: Callable[[Decision], None] | None = None,
                 on_message: Callable[[str], None] | None = None):
        # core: a ListenerCore or anything with its push / skip / finish / summary / config (views.TwoViewCore);
        # on_message: what the user is told about the capture (the display's message line; default: a warning)
        import soxr

        self.core = core
        self.source = source
        self.on_decision = on_decision or (lambda d: None)
        self.on_message = on_message or log.warning
        cfg = core.config
        self.ring = RingBuffer(int(round(cfg.ring_s * source.sample_rate)))
        self._resampler = soxr.ResampleStream(source.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ") \
            if source.sample_rate != SAMPLE_RATE else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exc: BaseException | None = None
        self.dropped_samples = 0  # at the source rate

    # -- running --------------------------------------------------------------------------------------------------
    def run(self) -> ListenSummary:
        """Run to the end of the input (a file) or until ``stop()``; returns the summary."""
        if not self.source.realtime:
            for block in self.source.blocks():
                if self._stop.is_set():
                    break
                self.ring.write(block)
                self._drain(final=False)
            self._drain(final=True)
        else:
            self.source.start(self.ring.write)
            waiting = False  # told the user that no audio comes
            try:
                while not self._stop.is_set():
                    self.ring.wait(0.1)
                    self._drain(final=False)
                    err = self.source.error()
                    if err:
                        raise ListenerError(err)
                    waiting = self._tell_about_the_audio(waiting)
                    if self.source.finished() and self.ring.pending() == 0:
                        self._drain(final=True)
                        break
            finally:
                self.source.stop()
        self.core.finish()
        return self.summary()

    def _tell_about_the_audio(self, waiting: bool) -> bool:
        """Warn once when the source has delivered nothing for ``NO_AUDIO_WARN_S``, and say when audio comes again;
        the session goes on either way (a suspended laptop's capture comes back). Returns whether it is waiting."""
        gap = self.source.seconds_without_audio()
        if not waiting and gap >= NO_AUDIO_WARN_S:
            self.on_message(f"no audio from {self.source.name} for {gap:.0f} s (the device removed, muted by its "
                            "driver, or the machine suspended?); still listening")
            return True
        if waiting and gap < NO_AUDIO_WARN_S:
            self.on_message(f"audio from {self.source.name} again")
            return False
        return waiting

    def start(self) -> None:
        """Run in a worker thread (live capture); ``join`` it, ``stop`` it from any thread."""
        def target() -> None:
            try:
                self.run()
            except BaseException as exc:  # handed to the thread that joins
                self._exc = exc

        self._thread = threading.Thread(target=target, name="listener-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker; True when it has ended. Re-raises an error of the worker thread."""
        if self._thread is None:  # never started (or ran inline with run())
            return True
        self._thread.join(timeout)
        if self._exc is not None:
            exc, self._exc = self._exc, None
            raise exc
        return not self._thread.is_alive()

    def summary(self) -> ListenSummary:
        return self.core.summary(self.source.overflows, self.dropped_samples / self.source.sample_rate,
                                 self.source.name)

    # -- the worker step ------------------------------------------------------------------------------------------
    def _drain(self, final: bool) -> None:
        x, lost = self.ring.read()
        if lost:
            self.dropped_samples += lost
            log.warning("the worker fell %.1f s behind the capture: %.2f s of audio skipped", self.core.config.ring_s,
                        lost / self.source.sample_rate)
            self.core.skip(int(round(lost * SAMPLE_RATE / self.source.sample_rate)))
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=final)
        if len(x) == 0:
            return
        # Everything that arrived goes in at once: when the worker is behind, the backlog is embedded in one batch
        # and decided once, so it catches up instead of falling further behind.
        d = self.core.push(x)
        if d is not None:
            d.overflows = self.source.overflows
            d.dropped_s = self.dropped_samples / self.source.sample_rate
            self.on_decision(d)
