"""``nafp scan --whitened``: the recording scanned as it is and whitened, one timeline from both views."""

from __future__ import annotations

import numpy as np
import pytest

from tests.search_helpers import SR, build_searcher, resonate, stub_database, synth_song
from workflow_lib.listener import scan
from workflow_lib.listener.settings import ListenConfig
from workflow_lib.listener.scan import Occurrence, merge_views, scan_chunks, whitened_stream, whitened_view
from workflow_lib.search.searcher import Searcher
from workflow_lib.search.threshold import fit_calibration
from workflow_lib.search.denoise import StreamingGate
from workflow_lib.search.whiten import StreamingWhitener, WhitenedView

SONGS = {f"s{i}": synth_song(i, 30.0) for i in range(4)}
CONFIG = ListenConfig(window_s=4.0, tail_s=2.0)
_BASE: list[Searcher] = []


def _searcher(two: bool = True, view: WhitenedView | None = WhitenedView()) -> Searcher:
    if not _BASE:
        _BASE.append(build_searcher(SONGS))
    base = _BASE[0]
    calib = fit_calibration({n: [0.04] * 100 for n in (1, 5, 19)}, 0.01, {}, "margin")
    if two:
        calib.two_views = fit_calibration({n: [0.05] * 100 for n in (5, 19)}, 0.01, {}, "margin")
    return Searcher(base.fingerprinter, base.db, base.catalogue, calib, whitened_view=view)


def _occ(song: str, a: float, b: float, pos: float) -> Occurrence:
    return Occurrence(a, b, song, song, None, pos, pos + b - a, 0.9)


def _spans(occurrences) -> list[tuple]:
    return [(o.song_id, o.start_s, o.end_s, o.song_start_s, o.song_end_s) for o in occurrences]


def test_whitened_occurrences_count_only_where_the_recording_as_it_is_has_none():
    plain = [_occ("A", 10, 40, 0), _occ("D", 80, 100, 50), _occ("H", 130, 135, 0)]
    whitened = [_occ("A", 35, 50, 25),  # A heard on in the whitened view: one occurrence with the plain one
                _occ("B", 50, 70, 100),  # nothing plain there: as it is
                _occ("E", 79, 101, 0),  # another song over D: D stands, the 1 s either side is too little
                _occ("F", 110, 111.5, 0),  # too short on its own
                _occ("G", 120, 150, 0)]  # around H: the two stretches left, their song times moved with the cut
    assert _spans(merge_views(plain, whitened)) == [
        ("A", 10, 50, 0, 40), ("B", 50, 70, 100, 120), ("D", 80, 100, 50, 70),
        ("G", 120, 130, 0, 10), ("H", 130, 135, 0, 5), ("G", 135, 150, 15, 30)]
    assert _spans(plain) == [("A", 10, 40, 0, 30), ("D", 80, 100, 50, 70), ("H", 130, 135, 0, 5)]  # not changed
    assert _spans(merge_views([], whitened[1:2])) == [("B", 50, 70, 100, 120)]


def test_the_whitened_stream_keeps_every_sample_after_the_start_whatever_the_chunking():
    rng = np.random.default_rng(4)
    x = resonate(rng.standard_normal(11 * SR), (900.0,), t60_s=1.0).astype(np.float32)
    view = WhitenedView(96, 3.0, denoise=True)  # the noise gate before the whitener: it holds samples back too
    whole = np.concatenate(list(whitened_stream([x], view)))
    parts = np.concatenate(list(whitened_stream([x[a:a + 3333] for a in range(0, len(x), 3333)], view)))
    assert len(whole) == len(x) and np.array_equal(whole, parts)  # the estimates change at the same places
    # the listener's view fed the same 0.5 s steps gives the same samples (all but the last, which the gate gives
    # when the recording ends)
    live_view = view.stream()
    live = np.concatenate([live_view.push(x[a:a + SR // 2]) for a in range(0, len(x), SR // 2)])
    np.testing.assert_array_equal(whole[:len(live)], live)
    assert len(x) - len(live) <= StreamingGate.latency
    assert sum(len(c) for c in whitened_stream([x[:2 * SR]], view)) == 0  # under 3 s: no whitened view
    # without the gate: the whitener alone, every sample out as it comes
    w = StreamingWhitener(96, 3.0)
    plain_white = np.concatenate([w.push(x[a:a + SR // 2]) for a in range(0, len(x), SR // 2)])
    np.testing.assert_array_equal(np.concatenate(list(whitened_stream([x], WhitenedView(96, 3.0)))), plain_white)


def test_a_scan_in_two_views_needs_the_whitened_view_and_its_thresholds():
    x = SONGS["s1"][:6 * SR]
    for searcher, message in ((_searcher(two=False), "two-view thresholds"),
                              (_searcher(view=WhitenedView(order=0)), "whitened view is off")):
        with pytest.raises(ValueError, match=message):
            scan_chunks(searcher, [x], CONFIG, whitened=True)
        assert scan_chunks(searcher, [x], CONFIG).stats["views"] == 1  # one view still scans
    assert whitened_view(_searcher()).order == 96


def _programme() -> tuple[np.ndarray, list[tuple[str, float]]]:
    parts = [np.zeros(2 * SR, np.float32), SONGS["s0"][4 * SR:22 * SR], synth_song(99, 8.0), SONGS["s2"][0:16 * SR],
             SONGS["s3"][10 * SR:28 * SR]]
    return np.concatenate(parts), [("s0", 2.0), ("s2", 28.0), ("s3", 44.0)]


def test_a_clean_programme_scanned_in_two_views_gives_the_songs_of_one_view_and_a_view_count():
    audio, truth = _programme()
    chunks = [audio[a:a + 7 * SR] for a in range(0, len(audio), 7 * SR)]
    one = scan_chunks(_searcher(), chunks, CONFIG)
    two = scan_chunks(_searcher(), chunks, CONFIG, whitened=True)
    assert [o.song_id for o in two.occurrences] == [o.song_id for o in one.occurrences] == [s for s, _ in truth]
    for o, (_, start) in zip(two.occurrences, truth):
        assert abs(o.start_s - start) <= 2.0
    assert two.stats["views"] == 2 and two.stats["segments"] == one.stats["segments"]
    # fingerprinted side by side, the same timeline
    assert scan_chunks(_searcher(), chunks, CONFIG, whitened=True, workers=3).rows() == two.rows()


def test_songs_only_the_whitened_view_names_are_in_the_timeline_at_their_song_times(monkeypatch):
    audio, truth = _programme()
    never = fit_calibration({n: [9.0] * 100 for n in (1, 5, 19)}, 0.01, {}, "margin")
    real = scan.ListenerCore
    made = []

    def plain_core_never_passes(*args, **kwargs):
        core = real(*args, **kwargs)
        if not made:  # the first core of a scan hears the recording as it is
            core.calibration = core.hold_calibration = never
        made.append(core)
        return core

    monkeypatch.setattr(scan, "ListenerCore", plain_core_never_passes)
    assert scan_chunks(_searcher(), [audio], CONFIG).occurrences == []
    made.clear()
    res = scan_chunks(_searcher(), [audio], CONFIG, whitened=True)
    assert made[0].heard == [] and made[1].heard
    assert [o.song_id for o in res.occurrences] == [s for s, _ in truth]
    for o, (song, start) in zip(res.occurrences, truth):
        offset = {"s0": 4.0 - 2.0, "s2": -28.0, "s3": 10.0 - 44.0}[song]  # song time minus recording time
        assert abs(o.start_s - start) <= 2.0 and o.song_start_s == pytest.approx(o.start_s + offset, abs=0.6)
    assert {g.kind for g in res.gaps} >= {"silence", "no match"}


def test_monitoring_programmes_play_through_the_chosen_pool_of_responses(tmp_path):
    import pandas as pd

    from workflow_lib.data.clipbank import ClipBank, write_clip_bank
    from workflow_lib.evaluation.monitoring import MonitoringPlan, make_programme
    from workflow_lib.evaluation.report import _room

    room = np.zeros(SR // 2, np.float32)
    room[0], room[800] = 1.0, 0.5  # a direct sound and one echo 0.1 s later
    ring = resonate(np.r_[1.0, np.zeros(SR - 1)], (700.0,), t60_s=0.8).astype(np.float32)
    write_clip_bank(tmp_path / "irs", [room, ring], pd.DataFrame({"kind": ["room", "resonant"]}))
    bank = ClipBank(tmp_path / "irs")
    song = synth_song(3, 20.0)
    progs = {pool: make_programme("p", np.random.default_rng(1), [("k", song)], [],
                                  MonitoringPlan(minutes=0.2, talk_share=0.0, unknown_share=0.0, room_pool=pool),
                                  10.0, None, bank, None) for pool in ("room", "resonant")}
    for pool, ir in (("room", room), ("resonant", ring)):
        p = progs[pool]
        dry = song[int(p.truth[0]["song_start_s"] * SR):][:len(p.audio)]
        peak = int(np.argmax(np.abs(ir)))  # the programme is aligned on the response's direct sound
        wet = scipy_fftconvolve(dry, ir)[peak:peak + len(p.audio)]
        assert np.corrcoef(p.audio[SR:], wet[SR:])[0, 1] > 0.99, pool  # through that pool's response
        assert np.corrcoef(progs["room" if pool == "resonant" else "resonant"].audio[SR:], wet[SR:])[0, 1] < 0.9
    with pytest.raises(ValueError, match="room_pool"):
        MonitoringPlan(room_pool="cathedral")
    row = {"system": "neural", "programme": "p", "snr_db": 10.0, "minutes": 1.0}
    assert _room(pd.DataFrame([row])) == "a held-out room"  # a table from before the settings
    text = _room(pd.DataFrame([{**row, "room_pool": "resonant", "views": 2}]))
    assert text.startswith("a held-out resonant space") and "two views" in text


def scipy_fftconvolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    import scipy.signal

    return scipy.signal.fftconvolve(x, h)


def test_the_cli_scans_in_two_views_when_asked_and_says_why_it_cannot(tmp_path, monkeypatch, capsys):
    import json

    import soundfile as sf

    from workflow_lib.cli import main as cli_main
    from workflow_lib.cli.main import EXIT_SETUP

    audio, truth = _programme()
    wav = tmp_path / "show.wav"
    sf.write(wav, audio, SR)
    searchers = [_searcher()]
    stub_database(monkeypatch, tmp_path, lambda: searchers[0])
    assert cli_main.main(["scan", str(wav), "--json", "--whitened", "--results", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["song_id"] for r in rows if r["kind"] == "song"] == [s for s, _ in truth]
    searchers[0] = _searcher(two=False)  # a calibration made before the whitened view
    assert cli_main.main(["scan", str(wav), "--whitened", "--results", str(tmp_path)]) == EXIT_SETUP
    assert "no two-view thresholds" in capsys.readouterr().err


def test_a_long_file_query_is_scanned_in_the_views_its_whole_file_answer_was_searched_in(monkeypatch):
    from workflow_lib.api import answer_file, row_for, with_occurrence

    talk = 0.02 * np.random.default_rng(5).standard_normal(8 * SR).astype(np.float32)
    audio = np.concatenate([talk, SONGS["s2"][5 * SR:23 * SR]])  # 8 s of something else, then s2 from 5 s
    never = fit_calibration({n: [9.0] * 100 for n in (1, 5, 19)}, 0.01, {}, "margin")
    real = scan.ListenerCore
    made = []

    def plain_core_never_passes(*args, **kwargs):
        core = real(*args, **kwargs)
        if not made:
            core.calibration = core.hold_calibration = never
        made.append(core)
        return core

    monkeypatch.setattr(scan, "ListenerCore", plain_core_never_passes)
    searcher = _searcher()
    assert searcher.two_views(len(audio))
    match, result = answer_file(searcher, audio, CONFIG, "f")
    assert result.stats["views"] == 2 and [o.song_id for o in result.occurrences] == ["s2"]
    row = with_occurrence(row_for("f", match, None, len(audio) / SR), result)
    assert row["song_id"] == "s2" and row["whitened"] is True and row["views"] == 2
    assert row["file_start_s"] == pytest.approx(8.0, abs=2.0) and row["offset_s"] == pytest.approx(
        row["file_start_s"] - 3.0, abs=0.6)
    made.clear()
    assert answer_file(searcher, audio, CONFIG, "f", whitened=False)[1].occurrences == []
    made.clear()
    one_view = Searcher(searcher.fingerprinter, searcher.db, searcher.catalogue, searcher.calibration,
                        whitened_view=WhitenedView(order=0))
    assert answer_file(one_view, audio, CONFIG, "f")[1].stats["views"] == 1  # the whole file in one view: so the scan


def test_an_hour_long_stream_scanned_in_two_views_stays_within_a_memory_bound():
    """The two views read one stream (the whitened one lags by its held-back start): an hour of audio streamed
    through a child process's two-view scan, its peak memory stays bounded."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import resource
import numpy as np
from tests.test_scan_views import SONGS, _searcher
from workflow_lib.listener.settings import ListenConfig
from workflow_lib.listener.scan import scan_chunks
searcher = _searcher()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def chunks():  # 60 minutes: the songs over and over
    rng = np.random.default_rng(0)
    for k in range(120):
        yield SONGS[f"s{k % 4}"] * rng.uniform(0.3, 1.0)
res = scan_chunks(searcher, chunks(), ListenConfig(window_s=4.0), workers=2, whitened=True)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(res.duration_s, len(res.occurrences), res.stats["views"], (after - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    duration, n_occ, views, grown_mb = out.stdout.split()
    assert float(duration) == pytest.approx(3600.0) and views == "2"
    assert int(n_occ) >= 100  # songs back to back: each one is found
    # ~115 MB of audio streamed through; seen 230 MB, of which ~190 MB is there after 15 minutes already (the
    # whitener's libraries and both views' set-up): holding the audio would add the 115
    assert float(grown_mb) < 290, grown_mb
