"""The calibration is reused only when nothing it reads has changed (``evaluation.calibration_cache``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workflow_lib.evaluation.calibration_cache import CalibrationCache, calibration_key
from workflow_lib.search.threshold import Calibration, fit_calibration


@pytest.fixture
def inputs(tmp_path):
    """Files shaped like the calibrate rule's inputs (their bytes are all the key reads)."""
    (tmp_path / "model.pt").write_bytes(b"model weights")
    index = tmp_path / "index"
    index.mkdir()
    (index / "index.faiss").write_bytes(b"faiss")
    pd.DataFrame({"song_id": ["a", "a"], "offset": [0, 1]}).to_parquet(index / "index_meta.parquet")
    np.save(index / "vectors.f16.npy", np.ones((2, 4), np.float16))
    (index / "index.json").write_text(json.dumps({"dim": 4, "built_at": "monday", "build_seconds": 1.0,
                                                  "sources": ["old/shard-0.parquet"], "history": [],
                                                  "trained": {"n_train": 2, "trained_at": "monday"}}))
    songs = pd.DataFrame({"song_id": ["a", "b"], "path": ["/m/a.mp3", "/m/b.mp3"], "rel_path": ["a.mp3", "b.mp3"],
                          "root": ["/m", "/m"], "size_bytes": [10, 20], "mtime_ns": [1, 2], "duration_s": [30.0, 40.0],
                          "audio_digest": ["sf-1-aaaa", "sf-1-bbbb"]})
    songs.to_parquet(tmp_path / "songs.parquet")
    pd.DataFrame({"song_id": ["a", "b"], "split": ["test", "val"]}).to_parquet(tmp_path / "splits.parquet")
    for bank in ("noise", "irs"):
        np.save(tmp_path / f"{bank}.npy", np.zeros(8, np.float32))
        pd.DataFrame({"start": [0]}).to_parquet(tmp_path / f"{bank}.parquet")

    def key(settings=None) -> str:
        return calibration_key(tmp_path / "model.pt", index, tmp_path / "songs.parquet", tmp_path / "splits.parquet",
                               tmp_path / "noise", tmp_path / "irs", settings or {"target_fpr": 0.01})
    return tmp_path, key


def _edit_songs(folder, **changes):
    songs = pd.read_parquet(folder / "songs.parquet")
    for col, values in changes.items():
        songs[col] = values
    songs.to_parquet(folder / "songs.parquet")


def test_retagged_moved_or_touched_songs_and_a_rebuilt_index_keep_the_key(inputs):
    root, key = inputs
    before = key()
    # retagged and touched (size, mtime), the music folder moved (root, path): the decoded audio is the same
    _edit_songs(root, size_bytes=[11, 21], mtime_ns=[5, 6], path=["/n/a.mp3", "/n/b.mp3"], root=["/n", "/n"])
    # the index rebuilt from the same vectors: only its build records differ
    info = json.loads((root / "index" / "index.json").read_text())
    info.update(built_at="tuesday", build_seconds=2.0, sources=["new/shard-0.parquet"])
    info["trained"]["trained_at"] = "tuesday"
    (root / "index" / "index.json").write_text(json.dumps(info))
    assert key() == before


@pytest.mark.parametrize("change", ["audio", "song", "model", "vectors", "index setting", "splits", "noise",
                                    "settings"])
def test_a_change_to_anything_calibration_reads_is_a_new_key(inputs, change):
    root, key = inputs
    before = key()
    if change == "audio":  # an edit inside a file: another decoded audio
        _edit_songs(root, audio_digest=["sf-1-aaaa", "sf-1-cccc"])
    elif change == "song":
        _edit_songs(root, song_id=["a", "c"])
    elif change == "model":
        (root / "model.pt").write_bytes(b"other weights")
    elif change == "vectors":
        np.save(root / "index" / "vectors.f16.npy", np.full((2, 4), 2, np.float16))
    elif change == "index setting":
        info = json.loads((root / "index" / "index.json").read_text())
        (root / "index" / "index.json").write_text(json.dumps({**info, "nprobe": 8}))
    elif change == "splits":
        pd.DataFrame({"song_id": ["a", "b"], "split": ["train", "val"]}).to_parquet(root / "splits.parquet")
    elif change == "noise":
        np.save(root / "noise.npy", np.ones(8, np.float32))
    assert (key({"target_fpr": 0.02}) if change == "settings" else key()) != before


def test_a_song_without_an_audio_digest_is_known_by_its_file(inputs):
    """A results folder older than the digest: its songs' path, size and modification time stand for the audio."""
    root, key = inputs
    _edit_songs(root, audio_digest=[None, "sf-1-bbbb"])
    before = key()
    _edit_songs(root, mtime_ns=[1, 7])  # the song with a digest: same audio
    assert key() == before
    _edit_songs(root, mtime_ns=[3, 7])  # the song without: it may have changed
    assert key() != before


def test_the_cache_gives_back_the_outputs_stored_under_a_key_and_only_those(tmp_path):
    cache = CalibrationCache(tmp_path / ".cache")
    calib = fit_calibration({1: list(np.linspace(0, 1, 100))}, 0.05, {"database_songs": 3}, "margin")
    out, table = tmp_path / "threshold.json", tmp_path / "thresholds.csv"
    assert not cache.restore("k1", out, table) and not out.exists()
    cache.store("k1", calib)
    assert cache.restore("k1", out, table)
    assert Calibration.load(out).to_dict() == calib.to_dict()
    assert pd.read_csv(table).equals(pd.read_csv(tmp_path / ".cache" / "calibration-k1.csv"))
    assert not cache.restore("k2", out, table)
    cache.store("k2", calib)  # only the last calibration is kept
    assert sorted(p.name for p in (tmp_path / ".cache").iterdir()) == ["calibration-k2.csv", "calibration-k2.json"]
    # a store killed between its two files is a miss, not half an answer
    (tmp_path / ".cache" / "calibration-k2.csv").unlink()
    assert not cache.restore("k2", tmp_path / "again.json", tmp_path / "again.csv")
    assert not (tmp_path / "again.json").exists()
