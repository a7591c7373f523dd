"""Other music shipped with a model (``evaluation.null_bank``): null queries' fingerprints that a small collection's
calibration searches as if it had cut them itself, without the songs its database holds."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from tests.search_helpers import build_searcher, synth_song
from workflow_lib.audio.files import write_audio
from workflow_lib.common.atomic import file_digest
from workflow_lib.common.layout import null_bank_path
from workflow_lib.evaluation.calibration import collect_null_scores
from workflow_lib.evaluation.null_bank import NullBank, bank_candidates, held_songs, make_null_bank, usable_bank
from workflow_lib.evaluation.plan import Condition, QueryPlan

SONGS = {f"song{i}": synth_song(i, 30.0) for i in range(4)}
PLAN = QueryPlan(lengths_s=(1, 3), conditions=(Condition("clean"),))


@pytest.fixture(scope="module")
def searcher():
    return build_searcher(SONGS)


def song_table(folder, songs: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for sid, audio in songs.items():
        write_audio(folder / f"{sid}.flac", audio)
        rows.append({"song_id": sid, "path": str(folder / f"{sid}.flac"), "duration_s": len(audio) / 8000,
                     "title": f"Bank {sid}"})
    return pd.DataFrame(rows)


def test_the_bank_holds_the_calibrations_own_queries(searcher, tmp_path):
    """Searched from the bank, the null queries score as when the calibration cuts and searches them itself (up to
    the float16 the fingerprints are kept in), after a save and a load."""
    other = song_table(tmp_path, {f"other{i}": synth_song(100 + i, 20.0) for i in range(3)})
    bank = make_null_bank(searcher, other, None, None, PLAN, 12, seed=5, model_checksum="m")
    bank.save(tmp_path / "bank.null.npz")
    loaded = NullBank.load(tmp_path / "bank.null.npz")
    assert loaded.meta["model_checksum"] == "m" and len(loaded.queries) == 24
    assert [s["title"] for s in loaded.meta["songs"]] == ["Bank other0", "Bank other1", "Bank other2"]
    assert (loaded.queries["rows1"][loaded.queries["n_nominal"] == 24000] > 0).all()  # 3 s: whitened too
    from_bank, record = bank_candidates(searcher, loaded)
    direct = collect_null_scores(searcher, other, None, None, PLAN, 12, noise_share=0.0, seed=5)
    assert sorted(from_bank) == sorted(direct) == [1, 5] and record["held_by_database"] == []
    assert record["songs"] == 3 and record["queries"] == 24
    for n in direct:
        for a, b in zip(from_bank[n], direct[n]):
            assert [len(v) for v in a] == [len(v) for v in b]
            assert np.allclose(a[0][:1], b[0][:1], atol=2e-3)  # the best candidate's score


def test_bank_songs_the_database_holds_are_left_out(searcher, tmp_path, caplog):
    """A user may own a song of the bank: its queries would find it, right answers, not other music."""
    songs = {"song1": SONGS["song1"], "song3": SONGS["song3"], "other": synth_song(200, 30.0)}
    bank = make_null_bank(searcher, song_table(tmp_path, songs), None, None, PLAN, 15, seed=0, model_checksum="m")
    with caplog.at_level(logging.WARNING):
        scores, record = bank_candidates(searcher, bank)
    assert record["held_by_database"] == ["Bank song1", "Bank song3"] and record["songs"] == 1
    kept = int((bank.queries["song"] == 2).sum())
    assert 0 < record["queries"] == kept == sum(map(len, scores.values()))
    assert "2 song(s) of the bundled other music are in this database" in caplog.text


def test_held_songs_need_one_alignment_not_one_song():
    """Other music in a one-song database finds that song every time, at offsets that scatter: not held."""
    queries = pd.DataFrame({"song": [0] * 10 + [1] * 10, "start_s": list(np.arange(10) * 7.0) * 2})
    bank = NullBank(np.zeros((0, 4), np.float16), queries, {})
    rng = np.random.default_rng(0)
    best = [("a", float(rng.uniform(0, 200)), 0, 2) for _ in range(10)]  # song 0: other music
    best += [("a", 12.0 + 7.0 * i + 0.1, 0, 2) if i % 3 else None for i in range(10)]  # song 1: at song a's 12 s on
    assert held_songs(bank, best) == {1}


def test_a_looped_song_the_database_holds_is_left_out(tmp_path):
    """A song that repeats itself (one 6 s bar looped five times) answers its queries at any of its repeats, each
    about as often: a fifth of them at any one alignment, under the share asked. A query answered where the song
    holds the same music as at the alignment counts for it, so the song is found held; the other songs stay."""
    loop = np.tile(synth_song(400, 6.0), 5)
    searcher = build_searcher({**SONGS, "looped": loop})
    bank = make_null_bank(searcher, song_table(tmp_path, {"looped": loop, "other": synth_song(401, 30.0)}), None,
                          None, PLAN, 20, seed=0, model_checksum="m")
    found = [searcher.search_views(bank.views(i), "sequence")[0].best for i in range(len(bank.queries))]
    looped = (bank.queries["song"] == 0).to_numpy()
    lags = {round((b.offset_s - start) / 6.0) for b, start, mine in zip(found, bank.queries["start_s"], looped)
            if mine and b.song_id == "looped"}
    assert len(lags) >= 3  # its queries land on several repeats
    best = [(b.song_id, b.offset_s, b.start_segment, n) for b, n in
            zip(found, np.round(bank.queries["n_nominal"] / 4000).astype(int) - 1)]
    assert held_songs(bank, best) == set()  # alignments alone do not find it
    _, record = bank_candidates(searcher, bank)
    assert record["held_by_database"] == ["Bank looped"] and record["songs"] == 1


def test_a_bank_made_for_another_model_or_whitened_view_is_not_used(searcher, tmp_path, caplog):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    other = song_table(tmp_path, {"other": synth_song(300, 20.0)})
    bank = make_null_bank(searcher, other, None, None, PLAN, 4, seed=0, model_checksum=file_digest(model))
    bank.save(null_bank_path(model))
    assert null_bank_path(model).name == "model.null.npz"
    assert len(usable_bank(model, searcher, (1, 3)).queries) == 8
    assert len(usable_bank(model, searcher, (3, 10)).queries) == 4  # only the lengths calibrated
    with caplog.at_level(logging.WARNING):
        assert usable_bank(model, build_searcher(SONGS, whitened_view=None), (1, 3)) is None
        assert "other search.whitened_view settings" in caplog.text
        model.write_bytes(b"other weights")
        assert usable_bank(model, searcher, (1, 3)) is None
        assert "made for another model file" in caplog.text
    assert usable_bank(tmp_path / "no-bank.pt", searcher, (1, 3)) is None


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_a_damaged_bank_is_named_and_the_calibration_goes_on_without_it(searcher, tmp_path, caplog, damage):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    other = song_table(tmp_path, {"other": synth_song(300, 20.0)})
    make_null_bank(searcher, other, None, None, PLAN, 4, seed=0, model_checksum=file_digest(model)).save(
        null_bank_path(model))
    whole = null_bank_path(model).read_bytes()
    null_bank_path(model).write_bytes(whole[:len(whole) // 2] if damage == "truncated" else b"not a bank\n")
    with caplog.at_level(logging.WARNING):
        assert usable_bank(model, searcher, (1, 3)) is None
    assert f"the bundled other music cannot be read ({null_bank_path(model)}: not a" in caplog.text
    assert "calibrating without it" in caplog.text


def test_the_bank_weighs_as_its_songs_minutes_would():
    """Bank queries count as if their songs had been given as other music: a collection with a third of the
    bank's minutes has its bank queries counted thrice as much per query as its own (at most ``MAX_WEIGHT``), a
    collection with ten times the minutes keeps a seeded tenth of them."""
    from workflow_lib.evaluation.null_bank import MAX_WEIGHT, weigh_bank

    own = {1: [[[0.1]]] * 100, 5: [[[0.2]]] * 100}
    bank = {1: [[[float(i)]] for i in range(50)], 5: [[[0.3]]] * 50, 9: [[[0.4]]] * 50}
    merged, weights = weigh_bank(own, bank, own_minutes=30.0, bank_minutes=90.0)
    assert weights == {1: 6.0, 5: 6.0, 9: MAX_WEIGHT}  # 90 / 30 minutes * 100 / 50 queries; 9: none of its own
    assert len(merged[1]) == 100 + 300 and merged[1].count([[7.0]]) == 6 and len(merged[9]) == 50 * MAX_WEIGHT
    merged, weights = weigh_bank(own, bank, own_minutes=900.0, bank_minutes=90.0, seed=3)
    assert weights[1] == 0.2 and len(merged[1]) == 100 + 10 and len({q[0][0] for q in merged[1][100:]}) == 10
    assert merged == weigh_bank(own, bank, own_minutes=900.0, bank_minutes=90.0, seed=3)[0]  # seeded
