"""Other music in the index (``database.other_music``): found first, it is no match; a song of the collection is
still answered, also when the other music holds the same recording; the calibration searches the bank's queries
without their own songs."""

from __future__ import annotations

import numpy as np
import pytest

from tests.search_helpers import SR, build_searcher, synth_song
from tests.test_null_bank import PLAN, song_table
from workflow_lib.database.other_music import PREFIX, is_other_music, other_music_id
from workflow_lib.evaluation.null_bank import bank_candidates, make_null_bank

SONGS = {f"song{i}": synth_song(i, 30.0) for i in range(3)}
OTHER = {other_music_id(f"Bank other{i}"): synth_song(300 + i, 30.0) for i in range(3)}


@pytest.fixture(scope="module")
def searcher():
    s = build_searcher({**SONGS, **OTHER})
    s.catalogue = {k: v for k, v in s.catalogue.items() if not is_other_music(k)}  # as the catalogue stage makes it
    return s


def clip(audio: np.ndarray, start_s: float, seconds: float = 3.0) -> np.ndarray:
    return audio[int(start_s * SR):int((start_s + seconds) * SR)]


def test_a_query_of_other_music_is_no_match_and_names_none_of_it(searcher):
    m = searcher.identify(clip(OTHER[other_music_id("Bank other1")], 7.0))
    assert not m.is_match and m.reason == "other music" and m.song_id is None and m.best_guess is None
    assert m.confidence == 0.0 and not any(is_other_music(c.song_id) for c in (*m.candidates, *m.copies))
    assert searcher.decision(searcher.search_audio(clip(OTHER[other_music_id("Bank other1")], 7.0))) == -np.inf


def test_a_song_of_the_collection_is_answered_without_the_other_music_among_its_candidates(searcher):
    m = searcher.identify(clip(SONGS["song2"], 11.0))
    assert m.is_match and m.song_id == "song2" and abs(m.offset_s - 11.0) < 0.3
    assert m.candidates and not any(is_other_music(c.song_id) for c in m.candidates)


@pytest.mark.parametrize("other_first", [True, False])
def test_a_collection_song_that_is_also_other_music_is_the_collections(other_first):
    """The user owns a song of the model's other music: one recording in the index twice. The collection's copy
    answers, whichever of the two the index ranks first, and the other music is not shown as its copy."""
    mine = {"song0": SONGS["song0"], "song1": SONGS["song1"]}
    twin = {other_music_id("Bank song0"): SONGS["song0"]}
    s = build_searcher({**twin, **mine} if other_first else {**mine, **twin})
    m = s.identify(clip(SONGS["song0"], 5.0))
    assert m.is_match and m.song_id == "song0" and m.reason is None
    assert not any(is_other_music(c.song_id) for c in (*m.candidates, *m.copies))


def test_the_calibration_searches_a_bank_query_without_its_own_song(searcher, tmp_path):
    """The bank's songs are the index's other music: each query found its own song, every bank song would look
    held by the database and its queries would be dropped. Searched without it, none is held, and each query's
    view is kept with no scores where other music leads (no match, whatever its scores)."""
    bank_songs = {f"other{i}": OTHER[other_music_id(f"Bank other{i}")] for i in range(3)}
    bank = make_null_bank(searcher, song_table(tmp_path, bank_songs), None, None, PLAN, 12, seed=3,
                          model_checksum="m")
    scores, record = bank_candidates(searcher, bank)
    assert record["held_by_database"] == [] and record["songs"] == 3 and record["queries"] == 24
    for i in range(len(bank.queries)):
        own = other_music_id(bank.meta["songs"][int(bank.queries["song"].iat[i])]["title"])
        best = searcher.search_views(bank.views(i), "sequence", own)[0].best
        assert best.song_id != own
    kept = [views for qs in scores.values() for views in qs]
    assert any(v[0] == [] for v in kept) and any(v[0] for v in kept)  # other music led some, the collection others


def test_the_prefix_marks_other_music_only():
    assert is_other_music(PREFIX + "x") and not is_other_music("song0") and not is_other_music("x" + PREFIX)


def test_the_listener_declares_no_other_music_and_shows_none_of_it(searcher):
    """Other music playing, then a song of the collection: the listener names the song only; while the other music
    plays, nothing is shown as its best guess and no hop counts towards a declaration, also with persistence on
    (a song leading below the threshold)."""
    from tests.test_listener import drive
    from workflow_lib.listener.core import ListenerCore
    from workflow_lib.listener.settings import ListenConfig

    x = np.concatenate([OTHER[other_music_id("Bank other2")][2 * SR:14 * SR], SONGS["song1"][4 * SR:12 * SR]])
    core = ListenerCore(searcher, ListenConfig(persistent_hops=4))
    ds = drive(core, x)
    core.finish()
    assert [h.song_id for h in core.heard] == ["song1"]
    during = [d for d in ds if d.stream_s <= 12.0]
    assert during and all(d.song_id is None and not d.above_threshold for d in during)


def test_the_listeners_rate_is_that_of_the_null_windows_other_music_does_not_answer():
    """Beside a small collection, other music answers most null windows (-inf): the listener's stricter per-window
    rate is taken over the rest, so it does not fall with how much other music the index holds."""
    from workflow_lib.listener.core import listener_calibration
    from workflow_lib.search.threshold import fit_calibration

    rng = np.random.default_rng(0)
    answered = {n: list(rng.uniform(0.0, 0.3, 1000)) for n in (1, 9)}
    with_other = {n: v + [float("-inf")] * 3000 for n, v in answered.items()}
    calibrated = fit_calibration(with_other, 0.01, statistic="margin")
    listener = listener_calibration(calibrated, 0.005)
    alone = listener_calibration(fit_calibration(answered, 0.01, statistic="margin"), 0.005)
    assert listener.thresholds == pytest.approx(alone.thresholds)
    assert calibrated.thresholds[0] < listener.thresholds[0]  # over all, the query's 1 % sits lower
