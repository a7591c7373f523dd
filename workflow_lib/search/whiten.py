"""The whitened view of a query: the query through the inverse filter of its own long linear predictor.

A resonant space (a tiled room, a bowl, a car cabin) adds a few narrow resonances that ring for up to 2 s and stand
20-35 dB above the rest of the query's long-term spectrum. A high-order predictor fitted on the query itself puts
its poles on them, and its inverse (FIR) filter cancels them: a minimum-phase resonance's ringing goes with its
peak. Music's own notes change within seconds and weigh less in that average. The whitened view also loses what
noise and diffuse rooms leave of the music's colouring, so the searcher searches it *beside* the query as it is and
keeps the view whose answer the no-match rule trusts more (``Searcher.search_audio``); bench/README.md, "Whitening
the query with its own long predictor", has the measurement behind the order and the minimum length. Asked to
(``WhitenedView.denoise``), the view first gates the query's steady background noise out (``search.denoise``):
better for queries in a quiet resonant space, worse for the live listener in a noisy one ("Gating the noise before
whitening"), so it is off by default.

The predictor is the autocorrelation method's (Yule-Walker equations solved by Levinson recursion,
``scipy.linalg.solve_toeplitz``): it is stable by construction, and for a 3-10 s query at 8 kHz it costs a few
milliseconds, next to the tens that fingerprinting takes. ``StreamingWhitener`` gives the live listener the same
view of a stream (``listener.views``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from workflow_lib import SAMPLE_RATE
from workflow_lib.search.denoise import StreamingGate, spectral_gate


@dataclass(frozen=True)
class WhitenedView:
    """When and how the searcher adds the whitened view: ``order`` of the predictor (0: never), for queries of at
    least ``min_query_s`` (shorter ones lose by it: one second holds too little to tell resonance from music);
    ``denoise``: the query's steady background noise gated out first (``search.denoise``). Off by default: it wins
    queries in a quiet resonant space and loses songs to the live listener in a noisy one (bench/README.md, "Gating
    the noise before whitening")."""

    order: int = 96
    min_query_s: float = 3.0
    denoise: bool = False

    def __post_init__(self) -> None:
        if self.order < 0:
            raise ValueError(f"whitened view: order must be >= 0, got {self.order}")

    @property
    def enabled(self) -> bool:
        return self.order > 0

    def applies(self, n_samples: int) -> bool:
        """Whether a query of ``n_samples`` (8 kHz) is searched in both views."""
        return self.enabled and n_samples >= self.min_query_s * SAMPLE_RATE and n_samples > 2 * self.order

    def make(self, x: np.ndarray) -> np.ndarray:
        """The whitened view of a whole query ``x`` (8 kHz): gated when ``denoise``, then ``lpc_whiten``ed."""
        return lpc_whiten(spectral_gate(x) if self.denoise else x, self.order)

    def stream(self, refit_s: float = 0.5) -> "StreamingView":
        """The same view of a stream, chunk by chunk (``StreamingView``)."""
        return StreamingView(self, refit_s)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def recorded(meta: dict) -> dict:
        """A calibration's record of the view it was made with, as ``to_dict`` gives it today (a record from
        before the noise gate existed was made without it)."""
        return {"denoise": False, **meta} if meta else {}

    @classmethod
    def from_config(cls, cfg: dict | None) -> "WhitenedView":
        """From the ``search.whitened_view`` section (None or empty: never)."""
        if not cfg:
            return cls(order=0)
        return cls(int(cfg.get("order", cls.order)), float(cfg.get("min_query_s", cls.min_query_s)),
                   bool(cfg.get("denoise", cls.denoise)))


def _predictor(x: np.ndarray, order: int, ridge: float) -> tuple[np.ndarray, np.ndarray] | None:
    """``[1, a1..a_order]``, the FIR inverse filter of ``x``'s own order-``order`` linear predictor, and ``x``'s
    autocorrelation at lags 0..order (None: silent)."""
    import scipy.fft
    import scipy.linalg

    if x.ndim != 1:
        raise ValueError(f"lpc_whiten: expected 1-D audio, got shape {x.shape}")
    if order < 1 or len(x) <= order:
        raise ValueError(f"lpc_whiten: order {order} needs more than {order} samples, got {len(x)}")
    # lags 0..order through one real FFT long enough that they do not wrap (a fifth of a full correlation's cost:
    # the streaming whitener refits every 0.5 s)
    n_fft = scipy.fft.next_fast_len(len(x) + order + 1, real=True)
    spectrum = scipy.fft.rfft(x, n_fft)
    r = scipy.fft.irfft(spectrum.real ** 2 + spectrum.imag ** 2, n_fft)[:order + 1]
    if r[0] <= 0:
        return None
    lags = r.copy()
    lags[0] *= 1 + ridge
    return np.r_[1.0, scipy.linalg.solve_toeplitz(lags[:order], -lags[1:order + 1])], r


def _filtered_gain(x: np.ndarray, b: np.ndarray, r: np.ndarray) -> float:
    """What brings ``x`` through the FIR filter ``b`` (its first ``len(x)`` samples, as ``fir_filter`` gives them) to
    ``x``'s RMS, from ``x``'s autocorrelation ``r`` instead of filtering: the whole convolution's energy is
    ``b' R b`` (R the Toeplitz matrix of ``r``), less the tail past ``x``'s end. The streaming whitener refits on 5 s
    every 0.5 s, and filtering those 5 s to measure their level cost more than the fit itself."""
    import scipy.linalg

    order = len(b) - 1
    tail = np.convolve(b, x[-order:])[order:]
    energy = float(b @ scipy.linalg.toeplitz(r) @ b) - float(tail @ tail)
    return float(np.sqrt(r[0] / max(energy, 1e-30 * len(x))))


def inverse_filter(x: np.ndarray, order: int, ridge: float = 1e-3) -> np.ndarray | None:
    """The FIR inverse filter ``[1, a1..a_order]`` of ``x``'s own order-``order`` linear predictor, scaled so that
    ``x`` comes out of it at its own RMS; None for a silent ``x``.

    ``ridge`` (a white-noise correction on the zero lag, 1e-3 = -30 dB) keeps the equations well posed on quiet or
    narrow-band input."""
    x = np.asarray(x, dtype=np.float64)
    fit = _predictor(x, order, ridge)
    return None if fit is None else fit[0] * _filtered_gain(x, *fit)


def fir_filter(b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x`` through the FIR filter ``b`` from rest, its first ``len(x)`` samples: what ``scipy.signal.lfilter(b,
    [1], x)`` gives, to the bit (but for an ``x`` exactly as long as ``b``: 1e-16 apart), without importing
    ``scipy.signal`` (0.7 s of every query command's start-up)."""
    return np.convolve(x, b)[:len(x)]


def lpc_whiten(x: np.ndarray, order: int, ridge: float = 1e-3) -> np.ndarray:
    """``x`` through the inverse filter of its own order-``order`` linear predictor (``inverse_filter``), at
    ``x``'s RMS. A silent ``x`` comes back as it is."""
    x = np.asarray(x, dtype=np.float64)
    b = inverse_filter(x, order, ridge)
    return x.astype(np.float32) if b is None else fir_filter(b, x).astype(np.float32)


class StreamingWhitener:
    """The whitened view of a stream (the live listener's second view), chunk by chunk.

    The audio goes through the inverse filter of the predictor fitted on the newest ``fit_s`` seconds heard (refitted
    once ``refit_s`` seconds have come in since the last fit: a capture's blocks of 50 ms need no predictor each),
    the filter's memory taken from the audio before the chunk, so the output is continuous where the filter changes
    little. The first ``min_s`` seconds (``WhitenedView.min_query_s``: one second holds too little to tell resonance
    from music) are held back and come out together, whitened by the first filter, in the call that completes them:
    what comes out is always the stream's audio, sample for sample, only later."""

    def __init__(self, order: int, min_s: float = 3.0, fit_s: float = 5.0, refit_s: float = 0.5):
        if order < 1:
            raise ValueError(f"streaming whitener: order must be >= 1, got {order}")
        self.order = order
        self.min_samples = max(int(round(min_s * SAMPLE_RATE)), 2 * order + 1)
        self.fit_samples = max(int(round(fit_s * SAMPLE_RATE)), self.min_samples)
        self.refit_samples = int(round(refit_s * SAMPLE_RATE))
        self.reset()

    def reset(self) -> None:
        """Forget what was heard (a gap in the stream: the room may have changed, the filter's memory is stale)."""
        self._history = np.zeros(0, dtype=np.float64)  # the newest fit_s seconds and the filter's memory
        self._held: list[np.ndarray] = []  # the first seconds, until min_s are heard
        self._started = False
        self._filter: np.ndarray | None = None
        self._since_fit = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """The whitened audio that is ready: empty while the first ``min_s`` seconds are held back."""
        x = np.asarray(chunk, dtype=np.float64).ravel()
        before = self._history  # empty until the first release
        if not self._started:
            self._held.append(x)
            x = np.concatenate(self._held)
            if len(x) < self.min_samples:
                return np.zeros(0, dtype=np.float32)
            self._started, self._held = True, []
        self._history = np.concatenate([before, x])[-(self.fit_samples + self.order):]
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        self._since_fit += len(x)
        if self._filter is None or self._since_fit >= self.refit_samples:
            self._filter, self._since_fit = inverse_filter(self._history[-self.fit_samples:], self.order), 0
        if self._filter is None:  # silence stays silence
            return x.astype(np.float32)
        context = before[-self.order:]
        return fir_filter(self._filter, np.concatenate([context, x]))[len(context):].astype(np.float32)


class StreamingView:
    """``WhitenedView.make`` for a stream: ``StreamingGate`` (when the view denoises) into ``StreamingWhitener``.
    ``push`` gives the whitened audio that is ready; the first ``min_query_s`` seconds come out together, and the
    gate's ``latency`` later than the whitener alone would give them."""

    def __init__(self, view: WhitenedView, refit_s: float = 0.5):
        self.gate = StreamingGate(refit_s=refit_s, first_s=view.min_query_s) if view.denoise else None
        self.whitener = StreamingWhitener(view.order, view.min_query_s, refit_s=refit_s)

    def reset(self) -> None:
        """Forget what was heard (a gap in the stream)."""
        if self.gate is not None:
            self.gate.reset()
        self.whitener.reset()

    def push(self, chunk: np.ndarray) -> np.ndarray:
        return self.whitener.push(self.gate.push(chunk) if self.gate is not None else chunk)

    def flush(self) -> np.ndarray:
        """The end of the stream: what the gate still holds, whitened (empty without a gate)."""
        return self.whitener.push(self.gate.flush()) if self.gate is not None else np.zeros(0, np.float32)
