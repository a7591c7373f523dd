"""Fingerprint extraction: chunked embedding, shard assignment, shard files, reuse, resume and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.db_helpers import FailingFingerprinter, ProjectionFingerprinter, save_tiny_model, song_audio, write_songs
from workflow_lib import HOP_SAMPLES
from workflow_lib.audio.files import load_audio, write_audio
from workflow_lib.model.embed import CompiledFingerprinter, embed_audio, embed_file, iter_embed_chunks
from workflow_lib.database.extract import (extract_shard, extract_songs, file_signature, fingerprinter_identity,
                                          select_database_songs, shard_of, shard_songs)
from workflow_lib.database.fingerprint_file import (FingerprintFileError, ModelIdentity, ModelMismatchError,
                                                   check_model, read_fingerprints, read_meta)
from workflow_lib.audio.segments import n_segments

IDENT = ModelIdentity("model-a", {"n_mels": 256}, 16)


def songs_table(paths: dict) -> pd.DataFrame:
    return pd.DataFrame({"song_id": list(paths), "path": [str(p) for p in paths.values()]})


# ----------------------------------------------------------------------------------------------- embedding

@pytest.mark.parametrize("chunk", [3000, 4000, 8001, 12345])
def test_chunked_embedding_equals_whole_file_embedding(chunk):
    fp = ProjectionFingerprinter()
    audio = song_audio(7.3, seed=1)
    whole = embed_audio(fp, audio, batch_size=5)
    chunks = [audio[i:i + chunk] for i in range(0, len(audio), chunk)]
    blocks = list(iter_embed_chunks(fp, chunks, batch_size=3))
    firsts = [f for f, _ in blocks]
    got = np.concatenate([e for _, e in blocks])
    assert got.shape == whole.shape == (n_segments(len(audio)), 16)
    assert firsts == list(np.cumsum([0] + [len(e) for _, e in blocks])[:-1])  # indices continue across chunks
    np.testing.assert_allclose(got, whole, atol=1e-5)  # batch composition changes BLAS rounding only


def test_embed_audio_shorter_than_a_segment_gives_no_rows():
    out = embed_audio(ProjectionFingerprinter(), np.zeros(7999, np.float32))
    assert out.shape == (0, 16) and out.dtype == np.float32


def test_embed_file_matches_embedding_the_decoded_audio(tmp_path):
    fp = ProjectionFingerprinter()
    path = write_songs(tmp_path, {"a": 6.0})["a"]
    np.testing.assert_allclose(embed_file(fp, path, batch_size=4, chunk_seconds=1.3),
                               embed_audio(fp, load_audio(path)), atol=1e-5)


def test_compiled_wrapper_falls_back_to_eager_when_compilation_fails(monkeypatch):
    def broken_compile(module, **kw):
        def run(*a):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    fp = ProjectionFingerprinter()
    wrapped = CompiledFingerprinter(fp)
    x = torch.from_numpy(song_audio(1.0, 3)[None])
    np.testing.assert_allclose(wrapped(x).numpy(), fp(x).numpy())
    assert wrapped.failed and wrapped.dim == 16


# ----------------------------------------------------------------------------------------------- shard assignment

def test_shard_assignment_is_stable_disjoint_and_complete():
    ids = [f"{i:016x}" for i in range(200)]
    db = pd.DataFrame({"song_id": ids, "path": ids})
    parts = [shard_songs(db, s, 4) for s in range(4)]
    assert sorted(sum((list(p.song_id) for p in parts), [])) == sorted(ids)
    assert all(len(p) > 20 for p in parts)  # roughly balanced
    # The shard depends on the id alone (never on the other songs), and the hash is fixed across runs.
    assert shard_of("0123456789abcdef", 4) == shard_of("0123456789abcdef", 4)
    assert shard_of("song", 1000) == int.from_bytes(__import__("hashlib").sha1(b"song").digest()[:8], "big") % 1000


def test_database_songs_follow_the_configured_splits():
    songs = pd.DataFrame({"song_id": list("abcde"), "path": list("abcde")})
    splits = pd.DataFrame({"song_id": list("abcde"), "split": ["train", "test", "val", "distractor", "test"]})
    assert list(select_database_songs(songs, splits, ["test", "distractor"]).song_id) == ["b", "d", "e"]
    with pytest.raises(ValueError, match="no split"):
        select_database_songs(songs, splits.iloc[:3], ["test"])


# ----------------------------------------------------------------------------------------------- shard files

def test_shard_round_trip_with_skipped_songs(tmp_path):
    paths = write_songs(tmp_path / "music", {"s1": 2.0, "s2": 3.7, "s3": 10.0, "short": 0.6})
    bad = tmp_path / "music" / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    table = songs_table({**paths, "broken": bad})
    fp = ProjectionFingerprinter()
    out = tmp_path / "fp" / "shard-0.parquet"
    meta = extract_songs(fp, IDENT, table, out, batch_size=7, extra={"shard": 0})

    got_meta, rows, emb = read_fingerprints(out)
    assert got_meta.model_checksum == "model-a" and got_meta.frontend == {"n_mels": 256}
    assert (got_meta.hop_samples, got_meta.segment_samples, got_meta.dim, got_meta.dtype) == (4000, 8000, 16,
                                                                                              "float16")
    assert got_meta.extra == {"shard": 0} and got_meta.n_rows == len(rows) == meta.n_rows
    schema = pq.read_schema(out)
    assert schema.field("embedding").type == pa.list_(pa.float16(), 16)
    assert schema.field("segment").type == pa.int32()
    assert list(dict.fromkeys(rows.song_id)) == ["s1", "s2", "s3"]  # the given order, skipped songs left out
    for sid in ("s1", "s2", "s3"):
        audio = load_audio(paths[sid])
        mine = rows.song_id == sid
        assert list(rows.segment[mine]) == list(range(n_segments(len(audio))))
        np.testing.assert_allclose(emb[mine.to_numpy()], embed_audio(fp, audio), atol=2e-3)  # float16 rounding
    reasons = {s["song_id"]: s["reason"] for s in got_meta.skipped}
    assert set(reasons) == {"short", "broken"} and "shorter than one" in reasons["short"]
    assert str(bad) in next(s["path"] for s in got_meta.skipped if s["song_id"] == "broken")


def test_float32_storage_is_exact(tmp_path):
    paths = write_songs(tmp_path / "music", {"a": 3.0})
    fp = ProjectionFingerprinter()
    out = tmp_path / "shard.parquet"
    extract_songs(fp, IDENT, songs_table(paths), out, dtype="float32")
    _, _, emb = read_fingerprints(out)
    np.testing.assert_array_equal(emb, embed_audio(fp, load_audio(paths["a"])))


def test_rerun_reuses_unchanged_songs_and_extracts_only_new_or_changed_ones(tmp_path):
    paths = write_songs(tmp_path / "music", {"a": 4.0, "b": 5.0, "c": 3.0})
    out = tmp_path / "fp" / "shard-0.parquet"
    extract_songs(ProjectionFingerprinter(), IDENT, songs_table(paths), out)
    out.unlink()  # what Snakemake does before rerunning a job
    new = write_songs(tmp_path / "music", {"d": 2.5}, seed=50)
    paths["b"] = write_songs(tmp_path / "music", {"b": 5.0}, seed=99)["b"]  # same name, new content
    fp = ProjectionFingerprinter()
    extract_songs(fp, IDENT, songs_table({**paths, **new}), out)
    assert fp.segments_seen == n_segments(int(5.0 * 8000)) + n_segments(int(2.5 * 8000))  # only b and d
    fresh = tmp_path / "fresh.parquet"
    extract_songs(ProjectionFingerprinter(), IDENT, songs_table({**paths, **new}), fresh, reuse=False,
                  cache_dir=tmp_path / "other-cache")
    _, rows_a, emb_a = read_fingerprints(out)
    _, rows_b, emb_b = read_fingerprints(fresh)
    pd.testing.assert_frame_equal(rows_a, rows_b)
    np.testing.assert_array_equal(emb_a, emb_b)


def test_a_renamed_or_moved_file_is_not_fingerprinted_again(tmp_path):
    """The song id follows the path, so a file renamed or moved in the music folder is a new song to its shard:
    its fingerprints are found by the file's signature, in this shard's cache or another shard's."""
    paths = write_songs(tmp_path / "music", {"a": 4.0, "b": 5.0, "c": 3.0})
    out0, out1 = tmp_path / "fp" / "shard-0.parquet", tmp_path / "fp" / "shard-1.parquet"
    extract_songs(ProjectionFingerprinter(), IDENT, songs_table({"a": paths["a"], "b": paths["b"]}), out0)
    extract_songs(ProjectionFingerprinter(), IDENT, songs_table({"c": paths["c"]}), out1)
    _, rows_before, emb_before = read_fingerprints(out0)
    _, rows_c, emb_c = read_fingerprints(out1)
    out0.unlink()  # what Snakemake does before rerunning a job
    (tmp_path / "music" / "album").mkdir()
    renamed = paths["b"].rename(tmp_path / "music" / "b renamed.wav")
    moved = paths["c"].rename(tmp_path / "music" / "album" / "c.wav")  # now shard 0's, fingerprinted by shard 1
    fp = ProjectionFingerprinter()
    extract_songs(fp, IDENT, songs_table({"a": paths["a"], "b2": renamed, "c2": moved}), out0)
    assert fp.segments_seen == 0
    _, rows, emb = read_fingerprints(out0)
    assert list(rows.song_id.unique()) == ["a", "b2", "c2"]
    np.testing.assert_array_equal(emb[(rows.song_id == "b2").to_numpy()],
                                  emb_before[(rows_before.song_id == "b").to_numpy()])
    np.testing.assert_array_equal(emb[(rows.song_id == "c2").to_numpy()], emb_c)
    # a file whose content changed is fingerprinted again, whatever its name
    changed = write_songs(tmp_path / "music", {"b renamed": 5.0}, seed=77)["b renamed"]
    out0.unlink()
    fp = ProjectionFingerprinter()
    extract_songs(fp, IDENT, songs_table({"a": paths["a"], "b3": changed, "c2": moved}), out0)
    assert fp.segments_seen == n_segments(int(5.0 * 8000))


def test_a_file_whose_tags_were_edited_is_not_fingerprinted_again(tmp_path):
    """A tag editor rewrites the file's first (and last) bytes, so its signature changes; the decoded audio does
    not (the manifest's ``audio_digest``), and the fingerprints are reused, moved to another shard or not."""
    import soundfile as sf

    from workflow_lib.data.manifest import measure_song

    def write(path: Path, audio: np.ndarray, title: str) -> Path:
        with sf.SoundFile(path, "w", 8000, 1, format="FLAC") as f:
            f.title = title
            f.write(audio)
        return path

    def table(paths: dict) -> pd.DataFrame:
        t = songs_table(paths)
        t["audio_digest"] = [measure_song(Path(p))[0]["audio_digest"] for p in t["path"]]
        return t

    (tmp_path / "music" / "album").mkdir(parents=True)
    a, b = song_audio(5.0, seed=1), song_audio(4.0, seed=2)
    pa_, pb = write(tmp_path / "music" / "a.flac", a, "A"), write(tmp_path / "music" / "b.flac", b, "B")
    out0, out1 = tmp_path / "fp" / "shard-0.parquet", tmp_path / "fp" / "shard-1.parquet"
    extract_songs(ProjectionFingerprinter(), IDENT, table({"a": pa_}), out0)
    extract_songs(ProjectionFingerprinter(), IDENT, table({"b": pb}), out1)
    _, _, emb_a = read_fingerprints(out0)
    _, _, emb_b = read_fingerprints(out1)
    before = file_signature(pa_)
    write(pa_, a, "A, retitled by a tag editor")
    pb.unlink()
    moved = write(tmp_path / "music" / "album" / "b.flac", b, "B, retitled")  # and now shard 0's
    assert file_signature(pa_) != before
    out0.unlink()
    fp = ProjectionFingerprinter()
    extract_songs(fp, IDENT, table({"a": pa_, "b2": moved}), out0)
    assert fp.segments_seen == 0
    meta, rows, emb = read_fingerprints(out0)
    np.testing.assert_array_equal(emb[(rows.song_id == "a").to_numpy()], emb_a)
    np.testing.assert_array_equal(emb[(rows.song_id == "b2").to_numpy()], emb_b)
    assert meta.sources["a"] == file_signature(pa_) and set(meta.audio) == {"a", "b2"}
    # other audio under the old name is fingerprinted again
    write(pa_, song_audio(5.0, seed=9), "A")
    out0.unlink()
    fp = ProjectionFingerprinter()
    extract_songs(fp, IDENT, table({"a": pa_, "b2": moved}), out0)
    assert fp.segments_seen == n_segments(int(5.0 * 8000))


def test_an_edit_inside_a_file_that_keeps_its_size_and_ends_is_fingerprinted_again(tmp_path):
    """The signature reads only the file's size and ends; the digest of the decoded audio tells the edit."""
    from workflow_lib.data.manifest import measure_song

    audio = song_audio(30.0, seed=3)
    path = write_songs(tmp_path / "music", {"a": 30.0}, seed=3)["a"]
    out = tmp_path / "fp" / "shard-0.parquet"

    def table() -> pd.DataFrame:
        t = songs_table({"a": path})
        t["audio_digest"] = [measure_song(path)[0]["audio_digest"]]
        return t

    extract_songs(ProjectionFingerprinter(), IDENT, table(), out)
    before = file_signature(path)
    edited = audio.copy()
    edited[12 * 8000:14 * 8000] *= 0.25  # two quieter seconds in the middle: same size, same first and last 64 KiB
    write_audio(path, edited)
    assert file_signature(path) == before
    out.unlink()
    fp = ProjectionFingerprinter()
    extract_songs(fp, IDENT, table(), out)
    assert fp.segments_seen == n_segments(30 * 8000)
    # a digest made by another decoder build (an upgrade may round a few samples otherwise) is not compared: the
    # unchanged file keeps its fingerprints instead of the whole collection being fingerprinted again
    upgraded = table()
    upgraded["audio_digest"] = "ffff-" + upgraded["audio_digest"].str.split("-").str[1].str[::-1]
    out.unlink()
    fp = ProjectionFingerprinter()
    extract_songs(fp, IDENT, upgraded, out)
    assert fp.segments_seen == 0


def test_killed_extraction_resumes_where_it_stopped(tmp_path):
    lengths = {f"s{i}": 2.0 + i for i in range(5)}
    paths = write_songs(tmp_path / "music", lengths)
    out = tmp_path / "fp" / "shard-0.parquet"
    with pytest.raises(KeyboardInterrupt):
        # batch 1000 > any song: one batch per song, so the "kill" lands in the fourth song.
        extract_songs(FailingFingerprinter(fail_after=3), IDENT, songs_table(paths), out, batch_size=1000,
                      flush_rows=1)
    assert not out.exists()  # never a half-written output
    fp = ProjectionFingerprinter()
    extract_songs(fp, IDENT, songs_table(paths), out, batch_size=1000)
    assert fp.segments_seen == sum(n_segments(int(s * 8000)) for s in (5.0, 6.0))  # only the last two songs
    _, rows, emb = read_fingerprints(out)
    fresh = ProjectionFingerprinter()
    for sid, p in paths.items():
        np.testing.assert_allclose(emb[(rows.song_id == sid).to_numpy()],
                                   embed_audio(fresh, load_audio(p)), atol=2e-3)


def test_cached_fingerprints_of_another_model_are_not_reused(tmp_path):
    paths = write_songs(tmp_path / "music", {"a": 3.0})
    out = tmp_path / "shard.parquet"
    extract_songs(ProjectionFingerprinter(seed=1), IDENT, songs_table(paths), out)
    fp = ProjectionFingerprinter(seed=2)
    extract_songs(fp, ModelIdentity("model-b", {}, 16), songs_table(paths), out)
    assert fp.segments_seen == n_segments(3 * 8000) and read_meta(out).model_checksum == "model-b"


# ----------------------------------------------------------------------------------------------- clear errors

def test_corrupt_or_foreign_shards_give_clear_errors(tmp_path):
    garbage = tmp_path / "shard-0.parquet"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(FingerprintFileError, match="shard-0.parquet.*corrupt"):
        read_meta(garbage)
    paths = write_songs(tmp_path / "music", {"a": 3.0})
    good = tmp_path / "shard-1.parquet"
    extract_songs(ProjectionFingerprinter(), IDENT, songs_table(paths), good)
    cut = tmp_path / "shard-2.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FingerprintFileError, match="shard-2.parquet"):
        read_fingerprints(cut)
    foreign = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(foreign)
    with pytest.raises(FingerprintFileError, match="not a fingerprint file"):
        read_meta(foreign)
    with pytest.raises(FingerprintFileError, match="does not exist"):
        read_meta(tmp_path / "missing.parquet")


def test_fingerprints_of_another_model_are_refused(tmp_path):
    paths = write_songs(tmp_path / "music", {"a": 3.0})
    out = tmp_path / "shard.parquet"
    extract_songs(ProjectionFingerprinter(), IDENT, songs_table(paths), out)
    check_model(read_meta(out), "model-a", "ok")
    with pytest.raises(ModelMismatchError, match="model-a.*model-z"):
        check_model(read_meta(out), "model-z", f"fingerprint file {out}")


# ----------------------------------------------------------------------------------------------- the real model

def test_extract_shard_with_a_real_model_file(tmp_path):
    from workflow_lib.model.model_file import load_fingerprinter, model_checksum

    model = save_tiny_model(tmp_path / "model" / "model.pt")
    lengths = {f"{i:016x}": 2.0 + 0.5 * i for i in range(6)}
    paths = write_songs(tmp_path / "music", lengths)
    songs = songs_table(paths)
    songs_path, splits_path = tmp_path / "songs.parquet", tmp_path / "splits.parquet"
    songs.to_parquet(songs_path)
    pd.DataFrame({"song_id": list(lengths), "split": ["test", "train", "test", "distractor", "val", "test"]}
                 ).to_parquet(splits_path)
    seen = []
    for shard in range(2):
        out = tmp_path / "fp" / f"shard-{shard}.parquet"
        meta = extract_shard(songs_path, splits_path, model, out, shard, 2, ["test", "distractor"],
                             batch_size=16, device="cpu", threads=1, compile_model=False)
        assert meta.model_checksum == model_checksum(model) and meta.extra == {"shard": shard, "n_shards": 2}
        assert meta.frontend["n_mels"] == 256 and meta.frontend["hop_length"] == 256 and meta.dim == 8
        _, rows, emb = read_fingerprints(out)
        seen += list(dict.fromkeys(rows.song_id))
        fp = load_fingerprinter(model, "cpu")
        assert fingerprinter_identity(fp, "x").dim == 8
        for sid in dict.fromkeys(rows.song_id):
            np.testing.assert_allclose(emb[(rows.song_id == sid).to_numpy()],
                                       embed_audio(fp, load_audio(paths[sid])), atol=3e-3)
    db = [s for s, split in zip(lengths, ["test", "train", "test", "distractor", "val", "test"])
          if split in ("test", "distractor")]
    assert sorted(seen) == sorted(db)
    assert HOP_SAMPLES == 4000


def test_compilation_only_when_there_is_enough_audio_to_repay_it(tmp_path, monkeypatch, caplog):
    compiled = []
    monkeypatch.setattr("workflow_lib.model.embed.optimize_for_inference", lambda m: compiled.append(m) or m)
    paths = write_songs(tmp_path / "music", {"a": 2.0})
    table = songs_table(paths).assign(duration_s=2.0)
    with caplog.at_level("INFO"):
        extract_songs(ProjectionFingerprinter(), IDENT, table, tmp_path / "one.parquet", compile_model=True)
    assert not compiled and "too little to repay" in caplog.text
    # another folder: beside "one", its cache would give the song back without extracting anything
    extract_songs(ProjectionFingerprinter(), IDENT, table, tmp_path / "other" / "two.parquet", compile_model=True,
                  compile_min_audio_s=1.0)
    assert len(compiled) == 1
