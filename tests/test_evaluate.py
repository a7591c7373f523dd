"""Evaluation: degradations, query-set generation, metrics on a hand-made table, summary and plots."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from tests.search_helpers import SR, build_searcher, synth_song
from workflow_lib.audio.files import load_audio, write_audio
from workflow_lib.data.clipbank import ClipBank, write_clip_bank
from workflow_lib.evaluation.degrade import (Degradation, add_noise, bandlimit, compress, convolve, degrade, ir_pool,
                                             quantise_16bit, reverberate, rms)
from workflow_lib.evaluation.chunks import run_in_chunks
from workflow_lib.evaluation.metrics import compute_metrics, pooled_fpr, score_with_audio, snr_of, target_checks
from workflow_lib.evaluation.neural import run_neural
from workflow_lib.evaluation.plan import Condition, QueryPlan
from workflow_lib.evaluation.queries import usable_conditions, write_query_set
from workflow_lib.evaluation.report import plot_hit_rates, write_summary
from workflow_lib.evaluation.songs import pick_start, require_held_out_unknowns, unknown_songs


# ------------------------------------------------------------------------------------------------ degradations

def test_noise_is_mixed_at_the_requested_snr():
    rng = np.random.default_rng(0)
    x = synth_song(1, 3.0)
    n = rng.standard_normal(len(x)).astype(np.float32)
    for snr in (0.0, 5.0, 20.0):
        y = add_noise(x, n, snr)
        measured = 10 * np.log10(rms(x) ** 2 / rms(y - x) ** 2)
        assert measured == pytest.approx(snr, abs=1e-3)
    with pytest.raises(ValueError, match="silent"):
        add_noise(np.zeros(100, np.float32), n[:100], 0.0)


def test_convolution_is_linear_not_circular():
    x = np.zeros(100, np.float32)
    x[95] = 1.0
    h = np.array([1.0, 0.5, 0.25, 0.125, 0.0625, 0.03, 0.01, 0.005], np.float32)
    y = convolve(x, h)
    assert len(y) == 107 and np.allclose(y[95:103], h, atol=1e-6)
    assert np.allclose(y[:95], 0.0, atol=1e-6)  # nothing wrapped round to the start


def test_reverb_keeps_alignment_and_carries_the_tail_of_earlier_audio():
    song = np.zeros(4000, np.float32)
    song[1000] = 1.0  # a click before the query
    song[2500] = 0.5  # and one inside it
    ir = np.zeros(600, np.float32)
    ir[20] = 1.0  # direct sound after a short delay
    ir[21:] = 0.3 * np.exp(-np.arange(579) / 100.0)
    wet = reverberate(song, 2000, 1000, ir)
    assert len(wet) == 1000
    assert int(np.argmax(np.abs(wet))) == 500  # the in-query click stays where it was (aligned on the direct sound)
    # The click 1000 samples before the query left a (tiny) tail only if the IR is long enough: here it is not.
    assert np.abs(wet[:400]).max() < 1e-6
    long_ir = np.concatenate([ir, 0.3 * np.exp(-(np.arange(1500) + 579) / 800.0).astype(np.float32)])
    wet2 = reverberate(song, 2000, 1000, long_ir)
    assert np.abs(wet2[:400]).max() > 1e-3  # the earlier click's reverb tail reaches into the query
    assert rms(wet2) == pytest.approx(rms(song[2000:3000]), rel=1e-4)  # loudness of the dry excerpt


def test_bandlimit_passes_the_band_and_cuts_outside():
    t = np.arange(SR) / SR
    low, mid, high = (np.sin(2 * np.pi * f * t).astype(np.float32) for f in (60.0, 1000.0, 3900.0))
    for sig, keep in ((low, False), (mid, True), (high, False)):
        y = bandlimit(sig, 300.0, 2000.0)  # 4-pole: 3900 Hz is ~1 octave above, about -23 dB
        ratio = rms(y[1000:-1000]) / rms(sig[1000:-1000])
        assert (ratio > 0.95) if keep else (ratio < 0.2), ratio


def test_degrade_clean_is_the_exact_excerpt_and_checks_bounds():
    song = synth_song(2, 5.0)
    q, info = degrade(song, 1234, 8000, Degradation(), np.random.default_rng(0))
    assert np.array_equal(q, song[1234:9234]) and info["ir"] is None
    with pytest.raises(ValueError, match="outside"):
        degrade(song, len(song) - 10, 8000, Degradation(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="noise bank"):
        degrade(song, 0, 8000, Degradation(snr_db=5.0), np.random.default_rng(0))


def _kinds_bank(tmp_path) -> ClipBank:
    rng = np.random.default_rng(1)
    irs, rows = [], []
    for name, kind, origin, rt60 in (("short", "room", "simulated", 0.4), ("hall", "room", "measured", 2.2),
                                     ("simhall", "room", "simulated", 1.8), ("ring", "resonant", "simulated", 1.0),
                                     ("cab", "device", "measured", 0.05)):
        n = int(min(rt60, 2.5) * SR)
        h = rng.standard_normal(n) * 10 ** (-3 * np.arange(n) / SR / rt60)
        h[0] = 1.0
        irs.append((h / np.linalg.norm(h)).astype(np.float32))
        rows.append({"name": name, "kind": kind, "origin": origin, "rt60_s": rt60})
    write_clip_bank(tmp_path / "irs", irs, pd.DataFrame(rows), dtype="float32")
    return ClipBank(tmp_path / "irs")


def test_impulse_response_pools_select_by_kind_length_and_origin(tmp_path):
    bank = _kinds_bank(tmp_path)
    names = bank.meta["name"].to_numpy()
    assert set(names[ir_pool(bank, "room")]) == {"short", "hall", "simhall"}
    assert set(names[ir_pool(bank, "long")]) == {"hall", "simhall"}
    assert set(names[ir_pool(bank, "real long")]) == {"hall"}
    assert set(names[ir_pool(bank, "resonant")]) == {"ring"}
    song = synth_song(4, 8.0)
    for seed in range(5):  # a 'resonant' query is always reverberated by the ringing space
        _, info = degrade(song, 2 * SR, SR, Degradation(room="resonant"), np.random.default_rng(seed), None, bank)
        assert info["ir"] == "ring"


def test_speed_change_plays_the_song_faster_from_the_same_start():
    t = np.arange(10 * SR) / SR
    song = (0.5 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    q, _ = degrade(song, 2 * SR, 2 * SR, Degradation(speed=1.04), np.random.default_rng(0))
    peak = np.argmax(np.abs(np.fft.rfft(q))) * SR / len(q)
    assert len(q) == 2 * SR and peak == pytest.approx(520.0, abs=1.0)
    with pytest.raises(ValueError, match="outside"):  # the faster query reads past the end
        degrade(song, 10 * SR - 2 * SR, 2 * SR, Degradation(speed=1.05), np.random.default_rng(0))


def test_query_compression_matches_the_training_compressor():
    from workflow_lib.training.augment import compress as compress_torch

    x = synth_song(5, 3.0) * np.repeat([1.0, 0.05, 0.6], SR).astype(np.float32)
    a = compress(x, 4.0, -20.0)
    b = compress_torch(torch.from_numpy(x)[None], torch.tensor([4.0]), torch.tensor([-20.0]))[0].numpy()
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert rms(a[SR:2 * SR]) / rms(a[:SR]) > 1.5 * rms(x[SR:2 * SR]) / rms(x[:SR])  # quiet part brought up


def test_phone_chain_band_limits_colours_and_codes():
    plan = QueryPlan()
    spec = plan.degradation(Condition("phone", 10.0, "room", "phone", "phone"), np.random.default_rng(3))
    assert 250 <= spec.highpass_hz <= 400 and 3000 <= spec.lowpass_hz <= 3600
    assert 2 <= len(spec.eq) <= 4 and spec.codec in {"gsm", "opus-8k", "mp3-16k"}
    song = synth_song(6, 6.0)
    q, _ = degrade(song, SR, 3 * SR, Degradation(highpass_hz=300.0, lowpass_hz=3400.0, codec="gsm"),
                   np.random.default_rng(0))
    spec_q = np.abs(np.fft.rfft(q)) ** 2
    f = np.fft.rfftfreq(len(q), 1 / SR)
    assert spec_q[f > 3700].sum() < 0.02 * spec_q.sum()  # nothing of the top band survives
    assert np.corrcoef(q, song[SR:4 * SR])[0, 1] > 0.3  # still the same music


def test_a_quiet_capture_is_played_softer_and_recorded_in_16_bits():
    song = synth_song(7, 6.0)
    q, _ = degrade(song, SR, 3 * SR, Degradation(level_db=-40.0), np.random.default_rng(0))
    loud, _ = degrade(song, SR, 3 * SR, Degradation(), np.random.default_rng(0))
    assert 20 * np.log10(rms(q) / rms(loud)) == pytest.approx(-40.0, abs=0.1)
    steps = q.astype(np.float64) * 32767
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # on the converter's grid
    assert np.unique(np.round(steps)).size < np.unique(np.round(loud * 32767.0)).size / 10  # lost its low bits
    np.testing.assert_array_equal(quantise_16bit(np.array([2.0, -2.0, 0.0])), [1.0, -1.0, 0.0])


def test_a_capture_level_is_drawn_last_so_other_draws_stay_as_they_were():
    plan = QueryPlan()
    room = Condition("10 dB + room", 10.0, "room", "bandlimit", "phone", (0.97, 1.03), True)
    quiet = Condition("quiet", 10.0, "room", "bandlimit", "phone", (0.97, 1.03), True, level_db=(-45.0, -30.0))
    for seed in range(20):
        a = plan.degradation(room, np.random.default_rng(seed))
        b = plan.degradation(quiet, np.random.default_rng(seed))
        assert a.level_db is None and -45.0 <= b.level_db <= -30.0
        assert Degradation(**{**b.__dict__, "level_db": None}) == a


def test_condition_validation():
    with pytest.raises(ValueError, match="room must be"):
        Condition("x", room="cave")
    with pytest.raises(ValueError, match="codec"):
        Condition("x", codec="amr")
    with pytest.raises(ValueError, match="unique"):
        QueryPlan.from_config({"conditions": [{"name": "a"}, {"name": "a"}]})
    plan = QueryPlan.from_config({"conditions": [{"name": "fast", "speed": [0.96, 1.04], "snr_db": 10}]})
    assert plan.conditions[0].speed == (0.96, 1.04) and plan.conditions[0].max_speed == 1.04
    plan = QueryPlan.from_config({"conditions": [{"name": "quiet", "level_db": [-45, -30]}]})
    assert plan.conditions[0].level_db == (-45.0, -30.0) and not plan.conditions[0].is_clean
    with pytest.raises(ValueError, match="level_db"):
        Condition("x", level_db=(-30.0, 6.0))


# ------------------------------------------------------------------------------------------------ metrics

def _hand_made():
    queries = pd.DataFrame([
        # id, group, song, in_db, start, length, condition
        ("q1", "unseen", "A", True, 10.0, 3.0, "clean"),
        ("q2", "unseen", "A", True, 20.1, 3.0, "clean"),
        ("q3", "unseen", "B", True, 5.0, 3.0, "clean"),
        ("x1", "unknown", None, False, 1.0, 3.0, "clean"),
        ("x2", "unknown", None, False, 2.0, 3.0, "clean"),
        ("q4", "unseen", "B", True, 7.0, 5.0, "clean"),
        ("t1", "trained", "C", True, 3.0, 3.0, "clean"),
    ], columns=["query_id", "group", "song_id", "in_db", "start_s", "length_s", "condition"])
    queries["source_song_id"] = queries["song_id"].fillna("Z")
    r = []

    def add(qid, system, songs, offs, match, ms):
        r.append({"query_id": qid, "system": system, "mode": "sequence" if system == "neural" else "landmark",
                  "top_songs": songs, "top_offsets_s": offs, "top_scores": [1.0] * len(songs), "score": 1.0,
                  "is_match": match, "embed_ms": ms / 2, "search_ms": ms / 2, "total_ms": ms})

    add("q1", "neural", ["A", "B"], [10.0, 3.0], True, 10)   # right song, exact offset, accepted
    add("q2", "neural", ["A"], [20.5], False, 20)            # right song, 0.4 s off: near not exact; rejected
    add("q3", "neural", ["C", "D", "B"], [1.0, 2.0, 5.0], True, 30)  # wrong top-1, right in top-3
    add("x1", "neural", ["A"], [3.0], True, 40)              # false positive
    add("x2", "neural", ["B"], [3.0], False, 50)             # correctly rejected
    add("q4", "neural", ["B"], [7.25], True, 60)             # 5 s group: exact (0.25 s off)
    add("t1", "neural", ["C"], [3.0], True, 70)              # trained-on song: reported apart
    add("q1", "audfprint", [], [], False, 5)                 # no answer at all
    return queries, pd.DataFrame(r)


def test_metrics_on_a_hand_made_table():
    queries, results = _hand_made()
    m = compute_metrics(queries, results)
    row = m[(m.system == "neural") & (m.group == "unseen") & (m.length_s == 3.0)].iloc[0]
    assert row.n_queries == 3
    assert row.song_top1 == pytest.approx(2 / 3)
    assert row.seg_top1_exact == pytest.approx(1 / 3)
    assert row.seg_top1_near == pytest.approx(2 / 3)
    assert row.song_top3 == pytest.approx(1.0) and row.song_top10 == pytest.approx(1.0)
    assert row.song_top1_accepted == pytest.approx(1 / 3)
    assert row.accept_right == pytest.approx(1 / 2)  # of the two right best guesses, one was accepted
    assert row.latency_p50_ms == pytest.approx(20.0) and row.search_p50_ms == pytest.approx(10.0)
    unk = m[(m.system == "neural") & (m.group == "unknown")].iloc[0]
    assert unk.fpr == pytest.approx(0.5) and np.isnan(unk.song_top1)
    trained = m[(m.system == "neural") & (m.group == "trained")].iloc[0]
    assert trained.song_top1 == 1.0 and trained.n_queries == 1
    n5 = m[(m.system == "neural") & (m.length_s == 5.0)].iloc[0]
    assert n5.seg_top1_exact == 1.0 and np.isnan(n5.fpr)
    a = m[m.system == "audfprint"].iloc[0]
    assert a.n_queries == 1 and a.song_top1 == 0.0 and a.song_top10 == 0.0
    f = pooled_fpr(queries, results)
    assert f.set_index("system").loc["neural", "fpr"] == pytest.approx(0.5)


def test_results_for_unknown_queries_are_refused():
    queries, results = _hand_made()
    bad = results.copy()
    bad.loc[0, "query_id"] = "nope"
    with pytest.raises(ValueError, match="not in the query table"):
        compute_metrics(queries, bad)


def test_summary_and_plots_are_written(tmp_path):
    queries, results = _hand_made()
    m = compute_metrics(queries, results)
    text = write_summary(tmp_path / "summary.md", queries, m, pooled_fpr(queries, results), {"model": "x"})
    assert (tmp_path / "summary.md").read_text() == text
    assert "## Unseen songs: Song-level top-1 hit rate (%)" in text
    assert "| clean | neural (sequence) | 66.7 | 100.0 |" in text
    assert "## Trained-on songs: Song-level top-1 hit rate (%)" in text
    assert "false-positive rate <= 1 %" in text and "50.00 %" in text
    plot_hit_rates(m, tmp_path / "hit.png", title="unseen songs; database 3 songs")
    assert (tmp_path / "hit.png").stat().st_size > 5000
    # A perfect score over 300 queries: the Wilson interval's upper edge lands 1e-14 below 100 % (matplotlib
    # refuses negative error bars).
    perfect = m.assign(song_top1=1.0, n_queries=300)
    plot_hit_rates(perfect, tmp_path / "perfect.png")
    assert (tmp_path / "perfect.png").stat().st_size > 5000


# ------------------------------------------------------------------------------------------------ query set

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for i in range(5):
        p = root / f"s{i}.flac"
        audio = synth_song(10 + i, 15.0)
        write_audio(p, audio)
        rows.append({"song_id": f"s{i}", "path": str(p), "duration_s": 15.0})
    songs = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    write_clip_bank(root / "noise", [rng.standard_normal(SR * 4).astype(np.float32) for _ in range(2)],
                    pd.DataFrame({"name": ["n0", "n1"]}))
    irs = []
    for k in range(2):
        ir = np.zeros(1200, np.float32)
        ir[8] = 1.0
        ir[9:] = 0.2 * rng.standard_normal(1191) * np.exp(-np.arange(1191) / (150.0 * (k + 1)))
        irs.append(ir)
    write_clip_bank(root / "irs", irs, pd.DataFrame({"name": ["room0", "room1"], "kind": "room",
                                                     "origin": "simulated", "rt60_s": [0.2, 0.4]}),
                    dtype="float32")
    return songs, ClipBank(root / "noise"), ClipBank(root / "irs")


PLAN = QueryPlan(seed=3, n_starts=4, n_out_of_db_starts=2, lengths_s=(1, 2),
                 conditions=(Condition("clean"), Condition("5 dB + room", 5.0, "room", "bandlimit"),
                             Condition("5 dB + long reverb", 5.0, "long")))


def test_query_set_files_table_and_determinism(corpus, tmp_path, caplog):
    songs, noise, irs = corpus
    groups = {"unseen": songs.iloc[:3], "unknown": songs.iloc[3:]}
    t1 = write_query_set(tmp_path / "a", groups, PLAN, noise, irs)
    # the 'long' pool is empty in this bank: that condition is dropped with a warning (the calibration, which pools
    # its conditions, only notes it)
    assert any("dropped" in r.getMessage() and "long reverb" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        kept = usable_conditions(PLAN, noise, irs, stage="calibration", drop_level=logging.INFO)
    assert [c.name for c in kept] == ["clean", "5 dB + room"]
    assert [(r.levelno, r.getMessage().split(":")[0]) for r in caplog.records if "dropped" in r.getMessage()] == \
        [(logging.INFO, "calibration")]
    assert len(t1) == (4 + 2) * 2 * 2
    assert set(t1.condition) == {"clean", "5 dB + room"} and (t1[t1.condition != "clean"].room == "room").all()
    assert t1.level_db.isna().all()  # no quiet condition in this plan
    unk = t1[t1.group == "unknown"]
    assert unk.song_id.isna().all() and set(unk.source_song_id) <= {"s3", "s4"}
    assert (unk.exclude_song == unk.source_song_id).all() and t1[t1.in_db].exclude_song.isna().all()
    assert set(t1[t1.in_db].song_id) <= {"s0", "s1", "s2"}
    assert not list((tmp_path / "a").glob(".partial-*"))  # finished: the partial folder became audio/
    for q in t1.itertuples():
        audio = load_audio(tmp_path / "a" / q.file)
        assert len(audio) == int(q.length_s * SR)
        assert q.start_s == q.start_sample / SR and 0 <= q.start_s <= 15.0 - 2
        if q.condition == "clean":  # cut at the exact sample offset (16-bit rounding aside)
            src = load_audio(songs.set_index("song_id").loc[q.source_song_id, "path"])
            assert np.abs(audio - src[q.start_sample:q.start_sample + len(audio)]).max() < 1e-3
    # Every length of one start shares the start point (the NAFP protocol).
    assert t1.groupby(t1.query_id.str[:6]).start_sample.nunique().max() == 1
    t2 = write_query_set(tmp_path / "b", groups, PLAN, noise, irs)
    pd.testing.assert_frame_equal(t1, t2)
    q = t1.iloc[-1]
    assert np.array_equal(load_audio(tmp_path / "a" / q.file), load_audio(tmp_path / "b" / q.file))


def test_a_quiet_condition_writes_quiet_queries_and_records_their_level(corpus, tmp_path):
    """The query set's files are played at the drawn level (the rest of the chain as at full level), the table
    names it, and the conditions before it cut the very same queries as without it."""
    songs, noise, irs = corpus
    groups = {"unseen": songs.iloc[:2], "unknown": songs.iloc[3:4]}
    room = Condition("10 dB + room", 10.0, "room")
    quiet = Condition("quiet 10 dB + room", 10.0, "room", level_db=(-45.0, -30.0))
    plan = QueryPlan(seed=1, n_starts=3, n_out_of_db_starts=1, lengths_s=(2,), conditions=(room, quiet))
    with_quiet = write_query_set(tmp_path / "q", groups, plan, noise, irs)
    without = write_query_set(tmp_path / "r", groups, QueryPlan(**{**plan.__dict__, "conditions": (room,)}),
                              noise, irs)
    loud = with_quiet[with_quiet.condition == room.name].reset_index(drop=True)
    pd.testing.assert_frame_equal(loud, without.reset_index(drop=True))
    for f in loud.file:
        assert np.array_equal(load_audio(tmp_path / "q" / f), load_audio(tmp_path / "r" / f))
    soft = with_quiet[with_quiet.condition == quiet.name]
    assert len(soft) == len(loud) and soft.level_db.between(-45.0, -30.0).all() and loud.level_db.isna().all()
    for q in soft.itertuples():
        full = load_audio(tmp_path / "q" / loud.loc[loud.query_id.str[:6] == q.query_id[:6], "file"].iloc[0])
        ratio_db = 20 * np.log10(rms(load_audio(tmp_path / "q" / q.file)) / rms(full))
        assert ratio_db == pytest.approx(q.level_db, abs=1.0)  # its room and noise are drawn apart: a little spread


def test_query_set_needs_the_banks_it_uses(corpus, tmp_path):
    songs, noise, _ = corpus
    with pytest.raises(ValueError, match="impulse-response"):
        write_query_set(tmp_path, {"unseen": songs.iloc[:2], "unknown": songs.iloc[2:]}, PLAN, noise, None)


def test_unknown_songs_are_the_untrained_ones_in_disjoint_halves():
    songs = pd.DataFrame({"song_id": [f"s{i:02d}" for i in range(20)], "path": "x", "duration_s": 30.0})
    splits = pd.DataFrame({"song_id": songs.song_id, "split": ["train"] * 10 + ["val"] * 5 + ["test"] * 5})
    cal = unknown_songs(songs, splits, 0, "calibration")
    ev = unknown_songs(songs, splits, 0, "evaluation")
    assert set(cal.song_id).isdisjoint(ev.song_id) and len(cal) and len(ev)
    # Every song the model did not train on (in the database or not) and no training song.
    assert set(cal.song_id) | set(ev.song_id) == set(songs.song_id[10:])
    # A collection indexed without a split (nothing trained on): every song.
    everyone = unknown_songs(songs, None, 0, "calibration")
    assert len(everyone) + len(unknown_songs(songs, None, 0, "evaluation")) == 20
    # A calibration no evaluation follows (nafp index: search.calibration.songs 'all') takes both halves, and an
    # evaluation after it refuses to measure the false-positive rate on the songs the threshold was fitted to.
    assert set(unknown_songs(songs, splits, 0, "all").song_id) == set(songs.song_id[10:])
    with pytest.raises(ValueError, match="fitted on every unknown song"):
        require_held_out_unknowns({"calibration": {"songs": "all"}})
    require_held_out_unknowns({"calibration": {"songs": "half"}})


def test_end_to_end_evaluation_with_every_song_in_the_database(corpus, tmp_path):
    """Unknown-song queries come from database songs and are searched leave-one-song-out: they are not found."""
    songs, noise, irs = corpus
    plan = QueryPlan(seed=1, n_starts=6, n_out_of_db_starts=4, lengths_s=(2, 5),
                     conditions=(Condition("clean"), Condition("10 dB", 10.0)))
    groups = {"unseen": songs.iloc[:3], "unknown": songs.iloc[3:]}
    table = write_query_set(tmp_path / "q", groups, plan, noise, irs)
    searcher = build_searcher({r.song_id: load_audio(r.path) for r in songs.itertuples()})  # all 5 songs indexed
    res = run_neural(searcher, table, tmp_path / "q", ("sequence", "vote"), tmp_path / "partial", chunk=10)
    assert len(res) == 2 * len(table) and res.embed_ms.gt(0).all()
    m = compute_metrics(table, res)
    clean5 = m[(m.condition == "clean") & (m.length_s == 5.0) & (m.group == "unseen")]
    assert (clean5.song_top1 == 1.0).all() and (clean5.seg_top1_exact == 1.0).all()
    ind = m[m.group == "unseen"]
    assert (ind.song_top10 >= ind.song_top3).all() and (ind.song_top3 >= ind.song_top1).all()
    unknown = res.merge(table[["query_id", "source_song_id", "group"]], on="query_id")
    unknown = unknown[unknown.group == "unknown"]
    assert len(unknown) and not any(src in tops for src, tops in zip(unknown.source_song_id, unknown.top_songs))


def test_chunked_runs_resume_from_finished_chunks(tmp_path):
    calls = []

    def fn(items):
        calls.extend(items)
        return [{"x": x, "y": x * x} for x in items]

    rows = run_in_chunks(list(range(7)), fn, tmp_path / "p", 3, "t")
    assert list(rows["y"]) == [0, 1, 4, 9, 16, 25, 36] and len(calls) == 7
    (tmp_path / "p" / "chunk-000001.parquet").unlink()  # as if killed during the second chunk
    calls.clear()
    rows = run_in_chunks(list(range(7)), fn, tmp_path / "p", 3, "t")
    assert calls == [3, 4, 5] and list(rows["x"]) == list(range(7))


def test_target_checks_compare_low_snr_rooms_with_audfprint():
    rows = []
    for system, mode, hit in (("neural", "sequence", 0.9), ("audfprint", "landmark", 0.5)):
        for cond, n in (("0 dB + room", 10), ("5 dB + room", 30), ("10 dB + room", 10)):
            rows.append({"system": system, "mode": mode, "group": "unseen", "condition": cond, "length_s": 3.0,
                         "n_queries": n, "song_top1": hit if cond != "5 dB + room" else hit - 0.1,
                         "search_p50_ms": 1.0, "latency_p50_ms": 5.0, "seg_top1_exact": hit,
                         "accept_right": 1.0, "fpr": np.nan})
    assert snr_of("5 dB + room") == 5.0 and snr_of("clean") is None and snr_of("-3 dB") == -3.0
    assert snr_of("speed +-5 % + 10 dB") == 10.0
    checks = {name: (val, ok) for name, val, ok in target_checks(pd.DataFrame(rows), pd.DataFrame(
        columns=["system", "mode", "length_s", "n_out_of_db", "fpr"]))}
    val, ok = checks["0-5 dB + room, 3 s: >= 20 points above audfprint"]
    # Weighted over the 0 and 5 dB rows only (10 dB is not part of the target): 82.5 % vs 42.5 %.
    assert ok and val == "82.5 % vs 42.5 % (+40.0 points)"


def test_the_per_condition_fpr_target_needs_every_condition_inside_the_band():
    def check(fprs):
        rows = [{"system": "neural", "mode": "sequence", "group": "unknown", "condition": c, "length_s": 3.0,
                 "n_queries": 200, "fpr": f, "song_top1": np.nan, "seg_top1_exact": np.nan, "accept_right": np.nan,
                 "search_p50_ms": np.nan, "latency_p50_ms": np.nan}
                for c, f in zip(("clean", "5 dB + room", "resonant"), fprs)]
        checks = {name: (val, ok) for name, val, ok in target_checks(pd.DataFrame(rows), pd.DataFrame())}
        return checks["false-positive rate within 0.5-2 % in every condition (1 % target)"]

    assert check([0.01, 0.006, 0.015]) == ("0.60-1.50 % over 3 conditions", True)
    assert check([0.01, 0.001, 0.015])[1] is False  # one condition under the band: a rule that rejects too much
    assert check([0.01, 0.006, 0.03])[1] is False


def test_starts_avoid_silence_for_every_query_length():
    audio = np.zeros(20 * SR, np.float32)
    audio[3 * SR:] = synth_song(3, 17.0)  # a silent intro

    def silent_prefixes(shortest):
        starts = [pick_start(audio, 10 * SR, np.random.default_rng(seed), False, shortest=shortest)
                  for seed in range(40)]
        return sum(rms(audio[s:s + SR]) <= 1e-3 for s in starts)

    assert silent_prefixes(None) > 0  # the 10 s excerpt has music, its first second may not
    assert silent_prefixes(SR) == 0
    assert pick_start(np.zeros(20 * SR, np.float32), 10 * SR, np.random.default_rng(0), False) is None


def test_audfprint_baseline_on_the_same_query_files(corpus, tmp_path):
    pytest.importorskip("audfprint2")
    from workflow_lib.evaluation.audfprint import run_baseline

    songs, noise, irs = corpus
    plan = QueryPlan(seed=2, n_starts=4, n_out_of_db_starts=2, lengths_s=(5,), conditions=(Condition("clean"),))
    table = write_query_set(tmp_path / "q", {"unseen": songs.iloc[:3], "unknown": songs.iloc[3:]}, plan, noise,
                            irs)
    songs.to_parquet(tmp_path / "songs.parquet")
    # every song is in the database: the unknown-song queries drop their own song from audfprint's answers
    pd.DataFrame({"song_id": np.repeat(songs.song_id.to_numpy(), 3), "segment": 0}).to_parquet(tmp_path / "m.parquet")
    res = run_baseline(tmp_path / "q" / "queries.parquet", tmp_path / "songs.parquet", tmp_path / "m.parquet",
                       tmp_path / "afp.parquet", {"min_count": 5}, threads=1)
    assert (tmp_path / "afp.parquet").exists() and not list(tmp_path.glob(".partial-*"))
    m = compute_metrics(table, res)
    seen = m[m.group == "unseen"].iloc[0]
    assert seen["system"] == "audfprint" and seen["mode"] == "landmark"
    # Clean 5 s excerpts of tonal songs: the landmark matcher finds song and offset; unknown songs stay unmatched.
    assert seen.song_top1 == 1.0 and seen.seg_top1_exact == 1.0
    assert m[m.group == "unknown"].iloc[0].fpr == 0.0


def test_missing_audfprint_package_is_a_clear_error(monkeypatch):
    import sys

    from workflow_lib.evaluation.audfprint import require_audfprint
    monkeypatch.setitem(sys.modules, "audfprint2", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install audfprint2.*baseline_audfprint: false"):
        require_audfprint()


def test_unknown_song_halves_are_balanced_even_with_the_split_seed():
    from workflow_lib.data.split import assign_splits
    ids = [f"{i:016x}" for i in range(400)]
    songs = pd.DataFrame({"song_id": ids, "collection": "music", "path": "x", "duration_s": 30.0})
    splits = assign_splits(songs, {"train": 0.2, "val": 0.2, "test": 0.6, "distractor": 0.0}, seed=0)
    cal = unknown_songs(songs, splits, 0, "calibration")
    ev = unknown_songs(songs, splits, 0, "evaluation")
    assert len(cal) + len(ev) == (splits.split != "train").sum()
    assert 0.4 < len(cal) / (len(cal) + len(ev)) < 0.6


def test_an_offset_on_a_repeat_of_the_query_audio_counts_as_the_same_audio(tmp_path):
    # A song whose seconds 0-4 play again at 10-14 s (a loop), unrelated audio elsewhere.
    loop = synth_song(1, 4.0)
    audio = np.concatenate([loop, synth_song(2, 6.0), loop, synth_song(3, 6.0)])
    write_audio(tmp_path / "loop.flac", audio)
    songs = pd.DataFrame({"song_id": ["s"], "path": [str(tmp_path / "loop.flac")]})
    queries = pd.DataFrame({"query_id": ["a", "b", "c", "d"], "song_id": "s", "in_db": True, "group": "unseen",
                            "start_s": [1.0, 1.0, 1.0, 5.0], "length_s": 2.0, "condition": "clean"})
    # a: exact; b: on the repeat (11.1 s: within the exact tolerance of 11.0); c: elsewhere; d: from 5 s, answered
    # at 15.2 s (not repeated there).
    results = pd.DataFrame({"query_id": ["a", "b", "c", "d"], "system": "neural", "mode": "sequence",
                            "top_songs": [["s"]] * 4, "top_offsets_s": [[1.0], [11.1], [6.5], [15.2]],
                            "is_match": True, "total_ms": 1.0, "search_ms": 1.0, "embed_ms": 1.0})
    row = compute_metrics(queries, results, songs).iloc[0]
    assert row.seg_top1_exact == pytest.approx(1 / 4)
    assert row.seg_top1_same_audio == pytest.approx(2 / 4)
    assert np.isnan(compute_metrics(queries, results).iloc[0].seg_top1_same_audio)  # no audio, not measured
    # An unreadable song is a logged skip, not a failure: its answers are not counted as repeats.
    (tmp_path / "bad.flac").write_bytes(b"not audio")
    bad = compute_metrics(queries, results, songs.assign(path=str(tmp_path / "bad.flac"))).iloc[0]
    assert bad.seg_top1_same_audio == pytest.approx(1 / 4)


def test_a_right_song_answer_on_a_repeat_of_the_query_audio_counts_as_the_same_audio(tmp_path):
    """Right-song answers with a wrong offset, on a song that is a 2 s loop played five times: one landing on a
    repeat of the query's audio is the same audio, one between repeats is not, an exact answer is not checked. A
    single such answer (pandas 3.1's GroupBy.get_group raised KeyError for a one-row group) is checked too."""
    from workflow_lib.evaluation.repeats import same_audio_answers

    loop = np.random.default_rng(3).standard_normal(2 * SR).astype(np.float32) * 0.1
    path = tmp_path / "loop.wav"
    write_audio(path, np.tile(loop, 5), SR)
    songs = pd.DataFrame({"song_id": ["s1"], "path": [str(path)]})
    scored = pd.DataFrame({"song_id": ["s1", "s1", "s1"], "song_top1": [True, True, True],
                           "seg_top1_exact": [False, False, True], "start_s": [0.5, 0.5, 0.5],
                           "length_s": [1.0, 1.0, 1.0], "top_offset_s": [4.5, 1.3, 0.5]})
    assert same_audio_answers(scored, songs, 0.25).tolist() == [True, False, False]
    assert same_audio_answers(scored.iloc[[0, 2]], songs, 0.25).tolist() == [True, False]


def test_an_unknown_song_named_by_a_song_holding_its_audio_is_no_false_positive(tmp_path):
    """An unknown song (its own fingerprints skipped) that reuses 3 s of a database song's audio: its query from
    that passage, named at the passage, is the same audio and no false positive; a query from its own music named
    the same song, and one naming another song, are false positives; the summary says how many were left out."""
    rng = np.random.default_rng(5)
    shared = rng.standard_normal(3 * SR).astype(np.float32) * 0.1
    own, other = (rng.standard_normal(8 * SR).astype(np.float32) * 0.1 for _ in range(2))
    db_song = np.concatenate([other[:4 * SR], shared, other[4 * SR:]])  # the passage at 4-7 s
    unknown = np.concatenate([own[:2 * SR], shared, own[2 * SR:]])  # the passage at 2-5 s
    for name, audio in (("db", db_song), ("unknown", unknown), ("third", own[::-1].copy())):
        write_audio(tmp_path / f"{name}.wav", audio, SR)
    songs = pd.DataFrame({"song_id": ["db", "unknown", "third"],
                          "path": [str(tmp_path / f"{n}.wav") for n in ("db", "unknown", "third")]})
    queries = pd.DataFrame({"query_id": ["a", "b", "c", "d"], "song_id": None, "in_db": False, "group": "unknown",
                            "source_song_id": "unknown", "start_s": [2.5, 6.0, 2.5, 2.5], "length_s": 1.0,
                            "condition": "clean"})
    # a: from the passage, named at it (2.5 s into the unknown song is 4.5 s into db; the offset 0.3 s off);
    # b: its own music named db; c: from the passage, but db named far from it; d: rejected.
    results = pd.DataFrame({"query_id": ["a", "b", "c", "d"], "system": "neural", "mode": "sequence",
                            "top_songs": [["db"], ["db"], ["db"], ["third"]],
                            "top_offsets_s": [[4.8], [4.5], [0.5], [1.0]], "is_match": [True, True, True, False],
                            "total_ms": 1.0, "search_ms": 1.0, "embed_ms": 1.0})
    row = compute_metrics(queries, results, songs).iloc[0]
    assert row.fpr == pytest.approx(2 / 4)
    assert row.shared_audio == pytest.approx(1 / 4)
    without_audio = compute_metrics(queries, results).iloc[0]  # not checked: every accepted answer counts
    assert without_audio.fpr == pytest.approx(3 / 4) and np.isnan(without_audio.shared_audio)
    scored = score_with_audio(queries, results, songs)
    pooled = pooled_fpr(queries, results, scored=scored)
    assert pooled.fpr.iloc[0] == pytest.approx(2 / 4)
    text = write_summary(tmp_path / "summary.md", queries, compute_metrics(queries, results, scored=scored), pooled,
                         {"model": "x"})
    assert "Not counted as false positives" in text and "neural (sequence) 1." in text

