"""The whitened view: the predictor takes a resonance's ringing out, the searcher searches a query in both views only
where it should, and the calibration holds that pick to its own thresholds."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import scipy.signal

from tests.search_helpers import SR, build_searcher, resonate, synth_song
from workflow_lib.evaluation.calibration import fit_from_candidates
from workflow_lib.search.searcher import Searcher, searcher_kwargs
from workflow_lib.search.threshold import Calibration, fit_calibration
from workflow_lib.search.whiten import WhitenedView, fir_filter, inverse_filter, lpc_whiten

SONGS = {f"song{i}": synth_song(i, 30.0) for i in range(6)}


def test_the_fir_filter_is_lfilter_to_the_bit():
    """The whitened view filters with numpy.convolve, not scipy.signal (whose import cost every query command 0.7 s):
    the same samples, so the whitened fingerprints and the calibrated thresholds did not move."""
    rng = np.random.default_rng(0)
    for n in (50, 98, 4000, 80_000):  # (at exactly the filter's length numpy sums in another order: 1e-16 apart)
        x, b = rng.standard_normal(n), rng.standard_normal(97)
        np.testing.assert_array_equal(fir_filter(b, x), scipy.signal.lfilter(b, [1.0], x))
    wet = resonate(synth_song(3, 5.0).astype(np.float64), (700.0,), t60_s=1.0)
    f = inverse_filter(wet, 96)
    np.testing.assert_array_equal(lpc_whiten(wet, 96), scipy.signal.lfilter(f, [1.0], wet).astype(np.float32))


def test_whitening_cancels_a_ringingresonate():
    rng = np.random.default_rng(0)
    dry = np.r_[rng.standard_normal(4 * SR), np.zeros(SR)]  # 4 s of excitation, then 1 s where only ringing remains
    wet = resonate(dry, (700.0, 1900.0), t60_s=1.5) + 0.2 * dry
    tail = slice(4 * SR + SR // 10, 5 * SR)

    def tail_share(x):
        return float(np.sum(x[tail] ** 2) / np.sum(x ** 2))

    white = lpc_whiten(wet.astype(np.float32), 96)
    assert tail_share(wet) > 0.005  # the resonances ring on after the music stops (40 dB/s)
    assert tail_share(white) < tail_share(wet) / 100  # the inverse filter takes the ringing out
    assert np.sqrt(np.mean(white ** 2)) == pytest.approx(np.sqrt(np.mean(wet ** 2)), rel=1e-3)  # same level
    # the resonances' peaks are gone from the long-term spectrum
    f, p_wet = scipy.signal.welch(wet, SR, nperseg=1024)
    _, p_white = scipy.signal.welch(white, SR, nperseg=1024)
    at = np.argmin(np.abs(f - 700.0))
    assert 10 * np.log10(p_wet[at] / np.median(p_wet)) > 20
    assert 10 * np.log10(p_white[at] / np.median(p_white)) < 6


@pytest.mark.parametrize("n", [200, 1000, 40000])
def test_the_inverse_filter_keeps_the_level_it_computes_without_filtering(n):
    # The gain comes from the autocorrelation (b'Rb less the tail past the end), not from filtering: on short input,
    # where the tail holds a tenth of the energy, the filtered level must still be x's own to rounding.
    rng = np.random.default_rng(n)
    x = resonate(rng.standard_normal(n), (700.0, 1900.0), t60_s=0.5) + 0.3 * rng.standard_normal(n)
    b = inverse_filter(x, 96)
    y = scipy.signal.lfilter(b, [1.0], x)
    assert np.sqrt(np.mean(y ** 2)) == pytest.approx(np.sqrt(np.mean(x ** 2)), rel=1e-9)
    assert inverse_filter(np.zeros(n), 96) is None


def test_whitening_edge_cases():
    silent = np.zeros(SR, np.float32)
    assert not np.any(lpc_whiten(silent, 96))
    with pytest.raises(ValueError, match="needs more than"):
        lpc_whiten(np.ones(50, np.float32), 96)
    with pytest.raises(ValueError, match="1-D"):
        lpc_whiten(np.ones((2, SR), np.float32), 96)
    view = WhitenedView(96, 3.0)
    assert view.applies(3 * SR) and not view.applies(3 * SR - 1)
    assert not WhitenedView(0, 3.0).applies(10 * SR)
    assert not WhitenedView.from_config(None).enabled and WhitenedView.from_config({"order": 48}).order == 48
    assert searcher_kwargs({"whitened_view": {"order": 64, "min_query_s": 5.0}})["whitened_view"] == \
        WhitenedView(64, 5.0)
    with pytest.raises(ValueError, match="order"):
        WhitenedView(-1)


def _null_views(rng, n_queries: int, shift: float) -> list[list[list[float]]]:
    """Null queries' candidate scores in two views; the second view's margins run ``shift`` higher."""
    out = []
    for _ in range(n_queries):
        a = sorted(rng.uniform(0.1, 0.4, 5), reverse=True)
        b = sorted(rng.uniform(0.1, 0.4 + shift, 5), reverse=True)
        out.append([a, b])
    return out


def test_calibration_with_two_views_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    cands = {1: [[sorted(rng.uniform(0.1, 0.4, 5), reverse=True)] for _ in range(200)],  # 1 s: one view only
             5: _null_views(rng, 200, 0.2), 9: _null_views(rng, 200, 0.2)}
    calib = fit_from_candidates(cands, "margin", 0.05, {"whitened_view": WhitenedView().to_dict()})
    assert calib.n_segments == [1, 5, 9] and calib.two_views is not None and calib.two_views.n_segments == [5, 9]
    # the better of two views lifts the null margins, so its threshold is higher
    assert calib.for_views(2).threshold(5) > calib.threshold(5)
    assert calib.for_views(1) is calib
    path = tmp_path / "threshold.json"
    calib.save(path)
    back = Calibration.load(path)
    assert back.two_views.n_segments == [5, 9]
    assert back.two_views.thresholds == pytest.approx(calib.two_views.thresholds, abs=1e-6)
    assert back.threshold(9) == pytest.approx(calib.threshold(9), abs=1e-6)
    assert list(back.table()["views"]) == [1, 1, 1, 2, 2]
    # a file written before the whitened view existed: one view, and asking for two is an error, not a guess
    d = json.loads(path.read_text())
    del d["two_views"]
    path.write_text(json.dumps(d))
    old = Calibration.load(path)
    assert old.two_views is None
    with pytest.raises(ValueError, match="2 views"):
        old.for_views(2)


@pytest.fixture(scope="module")
def searcher():
    return build_searcher(SONGS)


def _calibration(plain: float, two: float | None, meta: dict | None = None) -> Calibration:
    """Thresholds ``plain`` (one view) and ``two`` (two views) at every length."""
    calib = fit_calibration({n: [plain - 0.01] * 100 for n in (1, 5, 19)}, 0.01, meta or {}, "margin")
    if two is not None:
        calib.two_views = fit_calibration({n: [two - 0.01] * 100 for n in (5, 19)}, 0.01, {}, "margin")
    return calib


def test_two_views_only_for_long_queries_with_a_two_view_calibration(searcher):
    s = Searcher(searcher.fingerprinter, searcher.db, searcher.catalogue, _calibration(0.05, 5.0))
    known = SONGS["song2"]
    short, long = known[8 * SR:9 * SR], known[8 * SR:13 * SR]
    timings: dict[str, float] = {}
    res = s.search_audio(long, timings=timings)
    assert res.views == 2 and res.candidates[0].song_id == "song2" and timings["whiten_ms"] > 0
    m = s.identify(long)
    # held to the two-view threshold (set out of reach here), not the one-view one it would pass
    assert m.views == 2 and m.threshold == pytest.approx(s.calibration.two_views.threshold(m.n_segments))
    assert not m.is_match and m.best_guess.song_id == "song2"
    assert s.identify(short).views == 1  # a 1 s query: one view
    assert s.identify(long, "vote").views == 1  # vote mode: one view (the calibration searches in sequence mode)
    # without two-view thresholds (an old threshold file), or with the view switched off: one view, which passes
    for other in (Searcher(s.fingerprinter, s.db, s.catalogue, _calibration(0.05, None)),
                  Searcher(s.fingerprinter, s.db, s.catalogue, _calibration(0.05, 5.0), whitened_view=None)):
        m = other.identify(long)
        assert m.views == 1 and m.is_match and m.song_id == "song2" and not m.whitened
        assert m.threshold == pytest.approx(other.calibration.threshold(m.n_segments))


def test_calibration_made_with_another_whitened_view_falls_back_to_one(searcher, caplog):
    cal = _calibration(0.05, 5.0, {"whitened_view": {"order": 48, "min_query_s": 3.0}})
    with caplog.at_level(logging.WARNING):
        s = Searcher(searcher.fingerprinter, searcher.db, searcher.catalogue, cal)
    assert "calibrated with" in caplog.text and s.calibration.two_views is None
    assert s.identify(SONGS["song2"][8 * SR:13 * SR]).views == 1


def test_silence_is_not_searched_whitened(searcher):
    s = Searcher(searcher.fingerprinter, searcher.db, searcher.catalogue, _calibration(0.05, 0.05))
    m = s.identify(np.zeros(5 * SR, np.float32))
    assert m.reason == "silence" and not m.is_match and not m.whitened
    assert len(s.search_views(s.embed_views(np.zeros(5 * SR, np.float32)))) == 1


def test_a_settled_answer_is_not_whitened(searcher):
    """An answer as it is that reaches the two-view null's 0.1 % point is accepted without making the whitened view;
    one that only passes the 1 % threshold still gets both views, and the pick is the same song."""
    known = SONGS["song2"][8 * SR:13 * SR]
    low = _calibration(0.05, 0.05)  # every null margin 0.04: the 0.1 % point is just above it
    s = Searcher(searcher.fingerprinter, searcher.db, searcher.catalogue, low)
    timings: dict[str, float] = {}
    res = s.search_audio(known, timings=timings)
    assert s.settled(res) and res.views == 2 and not res.whitened and "whiten_ms" not in timings
    m = s.identify(known)
    assert m.is_match and m.song_id == "song2" and m.views == 2
    assert m.threshold == pytest.approx(low.two_views.threshold(m.n_segments))
    # the same null queries, but two in 1000 (more than the 0.1 % point allows) reach a margin of 5: still accepted
    # at the 1 % threshold, yet no longer settled, so the whitened view is made and the better view answers
    tail = _calibration(0.05, 0.05)
    tail.two_views = fit_calibration({n: [0.04] * 998 + [5.0] * 2 for n in (5, 19)}, 0.01, {}, "margin")
    assert tail.two_views.threshold(9) == pytest.approx(0.04, abs=1e-6)
    assert tail.two_views.upper_point(9, 0.001) > 5.0
    t = Searcher(searcher.fingerprinter, searcher.db, searcher.catalogue, tail)
    timings = {}
    res = t.search_audio(known, timings=timings)
    assert not t.settled(res) and res.views == 2 and timings["whiten_ms"] > 0
    both = t.pick_view(t.search_views(t.embed_views(known)))
    assert res.candidates[0].song_id == both.candidates[0].song_id == "song2" and res.whitened == both.whitened


def test_upper_point_places_a_rate_like_the_threshold():
    calib = fit_calibration({5: list(np.arange(1000) / 1000.0), 9: list(np.arange(1000) / 2000.0)}, 0.01, {},
                            "margin")
    assert calib.upper_point(5, 0.01) == pytest.approx(calib.threshold(5))
    # at most 1 in 1000 at or above it: just above the second highest
    assert 0.998 < calib.upper_point(5, 0.001) <= 0.999 + 1e-9
    assert calib.upper_point(7, 0.001) == pytest.approx((calib.upper_point(5, 0.001) + calib.upper_point(9, 0.001)) / 2)
