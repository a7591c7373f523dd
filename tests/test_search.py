"""Known-answer tests of the song/offset search and the no-match rule, on generated songs."""

from __future__ import annotations

import logging
import warnings

import faiss
import numpy as np
import pandas as pd
import pytest

from tests.search_helpers import SR, build_searcher, songs_sharing_a_part, synth_song
from workflow_lib.audio.files import write_audio
from workflow_lib.audio.segments import BAND_ALLOWANCE_DB, SILENCE_DBFS, level_dbfs, segment_levels_db
from workflow_lib.search.threshold import STATISTICS, Calibration, decision_statistic, fit_calibration, shown
from workflow_lib.data.clipbank import ClipBank, write_clip_bank
from workflow_lib.evaluation.degrade import Degradation, degrade
from workflow_lib.evaluation.calibration import collect_null_scores, fit_from_candidates
from workflow_lib.evaluation.plan import Condition, QueryPlan
from workflow_lib.database.index import FingerprintDB, RowMap
from workflow_lib.search.ranking import search_embeddings

SONGS = {f"song{i}": synth_song(i, 30.0) for i in range(6)}


@pytest.fixture(scope="module")
def searcher():
    return build_searcher(SONGS)


@pytest.fixture(scope="module")
def noise_bank(tmp_path_factory):
    rng = np.random.default_rng(3)
    # Pink-ish noise clips: white noise smoothed, so the bank is not a trivially flat spectrum.
    clips = [np.convolve(rng.standard_normal(SR * 8), np.ones(4) / 4, "same").astype(np.float32) for _ in range(3)]
    prefix = tmp_path_factory.mktemp("noise") / "test"
    write_clip_bank(prefix, clips, pd.DataFrame({"name": ["a", "b", "c"]}))
    return ClipBank(prefix)


@pytest.mark.parametrize("mode", ["sequence", "vote"])
@pytest.mark.parametrize("offset_s", [7.0, 7.05, 19.5])
def test_clean_query_returns_song_and_offset(searcher, mode, offset_s):
    start = int(offset_s * SR)
    m = searcher.identify(SONGS["song3"][start:start + 5 * SR], mode)
    assert m.song_id == "song3" and m.title == "Title song3" and m.artist == "Artist song3"
    assert abs(m.offset_s - offset_s) <= 0.25
    assert m.n_segments == 9 and m.mode == mode and m.seconds_taken > 0


@pytest.mark.parametrize("song,offset_s", [("song1", 4.0), ("song4", 11.5), ("song5", 20.1)])
def test_query_at_10_db_returns_song_and_offset(searcher, noise_bank, song, offset_s):
    start = int(offset_s * SR)
    rng = np.random.default_rng(1)
    q, _ = degrade(SONGS[song], start, 5 * SR, Degradation(snr_db=10.0), rng, noise_bank)
    guess = searcher.identify(q).best_guess  # uncalibrated here: the search's answer, whatever the rule says
    assert guess.song_id == song and abs(guess.offset_s - offset_s) <= 0.25
    # The degraded match is weaker than the clean one but far above the other songs.
    res = searcher.search(searcher.embed(q))
    assert res.candidates[0].score > 2 * res.candidates[1].score


def test_vote_and_sequence_agree_on_clean_queries(searcher):
    rng = np.random.default_rng(5)
    for _ in range(12):
        song = f"song{rng.integers(6)}"
        length = int(rng.choice([3, 5, 10]))
        start = int(rng.integers(0, (30 - length) * 2)) * SR // 2
        q = SONGS[song][start:start + length * SR]
        seq, vote = searcher.identify(q, "sequence"), searcher.identify(q, "vote")
        assert seq.song_id == vote.song_id == song
        # A query that starts on the grid is placed within hundredths of its grid point (the stand-in encoder's
        # similarity is not quite symmetric in time).
        assert seq.offset_s == pytest.approx(vote.offset_s, abs=1e-6)
        assert seq.offset_s == pytest.approx(start / SR, abs=0.05)


def _unknown_songs(folder, first_seed: int, n: int, seconds: float = 20.0) -> pd.DataFrame:
    """``n`` generated songs that are not in the database, written as files: the table the calibration draws from."""
    rows = []
    for i in range(n):
        p = folder / f"unknown{first_seed + i}.flac"
        write_audio(p, synth_song(first_seed + i, seconds))
        rows.append({"song_id": f"unknown{first_seed + i}", "path": str(p), "duration_s": seconds})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def null_candidates(searcher, noise_bank, tmp_path_factory):
    """Candidate scores of null queries: songs searched as unknown (not in the database), written as files."""
    plan = QueryPlan(lengths_s=(1, 3, 5), conditions=(Condition("10 dB", 10.0),))
    return collect_null_scores(searcher, _unknown_songs(tmp_path_factory.mktemp("null"), 100, 4), noise_bank, None,
                               plan, n_per_length=40, noise_share=0.2, seed=0)


def test_null_queries_searched_side_by_side_give_the_same_scores(searcher, noise_bank, tmp_path):
    """The calibrate rule's worker threads change how fast, not what: every query draws from its own seed."""
    plan = QueryPlan(lengths_s=(1, 3), conditions=(Condition("10 dB", 10.0),))
    songs = _unknown_songs(tmp_path, 300, 3)
    one, two = (collect_null_scores(searcher, songs, noise_bank, None, plan, n_per_length=20,
                                    noise_share=0.2, seed=4, workers=w) for w in (1, 2))
    assert one == two and sorted(one) == [1, 5] and all(len(q) == 2 for q in one[5])


def test_a_collection_of_short_pieces_is_calibrated_at_the_lengths_it_holds(searcher, noise_bank, tmp_path, caplog):
    """Jingles of 6 s hold no 10 s query: that length is left out with a warning (a longer query takes the
    threshold of the longest calibrated one), not the whole calibration."""
    plan = QueryPlan(lengths_s=(1, 3, 10), conditions=(Condition("10 dB", 10.0),))
    with caplog.at_level("WARNING"):
        scores = collect_null_scores(searcher, _unknown_songs(tmp_path, 400, 3, seconds=6.0), noise_bank, None, plan,
                                     n_per_length=10, noise_share=0.2, seed=0)
    assert sorted(scores) == [1, 5] and sum(map(len, scores.values())) == 20
    assert "the longest song is 6.0 s, so no 10 s queries are cut from the songs" in caplog.text
    calib = fit_from_candidates(scores, "margin", 0.1, {})
    assert calib.threshold(19) == calib.threshold(5)  # a 10 s query: the 3 s threshold


@pytest.mark.parametrize("statistic", STATISTICS)
def test_out_of_database_query_is_no_match_after_calibration(searcher, null_candidates, statistic):
    assert sorted(null_candidates) == [1, 5, 9] and all(len(v) == 40 for v in null_candidates.values())
    searcher.calibration = fit_from_candidates(null_candidates, statistic, 0.05, {})
    try:
        unknown = synth_song(999, 10.0)
        for length in (1, 3, 5):
            m = searcher.identify(unknown[:length * SR])
            assert not m.is_match, (length, m.score, m.threshold)
            assert m.threshold == searcher.threshold(m.n_segments, m.views)  # the rule for the views it searched
            # no answer, but the best guess is still reported apart
            assert m.song_id is None and m.title is None and m.offset_s is None and m.reason == "below threshold"
            assert m.best_guess is not None and m.best_guess.song_id.startswith("song")
        known = searcher.identify(SONGS["song2"][8 * SR:13 * SR])
        assert known.is_match and known.song_id == "song2" and known.confidence == 1.0
        assert known.decision >= known.threshold and known.best_guess.song_id == "song2"
    finally:
        searcher.calibration = None


def test_decision_statistics_from_candidate_scores():
    scores = [0.8, 0.4, 0.3, 0.35, 0.45]
    assert decision_statistic(scores, "score") == 0.8
    assert decision_statistic(scores, "margin") == pytest.approx(0.4)
    rest = np.array(scores[1:])
    assert decision_statistic(scores, "z") == pytest.approx((0.8 - rest.mean()) / rest.std())
    assert decision_statistic([0.7], "margin") == pytest.approx(0.7)  # no runner-up: the score itself
    assert decision_statistic([], "z") == float("-inf")
    with pytest.raises(ValueError, match="unknown decision statistic"):
        decision_statistic(scores, "p")


def test_silence_never_matches_a_song_with_a_silent_tail(noise_bank):
    """A database song ending in 20 s of digital silence: silent and quiet-room queries are 'no match (silence)'."""
    songs = dict(SONGS)
    songs["tail"] = np.concatenate([synth_song(50, 20.0), np.zeros(20 * SR, np.float32)])
    s = build_searcher(songs)
    zeros = np.zeros(5 * SR, np.float32)
    rng = np.random.default_rng(0)
    pink = np.cumsum(rng.standard_normal(5 * SR)).astype(np.float32)
    pink -= np.convolve(pink, np.ones(400) / 400, "same")  # a quiet, coloured room noise
    pink *= 10 ** (-66 / 20) / np.sqrt(np.mean(pink ** 2))
    for q in (zeros, pink):
        m = s.identify(q)
        assert not m.is_match and m.song_id is None and m.reason == "silence" and m.best_guess is None
        assert m.n_segments == 0
    # The silent tail was stored as zero vectors: never a neighbour, however the query sounds.
    rows = s.db.song_rows("tail")
    vec = np.asarray(s.db.vectors[rows], dtype=np.float32)
    assert not np.any(vec[-30:]) and np.all(np.linalg.norm(vec[:30], axis=1) > 0.9)
    # A query that is half music, half silence is scored on the music it holds.
    part = np.concatenate([songs["tail"][16 * SR:20 * SR], np.zeros(4 * SR, np.float32)])
    m = s.identify(part)
    assert m.best_guess.song_id == "tail" and m.n_segments < 15



def test_a_quiet_capture_is_raised_before_the_model_and_the_database_is_not():
    """A microphone across a room or a low input gain: a song's seconds at about -60 dBFS, under the database's gate
    (-55) but over a query's (-65), are searched, raised to -35 dBFS before the model, and name the song; before,
    the query was "silence". The database's own seconds are fingerprinted as they are (no raise at extraction)."""
    import torch

    from workflow_lib.audio.segments import QUERY_LEVEL_DBFS, QUERY_SILENCE_DBFS, frame
    from workflow_lib.model.embed import embed_segments

    s = build_searcher(dict(SONGS))
    clip = SONGS["song2"][4 * SR:9 * SR]
    quiet = (clip * 10 ** ((-60 - np.median(segment_levels_db(frame(clip)))) / 20)).astype(np.float32)
    levels = segment_levels_db(frame(quiet))
    assert np.all((levels < SILENCE_DBFS) & (levels > QUERY_SILENCE_DBFS))
    m = s.identify(quiet)
    assert m.is_match and m.song_id == "song2" and m.offset_s == pytest.approx(4.0, abs=0.3)

    class Level(torch.nn.Module):  # the level the model is handed, as its "fingerprint"
        def forward(self, x):
            return torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True))

    segs = frame(np.concatenate([clip, quiet, np.zeros(2 * SR, np.float32)]))
    heard = 20 * np.log10(np.maximum(embed_segments(Level(), segs, raise_to_dbfs=QUERY_LEVEL_DBFS,
                                                    silence_dbfs=QUERY_SILENCE_DBFS)[:, 0], 1e-12))
    as_is = 20 * np.log10(np.maximum(embed_segments(Level(), segs)[:, 0], 1e-12))  # extraction's call
    lv = segment_levels_db(segs)
    loud, raised = lv >= QUERY_LEVEL_DBFS, (lv < QUERY_LEVEL_DBFS) & (lv >= QUERY_SILENCE_DBFS)
    assert np.allclose(heard[loud], as_is[loud]) and raised.sum() >= 8
    assert np.allclose(heard[raised] - 20 * np.log10(np.sqrt(np.mean(segs[raised] ** 2, axis=1))),
                       QUERY_LEVEL_DBFS - lv[raised], atol=0.01)
    assert np.all(as_is[raised & (lv < SILENCE_DBFS)] < -200)  # the database's gate leaves them out (zeros)
    assert np.all(heard[lv < QUERY_SILENCE_DBFS] < -200)  # digital silence stays silence for a query too
    ungated = embed_segments(Level(), segs, silence_dbfs=None, raise_to_dbfs=QUERY_LEVEL_DBFS)[:, 0]
    assert np.all(np.isfinite(ungated)) and np.all(ungated[np.isneginf(lv)] == 0)  # raised by nothing, not by inf

def test_mains_hum_and_a_dc_offset_are_silence_to_the_gate():
    """A song whose tail is mains hum (a vinyl rip's run-out, a live recording's pause) and a quiet room heard
    through a microphone with hum or a DC offset: loud by their RMS, silent in the band the model hears (it starts
    at 300 Hz). Gated by their RMS alone, such a tail was indexed, and a real database answered such rooms with its
    song at confidence 1.000 (bench/README.md, "Hum and a DC offset are silence too")."""
    songs = dict(SONGS)
    t = np.arange(20 * SR) / SR
    rng = np.random.default_rng(3)
    hum_tail = (0.02 * np.sin(2 * np.pi * 50 * t) + 3e-5 * rng.standard_normal(len(t))).astype(np.float32)
    songs["hum"] = np.concatenate([synth_song(51, 20.0), hum_tail])
    s = build_searcher(songs)
    rows = s.db.song_rows("hum")
    vec = np.asarray(s.db.vectors[rows], dtype=np.float32)
    assert not np.any(vec[-30:]) and np.all(np.linalg.norm(vec[:30], axis=1) > 0.9)  # the hum is not indexed
    t5 = t[:5 * SR]
    quiet = 5e-5 * rng.standard_normal(len(t5))
    for q in (0.03 * np.sin(2 * np.pi * 60 * t5 + 1.0) + quiet, 0.02 + quiet):  # hum; a DC offset
        m = s.identify(q.astype(np.float32))
        assert not m.is_match and m.reason == "silence" and m.best_guess is None


def test_segment_levels_count_the_models_band_and_reject_all_the_rms_rejected():
    t = np.arange(SR) / SR
    tone = 0.1 * np.sin(2 * np.pi * 1000 * t)
    hum = 0.5 * np.sin(2 * np.pi * 50 * t) + 0.3
    hiss = 10 ** (-58 / 20) * np.random.default_rng(0).standard_normal(SR)  # below the gate by its RMS
    levels = segment_levels_db(np.stack([tone, hum, tone + hum, np.zeros(SR), hiss]).astype(np.float32))
    assert levels[0] == pytest.approx(20 * np.log10(0.1 / np.sqrt(2)), abs=0.1)  # a sine's RMS
    assert levels[1] < -80 and levels[3] == -np.inf  # hum and a DC offset; digital silence
    assert levels[2] == pytest.approx(levels[0] + BAND_ALLOWANCE_DB, abs=0.1)  # the tone above the hum, allowed
    assert levels[4] == pytest.approx(-58, abs=0.2) and levels[4] < SILENCE_DBFS
    assert level_dbfs(tone[:4000].astype(np.float32)) == pytest.approx(levels[0], abs=0.1)  # any length


def test_cached_embeddings_give_the_same_answer_as_audio(searcher):
    q = SONGS["song4"][3 * SR:9 * SR]
    emb = searcher.embed(q)
    a, b = searcher.identify(q), searcher.identify_embeddings(emb)
    assert (a.song_id, a.offset_s, a.score) == (b.song_id, b.offset_s, b.score)
    # The last 3 s of cached fingerprints (segments 6..10 of the query) start 3 s later in the song.
    tail = searcher.identify_embeddings(emb[6:])
    assert tail.song_id == "song4" and tail.offset_s == pytest.approx(a.offset_s + 3.0, abs=0.05)


def test_short_queries_are_padded_or_refused(searcher):
    m = searcher.identify(SONGS["song0"][2 * SR:2 * SR + 6000])  # 0.75 s: padded to one segment
    assert m.n_segments == 1
    with pytest.raises(ValueError, match="too short"):
        searcher.identify(np.zeros(1000, dtype=np.float32))


def test_longer_than_any_song_query_still_answers(searcher):
    q = np.concatenate([SONGS["song1"], SONGS["song1"][:SR * 5]])  # 35 s: runs past the song's end
    m = searcher.identify(q)
    assert m.song_id == "song1" and m.offset_s == 0.0


def _unit_db(n_segments: int = 4, dim: int = 4) -> FingerprintDB:
    """Song "s" whose segment i is the unit vector e_i, and song "t" with the same vectors reversed."""
    vec = np.concatenate([np.eye(dim)[:n_segments], np.eye(dim)[:n_segments][::-1]]).astype(np.float16)
    index = faiss.IndexFlatIP(dim)
    index.add(vec.astype(np.float32))
    return FingerprintDB(index, RowMap.from_counts(["s", "t"], [n_segments, n_segments]), vec,
                         {"model_checksum": "x", "ntotal": len(vec)})


def test_aligned_rescoring_counts_off_song_segments_as_zero():
    db = _unit_db()
    q = np.eye(4, dtype=np.float32)[[2, 3]]  # segments 2, 3 of "s" -> start 2
    res = search_embeddings(db, q, top_k=2)
    assert res.best.song_id == "s" and res.best.start_segment == 2 and res.best.score == pytest.approx(1.0)
    q3 = np.eye(4, dtype=np.float32)[[2, 3, 0]]  # a third segment that would lie past the end of "s"
    res3 = search_embeddings(db, q3, top_k=1)
    assert res3.best.song_id == "s" and res3.best.start_segment == 2
    assert res3.best.score == pytest.approx(2 / 3)  # the off-song segment scores 0, it is not dropped
    # "t" holds e1, e0 at its segments 2, 3: the query e1, e0 aligns there (start 2), not in "s".
    res_t = search_embeddings(db, np.eye(4, dtype=np.float32)[[1, 0]], top_k=3)
    assert res_t.best.song_id == "t" and res_t.best.start_segment == 2
    assert [c.song_id for c in res_t.candidates] == ["t", "s"]  # one candidate per song


def test_exact_scores_are_the_same_read_in_row_order_or_as_asked(monkeypatch):
    """``scores`` reads a large gather in row order (sorted, deduplicated) and a window's few rows as asked."""
    import workflow_lib.database.index as index_module

    rng = np.random.default_rng(0)
    vec = rng.standard_normal((50, 8)).astype(np.float16)
    db = FingerprintDB(faiss.IndexFlatIP(8), RowMap.from_counts(["s"], [50]), vec,
                       {"model_checksum": "x", "ntotal": 50})
    q = rng.standard_normal((3, 8)).astype(np.float32)
    rows = np.array([[49, 3, 3, -1], [0, 7, 50, 12], [5, 5, 5, 5]])  # repeats, off the map, past the end
    expected = np.where(rows[:, :, None] >= 0, vec.astype(np.float32)[np.clip(rows, 0, 49)], 0) @ q[:, :, None]
    expected = np.where((rows >= 0) & (rows < 50), expected[:, :, 0], -np.inf)
    direct = db.scores(q, rows)
    monkeypatch.setattr(index_module, "SORTED_GATHER_ROWS", 0)
    in_order = db.scores(q, rows)
    assert np.allclose(direct, expected, atol=1e-5) and np.array_equal(direct, in_order)


@pytest.mark.parametrize("mode", ["sequence", "vote"])
def test_a_song_that_fills_every_neighbour_slot_still_has_a_runner_up(mode):
    # "drone": six segments all close to e0; "other": e1..e3 and a segment at 0.6 to e0. A query near e0 finds only
    # drone segments among its 4 nearest neighbours: one candidate song.
    rng = np.random.default_rng(0)
    drone = np.eye(8)[0] + 0.05 * rng.standard_normal((6, 8))
    other = np.vstack([np.eye(8)[1:4], 0.6 * np.eye(8)[0] + 0.8 * np.eye(8)[4]])
    vec = np.vstack([drone, other])
    vec = (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float16)
    index = faiss.IndexFlatIP(8)
    index.add(vec.astype(np.float32))
    db = FingerprintDB(index, RowMap.from_counts(["drone", "other"], [6, 4]), vec,
                       {"model_checksum": "x", "ntotal": len(vec)})
    q = np.eye(8, dtype=np.float32)[[0]]
    res = search_embeddings(db, q, top_k=4, mode=mode)
    assert [c.song_id for c in res.candidates] == ["drone", "other"]
    assert res.candidates[1].score == pytest.approx(0.6, abs=0.01) and res.candidates[1].start_segment == 3
    # The margin is the lead over that song, not the whole score (the lone candidate's old lead over 0).
    scores = [c.score for c in res.candidates]
    assert decision_statistic(scores, "margin") == pytest.approx(scores[0] - 0.6, abs=0.01)
    # Searched without "other" (leave-one-song-out), nothing is left to be a runner-up: still one candidate.
    alone = search_embeddings(db, q, top_k=4, mode=mode, exclude_song="other")
    assert [c.song_id for c in alone.candidates] == ["drone"]


def test_a_recording_indexed_twice_is_not_its_own_runner_up():
    """Two files of one recording (the second with a little hiss, as a re-encoding leaves it): a query of it finds
    both at almost one score. The copy is left out of the candidates, so the margin is the lead over other music,
    as in a database that holds the recording once (the lead over its own copy, a hair, rejected the song)."""
    hiss = 0.01 * np.random.default_rng(4).standard_normal(len(SONGS["song3"])).astype(np.float32)
    twice = build_searcher({**SONGS, "song3-again": SONGS["song3"] + hiss})
    once = build_searcher(SONGS)
    start = 7 * SR
    emb = twice.embed_views(SONGS["song3"][start:start + 5 * SR])[0]
    both = search_embeddings(twice.db, emb, twice.top_k)
    alone = search_embeddings(once.db, emb, once.top_k)
    assert both.best.song_id in ("song3", "song3-again") and "song3-again" != both.candidates[1].song_id != "song3"
    assert [c.song_id for c in both.candidates[1:]] == [c.song_id for c in alone.candidates[1:]]
    # the copy is kept apart, its offset placed as the candidates' are
    assert [c.song_id for c in both.copies] == list({"song3", "song3-again"} - {both.best.song_id})
    assert abs(both.copies[0].offset_s - 7.0) <= 0.25 and alone.copies == []
    margin = decision_statistic([c.score for c in both.candidates], "margin")
    assert margin == pytest.approx(decision_statistic([c.score for c in alone.candidates], "margin"), abs=0.02)
    assert margin > 0.3
    # Other songs are never copies: searched without song3 and its copy, the ranking is the one of the database
    # that never held them.
    without = search_embeddings(twice.db, emb, twice.top_k, exclude_song=frozenset({"song3", "song3-again"}))
    assert [c.song_id for c in without.candidates] == \
        [c.song_id for c in search_embeddings(once.db, emb, once.top_k, exclude_song="song3").candidates]


def test_vote_counts_segment_winners():
    vec = np.eye(8, dtype=np.float16)  # "s" = e0..e3, "t" = e4..e7
    index = faiss.IndexFlatIP(8)
    index.add(vec.astype(np.float32))
    db = FingerprintDB(index, RowMap.from_counts(["s", "t"], [4, 4]), vec, {"model_checksum": "x", "ntotal": 8})
    q = np.eye(8, dtype=np.float32)[[5, 1, 2, 3]]  # one vote for "t" (start 1), three for "s" (starts 0, 0, 0)
    res = search_embeddings(db, q, top_k=3, mode="vote")
    assert [c.song_id for c in res.candidates] == ["s", "t"]
    assert res.best.start_segment == 0 and res.best.support == 3 and res.candidates[1].support == 1
    assert res.best.score == pytest.approx(3 / 4)  # exact aligned score of the winner: 3 of 4 segments match


def test_calibration_threshold_quantile_monotone_and_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    scores = {1: list(rng.normal(0.5, 0.05, 1000)), 9: list(rng.normal(0.2, 0.03, 1000)),
              5: list(rng.normal(0.3, 0.04, 1000))}
    cal = fit_calibration(scores, 0.01)
    assert cal.n_segments == [1, 5, 9]
    for n, thr in zip(cal.n_segments, cal.thresholds):
        fpr = np.mean(np.asarray(scores[n]) >= thr)
        assert fpr <= 0.01 and fpr >= 0.005  # at most the target, and not needlessly strict
    assert cal.thresholds[0] > cal.thresholds[1] > cal.thresholds[2]
    assert cal.threshold(3) == pytest.approx((cal.thresholds[0] + cal.thresholds[1]) / 2)
    assert cal.threshold(40) == cal.thresholds[-1]
    assert cal.confidence(10.0, 5) == 1.0 and cal.confidence(-1.0, 5) == 0.0
    assert cal.confidence(float(np.median(scores[5])), 5) == pytest.approx(0.5, abs=0.01)
    cal.meta["model_checksum"] = "abc"
    cal.save(tmp_path / "t.json")
    back = Calibration.load(tmp_path / "t.json")
    assert back.n_segments == cal.n_segments and back.meta["model_checksum"] == "abc"
    assert np.allclose(back.thresholds, cal.thresholds)
    # Each length keeps its own threshold, also where the null values rise with the length (the margin's do): a
    # shorter query is not held to a longer one's. Made non-increasing (the listener's rule), it is.
    rising = fit_calibration({1: [0.1] * 100, 3: [0.5] * 100}, 0.01, {}, "margin")
    assert rising.thresholds[0] == pytest.approx(0.1) and rising.thresholds[1] == pytest.approx(0.5)
    flat = rising.non_increasing()
    assert flat.thresholds[0] == flat.thresholds[1] == pytest.approx(0.5)


def test_a_rule_that_accepts_any_leading_song_is_tabled_without_a_warning(tmp_path):
    """Where other music answers more than the target share of the null queries (-inf), the threshold lies just
    above -inf: stored as it is, shown as -inf in the table, and no numpy overflow warning on the way."""
    cal = fit_calibration({1: [0.3] * 5 + [0.0] * 95, 5: [float("-inf")] * 995 + [0.2] * 5}, 0.01, {}, "margin")
    assert cal.thresholds[0] > 0.0 and -np.inf < cal.thresholds[1] < -1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = cal.table()
    assert list(table["threshold"]) == [0.3, -np.inf] and list(table["null_max"]) == [0.3, 0.2]
    # the calibration's log says -inf too
    assert shown(cal.thresholds[1]) == shown(cal.threshold(5)) == shown(cal.threshold(7)) == -np.inf
    assert shown(cal.thresholds[0]) == pytest.approx(0.3)
    # A length between the two is held to the finite one, not to a line towards -1.8e308 (any leading song
    # accepted at every length between, a rate calibrated at neither); so is the listener's stricter refit.
    assert cal.threshold(3) == cal.threshold(2) == cal.thresholds[0]
    assert cal.upper_point(3, 0.005) == cal.upper_point(1, 0.005) > 0.0
    both = fit_calibration({1: [float("-inf")] * 100, 3: [float("-inf")] * 100, 5: [0.2] * 100}, 0.01)
    assert shown(both.threshold(2)) == -np.inf and both.threshold(4) == both.thresholds[2]
    cal.save(tmp_path / "t.json")
    assert Calibration.load(tmp_path / "t.json").thresholds == pytest.approx(cal.thresholds)


def test_too_few_null_queries_are_one_warning_that_says_what_to_raise(caplog):
    with caplog.at_level(logging.WARNING, logger="workflow_lib.search.threshold"):
        fit_calibration({1: [0.1] * 100, 3: [0.2] * 99, 5: [0.3] * 40}, 0.01)
        fit_calibration({3: [0.2] * 99}, 0.01, warn=False)  # a second fit of the same queries says nothing
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "99 of 3 segment(s), 40 of 5 segment(s) null queries" in warning and "1 segment" not in warning
    assert "more than 100 queries per length" in warning and "--queries-per-length" in warning


def test_calibration_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibrate"):
        Calibration.load(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="bad.json"):
        Calibration.load(bad)


def _room_bank(folder, rt60_s: float, n: int, seed: int) -> ClipBank:
    """Rooms of one reverberation time: octave-band exponential tails (``acoustics.stochastic_tail``)."""
    from workflow_lib.data.acoustics import stochastic_tail

    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        h = stochastic_tail(rng, int(min(3.0, 1.2 * rt60_s) * SR), rt60_s)
        h[0] += 3.0 * np.abs(h).max()  # the direct sound
        clips.append((h / np.linalg.norm(h)).astype(np.float32))
    prefix = folder / f"rooms_{rt60_s:g}"
    write_clip_bank(prefix, clips, pd.DataFrame({"name": [f"r{i}" for i in range(n)], "kind": "room",
                                                  "rt60_s": rt60_s}))
    return ClipBank(prefix)


def test_calibrated_false_positive_rate_holds_when_the_rooms_get_much_longer(searcher, noise_bank, tmp_path):
    """Issue 12: calibrated on short rooms, the rule keeps its false-positive rate on queries of other unknown songs
    in rooms eight times as reverberant (a raw similarity level would drift: reverb lowers every score)."""
    plan = QueryPlan(lengths_s=(1, 3, 5), conditions=(Condition("10 dB + room", 10.0, room="room"),))
    target = 0.05
    fit = collect_null_scores(searcher, _unknown_songs(tmp_path, 200, 6), noise_bank,
                              _room_bank(tmp_path, 0.25, 6, seed=1), plan, n_per_length=200, noise_share=0.0,
                              seed=0)
    calib = fit_from_candidates(fit, "margin", target, {})
    shifted = collect_null_scores(searcher, _unknown_songs(tmp_path, 300, 6), noise_bank,
                                  _room_bank(tmp_path, 2.0, 6, seed=2), plan, n_per_length=200, noise_share=0.0,
                                  seed=1)
    passed = [decision_statistic(views[0], "margin") >= calib.threshold(n) for n, qs in shifted.items()
              for views in qs]
    fpr = float(np.mean(passed))
    assert len(passed) >= 550
    assert target / 4 <= fpr <= 2.5 * target, fpr  # 600 queries: 7-75 false positives, 30 expected
    # the same for the better of two views (3 and 5 s queries, also searched whitened), on its own thresholds
    both = [max(decision_statistic(v, "margin") for v in views) >= calib.for_views(2).threshold(n)
            for n, qs in shifted.items() if n > 1 for views in qs]
    assert len(both) >= 350 and all(len(views) == 2 for n, qs in shifted.items() if n > 1 for views in qs)
    assert target / 4 <= float(np.mean(both)) <= 2.5 * target, np.mean(both)  # 400 queries: 5-50, 20 expected


def test_little_music_is_named_and_an_old_calibration_is_told_of_the_shipped_music(tmp_path):
    """`nafp db info`'s advice for a calibration on too little music: other music to give, and, for a threshold
    fitted before the bundled model shipped other music, that `nafp index` run again adds it."""
    from workflow_lib.search.threshold import little_music_advice

    path = tmp_path / "threshold.json"
    scores = {1: list(np.linspace(0, 1, 100))}
    fit_calibration(scores, 0.05, {"n_songs": 10, "null_minutes": 35.0}, "margin").save(path)
    old = little_music_advice(path)
    assert old.startswith("calibrated on 10 song(s) (35 min of music)") and "--unknown-music" in old
    assert "run `nafp index` again" in old
    fit_calibration(scores, 0.05, {"n_songs": 10, "null_minutes": 35.0, "bundled_other_music": None},
                    "margin").save(path)
    assert "--unknown-music" in little_music_advice(path) and "again" not in little_music_advice(path)
    fit_calibration(scores, 0.05, {"n_songs": 50, "null_minutes": 140.0, "bundled_other_music": {"songs": 40}},
                    "margin").save(path)
    assert little_music_advice(path) is None


def test_recalibration_is_advised_once_the_database_has_doubled_or_halved(tmp_path):
    from workflow_lib.search.threshold import recalibration_advice

    path = tmp_path / "threshold.json"
    calib = fit_calibration({1: list(np.linspace(0, 1, 100))}, 0.05, {"database_songs": 100}, "margin")
    calib.save(path)
    assert recalibration_advice(path, 100) is None and recalibration_advice(path, 199) is None
    assert "100 songs, now 200" in recalibration_advice(path, 200)
    assert "now 50" in recalibration_advice(path, 50)
    assert recalibration_advice(tmp_path / "missing.json", 500) is None


def test_peak_shift_places_the_vertex_between_grid_points():
    from workflow_lib.search.subhop import peak_shift

    # Samples of 1 - (x - 0.3)^2 at -1, 0, 1: the parabola's vertex is found exactly.
    f = lambda x: 1 - (x - 0.3) ** 2  # noqa: E731
    assert peak_shift(f(-1.0), f(0.0), f(1.0)) == pytest.approx(0.3)
    assert peak_shift(0.5, 0.9, 0.5) == pytest.approx(0.0)  # symmetric: the grid point itself
    assert peak_shift(0.9, 0.9, 0.1) == pytest.approx(-0.5)  # as high as the left neighbour: halfway
    assert peak_shift(np.nan, 0.9, 0.8) == 0.0  # a side off the song: no shift
    assert peak_shift(0.2, 0.5, 0.9) == 0.0  # no peak (the right neighbour is higher and the curve bends up)


def _drifting_db(t: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Unit vectors whose dot products depend only on the time difference: mean of cos(w (t - s))."""
    ph = np.outer(t, freqs)
    return (np.hstack([np.cos(ph), np.sin(ph)]) / np.sqrt(len(freqs))).astype(np.float32)


@pytest.mark.parametrize("mode", ["sequence", "vote"])
@pytest.mark.parametrize("offset_s", [10.1, 10.2, 10.3, 10.4, 0.2, 0.3])
def test_offsets_between_the_hops_are_found_by_the_score_peak(mode, offset_s):
    # A song whose fingerprint similarity falls smoothly with the time difference, and a query that starts off the
    # 0.5 s grid: the grid alignment is up to 0.25 s off, the score's peak within a few hundredths.
    freqs = np.random.default_rng(0).uniform(0.3, 1.5, 16)
    vec = _drifting_db(np.arange(60) * 0.5, freqs)
    index = faiss.IndexFlatIP(vec.shape[1])
    index.add(vec)
    db = FingerprintDB(index, RowMap.from_counts(["s"], [60]), vec.astype(np.float16),
                       {"model_checksum": "x", "ntotal": 60})
    for n_segments in (1, 5):
        q = _drifting_db(offset_s + np.arange(n_segments) * 0.5, freqs)
        best = search_embeddings(db, q, top_k=3, mode=mode).best
        assert abs(best.start_segment * 0.5 - offset_s) >= 0.09  # the grid alone is that far off
        if best.start_segment == 0 and n_segments == 1:
            # One segment at the song's first: nothing before it to compare with, so it stays on the grid.
            assert best.offset_s == 0.0
        else:  # longer queries at the song's start are placed by their later segments
            assert best.offset_s == pytest.approx(offset_s, abs=0.03)


def test_a_window_and_its_newest_segments_are_answered_as_two_searches_would():
    """``ranked_window_and_tail`` reads the newest segments' exact scores from the window's: every candidate, score,
    support and vote count is what two separate searches give, also where it has to search them on their own."""
    from workflow_lib.database.vectors import normalize
    from workflow_lib.search.ranking import ranked_window_and_tail

    rng = np.random.default_rng(3)
    db, vec = songs_sharing_a_part(rng)

    def noisy(rows):
        return normalize(vec[rows] + 0.4 * rng.standard_normal((len(rows), 16)).astype(np.float32))

    windows = [noisy(np.arange(10, 19)),  # inside song a
               np.concatenate([noisy(np.arange(30, 36)), noisy(np.arange(120, 123))]),  # a, then b in the newest
               noisy(np.arange(170, 179)),  # the part c shares with a
               np.concatenate([noisy(np.arange(50, 57)), np.zeros((1, 16), np.float32), noisy([90])]),  # a silent one
               np.concatenate([noisy(np.arange(50, 56)), np.zeros((3, 16), np.float32)])]  # newest all silent
    gathers = []
    exact_scores = db.scores
    db.scores = lambda q, rows: gathers.append(len(q)) or exact_scores(q, rows)
    for n, emb in enumerate(windows):
        for top_k, max_candidates in [(5, 200), (8, 12)]:  # 12: the window cannot keep all its alignments
            gathers.clear()
            window, tail = ranked_window_and_tail(db, emb, 3, top_k, max_candidates, 10)
            if max_candidates == 200 and n < 4:
                assert gathers == [9]  # one gather, the window's: the newest segments' scores were read from it
            assert window == search_embeddings(db, emb, top_k, "sequence", max_candidates, 10, runner_up=False,
                                               place_offsets=False)
            assert tail == search_embeddings(db, emb[-3:], top_k, "sequence", max_candidates, 10, runner_up=False,
                                             place_offsets=False)
    assert ranked_window_and_tail(db, windows[0][:3], 3, 5)[1] is None  # no older segments: no second search
