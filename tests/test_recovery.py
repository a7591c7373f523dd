"""Nothing is lost and everything resumes after a kill (issue 15): SIGKILL of the whole Snakemake process group
during training, extraction and the index build, each followed by the plain same command; crash-safe database
edits; the commit journal of the index folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.db_helpers import save_tiny_model, write_songs
from tests.test_workflow_e2e import TINY

REPO = Path(__file__).resolve().parents[1]


def _start(work: Path) -> subprocess.Popen:
    """The README's command, in its own process group (so the kill takes Snakemake and every job it started)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "tiny.yaml"), "--cores", "2", "all"]
    log = open(work / f"run-{time.time_ns()}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _kill_when(proc: subprocess.Popen, ready, timeout_s: float = 300.0) -> bool:
    """SIGKILL the process group once ``ready()`` holds; False if the run finished (or timed out) first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            return False
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return False


@pytest.mark.e2e
def test_kill_of_the_whole_snakemake_run_resumes_with_the_same_command(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    cfg = {**TINY, "train": {**TINY["train"], "max_epochs": 3}}
    (work / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    r = work / "results"
    stages = {
        # during the second training epoch (the first checkpoint exists)
        "train": lambda: (r / "model/checkpoints/last.pt").exists(),
        "extract": lambda: (work / "logs/extract/shard-0.log").exists(),
        "build_index": lambda: (work / "logs/build_index.log").exists(),
    }
    killed = []
    for name, ready in stages.items():
        if _kill_when(_start(work), ready):
            killed.append(name)
    assert "train" in killed and "extract" in killed  # the index build may finish before the kill lands
    assert not (r / "model/model.pt").exists() or "train" not in killed[-1:]
    final = _start(work)
    assert final.wait(timeout=900) == 0, (work / sorted(os.listdir(work))[-1]).read_text()[-3000:]
    log = (work / "logs/train.log").read_text()
    assert "resuming from" in log and log.count("device cpu") >= 2  # resumed, and the killed run's lines kept
    import torch

    from workflow_lib.database.index import FingerprintDB

    assert torch.load(r / "model/model.pt", weights_only=True)["train_meta"]["epochs"] == 3
    db = FingerprintDB.load(r / "index")
    songs = pd.read_parquet(r / "manifest/songs.parquet")
    assert db.n_songs == len(songs) and (r / "eval/summary.md").exists()
    # no temporary file of a killed writer is left anywhere under results/
    leftovers = [p for p in r.rglob(".*") if p.is_file() and p.name not in (".lock", ".snakemake_timestamp")]
    assert not leftovers, leftovers


# ------------------------------------------------------------------------------------------------ database edits

def _database(tmp_path: Path):
    from workflow_lib.database.extract import extract_songs, load_model
    from workflow_lib.database.index_build import build_index

    results = tmp_path / "results"
    model = save_tiny_model(results / "model" / "model.pt")
    paths = write_songs(tmp_path / "music", {"a": 4.0, "b": 5.0})
    fp, ident = load_model(model, "cpu")
    shard = results / "fingerprints" / "shard-0.parquet"
    songs = pd.DataFrame({"song_id": list(paths), "path": [str(p) for p in paths.values()]})
    extract_songs(fp, ident, songs, shard)
    build_index([shard], results / "index")
    from workflow_lib.database.catalogue import build_catalogue

    build_catalogue(songs.assign(duration_s=5.0)).to_parquet(results / "catalogue.parquet", index=False)
    return results, paths


def test_db_add_checks_files_like_the_manifest_and_skips_duplicates_by_content(tmp_path, capsys):
    from workflow_lib.audio.files import write_audio
    from workflow_lib.cli.main import main

    results, paths = _database(tmp_path)
    new = tmp_path / "new"
    new.mkdir()
    write_audio(new / "silent.wav", np.zeros(8000 * 6, np.float32))
    write_audio(new / "short.wav", 0.3 * np.sin(np.arange(8000) / 3.0).astype(np.float32))  # 1 s
    (new / "copy_of_a.wav").write_bytes(paths["a"].read_bytes())  # already indexed by the workflow
    fresh = write_songs(new, {"fresh": 4.0}, seed=11)["fresh"]
    (new / "sub").mkdir()
    (new / "sub" / "fresh again.wav").write_bytes(fresh.read_bytes())  # one new song, twice in the batch
    rc = main(["db", "add", str(new), "--results", str(results), "--device", "cpu", "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 1  # some files were skipped: the exit status says so
    assert out.startswith("added 1 song (")
    assert "silent" in err and "too short" in err and "same audio as song a" in err
    assert "copy: the same bytes as" in err
    from workflow_lib.database.index import FingerprintDB

    assert FingerprintDB.load(results / "index").n_songs == 3  # only 'fresh' was added, once
    # The very file the workflow indexed, added by its own path (relative, as typed): skipped, not in twice.
    rc = main(["db", "add", os.path.relpath(paths["b"]), "--results", str(results), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 1 and "already in the database as song b, indexed from its folder" in err, err
    assert FingerprintDB.load(results / "index").n_songs == 3


def test_a_kill_during_db_add_leaves_a_database_that_the_rerun_completes(tmp_path):
    """The add is killed (SIGKILL) after the catalogue was written, and again after the index commit was marked
    but before its files were renamed: each rerun leaves every indexed song titled, nothing twice."""
    results, _ = _database(tmp_path)
    new = write_songs(tmp_path / "incoming", {"x": 4.0, "y": 4.5}, seed=3)
    folder = str(new["x"].parent)
    add = ["db", "add", folder, "--results", str(results), "--device", "cpu", "--threads", "1"]
    driver = (
        "import os, signal, sys\n"
        "import workflow_lib.database.edit as edit, workflow_lib.database.index as index\n"
        "point = sys.argv[1]\n"
        "def die(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        "if point == 'after_catalogue':\n"
        "    real = edit.upsert_catalogue\n"
        "    def up(*a, **k):\n        real(*a, **k)\n        die()\n"
        "    edit.upsert_catalogue = up\n"
        "else:\n    index._finish_commit = die\n"
        "from workflow_lib.cli.main import main\nsys.exit(main(sys.argv[2:]))\n")
    from workflow_lib.database.catalogue import load_catalogue
    from workflow_lib.database.index import FingerprintDB

    for point in ("after_catalogue", "after_commit_marker"):
        res = subprocess.run([sys.executable, "-c", driver, point, *add], capture_output=True, text=True)
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        db = FingerprintDB.load(results / "index")  # loads (an interrupted commit is finished or discarded)
        cat = load_catalogue(results / "catalogue.parquet")
        assert all(s in cat.index for s in db.song_ids)  # never a song without its title
        if point == "after_commit_marker":
            assert db.n_songs == 4  # the committed edit was finished when the folder was next read
        else:
            assert db.n_songs == 2
            from workflow_lib.cli.main import main

            assert main(add) == 0
            assert FingerprintDB.load(results / "index").n_songs == 4
            from workflow_lib.cli.main import main as again

            assert again(["db", "remove", *[s for s in FingerprintDB.load(results / "index").song_ids
                                            if s not in ("a", "b")], "--results", str(results)]) == 0
    added = list((results / "fingerprints" / "added").glob("*.parquet"))
    ids = [i for f in added for i in pd.read_parquet(f, columns=["song_id"]).song_id.unique()]
    assert len(ids) == len(set(ids))  # no song fingerprinted into two added files
    assert not list((results / "index").glob(".commit-*"))


def test_a_removal_between_a_killed_add_and_its_rerun_cleans_up_first(tmp_path):
    """A `db add` killed after writing its fingerprints file, then a `db remove`, then the add again: the removal
    deletes what the killed add left (once the index is edited, that file would no longer look killed), so the
    songs are added once."""
    results, _ = _database(tmp_path)
    new = write_songs(tmp_path / "incoming", {"x": 4.0, "y": 4.5}, seed=3)
    add = ["db", "add", str(new["x"].parent), "--results", str(results), "--device", "cpu", "--threads", "1"]
    driver = ("import os, signal, sys\nimport workflow_lib.database.edit as edit\n"
              "real = edit.upsert_catalogue\n"
              "def up(*a, **k):\n    real(*a, **k)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
              "edit.upsert_catalogue = up\n"
              "from workflow_lib.cli.main import main\nsys.exit(main(sys.argv[1:]))\n")
    res = subprocess.run([sys.executable, "-c", driver, *add], capture_output=True, text=True)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    added = results / "fingerprints" / "added"
    assert len(list(added.glob("*.parquet"))) == 1  # the killed add's file
    from workflow_lib.cli.main import main
    from workflow_lib.database.index import FingerprintDB

    assert main(["db", "remove", "a", "--results", str(results)]) == 0
    assert not list(added.glob("*.parquet"))
    assert main(add) == 0
    files = list(added.glob("*.parquet"))
    ids = [i for f in files for i in pd.read_parquet(f, columns=["song_id"]).song_id.unique()]
    assert len(files) == 1 and len(ids) == len(set(ids)) == 2
    assert FingerprintDB.load(results / "index").n_songs == 3


def test_commit_journal_finishes_committed_and_discards_uncommitted_edits(tmp_path):
    from workflow_lib.database.index import COMMIT_MARKER, FOLDER_FILES, FingerprintDB, read_sidecar

    results, _ = _database(tmp_path)
    idx = results / "index"
    before = read_sidecar(idx)
    half = idx / ".commit-1-1"
    half.mkdir()
    (half / "index.json").write_text("{}")  # an edit killed before its marker
    assert read_sidecar(idx) == before and not half.exists()
    done = idx / ".commit-2-2"
    done.mkdir()
    for name in FOLDER_FILES:
        (done / name).write_bytes((idx / name).read_bytes())
    import json

    side = json.loads((done / "index.json").read_text())
    (done / "index.json").write_text(json.dumps({**side, "built_at": "finished by recovery"}))
    (done / COMMIT_MARKER).write_text("x")
    assert read_sidecar(idx)["built_at"] == "finished by recovery" and not done.exists()
    assert FingerprintDB.load(idx).n_songs == 2


# ------------------------------------------------------------------------------------------------ folders, text

def test_symbolic_links_to_folders_are_followed_and_loops_reported(tmp_path):
    from workflow_lib.data.manifest import build_manifest

    music = tmp_path / "music"
    write_songs(music / "real", {"one": 4.0})
    write_songs(tmp_path / "elsewhere", {"two": 4.0}, seed=5)
    (music / "linked").symlink_to(tmp_path / "elsewhere")  # a folder linked into the collection
    (music / "real" / "loop").symlink_to(music)  # a loop back to the top
    (music / "dangling.wav").symlink_to(tmp_path / "nothing.wav")
    (tmp_path / "elsewhere" / "up").symlink_to(tmp_path)  # out of the collection and back into it from above
    songs, rejected = build_manifest([("music", str(music))], 3.0, -60.0)
    assert sorted(Path(p).name for p in songs.path) == ["one.wav", "two.wav"]
    reasons = dict(zip(rejected.path.map(lambda p: Path(p).name), rejected.reason))
    assert "already scanned" in reasons["loop"] and "broken symbolic link" in reasons["dangling.wav"]
    assert "already scanned" in reasons["music"] and not any(r.startswith("copy") for r in reasons.values())


def test_control_characters_in_tags_never_reach_the_terminal(tmp_path, capsys):
    from workflow_lib.cli.query import print_table
    from workflow_lib.cli.text import printable, song_label

    evil = "Song\x1b[2J\x1b]0;owned\x07"
    assert "\x1b" not in printable(evil) and "\\x1b[2J" in printable(evil)
    assert "\x1b" not in song_label(evil, "Artist\r", None)
    print_table([{"file": "x.wav", "match": True, "song_id": "s", "title": evil, "artist": "A\x1b[31m",
                  "offset_s": 1.0, "confidence": 0.9, "seconds": 0.01, "reason": None, "best_guess": None}])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2J" in out


def test_file_names_that_are_not_utf8_are_named_and_never_stop_a_run(tmp_path, capsys):
    """A latin-1 name copied from an old disk: Python reads it with lone surrogates, which no Parquet or JSON table
    and no terminal takes. The folder walk (manifest, listing digest, db add, query/scan folders) names it with its
    bytes escaped and leaves it out; a query of the file itself is answered (the decoder opens it by its bytes). Before,
    the listing digest raised UnicodeEncodeError and `nafp index` stopped for the whole collection."""
    import soundfile as sf

    from tests.conftest import tone_mix
    from workflow_lib.audio.files import audio_info, load_audio
    from workflow_lib.cli.query import print_table
    from workflow_lib.cli.text import printable
    from workflow_lib.data.folders import audio_listing_digest
    from workflow_lib.data.manifest import build_manifest
    from workflow_lib.database.edit import collect_audio_files

    music = tmp_path / "music"
    (music / "Sigur Rós").mkdir(parents=True)
    audio = tone_mix(4.0, 8000, seed=1)
    sf.write(music / "Sigur Rós" / "Hoppípolla.wav", audio, 8000)
    sf.write(music / "日本語の歌.wav", tone_mix(4.0, 8000, seed=2), 8000)
    latin1 = os.fsencode(music) + b"/Caf\xe9.wav"
    sf.write(latin1, tone_mix(4.0, 8000, seed=3), 8000)
    os.mkdir(os.fsencode(music) + b"/Bj\xf6rk")
    sf.write(os.fsencode(music) + b"/Bj\xf6rk/J\xf3ga.wav", tone_mix(4.0, 8000, seed=4), 8000)
    digest = audio_listing_digest([music])
    sf.write(os.fsencode(music) + b"/Na\xefve.wav", tone_mix(4.0, 8000, seed=5), 8000)
    assert audio_listing_digest([music]) != digest  # the next `nafp index` rescans, and names the new file
    songs, rejected = build_manifest([("music", music)], min_duration_s=3.0, silence_dbfs=-60)
    assert sorted(songs.rel_path) == ["Sigur Rós/Hoppípolla.wav", "日本語の歌.wav"]
    reasons = dict(zip(rejected.path, rejected.reason))
    assert reasons[f"{music}/Caf\\xe9.wav"].startswith("file name is not valid UTF-8 (its bytes shown as \\xNN)")
    assert reasons[f"{music}/Bj\\xf6rk"].startswith("folder name is not valid UTF-8")
    pd.DataFrame(rejected).to_parquet(tmp_path / "rejected.parquet")  # storable as it is
    problems: list[dict] = []
    assert collect_audio_files([music, os.fsdecode(latin1)], problems) == sorted(
        Path(p) for p in songs.path)
    assert [p["path"] for p in problems].count(f"{music}/Caf\\xe9.wav") == 2  # in the folder, and given itself
    # a music folder whose own name is not UTF-8: `nafp index` says so before anything runs
    from workflow_lib.cli import main as cli_main

    assert cli_main.main(["index", os.fsdecode(os.fsencode(music) + b"/Bj\xf6rk"), "--results",
                          str(tmp_path / "db")]) != 0
    assert f"{music}/Bj\\xf6rk: the folder's name is not valid UTF-8" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()
    # the file itself decodes, and its name prints as its bytes
    assert audio_info(os.fsdecode(latin1)).duration_s == pytest.approx(4.0)
    assert len(load_audio(os.fsdecode(latin1))) == 4 * 8000
    assert printable(os.fsdecode(latin1)).endswith("/Caf\\xe9.wav")
    # a table keeps its columns when a name holds wide characters: each takes two columns
    print_table([{"file": name, "error": "x"} for name in ("日本語の歌.wav", "plain.wav")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].index("ERROR") + len("日本語の歌") == lines[2].index("ERROR")


def test_bad_files_are_named_for_what_they_are(tmp_path):
    from workflow_lib.audio.decoded import AudioDecodeError
    from workflow_lib.audio.files import audio_info

    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.mp3").write_text("this is not a song\n")
    (tmp_path / "folder.flac").mkdir()
    for name, says in (("empty.wav", "empty file (0 bytes)"), ("notes.mp3", "a text file, not audio"),
                       ("folder.flac", "is a folder"), ("missing.ogg", "no such file")):
        with pytest.raises(AudioDecodeError, match=re.escape(says)):
            audio_info(tmp_path / name)
    # a file the user may not read (root reads everything, so the refusal is simulated where files open it)
    import workflow_lib.audio.files as files

    locked = tmp_path / "locked.wav"
    locked.write_bytes(b"RIFF" + bytes(100))

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    files.open = refuse
    try:
        with pytest.raises(AudioDecodeError, match=re.escape("cannot be read (Permission denied)")):
            audio_info(locked)
    finally:
        del files.open


def test_config_mistakes_are_named_in_one_line_at_start(tmp_path):
    from tests.test_workflow_e2e import run_snakemake

    res = run_snakemake(tmp_path, "-n", "all", config={"musik": 1}, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "musik" in out and len(out.splitlines()) < 40
    res = run_snakemake(tmp_path, "-n", "all", check=False,
                        config={"split": {"fractions": {"train": 0.5, "val": 0.2, "test": 0.2, "distractor": 0.0}}})
    assert res.returncode != 0 and "must sum to 1" in res.stdout + res.stderr


def test_listening_summary_without_decisions_says_so():
    from workflow_lib.cli.listen import summary_text
    from workflow_lib.listener.decisions import ListenSummary

    text = summary_text(ListenSummary([], 0.3, 0, 0, 0.0, float("nan"), float("nan"), float("nan"), ""))
    assert "nan" not in text and "no decisions" in text


@pytest.mark.parametrize("after_s", [0.0, 0.02, 0.1])
def test_ctrl_c_while_the_listener_starts_prints_no_traceback(tmp_path, after_s):
    """A Ctrl-C while nafp imports its libraries ends it quietly. The signal is sent once numpy's C extension is
    mapped into the process (its import under way, inside `main`), then ``after_s`` later. It was sent 0.3 s after
    the start, which lands wherever the machine's load puts it: in CI it landed in numpy's import, which turned it
    into ImportError ("PyCapsule_Import could not import module datetime"), a traceback; earlier still it lands in
    the interpreter's own start-up, before any of nafp's code runs, where only Python's own handler answers."""
    from workflow_lib.audio.files import write_audio

    clip = tmp_path / "clip.wav"
    write_audio(clip, 0.3 * np.sin(np.arange(8000 * 20) / 5.0).astype(np.float32))
    # (SIGINT as in a terminal: a test run in the background inherits it ignored)
    proc = subprocess.Popen([sys.executable, "-m", "workflow_lib.cli.main", "listen", "--input", str(clip),
                             "--results", str(tmp_path / "nothing")], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if "_multiarray_umath" in maps.read_text():
                break
        except OSError:  # ended meanwhile
            break
        time.sleep(0.001)
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130: "interrupted"; 2: the error came first (a Ctrl-C while the interpreter shuts down is ignored, where it
    # printed a traceback); -2: CPython ends a process whose import was interrupted by the signal itself, quietly
    assert "Traceback" not in err and proc.returncode in (2, 130, -signal.SIGINT), err[-3000:]
