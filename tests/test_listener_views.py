"""The live listener's whitened view: the streaming whitener keeps every sample and takes a ringing resonance out,
and ``TwoViewCore`` shows one stream of decisions from its two cores at the two-view thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from tests.search_helpers import SR, build_searcher, resonate, synth_song
from workflow_lib.listener.core import ListenerCore
from workflow_lib.listener.decisions import LISTENING, MATCH, SILENCE
from workflow_lib.listener.views import TwoViewCore, listener_core
from workflow_lib.search.searcher import Searcher
from workflow_lib.search.threshold import fit_calibration
from workflow_lib.search.denoise import StreamingGate
from workflow_lib.search.whiten import StreamingWhitener, WhitenedView, lpc_whiten

SONGS = {f"s{i}": synth_song(i, 20.0) for i in range(4)}


def _chunks(x: np.ndarray, size: int = 4000):
    return (x[a:a + size] for a in range(0, len(x), size))


def test_streaming_whitener_holds_back_the_first_seconds_then_keeps_every_sample():
    x = np.random.default_rng(0).standard_normal(10 * SR).astype(np.float32)
    w = StreamingWhitener(96, min_s=3.0, fit_s=5.0)
    out = [w.push(c) for c in _chunks(x)]
    assert [len(o) for o in out[:6]] == [0, 0, 0, 0, 0, 3 * SR]  # released together when 3 s are heard
    assert all(len(o) == 4000 for o in out[6:])
    # the first release is those 3 s whitened by their own predictor, as a query of 3 s is
    np.testing.assert_allclose(out[5], lpc_whiten(x[:3 * SR], 96), rtol=1e-4, atol=1e-5)
    assert len(np.concatenate(out)) == len(x)
    w.reset()
    assert len(w.push(x[:SR])) == 0  # after a reset it holds back again
    with pytest.raises(ValueError, match="order"):
        StreamingWhitener(0)


def test_streaming_whitener_refits_once_per_half_second_whatever_the_block_size(monkeypatch):
    import workflow_lib.search.whiten as whiten

    fits = []
    real = whiten.inverse_filter
    monkeypatch.setattr(whiten, "inverse_filter", lambda x, order: fits.append(len(x)) or real(x, order))
    x = np.random.default_rng(2).standard_normal(10 * SR).astype(np.float32)
    w = StreamingWhitener(96)
    out = np.concatenate([w.push(c) for c in _chunks(x, 400)])  # a capture's 50 ms blocks
    assert len(out) == len(x)
    assert len(fits) == 1 + 7 * 2  # the first 3 s, then every 0.5 s of the next 7
    assert fits[-1] == 5 * SR  # on the newest 5 s


def test_streaming_whitener_takes_a_ringing_resonance_out_chunk_by_chunk():
    rng = np.random.default_rng(1)
    wet = (resonate(rng.standard_normal(12 * SR), (700.0, 1900.0), t60_s=1.5)
           + 0.2 * rng.standard_normal(12 * SR)).astype(np.float32)
    w = StreamingWhitener(96)
    white = np.concatenate([w.push(c) for c in _chunks(wet, 1234)])
    f, p_wet = scipy.signal.welch(wet[6 * SR:], SR, nperseg=1024)
    _, p_white = scipy.signal.welch(white[6 * SR:], SR, nperseg=1024)
    at = np.argmin(np.abs(f - 700.0))
    assert 10 * np.log10(p_wet[at] / np.median(p_wet)) > 20
    assert 10 * np.log10(p_white[at] / np.median(p_white)) < 6
    # continuous where the filter changes: no step at the chunk edges after the start
    edges = np.arange(6 * SR // 1234 + 1, len(white) // 1234) * 1234
    jumps = np.abs(white[edges] - white[edges - 1])
    assert np.median(jumps) < 2 * np.median(np.abs(np.diff(white[6 * SR:])))


def _searcher(plain: float = 0.05, two: float | None = 0.05, view: WhitenedView | None = WhitenedView()) -> Searcher:
    """The synthetic songs' searcher with margin thresholds ``plain`` (one view) and ``two`` (two views)."""
    calib = fit_calibration({n: [plain - 0.01] * 100 for n in (1, 5, 19)}, 0.01, {}, "margin")
    if two is not None:
        calib.two_views = fit_calibration({n: [two - 0.01] * 100 for n in (5, 19)}, 0.01, {}, "margin")
    base = _base()
    return Searcher(base.fingerprinter, base.db, base.catalogue, calib, whitened_view=view)


_BASE: list[Searcher] = []


def _base() -> Searcher:
    if not _BASE:
        _BASE.append(build_searcher(SONGS))
    return _BASE[0]


def _drive(core, x: np.ndarray) -> list:
    return [d for d in (core.push(c) for c in _chunks(x)) if d is not None]


def test_the_listener_has_two_views_only_with_a_whitened_view_and_its_thresholds():
    assert isinstance(listener_core(_searcher()), TwoViewCore)
    assert type(listener_core(_searcher(two=None))) is ListenerCore  # a calibration from before the whitened view
    assert type(listener_core(_searcher(view=None))) is ListenerCore  # search.whitened_view off
    searcher = _searcher(plain=0.05, two=0.2)
    two, one = searcher.calibration.two_views.threshold(9), searcher.calibration.threshold(9)
    assert two > one + 0.1
    core = listener_core(searcher)
    # both cores are held to the two-view thresholds, the declaring and the holding ones
    for c in (core.plain, core.whitened):
        assert c.threshold(9) == pytest.approx(two) and c.hold_threshold(9) == pytest.approx(two)


def test_two_views_decide_at_one_cores_stream_times_and_name_the_song():
    x = np.concatenate([SONGS["s2"][3 * SR:15 * SR], np.zeros(2 * SR, np.float32)])
    one = _drive(ListenerCore(_searcher()), x)
    core = listener_core(_searcher())
    two = _drive(core, x)
    assert [d.stream_s for d in two] == [d.stream_s for d in one]
    assert [h.song_id for h in core.heard] == ["s2"] and core.heard[0].song_offset_s == pytest.approx(3.0, abs=0.5)
    assert [d.event for d in two if d.event] == ["match", "lost"]
    matched = [d for d in two if d.state == MATCH]
    assert matched and all(d.song_id == "s2" and not d.whitened for d in matched)  # the plain core's, shown
    assert two[-1].state == SILENCE
    s = core.summary()
    assert s.decisions == len(two) and [h.song_id for h in s.heard] == ["s2"]


def test_a_song_only_the_whitened_view_declares_is_shown_from_it():
    core = listener_core(_searcher())
    core.plain.calibration = core.plain.hold_calibration = fit_calibration(
        {n: [9.0] * 100 for n in (1, 5, 19)}, 0.01, {}, "margin")  # the plain view never passes
    ds = _drive(core, SONGS["s1"][2 * SR:16 * SR])
    assert core.plain.heard == [] and [h.song_id for h in core.whitened.heard] == ["s1"]
    matched = [d for d in ds if d.state == MATCH]
    assert matched and all(d.whitened and d.song_id == "s1" for d in matched)
    assert matched[0].event == "match" and matched[0].stream_s >= 3.0  # the whitened view starts after 3 s
    assert matched[-1].song_pos_s == pytest.approx(2.0 + matched[-1].stream_s, abs=0.5)
    assert all(d.state == LISTENING for d in ds if d.stream_s < matched[0].stream_s)
    assert [h.song_id for h in core.heard] == ["s1"]


@pytest.mark.parametrize("denoise", [False, True])
def test_a_gap_keeps_both_views_on_the_stream_time(denoise):
    core = listener_core(_searcher(view=WhitenedView(denoise=denoise)))
    _drive(core, SONGS["s3"][: 2 * SR])  # the whitener still holds these back
    core.skip(2 * SR + 123)
    assert core.whitened.stream_samples == core.plain.stream_samples
    ds = _drive(core, SONGS["s3"][int(4.015 * SR):int(4.015 * SR) + 8 * SR])
    # on the same time; with the noise gate, the whitened view's newest samples wait for its frames
    lag = core.plain.stream_samples - core.whitened.stream_samples
    assert (0 <= lag <= StreamingGate.latency) if denoise else lag == 0
    assert ds[0].stream_s == 5.5
    assert [h.song_id for h in core.heard] == ["s3"] and ds[-1].song_offset_s == pytest.approx(0.0, abs=0.5)
