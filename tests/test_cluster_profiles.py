"""Cluster profiles and the cluster test's tooling, without a cluster.

The SLURM run itself is .ci/cluster-test.sh (it needs root for its Debian packages and a private slurmctld/slurmd);
these tests check, in seconds, what every run of it relies on: the real profile's dry run lists every rule with the
resources SLURM will be asked for, the CI overrides fit the single test node, and the result comparison is right.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".ci"))
import cluster_test  # noqa: E402
import compare_runs  # noqa: E402

TINY = REPO / ".ci/cluster-tiny.yaml"
# Rules that run inside Snakemake itself (no script), never as SLURM jobs.
AGGREGATES = {"all", "data", "database"}


def dry_run(tmp_path: Path, *profiles: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "all", "-n", "--snakefile", str(REPO / "Snakefile"),
           "--configfile", str(TINY)]
    for p in profiles:
        cmd += ["--profile", str(REPO / "profiles" / p)]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def slurm_plan(tmp_path_factory) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    text = dry_run(tmp_path_factory.mktemp("plan"), "slurm")
    return cluster_test.job_stats(text), cluster_test.resources_by_rule(text)


def test_profiles_are_valid_yaml_and_name_the_slurm_executor():
    slurm = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    ci = yaml.safe_load((REPO / "profiles/slurm-ci/config.yaml").read_text())
    local = yaml.safe_load((REPO / "profiles/local/config.yaml").read_text())
    assert slurm["executor"] == "slurm" and "executor" not in local
    # The CI layer must not replace the real profile's per-rule mapping, only fit it to the test node.
    assert not {"default-resources", "set-resources", "set-threads", "groups", "group-components"} & set(ci)


def test_slurm_dry_run_shows_every_rule_with_its_resources(slurm_plan):
    stats, res = slurm_plan
    jobs = set(stats) - AGGREGATES
    assert {"manifest", "train", "extract"} <= jobs
    for rule in jobs:
        r = res[rule]
        assert {"mem_mb", "runtime", "cpus_per_task"} <= set(r), (rule, r)
        assert int(r["cpus_per_task"]) == int(r["threads"]), (rule, r)  # threads map to --cpus-per-task


def test_training_asks_slurm_for_a_gpu(slurm_plan):
    _, res = slurm_plan
    assert res["train"].get("gres") == "gpu:1"


def test_ci_layer_fits_every_job_on_the_two_cpu_test_node(tmp_path):
    text = dry_run(tmp_path, "slurm", "slurm-ci")
    res = cluster_test.resources_by_rule(text)
    for rule, r in res.items():
        assert int(r["cpus_per_task"]) <= 1, (rule, r)
        # build_index's memory depends on the size of its input (<TBD> until the shards exist; capped when submitted).
        assert r["mem_mb"] == "<TBD>" or int(r["mem_mb"]) <= 8000, (rule, r)
    assert res["train"].get("gres") == "gpu:1"  # still asked for: the test node offers a stand-in GPU


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        (run / "results/manifest").mkdir(parents=True)
        pd.DataFrame({"song_id": ["x1", "x2"], "path": [f"{run.resolve()}/music/1.flac", f"{run}/music/2.flac"],
                      "duration_s": [10.0, 12.5]}).to_parquet(run / "results/manifest/songs.parquet")
        np.save(run / "results/vectors.npy", np.arange(12, dtype=np.float16).reshape(3, 4))
        (run / "results/index.json").write_text(json.dumps({"rows": 3, "build_seconds": float(len(str(run)))}))
        (run / "results/model").mkdir()
        (run / "results/model/train.log").write_text(f"{time.time()} INFO epoch 1 took {len(str(run))} s\n")
    return a, b


def test_compare_runs_sees_equal_content_through_workdir_paths_and_timings(tmp_path):
    a, b = _runs(tmp_path)
    verdicts, diffs = compare_runs.compare_runs(a, b)
    assert diffs == {}
    assert verdicts["results/vectors.npy"] == "identical"
    assert verdicts["results/manifest/songs.parquet"] == "same content"  # paths differ only by the workdir
    assert "results/model/train.log" not in verdicts  # a log records the run's moments, not a result


@pytest.mark.parametrize("damage", ["parquet", "npy", "json", "missing"])
def test_compare_runs_reports_each_kind_of_difference(tmp_path, damage):
    a, b = _runs(tmp_path)
    if damage == "parquet":
        df = pd.read_parquet(b / "results/manifest/songs.parquet")
        df.loc[1, "duration_s"] = 12.0
        df.to_parquet(b / "results/manifest/songs.parquet")
        name = "results/manifest/songs.parquet"
    elif damage == "npy":
        x = np.load(b / "results/vectors.npy")
        x[2, 3] += 1
        np.save(b / "results/vectors.npy", x)
        name = "results/vectors.npy"
    elif damage == "json":
        (b / "results/index.json").write_text(json.dumps({"rows": 4, "build_seconds": 0.0}))
        name = "results/index.json"
    else:
        (b / "results/vectors.npy").unlink()
        name = "results/vectors.npy"
    _, diffs = compare_runs.compare_runs(a, b)
    assert list(diffs) == [name]


def test_job_stats_and_victim_jobs_parse_snakemake_listings():
    text = """Job stats:
job        count
-------  -------
extract        2
all            1
total          3

rule extract:
    output: results/fingerprints/shard-0.parquet
    log: logs/extract/0.log
    jobid: 3
    wildcards: shard=0
    threads: 2
    resources: tmpdir=/tmp, mem_mb=1000, mem=1 GB, runtime=30, cpus_per_task=2

rule extract:
    log: logs/extract/1.log
    wildcards: shard=1
    resources: mem_mb=1000, runtime=30, cpus_per_task=1
"""
    assert cluster_test.job_stats(text) == {"extract": 2, "all": 1}
    assert cluster_test.victim_jobs(text, "extract") == [("0", ["logs/extract/0.log"]), ("1", ["logs/extract/1.log"])]
    assert cluster_test.resources_by_rule(text)["extract"]["cpus_per_task"] in {"1", "2"}


def test_conda_environment_pins_what_the_set_up_installs():
    """envs/workflow.yaml lists its pins in full (Snakemake copies the file alone): they must stay
    requirements.txt's."""
    env = yaml.safe_load((REPO / "envs/workflow.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    reqs = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    tools = {"snakemake", "snakemake-executor-plugin-slurm", "pygments", "pytest", "pytest-xdist", "import-linter"}
    runtime = {r for r in reqs if r and r.split("==")[0] not in tools}
    assert set(pip) == runtime
