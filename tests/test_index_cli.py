"""`nafp index` with the bundled model (issue 13): a folder of generated songs becomes searchable without the train
rule, every song is in the index, the no-match threshold is calibrated from songs that are all in the database
(leave-one-song-out), and an excerpt of each song is identified by `nafp query`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_lib import SAMPLE_RATE
from workflow_lib.database.other_music import is_other_music
from workflow_lib.audio.files import load_audio, write_audio
from workflow_lib.common.layout import BUNDLED_MODEL, null_bank_path
from workflow_lib.data.demo_corpus import generate_demo_corpus
from workflow_lib.evaluation.null_bank import NullBank

N_SONGS = 7  # six generated songs and an album kept as one file with a cue sheet
ALBUM_SHEET = """PERFORMER "The Band"
TITLE "Live"
FILE "The Band - Live.wav" WAVE
  TRACK 01 AUDIO
    TITLE "Opening"
    INDEX 01 00:00:00
  TRACK 02 AUDIO
    TITLE "Café au lait"
    PERFORMER "Guest Singer"
    INDEX 01 00:20:00
  TRACK 03 AUDIO
    TITLE "Encore"
    INDEX 01 00:40:00
"""


def write_album(src: Path, music: Path) -> Path:
    """Three generated 20 s songs as one FLAC image with its cue sheet (as a ripper leaves them)."""
    generate_demo_corpus(src, 3, 20.0, seed=21)
    tracks = [load_audio(p) for p in sorted((src / "music").glob("demo-*.flac"))]
    image = music / "The Band - Live.flac"
    write_audio(image, np.concatenate(tracks), tags={"title": "Live", "artist": "The Band"})
    (music / "The Band - Live.cue").write_bytes(ALBUM_SHEET.encode("cp1252"))
    return image


def nafp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflow_lib.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def index_options(root: Path) -> list[str]:
    """The options of the module's `nafp index` runs, every time the same (as a user reruns the command)."""
    return ["--results", str(root / "db"), "--cores", "2", "--queries-per-length", "20",
            "--unknown-music", str(root / "other" / "music")]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    generate_demo_corpus(root / "corpus", N_SONGS - 1, 30.0, seed=11)
    music = root / "corpus" / "music"
    write_album(root / "album", music)
    # Two files a real collection has: a copy of a song under another name, and a damaged file.
    first = sorted(music.glob("demo-*.flac"))[0]
    (music / "copies").mkdir()
    (music / "copies" / f"copy of {first.name}").write_bytes(first.read_bytes())
    (music / "damaged.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(3000))
    (music / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(300))  # an album folder's picture
    # Other music that stands for songs the database does not hold: calibrated on, never indexed.
    generate_demo_corpus(root / "other", 3, 30.0, seed=12)
    r = nafp("index", str(root / "corpus" / "music"), *index_options(root), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, r


def test_every_song_is_indexed_with_the_bundled_model_and_nothing_is_trained(indexed):
    root, r = indexed
    db = root / "db"
    info = json.loads((db / "index" / "index.json").read_text())
    # the songs, and beside them the other music shipped with the model (``database.other_music``), never listed
    shipped = len(NullBank.load(null_bank_path(BUNDLED_MODEL)).meta["songs"])
    assert info["n_songs"] == N_SONGS + shipped and info["other_music_songs"] == shipped
    assert not (db / "model").exists()  # the train rule never ran: the bundled model was used as it is
    assert f"{N_SONGS} songs are searchable" in r.stdout and "nafp query" in r.stdout
    # The files left out are named after the stages' logs, with their reasons, where a user reads the outcome.
    left_out = r.stdout.split("not indexed", 1)[1]
    assert "2 files were not indexed" in r.stdout and "damaged.m4a: unreadable" in left_out
    assert "copy of" in left_out and "copy: the same bytes as" in left_out
    assert "Also 1 file is not audio (.jpg 1)." in left_out and "cover.jpg" not in left_out  # counted, not listed
    # Snakemake's own noise stays out of a user's terminal: no banner, no warning per "./"-prefixed file
    assert "starts with './'" not in r.stderr and "Snakemake version" not in r.stderr
    assert "Select jobs to execute" not in r.stderr and "Building DAG" not in r.stderr  # its bookkeeping lines
    # Captured, not on a terminal: progress would be a line every 30 s (common.progress), never a bar's in-place
    # updates piled up on one line; these stages are shorter, so they wrote none.
    assert "\r" not in r.stderr and "%|" not in r.stderr
    # ... nor each stage's accounting: INFO lines go to the stages' log files, warnings to the terminal too
    assert " INFO " not in r.stderr and " INFO " in (db / "logs" / "manifest.log").read_text()
    assert "WARNING workflow_lib.data.manifest: rejected" in r.stderr and "damaged.m4a" in r.stderr
    # ... but not the cover art: a line each in the manifest's log, counted in the summary (the album's picture)
    assert "cover.jpg" not in r.stderr and "cover.jpg: not an audio file" in (db / "logs" / "manifest.log").read_text()
    threshold = json.loads((db / "index" / "threshold.json").read_text())
    # Calibrated leave-one-song-out on every database song (no evaluation keeps half of them), on the unknown
    # music, which is not in the database, and on the other music shipped with the model (none of it in the
    # database); so the music is enough, and no warning says it is too little.
    bundled = NullBank.load(null_bank_path(BUNDLED_MODEL)).meta["songs"]
    assert threshold["lengths"] and threshold["meta"]["database_songs"] == N_SONGS
    assert threshold["meta"]["bundled_other_music"]["songs"] == len(bundled) >= 20
    assert threshold["meta"]["bundled_other_music"]["held_by_database"] == []
    assert threshold["meta"]["n_songs"] == N_SONGS + 3 + len(bundled) and threshold["meta"]["unknown_songs"] == "all"
    assert "unknown music: " in r.stderr and "the no-match rule is calibrated on" not in r.stderr
    from workflow_lib.cli.index import (BUNDLED_LISTEN_PERSISTENT_HOPS, BUNDLED_SCAN_MAX_FPR, FOLLOW_ISLAND_S,
                                        REDECLARE_S)
    from workflow_lib.common.config import run_config
    # the bundled model's own operating point for `nafp scan` / `listen`, recorded with the folder's settings
    listen = run_config(db)[0]["listen"]
    assert listen["persistent_hops"] == BUNDLED_LISTEN_PERSISTENT_HOPS
    # the scan decides at its own, stricter per-window rate; the microphone at the default
    assert listen["scan_max_fpr"] == BUNDLED_SCAN_MAX_FPR and listen["max_fpr"] == 0.005
    assert listen["follow_island_s"] == FOLLOW_ISLAND_S and listen["redeclare_s"] == REDECLARE_S


def test_an_excerpt_of_every_song_is_named(indexed, tmp_path):
    root, _ = indexed
    songs = pd.read_parquet(root / "db" / "manifest" / "songs.parquet").query("collection == 'music'")
    clips = []
    for i, row in enumerate(songs.itertuples()):
        audio = load_audio(row.path)
        start = int((5 + 2 * i) * SAMPLE_RATE)
        clip = tmp_path / f"clip{i}.wav"
        write_audio(clip, audio[start:start + 5 * SAMPLE_RATE])
        clips.append((clip, row.song_id))
    r = nafp("query", *[str(c) for c, _ in clips], "--results", str(root / "db"), "--json", cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["best_guess"]["song_id"] for row in rows] == [sid for _, sid in clips]
    assert np.mean([row["match"] for row in rows]) >= 0.8


def test_an_album_kept_as_one_file_is_answered_by_its_tracks(indexed, tmp_path):
    """A cue sheet beside the image names the track playing: `nafp query` gives the track and where in it the clip
    starts, and `nafp scan` of the album playing on lists each track."""
    root, _ = indexed
    db = str(root / "db")
    audio = load_audio(root / "corpus" / "music" / "The Band - Live.flac")
    clip = tmp_path / "clip.wav"
    write_audio(clip, audio[25 * SAMPLE_RATE:33 * SAMPLE_RATE])  # 5 s into the second track
    r = nafp("query", str(clip), "--results", db, "--json", cwd=root)
    row = json.loads(r.stdout)
    assert row["match"] and (row["track"], row["title"], row["artist"], row["album"]) == (
        2, "Café au lait", "Guest Singer", "Live")
    assert row["track_start_s"] == 20.0 and abs(row["offset_s"] - 25.0) < 1.0
    r = nafp("query", str(clip), "--results", db, cwd=root)
    assert "Guest Singer - Café au lait (track 2 of Live)" in r.stdout
    assert re.search(r" 0:0[456]\.\d ", r.stdout)  # the offset column: into the track, not into the file
    recording = tmp_path / "recording.wav"
    write_audio(recording, audio[5 * SAMPLE_RATE:35 * SAMPLE_RATE])  # 15 s of the first track, 15 s of the second
    r = nafp("scan", str(recording), "--results", db, "--json", cwd=root)
    songs = [x for x in map(json.loads, r.stdout.splitlines()) if x["kind"] == "song"]
    assert [(x["track"], x["title"], x["artist"]) for x in songs] == [(1, "Opening", "The Band"),
                                                                       (2, "Café au lait", "Guest Singer")]
    assert abs(songs[1]["start_s"] - 15.0) < 1.0 and songs[0]["end_s"] == songs[1]["start_s"]
    r = nafp("db", "list", "--results", db, cwd=root)
    assert re.search(r"The Band +Live \[3 tracks\]", r.stdout)


def test_the_python_interface_opens_what_nafp_index_made(indexed):
    """``api.Database`` on an `nafp index` folder with the bundled model: the album's track, as `nafp query` names
    it."""
    from workflow_lib.api import Database

    root, _ = indexed
    audio = load_audio(root / "corpus" / "music" / "The Band - Live.flac")
    db = Database.open(root / "db")
    answer = db.query(audio[25 * SAMPLE_RATE:33 * SAMPLE_RATE], sample_rate=SAMPLE_RATE)
    assert answer["match"] and (answer["track"], answer["title"], answer["album"]) == (2, "Café au lait", "Live")
    assert len(db.songs) == N_SONGS and db.songs.loc[answer["song_id"], "tracks"] == 3
    # with the bundled other music, enough music to calibrate on: `nafp db info` has nothing to warn of, and says
    # what it was calibrated on
    shipped = len(NullBank.load(null_bank_path(BUNDLED_MODEL)).meta["songs"])
    assert db.info["little_music"] is None
    assert db.info["calibrated_on"]["songs"] == N_SONGS + 3 + shipped
    assert db.info["calibrated_on"]["shipped_songs"] == shipped
    r = nafp("db", "info", "--results", str(root / "db"), cwd=root)
    assert re.search(rf"^songs +{N_SONGS} ", r.stdout, re.M) and re.search(
        rf"^other music +{shipped} songs shipped with the model, indexed beside yours", r.stdout, re.M), r.stdout
    assert r.returncode == 0 and re.search(rf"^no-match rule +calibrated on {N_SONGS + 3 + shipped} songs \(\d+ min "
                                           rf"of music, {shipped} of them shipped with the model\); still fits",
                                           r.stdout, re.M), r.stdout


def test_a_rerun_after_retagging_reuses_the_calibration(indexed):
    """Tags edited and files touched: the index is rebuilt from the same vectors, and the threshold that nothing
    changed is taken from the last calibration instead of 4,000 queries again (``evaluation.calibration_cache``)."""
    import mutagen

    root, _ = indexed
    db, music = root / "db", root / "corpus" / "music"
    threshold = (db / "index" / "threshold.json").read_bytes()
    # not the first song: its copy would no longer be the same bytes, and become a song of its own
    retagged, touched = sorted(music.glob("demo-*.flac"))[1:3]
    tags = mutagen.File(retagged, easy=True)
    tags["title"] = "Retitled by a tag editor"
    tags.save()
    touched.touch()
    r = nafp("index", str(music), *index_options(root), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    catalogue = pd.read_parquet(db / "catalogue.parquet")
    assert "Retitled by a tag editor" in set(catalogue["title"])  # the rerun did take the new tags
    assert "its threshold is reused" in (db / "logs" / "calibrate.log").read_text()
    assert (db / "index" / "threshold.json").read_bytes() == threshold


def test_a_catalogue_written_before_an_upgrade_is_written_again(indexed):
    """A catalogue from a version without album tracks, in a folder where nothing changed since (an image whose
    sheet is only in its tags changes no listing), gains its tracks at the next `nafp index`: the rule lists the
    catalogue's format as a param, which Snakemake records with the output."""
    import base64

    root, _ = indexed
    db, music = root / "db", root / "corpus" / "music"
    catalogue = db / "catalogue.parquet"
    # as the older version left it: no tracks column, and the rule's record without params
    pd.read_parquet(catalogue).drop(columns="tracks").to_parquet(catalogue)
    records = [p for p in (db / ".snakemake" / "metadata").iterdir()
               if base64.urlsafe_b64decode(p.name).decode().endswith("catalogue.parquet")]
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["params"]  # the format, recorded by this version
    records[0].write_text(json.dumps({**record, "params": []}))
    r = nafp("index", str(music), *index_options(root), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    table = pd.read_parquet(catalogue).set_index("title")
    assert len(json.loads(table.loc["Live", "tracks"])) == 3
    assert "its threshold is reused" in (db / "logs" / "calibrate.log").read_text()


def test_a_threshold_calibrated_by_older_code_is_calibrated_again(indexed):
    """The threshold depends on how the search ranks candidates, which lives in the package, not in the rule's
    script: the rule lists a digest of the package's sources as a param (``common.source_digest``), so a folder
    calibrated by older code is calibrated again by the next `nafp index` instead of keeping a stale threshold."""
    import base64

    from workflow_lib.common.source_digest import code_digest

    root, _ = indexed
    db, music = root / "db", root / "corpus" / "music"
    records = [p for p in (db / ".snakemake" / "metadata").iterdir()
               if base64.urlsafe_b64decode(p.name).decode().endswith("threshold.json")]
    assert len(records) == 1
    digest = repr(code_digest())
    record = json.loads(records[0].read_text())
    assert digest in record["params"]
    # as older code left it: another digest
    records[0].write_text(json.dumps({**record, "params": [p.replace(digest, repr("0" * 64))
                                                           for p in record["params"]]}))
    r = nafp("index", str(music), *index_options(root), "--dry-run", cwd=root)
    assert r.returncode == 0 and re.search(r"^calibrate +1$", r.stdout + r.stderr, re.M), r.stdout + r.stderr
    r = nafp("index", str(music), *index_options(root), cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert digest in json.loads(records[0].read_text())["params"]
    r = nafp("index", str(music), *index_options(root), "--dry-run", cwd=root)
    assert r.returncode == 0 and not re.search(r"^calibrate ", r.stdout + r.stderr, re.M), r.stdout + r.stderr


def test_a_misspelt_setting_is_named_before_any_stage_runs(tmp_path):
    """A config error is not something the same command resumes from: it is named at once and nothing is made."""
    generate_demo_corpus(tmp_path / "corpus", 1, 5.0, seed=3)
    (tmp_path / "mine.yaml").write_text("search:\n  calibratoin:\n    queries_per_length: 50\n")
    r = nafp("index", str(tmp_path / "corpus" / "music"), "--results", str(tmp_path / "db"), "--config",
             str(tmp_path / "mine.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "key search: Additional properties" in r.stderr and "'calibratoin'" in r.stderr
    assert "resume" not in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "db").exists()
    r = nafp("index", str(tmp_path / "corpus" / "music"), "--results", str(tmp_path / "db"), "--config",
             str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "config file not found" in r.stderr and not (tmp_path / "db").exists()


def test_a_second_run_into_a_folder_being_indexed_is_refused_before_it_touches_it(tmp_path):
    """Two `nafp index` into one folder: Snakemake's own refusal came after the second run had rewritten the folder's
    settings under the first's stages, advised a flag `nafp index` does not have (--unlock), and ended with "run the
    same command again to resume", which fails again while the first run lives."""
    import fcntl
    import os

    from workflow_lib.common.locks import RUN_LOCK

    generate_demo_corpus(tmp_path / "corpus", 1, 5.0, seed=3)
    (tmp_path / "db" / ".snakemake").mkdir(parents=True)
    settings = tmp_path / "db" / "index-config.yaml"
    settings.write_text("# the first run's\n")
    fd = os.open(tmp_path / "db" / ".snakemake" / RUN_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what the first run's Snakemake holds while it lives
    try:
        for extra in ([], ["--dry-run"]):
            r = nafp("index", str(tmp_path / "corpus" / "music"), "--results", str(tmp_path / "db"), *extra,
                     cwd=tmp_path)
            assert r.returncode == 2 and "another run is indexing into" in r.stderr, r.stderr[-2000:]
            assert "resume" not in r.stderr and "unlock" not in r.stderr
            assert settings.read_text() == "# the first run's\n"
    finally:
        os.close(fd)
    # The lock file of a run that has ended (nobody holds it) stops nothing.
    r = nafp("index", str(tmp_path / "corpus" / "music"), "--results", str(tmp_path / "db"), "--dry-run",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_config_file_is_merged_over_the_index_settings(tmp_path):
    """`--config` adds to the index settings (the collection, the bundled model, every song in the database): it
    does not replace them. Two --configfile options would have left Snakemake the last file alone, and the default
    demo corpus would have been generated and indexed in the folder."""
    generate_demo_corpus(tmp_path / "corpus", 2, 10.0, seed=3)
    (tmp_path / "mine.yaml").write_text("extract:\n  n_shards: 3\n")
    r = nafp("index", str(tmp_path / "corpus" / "music"), "--results", str(tmp_path / "db"), "--config",
             str(tmp_path / "mine.yaml"), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^extract +3$", r.stdout, re.M) and re.search(r"^manifest +1$", r.stdout, re.M)
    assert "demo_corpus" not in r.stdout and not re.search(r"^train\w* +\d+$", r.stdout, re.M)


def test_the_stages_run_through_a_profile_with_the_shards_asked_for(tmp_path):
    """`--profile` hands the stages to a Snakemake profile (profiles/slurm on a cluster: .ci/cluster_test.py runs it
    on a SLURM test cluster; here profiles/local), `--shards` sets the fingerprint jobs; an unknown profile is named
    before anything runs."""
    generate_demo_corpus(tmp_path / "corpus", 3, 10.0, seed=5)
    music, db = tmp_path / "corpus" / "music", tmp_path / "db"
    r = nafp("index", str(music), "--results", str(db), "--profile", "slurmm", cwd=tmp_path)
    assert r.returncode == 2 and "no such profile: slurmm" in r.stderr and "slurm" in r.stderr and not db.exists()
    # --dry-run: the jobs the SLURM profile would submit, with what each asks SLURM for; nothing made, nothing left
    r = nafp("index", str(music), "--results", str(db), "--profile", "slurm", "--shards", "8", "--dry-run",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^extract +8$", r.stdout, re.M) and "cpus_per_task=" in r.stdout and not db.exists()
    r = nafp("index", str(music), "--results", str(db), "--profile", "local", "--shards", "3", "--cores", "2",
             "--queries-per-length", "10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "through local" in r.stderr and "3 songs are searchable" in r.stdout
    # 10 s songs hold no 10 s query (with a speed change): none is cut from them, said so; the other music shipped
    # with the model calibrates that length
    assert "the longest song is 10.0 s, so no 10 s queries are cut from the songs" in r.stderr
    lengths = json.loads((db / "index" / "threshold.json").read_text())["lengths"]
    assert [x["n_segments"] for x in lengths] == [1, 5, 9, 19]
    assert sorted(p.name for p in (db / "fingerprints").glob("shard-*.parquet")) == [
        "shard-0.parquet", "shard-1.parquet", "shard-2.parquet"]


def test_a_folder_without_audio_is_named_before_any_stage_runs(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no music here")
    r = nafp("index", str(tmp_path / "notes"), "--results", str(tmp_path / "db"), cwd=tmp_path)
    assert r.returncode != 0 and f"no audio files under {tmp_path / 'notes'} (looked for .3gp, .aac" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "db").exists()


def test_a_results_path_that_is_a_file_is_named_before_any_stage_runs(tmp_path):
    generate_demo_corpus(tmp_path / "corpus", 2, 10.0, seed=5)
    (tmp_path / "db").write_text("not a folder")
    r = nafp("index", str(tmp_path / "corpus" / "music"), "--results", "db", cwd=tmp_path)
    assert r.returncode == 2 and "error: --results db: is a file, not a folder" in r.stderr
    assert "Traceback" not in r.stderr and (tmp_path / "db").read_text() == "not a folder"


def test_a_model_file_that_is_no_model_is_named_before_any_stage_runs(tmp_path):
    generate_demo_corpus(tmp_path / "corpus", 2, 10.0, seed=5)
    (tmp_path / "notes.pt").write_text("not a model")
    r = nafp("index", str(tmp_path / "corpus" / "music"), "--results", "db", "--model", "notes.pt", cwd=tmp_path)
    assert r.returncode == 2 and "error: --model: " in r.stderr and "notes.pt: not a model file" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "db").exists()


def test_unknown_music_inside_a_music_folder_is_named_before_any_stage_runs(tmp_path):
    generate_demo_corpus(tmp_path / "corpus", 2, 10.0, seed=5)
    music = tmp_path / "corpus" / "music"
    r = nafp("index", str(music), "--results", str(tmp_path / "db"), "--unknown-music", str(music), cwd=tmp_path)
    assert r.returncode == 2 and "must lie apart from the music folders" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "db").exists()


def test_files_that_are_not_audio_are_counted_apart_from_the_audio_files_left_out(tmp_path):
    """Cover art and rip logs in every album folder would push the audio files that could not be used out of the
    summary: they are counted by extension; a folder, a broken link or a name not in UTF-8 stays listed."""
    import csv

    from workflow_lib.cli.index import rejected_summary

    (tmp_path / "locked").mkdir()
    for name in ("cover.jpg", "rip.log", "other.log"):
        (tmp_path / name).write_bytes(b"x")
    rows = [(tmp_path / "damaged.m4a", "unreadable: no audio stream"), (tmp_path / "cover.jpg", "not audio"),
            (tmp_path / "locked", "folder cannot be read"), (tmp_path / "rip.log", "not audio"),
            (f"{tmp_path}/Caf\\xe9.jpg", "file name is not valid UTF-8"), (tmp_path / "other.log", "not audio")]
    with open(tmp_path / "rejected.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "reason"), *rows])
    text = rejected_summary(tmp_path / "rejected.csv")
    assert text.startswith("3 files were not indexed") and "damaged.m4a" in text and "locked" in text
    assert "Caf\\xe9.jpg" in text and "Also 3 files are not audio (.log 2, .jpg 1)." in text
    for name in ("cover.jpg", "rip.log", "other.log"):
        assert f"{name}:" not in text
    with open(tmp_path / "only.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "reason"), rows[1]])
    alone = rejected_summary(tmp_path / "only.csv")
    assert alone == f"1 file is not audio (.jpg 1); {tmp_path / 'only.csv'} lists them."


def test_the_next_commands_quote_a_folder_with_spaces_for_the_shell():
    import shlex

    from workflow_lib.cli.index import next_steps

    lines = next_steps(Path("/data/my db's")).splitlines()
    assert len(lines) == 4
    for line in lines:
        words = shlex.split(line.split("   ")[0])  # the command, without its description
        assert words[0] == "nafp" and words[words.index("--results") + 1] == "/data/my db's"
    assert "--results /plain/db " in next_steps(Path("/plain/db"))  # quotes only where needed


def test_the_bundled_model_file_matches_its_recorded_checksum():
    import hashlib

    recorded = (BUNDLED_MODEL.parent / (BUNDLED_MODEL.name + ".sha256")).read_text().split()[0]
    assert hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest() == recorded


@pytest.mark.parametrize("name", ["bundled", "bundled-pair"])
def test_each_bundled_model_ships_other_music_made_for_it(name):
    """The bank beside each bundled model was made with that very file and today's whitened view: a model retrained
    without a new bank would calibrate without it (logged), and this fails first."""
    from workflow_lib.common.atomic import file_digest
    from workflow_lib.common.config import load_config
    from workflow_lib.common.layout import BUNDLED_MODELS
    from workflow_lib.search.whiten import WhitenedView

    model = BUNDLED_MODELS[name]
    bank = NullBank.load(null_bank_path(model))
    assert bank.meta["model_checksum"] == file_digest(model)
    assert bank.meta["whitened_view"] == WhitenedView.from_config(load_config()[0]["search"]["whitened_view"]).to_dict()
    assert len(bank.meta["songs"]) >= 20 and sum(s["duration_s"] for s in bank.meta["songs"]) >= 45 * 60
    assert sorted(set(bank.queries["n_nominal"])) == [8000, 24000, 40000, 80000]
    # and the bank's songs themselves, to index beside a collection (``database.other_music``), made with the model
    from workflow_lib.common.layout import other_music_path
    from workflow_lib.database.fingerprint_file import read_fingerprints
    from workflow_lib.database.other_music import other_music_id

    meta, rows, _ = read_fingerprints(other_music_path(model))
    assert meta.model_checksum == file_digest(model) and not meta.skipped
    assert list(rows["song_id"].unique()) == [other_music_id(s["title"]) for s in bank.meta["songs"]]
    seconds = rows.groupby("song_id", sort=False).size() * 0.5 + 0.5
    assert np.allclose(seconds, [s["duration_s"] for s in bank.meta["songs"]], atol=1.0)


def test_the_bundled_pair_indexes_and_names_every_song(tmp_path):
    """`--model bundled-pair`: both bundled networks searched as one, through the same DAG and `nafp query`."""
    generate_demo_corpus(tmp_path / "corpus", 4, 20.0, seed=12)
    # without the other music shipped with it (`--config`), four songs are too little to calibrate on: said so
    (tmp_path / "no-shipped-music.yaml").write_text("index: {other_music: false}\n"
                                                    "search: {calibration: {bundled_other_music: false}}\n")
    r = nafp("index", str(tmp_path / "corpus" / "music"), "--results", str(tmp_path / "db"), "--cores", "2",
             "--queries-per-length", "10", "--model", "bundled-pair", "--config",
             str(tmp_path / "no-shipped-music.yaml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path / "db" / "index" / "index.json").read_text())
    assert info["dim"] == 256 and info["frontend"]["weights"] == [0.5, 0.5]
    from workflow_lib.cli.index import FOLLOW_ISLAND_S, PAIR_LISTEN_MAX_FPR, PAIR_LISTEN_PERSISTENT_HOPS, REDECLARE_S
    from workflow_lib.common.config import run_config
    # the pair's own operating point for `nafp scan` / `listen`, recorded with the folder's settings
    listen = run_config(tmp_path / "db")[0]["listen"]
    assert listen["max_fpr"] == PAIR_LISTEN_MAX_FPR and listen["persistent_hops"] == PAIR_LISTEN_PERSISTENT_HOPS
    assert listen["follow_island_s"] == FOLLOW_ISLAND_S and listen["redeclare_s"] == REDECLARE_S
    assert "the no-match rule is calibrated on 4 song(s)" in r.stderr and "--unknown-music" in r.stderr
    assert json.loads((tmp_path / "db" / "index" / "threshold.json").read_text())["meta"]["bundled_other_music"] is None
    songs = pd.read_parquet(tmp_path / "db" / "manifest" / "songs.parquet")
    clips = []
    for i, row in enumerate(songs.itertuples()):
        clip = tmp_path / f"clip{i}.wav"
        write_audio(clip, load_audio(row.path)[int((3 + 2 * i) * SAMPLE_RATE):int((8 + 2 * i) * SAMPLE_RATE)])
        clips.append((clip, row.song_id))
    q = nafp("query", *[str(c) for c, _ in clips], "--results", str(tmp_path / "db"), "--json", cwd=tmp_path)
    assert q.returncode == 0, q.stderr[-2000:]
    assert [json.loads(line)["best_guess"]["song_id"] for line in q.stdout.splitlines()] == [s for _, s in clips]


def test_indexing_the_folder_again_follows_its_files(tmp_path):
    """`nafp index` again on the same folder: nothing to do while it is unchanged; a file added, deleted or
    replaced since is indexed, dropped or fingerprinted again, the unchanged songs' fingerprints reused; a file added
    with `nafp db add` and also put in the folder is one song."""
    generate_demo_corpus(tmp_path / "a", 4, 20.0, seed=13)
    generate_demo_corpus(tmp_path / "b", 4, 20.0, seed=14)
    music, spare = tmp_path / "a" / "music", sorted((tmp_path / "b" / "music").glob("*.flac"))
    db = tmp_path / "db"

    def index() -> subprocess.CompletedProcess:
        r = nafp("index", str(music), "--results", str(db), "--cores", "2", "--queries-per-length", "10",
                 cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    def indexed_files() -> list[str]:
        """The file of each song of the index (a file twice: two songs)."""
        cat = pd.read_parquet(db / "catalogue.parquet").set_index("song_id")
        ids = pd.read_parquet(db / "index" / "index_meta.parquet")["song_id"].astype(str).unique()
        return sorted(Path(cat.loc[sid, "path"]).name for sid in ids if not is_other_music(sid))

    index()
    files = sorted(music.glob("*.flac"))
    assert indexed_files() == [p.name for p in files]
    again = index()
    assert "Nothing to be done" in again.stderr and "since the last run" not in again.stdout
    files[0].unlink()
    (music / "new.flac").write_bytes(spare[0].read_bytes())
    files[1].write_bytes(spare[1].read_bytes())  # the same name, other music
    # ... and one put in the folder and added with `nafp db add` at once: one song, not two, once indexed
    (music / "added.flac").write_bytes(spare[2].read_bytes())
    r = nafp("db", "add", str(music / "added.flac"), "--results", str(db), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = index()
    assert indexed_files() == sorted(["new.flac", "added.flac", *(p.name for p in files[1:])])
    # one deleted, one new, and the added file now the folder's song (its `db add` id gone): told in one line
    assert "5 songs are searchable" in r.stdout and "(2 added, 2 removed since the last run)" in r.stdout
    # Only the three files that are new to it were fingerprinted (each shard's log is of its last run).
    logs = "".join(p.read_text() for p in (db / "logs" / "extract").glob("*.log"))
    assert sum(map(int, re.findall(r"reused from earlier runs, (\d+) to extract", logs))) == 3
    # The next add does not take the file of the add the folder superseded for one that a kill left behind.
    r = nafp("db", "add", str(spare[3]), "--results", str(db), cwd=tmp_path)
    assert r.returncode == 0 and "killed" not in r.stderr, r.stderr[-2000:]


def test_a_run_stopped_on_a_nearly_full_disk_says_so(tmp_path, monkeypatch, capsys):
    """Not every writer says that the disk is full (numpy's "N requested and M written", FAISS's own errors, a map's
    SIGBUS): a run that stops while the results folder's disk has little room left names the disk."""
    import shutil
    from collections import namedtuple

    from workflow_lib.cli import chatter
    from workflow_lib.cli.main import main

    generate_demo_corpus(tmp_path / "corpus", 1, 5.0, seed=3)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(chatter, "run_without_chatter", lambda *a, **k: 1)  # the stage that met the full disk
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 3 * 1024 ** 2, 3 * 1024 ** 2))
    assert main(["index", str(tmp_path / "corpus" / "music"), "--results", str(tmp_path / "db")]) == 2
    err = capsys.readouterr().err
    assert f"the disk of {tmp_path / 'db'} has 3 MB free, which is likely why. Free some space" in err
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 12, 10 ** 9, 10 ** 11))
    assert main(["index", str(tmp_path / "corpus" / "music"), "--results", str(tmp_path / "db")]) == 2
    assert "the messages above say why" in capsys.readouterr().err
