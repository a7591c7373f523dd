"""The noise gate before whitening: it takes steady noise out between a resonant space's resonances, gives the
signal back untouched where it passes everything, and a stream gets the same gate, sample for sample."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.signal

from tests.search_helpers import SR, build_searcher, resonate, synth_song
from workflow_lib.search import denoise
from workflow_lib.search.denoise import StreamingGate, spectral_gate
from workflow_lib.search.searcher import Searcher, searcher_kwargs
from workflow_lib.search.threshold import fit_calibration
from workflow_lib.search.whiten import WhitenedView, lpc_whiten


def _resonant_in_noise(seconds: float, snr_db: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Music-like excitation (bursts) through two ringing resonances, and white noise at ``snr_db``: (query,
    noise), the query at unit RMS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    bursts = rng.standard_normal(n) * (np.sin(2 * np.pi * 1.3 * np.arange(n) / SR) > 0)
    wet = resonate(bursts, (700.0, 1900.0), t60_s=1.0)
    wet /= np.sqrt(np.mean(wet ** 2))
    noise = rng.standard_normal(n) * 10 ** (-snr_db / 20)
    return (wet + noise).astype(np.float32), noise


def _valley_db(x: np.ndarray) -> float:
    """How far the spectrum between the resonances lies under the resonance at 700 Hz (dB)."""
    f, p = scipy.signal.welch(x[SR:], SR, nperseg=1024)
    return float(10 * np.log10(p[np.argmin(np.abs(f - 700.0))] / np.median(p)))


def test_the_gate_takes_the_noise_out_between_resonances_and_keeps_level_and_length():
    for seed in range(3):
        q, _ = _resonant_in_noise(6.0, 5.0, seed)
        gated = spectral_gate(q)
        assert gated.dtype == np.float32 and len(gated) == len(q)
        assert np.sqrt(np.mean(gated ** 2)) == pytest.approx(np.sqrt(np.mean(q ** 2)), rel=1e-4)
        # a gentle gate (the settings measured best): the noise between the resonances about 3.5 dB further down
        assert _valley_db(gated) > _valley_db(q) + 2.5


def test_where_the_gate_passes_everything_the_audio_comes_back_exactly(monkeypatch):
    monkeypatch.setattr(denoise, "OVER_SUBTRACT", 0.0)  # every gain 1: only the framing is left to test
    x = np.random.default_rng(3).standard_normal(3 * SR + 77).astype(np.float32)
    np.testing.assert_allclose(spectral_gate(x), x, atol=1e-5)
    for size in (50, 400, 4001):
        gate = StreamingGate()
        out = np.concatenate([gate.push(x[a:a + size]) for a in range(0, len(x), size)] + [gate.flush()])
        np.testing.assert_allclose(out, x, atol=1e-5)  # sample for sample, whatever the chunking


def test_the_streaming_gate_follows_the_whole_query_gate_and_waits_at_most_its_latency():
    q, _ = _resonant_in_noise(10.0, 5.0, seed=1)
    gate = StreamingGate()
    parts = []
    for a in range(0, len(q), 400):  # a capture's 50 ms blocks
        parts.append(gate.push(q[a:a + 400]))
        assert a + min(400, len(q) - a) - sum(len(p) for p in parts) <= StreamingGate.latency
    live = np.concatenate(parts)
    whole = spectral_gate(q)
    # once the stream's noise estimate has its 5 s, the two agree but for level (the whitener sets that)
    a, b = live[6 * SR:], whole[6 * SR:len(live)]
    assert np.corrcoef(a, b)[0, 1] > 0.99
    gate.reset()
    assert len(gate.push(q[:100])) == 0  # after a reset it starts again with its frames


def test_silence_stays_silence_and_bad_input_is_refused():
    assert not np.any(spectral_gate(np.zeros(SR, np.float32)))
    assert len(spectral_gate(np.zeros(0, np.float32))) == 0
    with pytest.raises(ValueError, match="1-D"):
        spectral_gate(np.ones((2, SR), np.float32))
    gate = StreamingGate()
    assert not np.any(np.concatenate([gate.push(np.zeros(SR)), gate.flush()]))


def test_the_view_gates_only_when_asked_and_a_calibration_is_used_only_by_the_view_it_was_made_with(caplog):
    assert not WhitenedView().denoise and not WhitenedView.from_config({"order": 96}).denoise
    gating = WhitenedView.from_config({"order": 96, "min_query_s": 3.0, "denoise": True})
    assert gating.denoise
    assert searcher_kwargs({"whitened_view": {"order": 96, "min_query_s": 3.0, "denoise": True}})["whitened_view"] \
        == WhitenedView(96, 3.0, True)
    q, _ = _resonant_in_noise(4.0, 5.0, seed=2)
    np.testing.assert_array_equal(gating.make(q), lpc_whiten(spectral_gate(q), 96))
    np.testing.assert_array_equal(WhitenedView().make(q), lpc_whiten(q, 96))
    searcher = build_searcher({f"s{i}": synth_song(i, 12.0) for i in range(2)})

    def calibration(view_record: dict):
        cal = fit_calibration({n: [0.04] * 100 for n in (1, 5, 19)}, 0.01, {"whitened_view": view_record}, "margin")
        cal.two_views = fit_calibration({n: [0.04] * 100 for n in (5, 19)}, 0.01, {}, "margin")
        return cal

    # a file calibrated before the gate existed (no "denoise" in its record) was made without it: still used
    before_the_gate = {"order": 96, "min_query_s": 3.0}
    s = Searcher(searcher.fingerprinter, searcher.db, searcher.catalogue, calibration(before_the_gate))
    assert s.calibration.two_views is not None
    # thresholds fitted on the ungated view do not hold for the gated one: two views stay off until recalibrated
    with caplog.at_level(logging.WARNING):
        s = Searcher(searcher.fingerprinter, searcher.db, searcher.catalogue, calibration(before_the_gate),
                     whitened_view=gating)
    assert "calibrated with" in caplog.text and "nafp index" in caplog.text and s.calibration.two_views is None
    s = Searcher(searcher.fingerprinter, searcher.db, searcher.catalogue, calibration(gating.to_dict()),
                 whitened_view=gating)
    assert s.calibration.two_views is not None
