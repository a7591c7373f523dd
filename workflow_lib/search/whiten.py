"""The whitened view of a query: the query through the inverse filter of its own long linear predictor.

A resonant space (a tiled room, a bowl, a car cabin) adds a few narrow resonances that ring for up to 2 s and stand
20-35 dB above the rest of the query's long-term spectrum. A high-order predictor fitted on the query itself puts
its poles on them, and its inverse (FIR) filter cancels them: a minimum-phase resonance's ringing goes with its
peak. Music's own notes change within seconds and weigh less in that average. The whitened view also loses what
noise and diffuse rooms leave of the music's colouring, so the searcher searches it *beside* the query as it is and
keeps the view whose answer the no-match rule trusts more (``Searcher.search_audio``); bench/README.md, "Whitening
the query with its own long predictor", has the measurement behind the order and the minimum length.

The predictor is the autocorrelation method's (Yule-Walker equations solved by Levinson recursion,
``scipy.linalg.solve_toeplitz``): it is stable by construction, and for a 3-10 s query at 8 kHz it costs a few
milliseconds, next to the tens that fingerprinting takes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from workflow_lib import SAMPLE_RATE


@dataclass(frozen=True)
class WhitenedView:
    """When and how the searcher adds the whitened view: ``order`` of the predictor (0: never), for queries of at
    least ``min_query_s`` (shorter ones lose by it: one second holds too little to tell resonance from music)."""

    order: int = 96
    min_query_s: float = 3.0

    def __post_init__(self) -> None:
        if self.order < 0:
            raise ValueError(f"whitened view: order must be >= 0, got {self.order}")

    @property
    def enabled(self) -> bool:
        return self.order > 0

    def applies(self, n_samples: int) -> bool:
        """Whether a query of ``n_samples`` (8 kHz) is searched in both views."""
        return self.enabled and n_samples >= self.min_query_s * SAMPLE_RATE and n_samples > 2 * self.order

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, cfg: dict | None) -> "WhitenedView":
        """From the ``search.whitened_view`` section (None or empty: never)."""
        if not cfg:
            return cls(order=0)
        return cls(int(cfg.get("order", cls.order)), float(cfg.get("min_query_s", cls.min_query_s)))


def lpc_whiten(x: np.ndarray, order: int, ridge: float = 1e-3) -> np.ndarray:
    """``x`` through the inverse filter of its own order-``order`` linear predictor, scaled back to ``x``'s RMS.

    ``ridge`` (a white-noise correction on the zero lag, 1e-3 = -30 dB) keeps the equations well posed on quiet or
    narrow-band input. A silent ``x`` comes back as it is."""
    import scipy.linalg
    import scipy.signal

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"lpc_whiten: expected 1-D audio, got shape {x.shape}")
    if order < 1 or len(x) <= order:
        raise ValueError(f"lpc_whiten: order {order} needs more than {order} samples, got {len(x)}")
    r = scipy.signal.correlate(x, x, "full", method="fft")[len(x) - 1:len(x) + order]  # lags 0..order
    if r[0] <= 0:
        return x.astype(np.float32)
    r[0] *= 1 + ridge
    a = scipy.linalg.solve_toeplitz(r[:order], -r[1:order + 1])
    y = scipy.signal.lfilter(np.r_[1.0, a], [1.0], x)
    gain = np.sqrt(np.mean(x ** 2) / max(float(np.mean(y ** 2)), 1e-30))
    return (y * gain).astype(np.float32)
