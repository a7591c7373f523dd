"""`nafp query` (and scripts/query.py) on a results folder built with the real extraction, index and catalogue
functions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from tests.search_helpers import SR, SpectralEncoder, synth_song
from workflow_lib.model import model_file as model_io
from workflow_lib.audio.files import write_audio
from workflow_lib.evaluation.calibration import collect_null_scores, fit_from_candidates
from workflow_lib.search.threshold import DEFAULT_STATISTIC as STATISTIC
from workflow_lib.database.catalogue import REQUIRED as COLUMNS  # a catalogue made before cue sheets
from workflow_lib.database.extract import extract_songs, fingerprinter_identity
from workflow_lib.model.features import FrontendConfig
from workflow_lib.evaluation.plan import Condition, QueryPlan
from workflow_lib.database.index import FingerprintDB
from workflow_lib.database.index_build import build_index
from workflow_lib.model.network import Fingerprinter, ModelConfig
from workflow_lib.search.searcher import Searcher

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "query.py"
TINY = ModelConfig(channels=[8, 8, 16, 16, 16, 16, 32, 32], dim=16, head_hidden=8)
DIM = 16  # the test encoder's output size matches the tiny model's, so the real model can search the index


class _QueryCli:
    """``nafp query``, called in this process."""

    @staticmethod
    def main(argv):
        from workflow_lib.cli.main import main

        return main(["query", *argv])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder: model.pt (a real, untrained tiny model: it fixes the format and checksum), fingerprints
    of three songs made by the spectral test encoder, the FAISS index, the catalogue and a threshold file."""
    root = tmp_path_factory.mktemp("run")
    r = root / "results"
    torch.manual_seed(0)
    model_io.save_model(r / "model" / "model.pt", Fingerprinter(TINY).state_dict(), TINY, FrontendConfig(), {})
    checksum = model_io.model_checksum(r / "model" / "model.pt")
    songs = []
    for i, (title, artist) in enumerate([("Harbor Lights", "The Sine Waves"), ("Copper Engine", "Nyquist"),
                                         ("Quiet Garden", "Half Step")]):
        p = root / "music" / f"{i:02d} {artist} - {title}.flac"
        p.parent.mkdir(exist_ok=True)
        write_audio(p, synth_song(40 + i, 25.0))
        songs.append({"song_id": f"song{i}", "path": str(p), "title": title, "artist": artist})
    songs = pd.DataFrame(songs)
    enc = SpectralEncoder(dim=DIM)
    extract_songs(enc, fingerprinter_identity(enc, checksum), songs, r / "fingerprints" / "shard-0.parquet",
                  device="cpu")
    build_index([r / "fingerprints" / "shard-0.parquet"], r / "index")
    songs[COLUMNS].to_parquet(r / "catalogue.parquet", index=False)
    # The no-match threshold as the calibrate rule fits it: from queries of songs outside the database.
    null = []
    for i in range(3):
        p = root / "other" / f"n{i}.flac"
        p.parent.mkdir(exist_ok=True)
        write_audio(p, synth_song(700 + i, 20.0))
        null.append({"song_id": f"n{i}", "path": str(p), "duration_s": 20.0})
    searcher = Searcher(SpectralEncoder(dim=DIM), FingerprintDB.load(r / "index"), device="cpu")
    plan = QueryPlan(lengths_s=(1, 3, 10), conditions=(Condition("clean"),))
    scores = collect_null_scores(searcher, pd.DataFrame(null), None, None, plan, 30, 0.0, 0)
    fit_from_candidates(scores, STATISTIC, 0.02, {"model_checksum": checksum}).save(r / "index" / "threshold.json")
    return r


@pytest.fixture
def cli(monkeypatch):
    """The CLI module with the untrained model swapped for the spectral test encoder the database was made with."""
    monkeypatch.setattr(model_io, "load_fingerprinter", lambda path, device="cpu": SpectralEncoder(dim=DIM).to(device))
    return _QueryCli()


def _query_files(tmp_path: Path) -> dict[str, Path]:
    song1 = synth_song(41, 25.0)
    files = {}
    files["wav"] = tmp_path / "clip.wav"
    sf.write(files["wav"], song1[6 * SR:12 * SR], SR)  # song1 from 6.0 s
    files["mp3"] = tmp_path / "clip.mp3"  # 44.1 kHz stereo MP3 of song2 from 10.5 s
    import soxr
    hi = soxr.resample(synth_song(42, 25.0)[int(10.5 * SR):int(18.5 * SR)], SR, 44100)
    sf.write(files["mp3"], np.stack([hi, hi], 1), 44100, format="MP3")
    files["unknown"] = tmp_path / "unknown.ogg"
    sf.write(files["unknown"], synth_song(777, 10.0), SR, format="OGG")
    files["broken"] = tmp_path / "broken.flac"
    files["broken"].write_bytes(b"fLaC not really")
    return files


def test_json_output_names_song_offset_and_no_match(results, cli, tmp_path, capsys):
    f = _query_files(tmp_path)
    rc = cli.main([str(f["wav"]), str(f["mp3"]), str(f["unknown"]), str(f["broken"]), "--results", str(results),
                   "--json", "--device", "cpu"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 1  # one file could not be read; the others are still answered
    wav, mp3, unknown, broken = rows
    assert wav["match"] and wav["song_id"] == "song1" and wav["title"] == "Copper Engine"
    assert wav["artist"] == "Nyquist" and abs(wav["offset_s"] - 6.0) <= 0.25 and wav["confidence"] == 1.0
    assert wav["seconds"] > 0 and wav["query_s"] == pytest.approx(6.0, abs=0.01)
    assert mp3["match"] and mp3["song_id"] == "song2" and abs(mp3["offset_s"] - 10.5) <= 0.25
    assert not unknown["match"] and unknown["decision"] < unknown["threshold"]
    # a no-match row names no song: the best guess is apart, so `row["title"]` cannot mislead a script
    assert unknown["song_id"] is None and unknown["title"] is None and unknown["offset_s"] is None
    assert unknown["reason"] == "below threshold" and unknown["best_guess"]["song_id"].startswith("song")
    assert wav["best_guess"]["song_id"] == "song1" and wav["reason"] is None
    assert "broken.flac" in broken["error"]


def test_a_song_held_twice_lists_its_copy_under_the_answer(results, cli, tmp_path, capsys):
    """One recording indexed from two files (song1 re-encoded with a little hiss, added by `nafp db add`): the
    answer names one of them and lists the other as the same recording, at the same offset (``copies`` in the JSON,
    a line under the answer in the table), where it used to be left out of the candidates unseen; an answer
    whose song is held once lists none."""
    import shutil

    from workflow_lib.cli.main import main

    db = tmp_path / "db"
    shutil.copytree(results, db)
    again = tmp_path / "Copper Engine (remaster).flac"
    song1 = synth_song(41, 25.0)
    write_audio(again, song1 + 0.01 * np.random.default_rng(5).standard_normal(len(song1)).astype(np.float32))
    assert main(["db", "add", str(again), "--results", str(db), "--device", "cpu"]) == 0
    capsys.readouterr()
    f = _query_files(tmp_path)
    assert cli.main([str(f["wav"]), str(f["mp3"]), "--results", str(db), "--json", "--device", "cpu"]) == 0
    wav, mp3 = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert wav["match"] and len(wav["copies"]) == 1 and mp3["match"] and mp3["copies"] == []
    copy = wav["copies"][0]
    paths = {wav["song_path"], copy["song_path"]}
    assert str(again) in paths and any(p.endswith("Nyquist - Copper Engine.flac") for p in paths)
    assert abs(copy["offset_s"] - 6.0) <= 0.25 and copy["song_id"] != wav["song_id"]
    assert cli.main([str(f["wav"]), "--results", str(db), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and f"= {copy['song_id']}" in out[2] and "(the same recording)" in out[2]
    assert "0:06" in out[2]


def test_every_answer_names_the_file_of_its_song(results, cli, tmp_path, capsys):
    """query, scan and listen name the file the song was fingerprinted from (``song_path``, from the catalogue), as
    audfprint names its reference file; null where no song is named."""
    import csv
    import io

    from workflow_lib.cli.main import main

    catalogue = pd.read_parquet(results / "catalogue.parquet").set_index("song_id")["path"]
    f = _query_files(tmp_path)
    cli.main([str(f["wav"]), str(f["unknown"]), "--results", str(results), "--json", "--device", "cpu"])
    wav, unknown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert wav["song_path"] == catalogue["song1"] and wav["best_guess"]["song_path"] == catalogue["song1"]
    assert unknown["song_path"] is None
    assert unknown["best_guess"]["song_path"] == catalogue[unknown["best_guess"]["song_id"]]

    recording = tmp_path / "recording.wav"
    sf.write(recording, np.concatenate([synth_song(40, 25.0)[:12 * SR], synth_song(777, 8.0)]), SR)
    assert main(["scan", str(recording), "--results", str(results), "--csv", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["song_id"], r["song_path"]) for r in rows if r["kind"] == "song"] == [("song0", catalogue["song0"])]
    assert all(r["song_path"] == "" for r in rows if r["kind"] != "song")

    assert main(["listen", "--input", str(recording), "--fast", "--json", "--results", str(results)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    matched = [x for x in lines if x["type"] == "decision" and x["state"] == "match"]
    assert matched and all(x["song_path"] == catalogue[x["song_id"]] for x in matched)
    summary = next(x for x in lines if x["type"] == "summary")
    assert [(h["song_id"], h["song_path"]) for h in summary["heard"]] == [("song0", catalogue["song0"])]


def test_audio_piped_on_stdin_is_answered_like_a_file(results, cli, tmp_path, capsys, monkeypatch):
    """`ffmpeg ... -f wav - | nafp query -` (streamed) and `cat clip.mp3 | nafp query -` (told by its first bytes,
    then decoded as a file): the pipe is read to its end and answered. A damaged file names the pipe and the format
    it was taken for; what is not audio is an error row that says what to pipe. Before, only WAV was read."""
    import io
    import sys

    from workflow_lib.audio.piped import format_of

    f = _query_files(tmp_path)
    spool_dir = tmp_path / "spool"  # a temp folder of its own: tests beside this one may be piping too
    spool_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool_dir))

    def piped(data: bytes) -> tuple[int, dict]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        rc = cli.main(["-", "--results", str(results), "--json", "--device", "cpu"])
        return rc, json.loads(capsys.readouterr().out)

    rc, row = piped(f["wav"].read_bytes())
    assert rc == 0 and row["file"] == "stdin" and row["match"] and row["song_id"] == "song1"
    assert abs(row["offset_s"] - 6.0) <= 0.25
    mp3 = f["mp3"].read_bytes()
    assert format_of(mp3[:12]) == ".mp3" and format_of(f["unknown"].read_bytes()[:12]) == ".ogg"
    rc, row = piped(mp3)
    assert rc == 0 and row["song_id"] == "song2" and abs(row["offset_s"] - 10.5) <= 0.25
    rc, row = piped(f["broken"].read_bytes())
    assert rc == 1 and row["error"].startswith("stdin (flac): ")
    rc, row = piped(b"hello, these are notes")
    assert rc == 1 and "not audio that can be read from a pipe" in row["error"]
    assert "ffmpeg -i INPUT -f wav -" in row["error"]
    assert not list(spool_dir.glob("nafp-piped-*"))  # the spooled copies are gone
    assert cli.main(["-", "-", "--results", str(results)]) == 2 and "once" in capsys.readouterr().err


def _without_time(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "seconds"}


def test_the_python_interface_answers_what_the_command_prints(results, cli, tmp_path, capsys):
    """``api.Database``: a file gets the very object `nafp query --json` prints, and samples in memory (any rate,
    either channel layout, float or integer PCM) are answered as the file they came from."""
    from workflow_lib.api import Database

    f = _query_files(tmp_path)
    files = [f["wav"], f["mp3"], f["unknown"]]
    assert cli.main([*map(str, files), "--results", str(results), "--json", "--device", "cpu"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    db = Database.open(results, device="cpu")
    assert [_without_time(db.query(p)) for p in files] == [_without_time(r) for r in printed]
    samples, rate = sf.read(f["mp3"], dtype="float32")  # 44.1 kHz stereo, (n, 2)
    assert rate == 44100 and samples.shape[1] == 2
    pcm = np.round(np.clip(samples, -1, 1 - 2 ** -15) * 32768).astype(np.int16)
    for audio in (samples, samples.T, pcm):
        answer = db.query(audio, sample_rate=rate)
        assert answer["match"] and answer["song_id"] == "song2" and answer["file"] == "samples"
        assert abs(answer["offset_s"] - printed[1]["offset_s"]) <= 0.25
    assert db.query(samples, sample_rate=rate, name="take 2")["file"] == "take 2"
    assert db.songs.loc["song1", "title"] == "Copper Engine" and len(db.songs) == 3


def test_the_python_interface_says_what_is_wrong(results, cli, tmp_path):
    from workflow_lib.api import Database, SetupError
    from workflow_lib.audio.decoded import AudioDecodeError

    with pytest.raises(SetupError, match="results folder not found"):
        Database.open(tmp_path / "nowhere")
    with pytest.raises(SetupError, match="is not a results folder"):
        Database.open(tmp_path)
    db = Database.open(results, device="cpu")
    f = _query_files(tmp_path)
    with pytest.raises(ValueError, match="need their sample_rate"):
        db.query(np.zeros(SR, np.float32))
    with pytest.raises(ValueError, match="rate is read from the file"):
        db.query(f["wav"], sample_rate=SR)
    with pytest.raises(ValueError, match="shape"):
        db.query(np.zeros((2, 3, SR), np.float32), sample_rate=SR)
    with pytest.raises(ValueError, match="must be numbers"):
        db.query(np.array(["a", "b"]), sample_rate=SR)
    nan = synth_song(41, 5.0)
    nan[3 * SR] = np.nan
    with pytest.raises(AudioDecodeError, match="non-finite samples .* at 3.0 s"):
        db.query(nan, sample_rate=SR)
    with pytest.raises(AudioDecodeError, match="broken.flac"):
        db.query(f["broken"])


def test_the_python_interface_scans_as_the_command_does(results, cli, tmp_path, capsys):
    """``Database.scan`` of a file and of the same samples in memory: the rows `nafp scan --json` prints."""
    from workflow_lib.api import Database

    recording = tmp_path / "recording.wav"
    audio = np.concatenate([synth_song(40, 25.0)[:12 * SR], synth_song(777, 8.0), synth_song(42, 25.0)[:12 * SR]])
    sf.write(recording, audio, SR)
    from workflow_lib.cli.main import main

    assert main(["scan", str(recording), "--results", str(results), "--json", "--device", "cpu"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["song_id"] for r in printed if r["kind"] == "song"] == ["song0", "song2"]
    db = Database.open(results, device="cpu")
    assert db.scan(recording) == printed
    audio = sf.read(recording, dtype="float32")[0]  # as the file holds it: 16-bit
    assert db.scan(audio, sample_rate=SR, name=str(recording), threads=2) == printed
    with pytest.raises(ValueError, match="too short to scan"):
        db.scan(audio[:SR // 2], sample_rate=SR)


def test_the_python_interface_listens_as_the_command_does(results, cli, tmp_path, capsys):
    """``Database.listen``: blocks pushed as they come get the decisions `nafp listen --input FILE --fast --json`
    prints for the same audio, hop for hop, and ``finish`` its summary."""
    from workflow_lib.api import Database
    from workflow_lib.cli.main import main

    recording = tmp_path / "recording.wav"
    audio = np.concatenate([synth_song(777, 4.0), synth_song(41, 25.0)[5 * SR:17 * SR]])
    sf.write(recording, audio, SR)
    assert main(["listen", "--input", str(recording), "--fast", "--json", "--results", str(results)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    printed = [x for x in lines if x["type"] == "decision"]
    summary = next(x for x in lines if x["type"] == "summary")
    stream = Database.open(results, device="cpu").listen(sample_rate=SR, channels=2)
    audio = sf.read(recording, dtype="float32")[0]  # as the file holds it: 16-bit
    stereo = np.stack([audio, audio], axis=1)
    decided = []
    for at in range(0, len(stereo), 1234):  # blocks of any size
        decided += stream.push(stereo[at:at + 1234])
    ended = stream.finish()
    fields = ("stream_s", "state", "song_id", "song_path", "event", "song_pos_s", "confidence")
    assert [[d[k] for k in fields] for d in decided] == [[d[k] for k in fields] for d in printed]
    assert [h["song_id"] for h in ended["heard"]] == [h["song_id"] for h in summary["heard"]] == ["song1"]
    assert ended["heard"][0]["song_path"] == summary["heard"][0]["song_path"] is not None
    assert ended["stream_s"] == summary["stream_s"] and len(decided) == ended["decisions"]
    with pytest.raises(ValueError, match="finished"):
        stream.push(stereo[:SR])
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        Database.open(results, device="cpu").listen(SR, channels=2).push(audio)


def test_the_python_interface_adds_and_removes_songs_and_searches_them_at_once(results, cli, tmp_path, capsys):
    """``Database.add`` and ``remove`` are `nafp db add` and `remove`, and the open database follows them."""
    import shutil

    from workflow_lib.api import Database

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    new = tmp_path / "new" / "Late Arrival - Fourth Song.flac"
    new.parent.mkdir()
    write_audio(new, synth_song(43, 25.0))
    clip = synth_song(43, 25.0)[8 * SR:14 * SR]
    db = Database.open(copy, device="cpu")
    assert not db.query(clip, sample_rate=SR)["match"]
    write_audio(new.parent / "short.wav", synth_song(44, 1.0))
    with pytest.raises(FileNotFoundError, match="nowhere.flac"):
        db.add(new.parent, tmp_path / "nowhere.flac")
    added = db.add(new.parent, threads=2)
    assert len(added["added"]) == 1 and [s["path"] for s in added["skipped"]] == [str(new.parent / "short.wav")]
    answer = db.query(clip, sample_rate=SR)
    assert answer["match"] and answer["song_id"] == added["added"][0] and answer["title"] == "Fourth Song"
    assert abs(answer["offset_s"] - 8.0) <= 0.25 and len(db.songs) == 4
    from workflow_lib.cli.main import main

    assert main(["db", "info", "--json", "--results", str(copy)]) == 0
    assert json.loads(json.dumps(db.info)) == json.loads(capsys.readouterr().out)
    assert db.info["songs"] == 4 and db.info["added_files"] == 1 and db.info["calibrated"]
    assert torch.get_num_threads() == 1  # as the tests set it: the edit's own count was for the edit only
    assert db.remove(new, "no-such-song") == (added["added"], ["no-such-song"])
    assert not db.query(clip, sample_rate=SR)["match"] and len(db.songs) == 3


def test_table_output_and_vote_mode(results, cli, tmp_path, capsys):
    f = _query_files(tmp_path)
    rc = cli.main([str(f["wav"]), str(f["unknown"]), "--results", str(results), "--mode", "vote", "--top-k", "5",
                   "--device", "cpu"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].split() == ["file", "song", "artist", "-", "title", "offset", "confidence", "time"]
    assert "clip.wav" in out[1] and "Nyquist - Copper Engine" in out[1] and "0:06.0" in out[1]
    assert "unknown.ogg" in out[2] and "no match" in out[2] and "best guess" in out[2]


def test_candidates_list_the_best_songs_of_each_answer(results, cli, tmp_path, capsys):
    """``--candidates N``: the answer's N best candidate songs, best first (the best guess first of them), in the
    JSON and under each row of the table; none without it; the Python interface gives the same."""
    from workflow_lib.api import Database

    f = _query_files(tmp_path)
    files = [str(f["wav"]), str(f["unknown"])]
    assert cli.main([*files, "--results", str(results), "--json", "--device", "cpu", "--candidates", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for r in rows:
        ranked = r["candidates"]
        assert 1 <= len(ranked) <= 2 and ranked[0] == r["best_guess"]
        assert [c["score"] for c in ranked] == sorted((c["score"] for c in ranked), reverse=True)
        assert len({c["song_id"] for c in ranked}) == len(ranked) and all(c["song_path"] for c in ranked)
    assert rows[0]["candidates"][0]["song_id"] == "song1" and abs(rows[0]["candidates"][0]["offset_s"] - 6) <= 0.25
    db = Database.open(results, device="cpu")
    assert _without_time(db.query(f["wav"], candidates=2, name=files[0])) == _without_time(rows[0])
    assert db.query(f["wav"])["candidates"] is None

    assert cli.main([files[0], "--results", str(results), "--device", "cpu", "--candidates", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "1. song1" in out[2] and "Nyquist - Copper Engine (score" in out[2] and "0:06" in out[2]
    assert cli.main([files[0], "--results", str(results), "--candidates", "-1"]) == 2
    assert "--candidates" in capsys.readouterr().err


def test_a_silent_or_too_quiet_file_says_how_loud_it_was(results, cli, tmp_path, capsys):
    """"no match (silence)" for a capture too quiet to search names its loudest second and the gate, so it is told
    from an empty file (the JSON's level_dbfs: null for digital silence and for every other answer)."""
    song = synth_song(41, 25.0)[6 * SR:12 * SR]
    sf.write(tmp_path / "zeros.wav", np.zeros(3 * SR, np.float32), SR)
    sf.write(tmp_path / "far.wav", song * np.float32(10 ** (-75 / 20) / np.sqrt(np.mean(song ** 2))), SR,
             subtype="FLOAT")
    sf.write(tmp_path / "clip.wav", song, SR)
    files = [str(tmp_path / n) for n in ("zeros.wav", "far.wav", "clip.wav")]
    assert cli.main([*files, "--results", str(results), "--json", "--device", "cpu"]) == 0
    zeros, far, clip = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert zeros["reason"] == far["reason"] == "silence" and zeros["level_dbfs"] is None
    assert -80 < far["level_dbfs"] < -70 and clip["match"] and clip["level_dbfs"] is None
    assert cli.main([*files, "--results", str(results), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "no match (silence)" in out[1] and "(digital silence)" in out[1]
    assert f"(loudest second {far['level_dbfs']:.0f} dBFS, under the -65 dBFS gate)" in out[2]


def test_a_folder_is_every_audio_file_below_it(results, cli, tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    f = _query_files(tmp_path / "clips")
    (tmp_path / "clips" / "notes.txt").write_text("not audio")
    (tmp_path / "clips" / "again").mkdir()
    (tmp_path / "clips" / "again" / "clip.wav").write_bytes(f["wav"].read_bytes())
    (tmp_path / "empty").mkdir()
    rc = cli.main([str(tmp_path / "clips"), str(tmp_path / "empty"), "--results", str(results), "--device", "cpu"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1  # the damaged file, and the folder without audio
    assert len(out) == 1 + 5 + 1  # header, the five audio files (not the notes), the empty folder
    # two files named clip.wav: each is shown with its path
    assert sum("Copper Engine" in line and "clips/again/clip.wav" in line for line in out) == 1
    assert sum("Copper Engine" in line and f"{tmp_path / 'clips' / 'clip.wav'}" in line for line in out) == 1
    assert "a folder without audio files" in out[-1]


def test_what_hides_audio_below_a_folder_is_answered_as_an_error(results, cli, tmp_path, capsys, monkeypatch):
    real = os.scandir

    def scandir(path="."):  # as a folder without read permission answers (the tests run as root, who reads all)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    (tmp_path / "clips" / "locked").mkdir(parents=True)
    sf.write(tmp_path / "clips" / "clip.wav", synth_song(41, 25.0)[6 * SR:12 * SR], SR)
    (tmp_path / "clips" / "gone.mp3").symlink_to(tmp_path / "nowhere.mp3")
    (tmp_path / "clips" / "cover.jpg").symlink_to(tmp_path / "nowhere.jpg")  # not audio: nothing hidden
    monkeypatch.setattr(os, "scandir", scandir)
    rc = cli.main([str(tmp_path / "clips"), "--results", str(results), "--json", "--device", "cpu"])
    rows = {Path(r["file"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rc == 1 and set(rows) == {"clip.wav", "gone.mp3", "locked"}
    assert rows["clip.wav"]["song_id"] == "song1"
    assert rows["locked"]["error"] == f"{tmp_path / 'clips' / 'locked'}: folder cannot be read (Permission denied): " \
                                      "skipped"
    assert "broken symbolic link" in rows["gone.mp3"]["error"]


def test_missing_results_folder_is_a_clear_error(tmp_path):
    wav = tmp_path / "x.wav"
    sf.write(wav, synth_song(1, 2.0), SR)
    res = subprocess.run([sys.executable, str(SCRIPT), str(wav), "--results", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "nowhere" in res.stderr and "Traceback" not in res.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly(results):
    """`nafp db list | head -1`: once the reader has gone, no BrokenPipeError traceback. (`true` reads nothing and
    is gone before Python has started, so every write meets a closed pipe.)"""
    res = subprocess.run(f"{sys.executable} -m workflow_lib.cli.main db list --csv --results {results} | true",
                         shell=True, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0 and "Traceback" not in res.stderr and "Broken pipe" not in res.stderr, res.stderr


def _imports_torch(code: str) -> bool:
    """Whether running ``code`` in a fresh interpreter imports torch (printed by the code's last line)."""
    res = subprocess.run([sys.executable, "-c", code + "\nprint('torch' in sys.modules)"], capture_output=True,
                         text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1] == "True"


def test_help_version_and_the_database_listing_do_not_load_torch(results):
    """Importing torch takes seconds on a laptop: ``nafp --help``, ``--version``, every subcommand's help and the
    read-only ``db list`` / ``db info`` must answer without it (only embedding audio needs it)."""
    assert not _imports_torch("import sys\nfrom workflow_lib.cli.main import build_parser\nbuild_parser()")
    for action in ("list", "info"):
        code = (f"import sys\nfrom workflow_lib.cli.main import main\n"
                f"assert main(['db', '{action}', '--results', {str(results)!r}]) == 0")
        assert not _imports_torch(code), action


def test_script_runs_as_a_program_with_the_real_model(results, tmp_path):
    """The real script and the real (untrained) model file: it loads, refuses nothing, prints one JSON line."""
    wav = tmp_path / "x.wav"
    sf.write(wav, synth_song(41, 25.0)[SR:4 * SR], SR)
    res = subprocess.run([sys.executable, str(SCRIPT), str(wav), "--results", str(results), "--json",
                          "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)
    assert set(row) >= {"song_id", "title", "artist", "offset_s", "confidence", "match", "seconds"}
    # an untrained model: no claim about which song, nor whether the rule accepts it
    answer = row["song_id"] if row["match"] else row["best_guess"]["song_id"]
    assert answer in {"song0", "song1", "song2"}


def test_index_from_another_model_is_refused(results, cli, tmp_path, capsys):
    other = tmp_path / "results"
    import shutil
    shutil.copytree(results, other)
    torch.manual_seed(1)
    model_io.save_model(other / "model" / "model.pt", Fingerprinter(TINY).state_dict(), TINY, FrontendConfig(), {})
    wav = tmp_path / "x.wav"
    sf.write(wav, synth_song(1, 2.0), SR)
    rc = cli.main([str(wav), "--results", str(other), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "model" in err and "rebuild" in err
