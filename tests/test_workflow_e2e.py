"""End-to-end: the real Snakemake DAG on a tiny config in a temp folder."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# Small enough to run in CI in a minute or two, big enough that every stage does real work (training is bounded by
# epochs so that it does not depend on the machine's speed).
TINY = {
    "demo": {"n_songs": 10, "duration_s": 15.0, "seed": 5},
    "split": {"seed": 0, "fractions": {"train": 0.5, "val": 0.2, "test": 0.3, "distractor": 0.0}},
    "noise": {"generated_clips": 4},
    "irs": {"max_ir_s": 1.0, "simulate": {"n_rooms": 6, "rt60_s": [0.2, 0.6], "room_min_m": [3.0, 3.0, 2.4],
                                          "room_max_m": [8.0, 6.0, 3.0], "n_resonant": 4}},
    "model": {"source": "train", "channels": [8, 8, 16, 16, 32, 32, 32, 32], "dim": 16, "head_hidden": 8},
    # view_workers 2: the rule hands a set number through to worker processes (auto is none on a CPU)
    "train": {"init": "none", "threads": 1, "max_epochs": 1, "max_minutes": 60.0, "batch_size": 32, "val_queries": 16,
              "patience": 0, "view_workers": 2},
    "extract": {"n_shards": 2, "threads": 1, "compile": False},
    "index": {"threads": 1},
    # search.mode vote (not the default): `nafp query` on this run must search the way the run was configured
    "search": {"mode": "vote", "calibration": {"queries_per_length": 20}},
    "evaluate": {"n_starts": 4, "n_trained_starts": 2, "n_out_of_db_starts": 2, "lengths_s": [1, 3],
                 "conditions": [{"name": "clean"}, {"name": "10 dB + room", "snr_db": 10, "room": "room"},
                                {"name": "resonant", "room": "resonant"}],
                 "baseline_audfprint": True,
                 # the programme in a resonant space, scanned in two views (nafp scan --whitened)
                 "monitoring": {"enabled": True, "programmes": 1, "minutes": 1.0, "snr_db": [10],
                                "room_pool": "resonant", "whitened": True}},
}


def run_snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True):
    cfg = workdir / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(config if config is not None else TINY))
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", str(cfg),
           "--cores", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("wf")
    res = run_snakemake(work, "all")
    (work / "snakemake.out").write_text(res.stdout + res.stderr)
    return work


@pytest.mark.e2e
def test_data_stages_produce_every_output(workflow_run):
    r = workflow_run / "results"
    songs = pd.read_parquet(r / "manifest/songs.parquet")
    assert len(songs) == 10 and songs.duration_s.between(14.9, 15.1).all()
    splits = pd.read_parquet(r / "split/splits.parquet")
    assert set(splits.song_id) == set(songs.song_id)
    for bank in ("noise/train", "noise/test", "irs/train", "irs/test"):
        assert (r / f"{bank}.npy").stat().st_size > 0 and len(pd.read_parquet(r / f"{bank}.parquet")) > 0
    for log in ("manifest", "split", "prepare_noise", "prepare_irs", "demo_corpus"):
        assert (workflow_run / "logs" / f"{log}.log").stat().st_size > 0


@pytest.mark.e2e
def test_model_database_and_evaluation_come_out_of_the_same_run(workflow_run):
    r = workflow_run / "results"
    import torch

    model = torch.load(r / "model/model.pt", weights_only=True)
    assert model["model_config"]["dim"] == 16
    shards = [pd.read_parquet(r / f"fingerprints/shard-{i}.parquet") for i in range(2)]
    splits = pd.read_parquet(r / "split/splits.parquet")
    assert set(pd.concat(shards).song_id) == set(splits.song_id)  # the whole collection is in the database
    meta = pd.read_parquet(r / "index/index_meta.parquet")
    assert len(meta) == sum(len(s) for s in shards)
    metrics = pd.read_parquet(r / "eval/metrics.parquet")
    assert len(metrics) > 0 and set(metrics.system) == {"neural", "audfprint"}
    summary = (r / "eval/summary.md").read_text()
    assert "| clean | neural (sequence) |" in summary and "## Monitoring benchmark" in summary
    mon = pd.read_parquet(r / "eval/monitoring.parquet")
    assert set(mon.system) == {"neural", "audfprint"} and mon.minutes.min() >= 1.0
    assert "realtime, 2 views)" in (workflow_run / "logs/monitor.log").read_text()  # scanned in two views


@pytest.mark.e2e
def test_every_song_is_found_and_queries_use_the_runs_settings(workflow_run, capsys):
    """The whole collection is in the database, an excerpt of each song names it, and `nafp query` reads the
    settings this run was made with (its config file set search.mode: vote) unless an option overrides them."""
    import json

    from workflow_lib.audio.files import load_audio, write_audio
    from workflow_lib.cli.main import main

    r = workflow_run / "results"
    songs = pd.read_parquet(r / "manifest/songs.parquet")
    assert "mode: vote" in (r / "config.yaml").read_text()
    files = []
    for i, row in enumerate(songs.itertuples()):
        f = workflow_run / "excerpts" / f"{row.song_id}.wav"
        write_audio(f, load_audio(row.path)[4 * 8000:9 * 8000])  # 5 s from 4.0 s
        files.append(str(f))
    assert main(["query", *files, "--results", str(r), "--json", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {row["mode"] for row in rows} == {"vote"}
    for row, sid in zip(rows, songs.song_id):
        guess = row["best_guess"]
        # Placed between the hops where the match peaks: within the evaluation's 'exact' tolerance of the truth (a
        # minutes-old model's similarity is flat over neighbouring hops, so the peak can sit half way to one).
        assert guess["song_id"] == sid and abs(guess["offset_s"] - 4.0) <= 0.25 + 1e-6, row
    assert main(["query", files[0], "--results", str(r), "--json", "--device", "cpu", "--mode", "sequence"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "sequence"
    assert main(["db", "list", "--results", str(r), "--csv"]) == 0
    listed = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert set(listed.song_id) == set(songs.song_id)


@pytest.mark.e2e
def test_the_run_ends_by_pointing_at_the_summary_and_a_query(workflow_run):
    out = (workflow_run / "snakemake.out").read_text()
    assert "Done. The evaluation: results/eval/summary.md" in out
    assert f"nafp query YOUR_CLIP.mp3 --results {workflow_run / 'results'}" in out
    # the readable copies of Parquet outputs
    r = workflow_run / "results"
    assert set(pd.read_csv(r / "split/splits.csv").columns) >= {"song_id", "split", "path"}
    assert list(pd.read_csv(r / "manifest/rejected.csv").columns) == ["path", "reason"]
    thresholds = pd.read_csv(r / "index/thresholds.csv")
    assert list(thresholds.query_s) == [1.0, 3.0, 3.0] and (thresholds.null_queries > 0).all()
    assert list(thresholds.views) == [1, 1, 2]  # 3 s queries are also searched whitened, with their own threshold
    neural = pd.read_parquet(r / "eval/results_neural.parquet")
    assert set(neural["views"]) == {1, 2} and (neural.loc[neural["views"] == 2, "mode"] == "sequence").all()
    assert len(pd.read_csv(r / "eval/metrics.csv")) == len(pd.read_parquet(r / "eval/metrics.parquet"))


@pytest.mark.e2e
def test_the_html_report_holds_the_curves_tables_settings_and_one_summary(workflow_run):
    report = workflow_run / "report.html"
    run_snakemake(workflow_run, "--report", str(report))
    html = report.read_text()
    for item in ("training curves", "per-epoch metrics", "metrics table", "no-match thresholds", "effective config",
                 "song-level hit rate vs query length"):
        assert item in html, item
    # The results are listed as '"results/...": {"name": ...}' entries: the summary once (HTML), not twice.
    assert '"results/eval/summary.html": {' in html and '"results/eval/summary.md": {' not in html
    assert "Neural audio fingerprinting" in html  # the workflow description (report/workflow.rst)


@pytest.mark.e2e
def test_nothing_to_do_after_a_complete_run(workflow_run):
    res = run_snakemake(workflow_run, "-n", "all")
    assert "Nothing to be done" in res.stdout + res.stderr


@pytest.mark.e2e
def test_a_stage_reruns_alone_by_its_target(workflow_run):
    # Runs last among the e2e tests: it makes everything downstream of the split stale.
    res = run_snakemake(workflow_run, "results/split/splits.parquet", "--forcerun", "split")
    assert "split" in res.stderr and "manifest " not in res.stderr.split("Job stats:")[1].split("Reasons")[0]


def test_wrong_config_key_fails_at_once_naming_it(tmp_path):
    res = run_snakemake(tmp_path, "-n", "all", config={"data": {"musik_dirs": ["x"]}}, check=False)
    assert res.returncode != 0 and "musik_dirs" in (res.stdout + res.stderr)


def test_wrong_config_type_fails_at_once_naming_it(tmp_path):
    res = run_snakemake(tmp_path, "-n", "all", config={"demo": {"n_songs": "many"}}, check=False)
    assert res.returncode != 0 and "n_songs" in (res.stdout + res.stderr) and "many" in (res.stdout + res.stderr)


def test_missing_music_folder_is_named(tmp_path):
    res = run_snakemake(tmp_path, "-n", "all", config={"data": {"music_dirs": [str(tmp_path / "nowhere")]}},
                        check=False)
    assert res.returncode != 0 and "nowhere" in (res.stdout + res.stderr)


def test_make_demo_command_line_plans_the_whole_workflow(tmp_path):
    """The Makefile's demo line, as written (a target after a nargs option such as --configfile is read as one more
    config file), planned with -n in a scratch folder: it must plan training and the evaluation."""
    line = next(ln.strip() for ln in (REPO / "Makefile").read_text().splitlines()
                if ln.strip().startswith("$(SNAKEMAKE)") and "demo.yaml" in ln)
    args = shlex.split(line.replace("$(SNAKEMAKE)", "").replace("$(CORES)", "1"))
    args = [str(REPO / a) if a.endswith(".yaml") else a for a in args]
    res = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), *args, "-n"],
                         capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "train" in out and "evaluate" in out and "baseline_audfprint" in out


def test_train_init_and_partner_name_checked_model_files_as_inputs(tmp_path):
    """train.init / train.partner (the pair member's recipe): the bundled model becomes an input of the train rule;
    a partner that names no file stops the plan, naming the key."""
    cfg = {**TINY, "train": {**TINY["train"], "init": "bundled", "partner": "bundled"}}
    res = run_snakemake(tmp_path, "-n", "results/model/model.pt", config=cfg)
    train_job = res.stdout.split("rule train:")[1].split("rule ")[0]
    assert str(REPO / "models" / "nafp-small.pt") in train_job
    cfg["train"]["partner"] = "nowhere/model.pt"
    res = run_snakemake(tmp_path, "-n", "results/model/model.pt", config=cfg, check=False)
    assert res.returncode != 0 and "train.partner" in res.stdout + res.stderr
