"""FAISS database: factory choice, build, id map, exact self-retrieval, add/remove, training reuse, clear errors,
the db.py command line and the Snakemake shard rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.db_helpers import save_tiny_model, unit_vectors, write_fingerprint_file, write_songs
from workflow_lib.database.fingerprint_file import FingerprintFileError, ModelMismatchError
from workflow_lib.database.index import FingerprintDB, IndexFileError
from workflow_lib.database.index_build import add_to_index, build_index, remove_from_index
from workflow_lib.database.index_training import TrainSettings, choose_factory, make_index
from workflow_lib.database.removed import read_removed_songs

REPO = Path(__file__).resolve().parents[1]
DIM = 16
# Small IVF-PQ (4-bit codes keep k-means training instant) searched over every list.
IVF = TrainSettings(factory="IVF8,PQ8x4")
FACTORIES = {"flat": TrainSettings(), "ivfpq": IVF, "ivf-hnsw-fastscan": TrainSettings(factory="IVF8_HNSW32,PQ8x4fs")}


@pytest.fixture(autouse=True)
def _faiss_one_thread():
    faiss.omp_set_num_threads(1)


def make_songs(n: int, seed: int, prefix: str = "s") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"{prefix}{i:03d}": unit_vectors(int(rng.integers(20, 90)), DIM, rng) for i in range(n)}


def source_vectors(db: FingerprintDB, songs: dict[str, np.ndarray]) -> np.ndarray:
    ids, seg = db.row_song(np.arange(db.ntotal))
    return np.stack([songs[i][s] for i, s in zip(ids, seg)])


def check_consistent(db: FingerprintDB, songs: dict[str, np.ndarray], expected_ids: set[str]) -> None:
    """Every row maps back to its song and segment; (song, segment) maps to the row; each row finds itself."""
    assert set(db.song_ids) == expected_ids
    assert db.ntotal == sum(len(songs[s]) for s in expected_ids) == len(db.vectors) == db.index.ntotal
    np.testing.assert_allclose(np.asarray(db.vectors, np.float32), source_vectors(db, songs), atol=1e-3)
    for sid in expected_ids:
        rows = db.song_rows(sid)
        assert len(rows) == len(songs[sid])
        ids, seg = db.row_song(rows)
        assert set(ids) == {sid} and list(seg) == list(range(len(rows)))
        pos = db.song_position(sid)
        assert list(db.rows_for(np.full(len(rows), pos), np.arange(len(rows)))) == list(rows)
        assert db.rows_for([pos], [len(rows)])[0] == -1 and db.row_of(sid, 0) == rows[0]
    meta = db.meta
    assert len(meta) == db.ntotal and list(meta.segment[:3]) == list(db.row_song(np.arange(3))[1])
    queries = np.asarray(db.vectors, np.float32)
    sims, rows = db.search(queries, 3, nprobe=8, rerank=64)
    assert (rows[:, 0] == np.arange(db.ntotal)).all()  # a database segment queried exactly finds itself
    assert np.allclose(sims[:, 0], 1.0, atol=2e-3)


def test_factory_grows_with_the_database():
    assert choose_factory(1000, 128) == "Flat"
    assert choose_factory(50_000, 128) == "Flat"
    assert choose_factory(200_000, 128) == "IVF2048,PQ64x4fs"
    assert choose_factory(1_000_000, 128) == "IVF4096,PQ64x4fs"
    assert choose_factory(10_000_000, 128) == "IVF16384,PQ64x4fs"
    assert choose_factory(10_000_000, 96) == "IVF16384,PQ48x4fs"  # pq_m must divide the dimension
    assert choose_factory(10 ** 10, 128) == "IVF65536,PQ64x4fs"
    assert choose_factory(5000, 128, flat_max=100) == "Flat"  # too few to train 8-bit PQ codebooks
    assert choose_factory(12000, 128, flat_max=100) == "IVF256,PQ64x4fs"  # >= 39 training points per list
    for n in (300_000, 3_000_000, 30_000_000):  # every choice is a valid FAISS index
        assert make_index(choose_factory(n, 128), 128).d == 128


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_every_row_maps_back_and_finds_itself(tmp_path, kind):
    songs = make_songs(30, seed=1)
    items = list(songs.items())
    a = write_fingerprint_file(tmp_path / "a.parquet", dict(items[:18]))
    b = write_fingerprint_file(tmp_path / "b.parquet", dict(items[18:]))
    info = build_index([a, b], tmp_path / "index", settings=FACTORIES[kind], exclude_songs={"s004"}, nprobe=8)
    assert info["factory"] == ("Flat" if kind == "flat" else FACTORIES[kind].factory)
    assert info["model_checksum"] == "model-a" and info["excluded"] == ["s004"] and info["build_seconds"] >= 0
    db = FingerprintDB.load(tmp_path / "index")
    assert db.nprobe == 8 and db.exact == (kind == "flat")
    check_consistent(db, songs, set(songs) - {"s004"})
    # Rows follow the files and the songs' order in them.
    assert list(db.song_ids[:3]) == ["s000", "s001", "s002"] and db.song_ids[-1] == "s029"


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_add_and_remove_keep_ids_consistent(tmp_path, kind):
    songs = make_songs(24, seed=2)
    new = make_songs(6, seed=3, prefix="n")
    items = list(songs.items())
    base = write_fingerprint_file(tmp_path / "a.parquet", dict(items))
    build_index([base], tmp_path / "index", settings=FACTORIES[kind], nprobe=8)
    folder = tmp_path / "index"

    removed, missing = remove_from_index(folder, ["s003", "s010", "s023", "nope"])
    assert removed == ["s003", "s010", "s023"] and missing == ["nope"]
    db = FingerprintDB.load(folder)
    check_consistent(db, songs, set(songs) - set(removed))
    _, rows = db.search(np.stack([songs["s010"][0], songs["s003"][5]]), 5)
    assert not set(db.row_song(rows.ravel())[0]) & set(removed)  # removed songs are never answered

    add_to_index(folder, [write_fingerprint_file(tmp_path / "new.parquet", new)])
    db = FingerprintDB.load(folder)
    everything = {**songs, **new}
    check_consistent(db, everything, (set(songs) - set(removed)) | set(new))
    assert [h["op"] for h in db.info["history"]] == ["remove", "add"]

    with pytest.raises(ValueError, match="already in the database"):
        add_to_index(folder, [tmp_path / "new.parquet"])
    changed = {"n002": unit_vectors(40, DIM, np.random.default_rng(9))}
    add_to_index(folder, [write_fingerprint_file(tmp_path / "changed.parquet", changed)], replace=True)
    db = FingerprintDB.load(folder)
    check_consistent(db, {**everything, **changed}, (set(songs) - set(removed)) | set(new))
    assert len(db.song_rows("n002")) == 40 and db.song_ids[-1] == "n002"


def test_rebuild_reuses_the_trained_index_until_the_database_outgrows_it(tmp_path, caplog):
    rng = np.random.default_rng(4)
    songs = {f"s{i:03d}": unit_vectors(350, DIM, rng) for i in range(40)}
    items = list(songs.items())
    a = write_fingerprint_file(tmp_path / "a.parquet", dict(items[:30]))
    b = write_fingerprint_file(tmp_path / "b.parquet", dict(items[30:]))
    out = tmp_path / "index"
    auto = TrainSettings(flat_max=100, pq_m=4)
    first = build_index([a], out, settings=auto)
    assert first["factory"] == "IVF256,PQ4x4fs" and first["trained"]["n_vectors_at_training"] == 30 * 350
    assert first["nprobe"] == 64  # auto: at least 64 lists
    second = build_index([a, b], out, settings=auto)  # songs added: same training
    assert second["trained"] == first["trained"] and second["ntotal"] == 40 * 350
    with caplog.at_level("INFO"):
        build_index([a, b], out, settings=TrainSettings(flat_max=100, pq_m=4, seed=1))  # settings changed
    assert "retraining the index: index settings changed" in caplog.text
    assert json.loads((out / ".cache" / "trained.json").read_text())["settings"]["seed"] == 1
    caplog.clear()
    with caplog.at_level("INFO"):
        info = build_index([a], out, settings=TrainSettings(flat_max=100, pq_m=4, seed=1, retrain_growth=1.2))
    assert "retraining the index" in caplog.text and "outside 1.2x" in caplog.text
    assert info["trained"]["n_vectors_at_training"] == info["ntotal"] == 30 * 350
    check_consistent(FingerprintDB.load(out), songs, set(songs) - set(list(songs)[30:]))


def test_songs_in_two_files_are_taken_once(tmp_path):
    songs = make_songs(5, seed=5)
    a = write_fingerprint_file(tmp_path / "a.parquet", songs)
    b = write_fingerprint_file(tmp_path / "b.parquet", {"s001": songs["s001"]})
    build_index([a, b], tmp_path / "index")
    db = FingerprintDB.load(tmp_path / "index")
    assert sorted(db.song_ids) == sorted(songs) and db.ntotal == sum(len(v) for v in songs.values())


def test_search_edge_cases(tmp_path):
    songs = make_songs(2, seed=6)
    build_index([write_fingerprint_file(tmp_path / "a.parquet", songs)], tmp_path / "index")
    db = FingerprintDB.load(tmp_path / "index")
    with pytest.raises(ValueError, match="queries must have shape"):
        db.search(np.zeros((2, DIM + 1), np.float32), 3)
    sims, rows = db.search(songs["s000"][:1], db.ntotal + 5)
    assert (rows[0, db.ntotal:] == -1).all() and np.isneginf(sims[0, db.ntotal:]).all()
    ids, seg = db.row_song(np.array([-1, 0]))
    assert ids[0] is None and seg[0] == -1 and ids[1] == "s000"
    assert len(db.song_rows("unknown")) == 0 and db.row_of("unknown", 0) == -1


# ----------------------------------------------------------------------------------------------- clear errors

def test_model_mismatch_is_refused(tmp_path):
    a = write_fingerprint_file(tmp_path / "a.parquet", make_songs(3, seed=7), checksum="model-a")
    b = write_fingerprint_file(tmp_path / "b.parquet", make_songs(3, seed=8, prefix="t"), checksum="model-b")
    with pytest.raises(ModelMismatchError, match="b.parquet.*model-b"):
        build_index([a, b], tmp_path / "index")
    build_index([a], tmp_path / "index")
    with pytest.raises(ModelMismatchError, match="model-b"):
        add_to_index(tmp_path / "index", [b])
    with pytest.raises(ModelMismatchError, match="model-a.*model-b"):
        FingerprintDB.load(tmp_path / "index", expect_model="model-b")


def test_corrupt_or_inconsistent_index_files_give_clear_errors(tmp_path):
    songs = make_songs(4, seed=9)
    a = write_fingerprint_file(tmp_path / "a.parquet", songs)
    folder = tmp_path / "index"
    build_index([a], folder)
    vec = np.load(folder / "vectors.f16.npy")
    np.save(folder / "vectors.f16.npy", vec[:-3])  # an interrupted update
    with pytest.raises(IndexFileError, match="disagree"):
        FingerprintDB.load(folder)
    np.save(folder / "vectors.f16.npy", vec)
    (folder / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(IndexFileError, match="index.faiss.*corrupt"):
        FingerprintDB.load(folder)
    (folder / "index.json").unlink()
    with pytest.raises(IndexFileError, match="index.json: missing"):
        FingerprintDB.load(folder)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 garbage")
    with pytest.raises(FingerprintFileError, match="bad.parquet"):
        build_index([bad], tmp_path / "index2")


# ----------------------------------------------------------------------------------------------- command line

def db_cli(*args: str) -> int:
    """``nafp db ACTION ...`` in this process."""
    from workflow_lib.cli.main import main

    return main(["db", *args])


def test_db_cli_adds_removes_and_describes(tmp_path, capsys):
    from workflow_lib.database.catalogue import load_catalogue
    from workflow_lib.database.extract import extract_songs, load_model

    results = tmp_path / "results"
    model = save_tiny_model(results / "model" / "model.pt")
    paths = write_songs(tmp_path / "music", {"a": 3.0, "b": 4.0})
    fp, ident = load_model(model, "cpu")
    shard = results / "fingerprints" / "shard-0.parquet"
    extract_songs(fp, ident, pd.DataFrame({"song_id": list(paths), "path": [str(p) for p in paths.values()]}),
                  shard)
    build_index([shard], results / "index")
    new = write_songs(tmp_path / "incoming" / "Some Artist - Great Song", {"x": 3.5}, seed=7)
    assert db_cli("add", str(new["x"].parent), "--results", str(results), "--threads", "1", "--device", "cpu") == 0
    db = FingerprintDB.load(results / "index")
    assert db.n_songs == 3
    added_id = [s for s in db.song_ids if s not in paths][0]
    cat = load_catalogue(results / "catalogue.parquet")
    assert cat.loc[added_id, "path"] == str(new["x"].resolve()) and cat.loc[added_id, "title"] == "x"
    added_files = list((results / "fingerprints" / "added").glob("*.parquet"))
    assert len(added_files) == 1
    # Adding the same file again is refused, with the reason.
    assert db_cli("add", str(new["x"]), "--results", str(results), "--device", "cpu") == 1
    assert "already in the database" in capsys.readouterr().err

    assert db_cli("remove", "a", added_id, "--results", str(results)) == 0
    assert read_removed_songs([results / "fingerprints" / "removed_songs.txt"]) == {"a", added_id}
    assert list(FingerprintDB.load(results / "index").song_ids) == ["b"]
    assert db_cli("remove", "zzz", "--results", str(results)) == 1
    capsys.readouterr()
    assert db_cli("info", "--json", "--results", str(results)) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["songs"] == 1 and info["removed_songs"] == 2 and [h["op"] for h in info["history"]] == [
        "add", "remove"]
    # The last song removed: an empty database is described, not divided by zero.
    assert db_cli("remove", "b", "--results", str(results)) == 0
    capsys.readouterr()
    assert db_cli("info", "--results", str(results)) == 0
    out = capsys.readouterr().out
    assert "songs          0" in out and "fingerprints   0  (" in out and "bytes each" not in out
    assert " remove 1 song (7 fingerprints)" in out and " remove 2 songs (" in out  # singular and plural
    # A model other than the index's is refused.
    save_tiny_model(results / "model" / "model.pt", seed=5)
    assert db_cli("add", str(paths["a"]), "--results", str(results), "--device", "cpu") == 1
    assert "not the model the index" in capsys.readouterr().err


def test_db_remove_by_file_or_folder_even_once_the_file_is_gone(tmp_path, capsys, monkeypatch):
    from workflow_lib.database.extract import extract_songs, load_model

    results = tmp_path / "results"
    model = save_tiny_model(results / "model" / "model.pt")
    base = write_songs(tmp_path / "base", {"a": 3.0})
    fp, ident = load_model(model, "cpu")
    shard = results / "fingerprints" / "shard-0.parquet"
    extract_songs(fp, ident, pd.DataFrame({"song_id": ["a"], "path": [str(base["a"])]}), shard)
    build_index([shard], results / "index")
    album = write_songs(tmp_path / "music" / "album", {"x": 3.0, "y": 3.5}, seed=3)
    other = write_songs(tmp_path / "music" / "other", {"z": 3.2}, seed=9)
    (tmp_path / "linked.wav").symlink_to(other["z"])
    assert db_cli("add", str(tmp_path / "music"), "--results", str(results), "--device", "cpu") == 0

    def songs() -> int:
        return FingerprintDB.load(results / "index").n_songs

    assert songs() == 4
    # A file deleted since it was added, named relative to the working folder.
    album["x"].unlink()
    monkeypatch.chdir(tmp_path)
    assert db_cli("remove", "music/album/x.wav", "--results", str(results)) == 0 and songs() == 3
    # A link to a song's file names that song.
    assert db_cli("remove", "linked.wav", "--results", str(results)) == 0 and songs() == 2
    capsys.readouterr()
    # A folder: every song below it that is still in the database; once none is, it is reported.
    assert db_cli("remove", str(tmp_path / "music") + "/", "--results", str(results)) == 0 and songs() == 1
    out = capsys.readouterr()
    assert "removed 1 song" in out.out and "stay out when the folders are indexed again" in out.err
    assert db_cli("remove", "music", "--results", str(results)) == 1
    assert "not in the database: music" in capsys.readouterr().err
    assert list(FingerprintDB.load(results / "index").song_ids) == ["a"]


# ----------------------------------------------------------------------------------------------- Snakemake

@pytest.mark.e2e
def test_rerunning_one_shard_target_rebuilds_only_that_shard(tmp_path):
    music = tmp_path / "music"
    lengths = {f"{i:016x}": 2.0 + 0.25 * i for i in range(8)}
    paths = write_songs(music, lengths)
    r = tmp_path / "results"
    (r / "manifest").mkdir(parents=True)
    (r / "split").mkdir(parents=True)
    pd.DataFrame({"song_id": list(paths), "path": [str(p) for p in paths.values()]}).to_parquet(
        r / "manifest" / "songs.parquet")
    pd.DataFrame({"song_id": list(paths), "split": "test"}).to_parquet(r / "split" / "splits.parquet")
    save_tiny_model(r / "model" / "model.pt")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"music_dirs": [str(music)]}, "model": {"source": "train"},
                                   "extract": {"n_shards": 2, "threads": 1, "compile": False, "device": "cpu"}}))
    targets = [f"results/fingerprints/shard-{i}.parquet" for i in range(2)]

    def snakemake(*args):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--configfile", str(cfg), "--cores", "1", *args, "--allowed-rules", "extract"]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        return res.stdout + res.stderr

    snakemake(*targets)
    before = {t: (tmp_path / t).stat().st_mtime_ns for t in targets}
    log = snakemake(*targets, "--forcerun", targets[1])
    after = {t: (tmp_path / t).stat().st_mtime_ns for t in targets}
    assert after[targets[1]] != before[targets[1]] and after[targets[0]] == before[targets[0]]
    assert "shard=1" in log and "shard=0" not in log
    # Every database song is in exactly one shard.
    from workflow_lib.database.fingerprint_file import read_fingerprints

    ids = [s for t in targets for s in dict.fromkeys(read_fingerprints(tmp_path / t)[1].song_id)]
    assert sorted(ids) == sorted(lengths)


def test_half_to_float_reads_read_only_rows_without_a_warning(recwarn):
    from workflow_lib.database.vectors import half_to_float

    x = np.arange(12, dtype=np.float16).reshape(3, 4)
    x.flags.writeable = False  # as the memory-mapped vectors are
    out = half_to_float(x[1])
    assert out.dtype == np.float32 and out.tolist() == [4.0, 5.0, 6.0, 7.0]
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def test_files_stamped_with_another_framing_are_refused(tmp_path):
    """The 8 kHz / 1 s / 0.5 s framing is stamped into model.pt, shards and index.json and checked on load."""
    import json

    import torch

    from workflow_lib.database.fingerprint_file import read_meta
    from workflow_lib.database.extract import extract_songs, load_model
    from workflow_lib.database.index import IndexFileError, read_sidecar
    from workflow_lib.model.model_file import ModelFileError, read_model_file

    model = save_tiny_model(tmp_path / "model.pt")
    payload = torch.load(model, weights_only=True)
    payload["frontend_config"]["sample_rate"] = 16000
    torch.save(payload, tmp_path / "wide.pt")
    with pytest.raises(ModelFileError, match="sample_rate"):
        read_model_file(tmp_path / "wide.pt")
    paths = write_songs(tmp_path / "music", {"a": 3.0})
    fp, ident = load_model(model, "cpu")
    shard = tmp_path / "shard.parquet"
    extract_songs(fp, ident, pd.DataFrame({"song_id": ["a"], "path": [str(paths["a"])]}), shard)
    assert read_meta(shard).hop_samples == 4000
    build_index([shard], tmp_path / "index")
    side = tmp_path / "index" / "index.json"
    info = json.loads(side.read_text())
    assert (info["sample_rate"], info["segment_samples"], info["hop_samples"]) == (8000, 8000, 4000)
    side.write_text(json.dumps({**info, "hop_samples": 2000}))
    with pytest.raises(IndexFileError, match="hop_samples"):
        read_sidecar(tmp_path / "index")


def test_db_add_of_a_missing_path_or_a_web_address_says_which(tmp_path):
    from workflow_lib.database.edit import collect_audio_files

    with pytest.raises(FileNotFoundError, match="nope.wav: no such file or folder"):
        collect_audio_files([tmp_path / "nope.wav"])
    with pytest.raises(FileNotFoundError, match=r"^http://example.org/x.flac: a web address; nafp reads local"):
        collect_audio_files(["http://example.org/x.flac"])


def test_an_added_song_gives_way_to_its_folder_copy_unless_that_one_was_removed(tmp_path):
    from workflow_lib.database.catalogue import superseded_added_songs, write_catalogue

    files = write_songs(tmp_path / "music", {"a": 3.0, "b": 3.0})
    table = pd.DataFrame({"song_id": ["ma", "mb"], "path": [str(files["a"]), str(files["b"])]})
    songs = tmp_path / "songs.parquet"
    unknown = write_songs(tmp_path / "unknown music", {"u": 3.0})["u"]  # never in the database, so not named
    pd.concat([table.assign(collection="music"),
               pd.DataFrame({"song_id": ["uu"], "path": [str(unknown)], "collection": ["unknown"]})]).to_parquet(songs)
    other = write_songs(tmp_path / "elsewhere", {"c": 3.0})["c"]
    added = pd.DataFrame({"song_id": ["xa", "xc"], "title": ["a", "c"], "artist": ["", ""],
                          "path": [str(files["a"]), str(other)]})
    assert superseded_added_songs(table, added) == {"xa"}  # the folder's copy of a.wav is kept
    # a.wav's folder song was removed with `nafp db remove`: its added copy is all that is left of it
    assert superseded_added_songs(table, added, removed={"ma"}) == set()
    cat = write_catalogue(songs, tmp_path / "catalogue.parquet", extra=[added])
    assert sorted(cat["song_id"]) == ["ma", "mb", "xc"]
