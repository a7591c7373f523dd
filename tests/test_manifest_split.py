import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from tests.conftest import tone_mix
from workflow_lib.data.manifest import build_manifest, song_id_for, write_manifest
from workflow_lib.data.split import SPLITS, assign_splits, write_splits
from workflow_lib.database.extract import select_database_songs
from workflow_lib.evaluation.songs import unknown_songs


@pytest.fixture()
def music_dir(tmp_path):
    root = tmp_path / "music"
    (root / "album").mkdir(parents=True)
    sf.write(str(root / "album" / "a.flac"), tone_mix(5.0, 22050, seed=1), 22050)
    sf.write(str(root / "b.wav"), np.stack([tone_mix(4.0, 44100, seed=2)] * 2, 1), 44100)
    sf.write(str(root / "short.wav"), tone_mix(1.0, 8000), 8000)
    sf.write(str(root / "silent.wav"), np.zeros(8000 * 5, np.float32), 8000)
    hum = 0.1 * np.sin(2 * np.pi * 50 * np.arange(8000 * 5) / 8000) + 0.05  # loud, but not in the model's band
    sf.write(str(root / "hum.wav"), hum.astype(np.float32), 8000)
    (root / "empty.mp3").write_bytes(b"")
    (root / "notes.txt").write_text("not audio")
    (root / "b.cue").write_text('FILE "b.wav" WAVE\n')  # not music, but not a rejected file: it names tracks
    (root / "broken.ogg").write_bytes(b"OggS" + b"\x00" * 500)
    return root


def test_manifest_keeps_good_songs_and_rejects_the_rest_with_reasons(music_dir):
    songs, rejected = build_manifest([("music", music_dir)], min_duration_s=3.0, silence_dbfs=-60)
    assert sorted(songs.rel_path) == ["album/a.flac", "b.wav"]
    row = songs.set_index("rel_path").loc["b.wav"]
    assert (row.sample_rate, row.channels, row.format) == (44100, 2, "wav")
    assert abs(row.duration_s - 4.0) < 0.01 and row.song_id == song_id_for("music", "b.wav")
    reasons = dict(zip(rejected.path.map(lambda p: p.rsplit("/", 1)[-1]), rejected.reason))
    assert set(reasons) == {"short.wav", "silent.wav", "hum.wav", "empty.mp3", "notes.txt", "broken.ogg"}
    assert reasons["short.wav"].startswith("too short")
    assert reasons["silent.wav"].startswith("silent")
    assert reasons["hum.wav"].startswith("silent to the model: no second reaches the silence gate's -55 dBFS")
    assert reasons["empty.mp3"] == "empty file"
    assert reasons["notes.txt"].startswith("not an audio file")
    assert reasons["broken.ogg"].startswith("unreadable")


def test_a_byte_identical_copy_is_rejected_and_a_same_size_other_song_is_kept(tmp_path):
    """One song twice (another name, another folder, or the distractor collection) is one database song; a file of
    the same size with other audio is not a copy."""
    root, more = tmp_path / "music", tmp_path / "more"
    (root / "sub").mkdir(parents=True)
    more.mkdir()
    a, b = tone_mix(4.0, 8000, seed=1), tone_mix(4.0, 8000, freqs=(300.0, 450.0), seed=2)
    sf.write(root / "a.wav", a, 8000)
    sf.write(root / "b.wav", b, 8000)  # same length and format: same size, other bytes
    (root / "sub" / "copy of a.wav").write_bytes((root / "a.wav").read_bytes())
    (more / "a again.wav").write_bytes((root / "a.wav").read_bytes())
    songs, rejected = build_manifest([("music", root), ("distractor", more)], min_duration_s=3.0, silence_dbfs=-60)
    assert (root / "a.wav").stat().st_size == (root / "b.wav").stat().st_size
    assert sorted(songs.rel_path) == ["a.wav", "b.wav"] and set(songs.collection) == {"music"}
    reasons = dict(zip(rejected.path, rejected.reason))
    assert set(reasons) == {str(root / "sub" / "copy of a.wav"), str(more / "a again.wav")}
    assert all(r == f"copy: the same bytes as {root / 'a.wav'}" for r in reasons.values())



def test_of_a_file_and_a_link_to_it_the_file_is_kept_whatever_their_order(tmp_path):
    """A playlist folder of links beside the files: the song keeps its own file's name (an untagged song's title),
    not the link's, though the link sorts first; nor does a folder linked in ahead of the folder itself. Before, the
    first path won, and the folder itself was "a symbolic link to a folder already scanned"."""
    root = tmp_path / "music"
    (root / "songs").mkdir(parents=True)
    sf.write(root / "songs" / "real.wav", tone_mix(4.0, 8000, seed=1), 8000)
    sf.write(root / "songs" / "other.wav", tone_mix(4.0, 8000, freqs=(300.0, 450.0), seed=2), 8000)
    (root / "a playlist").mkdir()
    (root / "a playlist" / "01 - link.wav").symlink_to(root / "songs" / "real.wav")
    (root / "a linked folder").symlink_to(root / "songs")
    songs, rejected = build_manifest([("music", root)], min_duration_s=3.0, silence_dbfs=-60)
    assert sorted(songs.rel_path) == ["songs/other.wav", "songs/real.wav"]
    reasons = dict(zip(rejected.path, rejected.reason))
    real = root / "songs" / "real.wav"
    assert reasons == {str(root / "a playlist" / "01 - link.wav"): f"copy: the same bytes as {real}",
                       str(root / "a linked folder"): f"symbolic link to a folder already scanned ({root / 'songs'}): "
                                                      "skipped, not scanned twice"}
    # the collection's own folder reached through a link changes nothing: links below it are what count
    (tmp_path / "via").symlink_to(root)
    songs, _ = build_manifest([("music", tmp_path / "via")], min_duration_s=3.0, silence_dbfs=-60)
    assert sorted(songs.rel_path) == ["songs/other.wav", "songs/real.wav"]


def test_song_ids_are_stable_when_the_folder_moves(music_dir, tmp_path):
    first, _ = build_manifest([("music", music_dir)])
    moved = music_dir.rename(tmp_path / "elsewhere")
    second, _ = build_manifest([("music", moved)])
    assert list(first.song_id) == list(second.song_id)


def test_two_folders_with_the_same_file_names_keep_every_song(tmp_path):
    """`nafp index album1 album2`, each holding 01.wav: two songs (the second used to be rejected as a duplicate
    id). The first folder's songs keep their plain ids; a folder given twice is scanned once."""
    a, b, c = tmp_path / "album1", tmp_path / "x" / "album2", tmp_path / "y" / "album2"
    for i, folder in enumerate((a, b, c)):
        folder.mkdir(parents=True)
        sf.write(folder / "01.wav", tone_mix(4.0, 8000, freqs=(200.0 + 150 * i, 330.0 + 90 * i), seed=i), 8000)
    songs, rejected = build_manifest([("music", a), ("music", b), ("music", c), ("music", tmp_path / "album1")],
                                     min_duration_s=3.0, silence_dbfs=-60)
    assert rejected.empty and len(songs) == 3 and songs.song_id.is_unique
    assert list(songs.rel_path) == ["01.wav"] * 3
    assert songs.song_id.iloc[0] == song_id_for("music", "01.wav")
    assert songs.song_id.iloc[1] == song_id_for("music", "album2/01.wav")  # stable when the folder moves
    again, _ = build_manifest([("music", a), ("music", b), ("music", c)], min_duration_s=3.0, silence_dbfs=-60)
    assert list(again.song_id) == list(songs.song_id)
    # A folder inside another one given too: its songs are found once, below the outer folder, without copies.
    nested, rejected = build_manifest([("music", b), ("music", tmp_path / "x")], min_duration_s=3.0,
                                      silence_dbfs=-60)
    assert rejected.empty and list(nested.rel_path) == ["album2/01.wav"]


def test_a_results_folder_kept_inside_the_music_folder_is_not_scanned(music_dir):
    """`nafp index ~/Music --results ~/Music/db`: the database's own files are not songs, nor rejected files."""
    db = music_dir / "db"
    (db / "logs").mkdir(parents=True)
    (db / "logs" / "manifest.log").write_text("log")
    sf.write(str(db / "stray.wav"), tone_mix(4.0, 8000, seed=5), 8000)
    songs, rejected = build_manifest([("music", music_dir)], min_duration_s=3.0, silence_dbfs=-60, skip_dirs=[db])
    assert sorted(songs.rel_path) == ["album/a.flac", "b.wav"] and not rejected.path.str.contains("/db/").any()
    # the folder to skip being the music folder itself skips nothing
    same, _ = build_manifest([("music", db)], min_duration_s=3.0, silence_dbfs=-60, skip_dirs=[db])
    assert list(same.rel_path) == ["stray.wav"]


def test_a_folder_that_cannot_be_read_is_named_not_skipped_silently(music_dir, monkeypatch):
    import os

    real = os.scandir

    def scandir(path="."):  # as a folder without read permission answers (the tests run as root, who reads all)
        if str(path).endswith("album"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    songs, rejected = build_manifest([("music", music_dir)], min_duration_s=3.0, silence_dbfs=-60)
    assert "album/a.flac" not in set(songs.rel_path)
    reasons = dict(zip(rejected.path, rejected.reason))
    assert reasons[str(music_dir / "album")] == "folder cannot be read (Permission denied): skipped"


def test_a_rescan_decodes_only_the_files_that_changed(music_dir, tmp_path, monkeypatch):
    """The songs table is kept beside the manifest (Snakemake deletes the outputs before a rerun): a file with the
    same path, size and modification time is not decoded again, and is judged with the thresholds of the day."""
    from workflow_lib.data import manifest

    out = tmp_path / "res" / "manifest"
    args = [str(music_dir)], [], out / "songs.parquet", out / "rejected.parquet"
    first = write_manifest(*args, 3.0, -60)
    decoded = []
    real = manifest.measure_song
    monkeypatch.setattr(manifest, "measure_song", lambda path, st=None: decoded.append(path.name) or real(path, st))
    for f in out.glob("*.parquet"):
        f.unlink()  # what Snakemake does before rerunning the job
    sf.write(str(music_dir / "b.wav"), np.stack([tone_mix(4.0, 44100, seed=5)] * 2, 1), 44100)  # changed
    again = write_manifest(*args, 3.0, -60)
    # the files that were not measured are checked again (unreadable, empty, not audio); the short, silent and
    # humming ones were measured, and are judged again from their measures
    assert sorted(decoded) == ["b.wav", "broken.ogg", "empty.mp3", "notes.txt"]
    a0, a1 = (t.set_index("rel_path").loc["album/a.flac"] for t in (first, again))
    assert a0.equals(a1)
    b0, b1 = (t.set_index("rel_path").loc["b.wav"] for t in (first, again))
    assert b0.audio_digest != b1.audio_digest and b0.duration_s == b1.duration_s
    decoded.clear()
    stricter = write_manifest(*args, 4.5, -60)  # a.flac (5 s) stays, b.wav (4 s) is now too short: no decoding
    assert sorted(decoded) == ["broken.ogg", "empty.mp3", "notes.txt"] and list(stricter.rel_path) == ["album/a.flac"]
    rejected = pd.read_parquet(out / "rejected.parquet")
    assert dict(zip(rejected.path, rejected.reason))[str(music_dir / "b.wav")] == "too short: 4.00 s < 4.5 s"
    decoded.clear()
    assert len(write_manifest(*args, 3.0, -60)) == 2 and sorted(decoded) == ["broken.ogg", "empty.mp3", "notes.txt"]


def test_decoding_in_worker_processes_gives_the_same_tables(music_dir, tmp_path):
    """The scan's files are decoded by ``workers`` processes; the songs and the rejected files, their ids, order,
    measures and reasons, are those of the scan in one process."""
    (music_dir / "more").mkdir()
    for i in range(4):
        sf.write(str(music_dir / "more" / f"s{i}.flac"), tone_mix(4.0 + i, 16000, seed=10 + i), 16000)
    one = build_manifest([("music", music_dir)], min_duration_s=3.0, silence_dbfs=-60)
    three = build_manifest([("music", music_dir)], min_duration_s=3.0, silence_dbfs=-60, workers=3)
    assert len(one[0]) == 6 and len(one[1]) == 6
    pd.testing.assert_frame_equal(one[0], three[0])
    pd.testing.assert_frame_equal(one[1], three[1])


def test_a_scan_killed_half_way_decodes_only_the_rest_when_run_again(music_dir, tmp_path, monkeypatch):
    """What a long scan measured is saved as it goes (temp file, then rename), so the same command after a kill
    does not decode those files again."""
    from workflow_lib.data import manifest

    monkeypatch.setattr(manifest.Measurements, "SAVE_INTERVAL_S", 0.0)  # save after every file
    out = tmp_path / "res" / "manifest"
    args = [str(music_dir)], [], out / "songs.parquet", out / "rejected.parquet"
    order = sorted(f.name for f in music_dir.rglob("*") if f.is_file() and f.suffix != ".cue")
    decoded = []
    real = manifest.measure_song

    def killed_at_the_fifth(path, st=None):
        if len(decoded) == 4:
            raise KeyboardInterrupt  # what a kill does to the scan
        decoded.append(path.name)
        return real(path, st)

    monkeypatch.setattr(manifest, "measure_song", killed_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(*args, 3.0, -60)
    assert not (out / "songs.parquet").exists() and len(decoded) == 4
    first = set(decoded)
    decoded.clear()
    monkeypatch.setattr(manifest, "measure_song", lambda path, st=None: decoded.append(path.name) or real(path, st))
    songs = write_manifest(*args, 3.0, -60)
    unreadable = {"broken.ogg", "empty.mp3", "notes.txt"}  # never measured, so checked again
    assert set(decoded) == (set(order) - first) | (first & unreadable)
    assert sorted(songs.rel_path) == ["album/a.flac", "b.wav"]


def test_a_folder_of_short_sound_effects_warns_of_the_first_ten_then_counts(tmp_path, caplog):
    """Stingers and one-shots too short to be songs are rejected each with its reason (rejected table, log), but only
    the first ten are warnings: the rest would scroll by on the terminal a line each."""
    import logging

    from workflow_lib.data.manifest import WARN_REJECTED

    root = tmp_path / "sfx"
    root.mkdir()
    sf.write(str(root / "song.flac"), tone_mix(5.0, 8000, seed=1), 8000)
    for i in range(WARN_REJECTED + 4):
        sf.write(str(root / f"hit{i:02d}.wav"), tone_mix(1.0, 8000, seed=i), 8000)
    with caplog.at_level(logging.INFO, logger="workflow_lib.data.manifest"):
        songs, rejected = build_manifest([("music", root)], min_duration_s=3.0, silence_dbfs=-60)
    assert list(songs.rel_path) == ["song.flac"] and len(rejected) == WARN_REJECTED + 4
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == WARN_REJECTED + 1 and warned[-1].startswith("... and 4 more audio files rejected")
    assert sum("too short" in r.getMessage() for r in caplog.records) == WARN_REJECTED + 4  # every one in the log


def test_a_file_gone_between_the_listing_and_its_check_is_rejected_not_a_crash(music_dir, monkeypatch):
    from workflow_lib.data import manifest

    real = manifest.walk_files

    def listing_then_gone(root, skip=()):  # as a sync client or a network share can do
        files, problems = real(root, skip)
        return files + [root / "gone.mp3"], problems

    monkeypatch.setattr(manifest, "walk_files", listing_then_gone)
    songs, rejected = build_manifest([("music", music_dir)], min_duration_s=3.0, silence_dbfs=-60)
    assert sorted(songs.rel_path) == ["album/a.flac", "b.wav"]
    assert dict(zip(rejected.path, rejected.reason))[str(music_dir / "gone.mp3")] == \
        "unreadable: No such file or directory"


def test_write_manifest_refuses_an_empty_collection(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ValueError, match="no usable songs"):
        write_manifest([str(tmp_path / "m")], [], tmp_path / "s.parquet", tmp_path / "r.parquet", 3.0, -60)
    assert not (tmp_path / "s.parquet").exists()


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_manifest([("music", tmp_path / "nowhere")])


def test_a_music_folder_whose_name_is_not_utf8_is_named_with_what_to_do(tmp_path):
    import os

    folder = tmp_path / os.fsdecode(b"Bj\xf6rk")
    folder.mkdir()
    with pytest.raises(ValueError, match=r"music folder .*Bj\\xf6rk: its name is not valid UTF-8 .*convmv"):
        build_manifest([("music", folder)])


def _songs(n, start=0, collection="music"):
    ids = [song_id_for(collection, f"song{i}.mp3") for i in range(start, start + n)]
    return pd.DataFrame({"song_id": ids, "collection": collection})


FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.15, "distractor": 0.05}


def test_splits_are_disjoint_complete_and_near_the_fractions():
    songs = _songs(4000)
    s = assign_splits(songs, FRACTIONS, seed=0)
    assert s.song_id.is_unique and len(s) == 4000 and set(s.split) <= set(SPLITS)
    share = s.split.value_counts(normalize=True)
    for name, frac in FRACTIONS.items():
        assert abs(share[name] - frac) < 0.03


def test_splits_are_deterministic_and_seeded():
    songs = _songs(500)
    a, b = assign_splits(songs, FRACTIONS, 0), assign_splits(songs, FRACTIONS, 0)
    assert a.equals(b)
    assert (assign_splits(songs, FRACTIONS, 1).split != a.split).mean() > 0.2


def test_adding_songs_never_moves_existing_ones():
    before = assign_splits(_songs(300), FRACTIONS, 7)
    after = assign_splits(pd.concat([_songs(300), _songs(50, start=300)]), FRACTIONS, 7)
    merged = before.merge(after, on="song_id", suffixes=("_before", "_after"))
    assert len(merged) == 300 and (merged.split_before == merged.split_after).all()


def test_distractor_collection_goes_to_distractor_only():
    songs = pd.concat([_songs(20), _songs(10, collection="distractor")])
    s = assign_splits(songs, {"train": 1.0, "val": 0.0, "test": 0.0, "distractor": 0.0}, 0)
    assert (s.split.to_numpy() == ["train"] * 20 + ["distractor"] * 10).all()


def test_unknown_music_is_only_ever_searched_as_unknown():
    """data.unknown_dirs (nafp index --unknown-music): a split of its own, never in the database (every split of
    extract.splits) nor trained on, but in the no-match calibration's pool of unknown songs."""
    songs = pd.concat([_songs(20), _songs(6, collection="unknown")]).assign(path="x", duration_s=60.0)
    s = assign_splits(songs, {"train": 0.5, "val": 0.0, "test": 0.5, "distractor": 0.0}, 0)
    unknown_ids = set(songs.song_id[songs.collection == "unknown"])
    assert set(s.split[s.song_id.isin(unknown_ids)]) == {"unknown"}
    assert not unknown_ids & set(select_database_songs(songs, s, list(SPLITS)).song_id)
    pool = set(unknown_songs(songs, s, 0, "all").song_id)
    assert unknown_ids <= pool and not pool & set(s.song_id[s.split == "train"])
    halves = [set(unknown_songs(songs, s, 0, role).song_id) for role in ("calibration", "evaluation")]
    assert halves[0] | halves[1] == pool and not halves[0] & halves[1]


def test_a_folder_of_unknown_music_alone_is_not_a_collection(tmp_path, music_dir):
    (tmp_path / "m").mkdir()
    with pytest.raises(ValueError, match="no usable songs"):
        write_manifest([str(tmp_path / "m")], [], tmp_path / "s.parquet", tmp_path / "r.parquet", 3.0, -60,
                       unknown_dirs=[str(music_dir)])
    assert not (tmp_path / "s.parquet").exists()
    sf.write(str(tmp_path / "m" / "c.flac"), tone_mix(6.0, 8000, seed=3), 8000)
    songs = write_manifest([str(tmp_path / "m")], [], tmp_path / "s.parquet", tmp_path / "r.parquet", 3.0, -60,
                           unknown_dirs=[str(music_dir)])
    assert sorted(zip(songs.collection, songs.rel_path)) == [("music", "c.flac"), ("unknown", "album/a.flac"),
                                                             ("unknown", "b.wav")]


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(_songs(3), {"train": 0.5, "val": 0.2, "test": 0.2, "distractor": 0.0}, 0)


def test_empty_required_split_is_a_clear_error(tmp_path):
    _songs(2).to_parquet(tmp_path / "songs.parquet")
    with pytest.raises(ValueError, match="split '.*' is empty"):
        write_splits(tmp_path / "songs.parquet", tmp_path / "splits.parquet",
                     {"train": 0.98, "val": 0.01, "test": 0.01, "distractor": 0.0}, 0)
