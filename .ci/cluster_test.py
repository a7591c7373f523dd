"""Cluster test (issue 7): the workflow through Snakemake's SLURM executor, a killed job, and a local reference run.

Run by .ci/cluster-test.sh, which starts a private single-node SLURM first (SLURM_CONF points at it) and always
stops it afterwards. Steps, each with a hard time limit:

1. dry run on the real cluster profile (profiles/slurm): every rule of the DAG is listed with its resources;
2. reference run on this machine (profiles/local) in its own working directory, alongside step 3;
3. cluster run (profiles/slurm + the CI overrides of profiles/slurm-ci) in another working directory; while it runs,
   one job of the victim rule (an extract shard) is cancelled with scancel, so the run fails;
4. rerun on the cluster: it must redo only what is missing (every file that existed is left untouched) and succeed;
5. the cluster's results are compared with the reference run, file by file, by content (.ci/compare_runs.py).
   Training is compared bit for bit too; if the two trainings were not bitwise equal, everything downstream of the
   model is instead recomputed on this machine from the cluster's own model file and compared with the cluster's;
6. `nafp index --profile slurm --profile slurm-ci` makes the reference run's songs searchable through SLURM, as a
   user indexes a collection from a login node: every song must be in its index, its fingerprint shards made by
   SLURM jobs. It starts once the reference run is done and runs beside steps 4 and 5.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_runs import compare_file, compare_runs, Difference, result_files, roots  # noqa: E402

PROFILE_LOCAL = REPO / "profiles/local"
PROFILE_SLURM = REPO / "profiles/slurm"
PROFILE_CI = REPO / "profiles/slurm-ci"
MODEL = "results/model/model.pt"
TARGETS = ["all"]  # --target changes it (e.g. `data` while developing)
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[cluster-test {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Failed(Exception):
    pass


def _tail(path: Path, n: int = 60) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-n:])


class Snakemake:
    """Runs `python -m snakemake` in a working directory with the test's config, logging to a file per call."""

    def __init__(self, workdir: Path, configfile: Path, logdir: Path):
        self.workdir, self.configfile, self.logdir = workdir, configfile, logdir
        workdir.mkdir(parents=True, exist_ok=True)

    def command(self, targets: Sequence[str], *options: str) -> list[str]:
        # Targets come first: a later option with many values (--profile, -R) would swallow them.
        return [sys.executable, "-m", "snakemake", *targets, "--snakefile", str(REPO / "Snakefile"),
                "--configfile", str(self.configfile), *options]

    def start(self, name: str, targets: Sequence[str], *options: str) -> tuple[subprocess.Popen, Path]:
        log = self.logdir / f"{len(RUNNING) + 1:02d}-{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(log, "w") as fh:
            # Own session: the test can end the whole process tree by this PID, whatever happens.
            proc = subprocess.Popen(self.command(targets, *options), cwd=self.workdir, stdout=fh,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        RUNNING.append(proc)
        return proc, log

    def run(self, name: str, targets: Sequence[str], *options: str, timeout: float, check: bool = True
            ) -> tuple[int, str]:
        proc, log = self.start(name, targets, *options)
        rc = wait(proc, timeout, name)
        text = log.read_text(errors="replace")
        if check and rc != 0:
            raise Failed(f"{name}: snakemake exited {rc}; last lines of {log}:\n{_tail(log)}")
        return rc, text


RUNNING: list[subprocess.Popen] = []


def wait(proc: subprocess.Popen, timeout: float, name: str) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise Failed(f"{name}: still running after {timeout:.0f} s (a job pending forever? see squeue)") from None


def stop(*procs: subprocess.Popen) -> None:
    """End snakemakes we started and everything they started (each its own session), by PID, all at once.
    SIGINT first: Snakemake then cancels its SLURM jobs itself (SIGTERM only makes it wait for them)."""
    for sig, grace in ((signal.SIGINT, 8), (signal.SIGTERM, 3), (signal.SIGKILL, 3)):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for p in alive:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.2)


def job_stats(text: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake log: rule -> number of jobs (first table only)."""
    m = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\ntotal\s+\d+", text, re.S)
    if not m:
        return {}
    return {line.split()[0]: int(line.split()[1]) for line in m.group(1).splitlines() if line.strip()}


def resources_by_rule(text: str) -> dict[str, dict[str, str]]:
    """rule -> its printed resources (threads included), from a dry run's job listing."""
    out: dict[str, dict[str, str]] = {}
    rule = None
    for line in text.splitlines():
        m = re.match(r"\s*(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
            out.setdefault(rule, {"threads": "1"})
            continue
        if rule is None:
            continue
        m = re.match(r"\s*threads: (\d+)", line)
        if m:
            out[rule]["threads"] = m.group(1)
        m = re.match(r"\s*resources: (.*)", line)
        if m:
            for item in re.split(r", (?=\w+=)", m.group(1)):
                key, _, value = item.partition("=")
                out[rule][key] = value
    return out


def check_dry_run(smk: Snakemake, timeout: float) -> tuple[dict[str, dict[str, str]], str]:
    """Step 1: the real profile's dry run lists every rule with the resources it would ask SLURM for."""
    _, text = smk.run("dry-run-slurm-profile", TARGETS, "--profile", str(PROFILE_SLURM), "-n", timeout=timeout)
    stats = job_stats(text)
    res = resources_by_rule(text)
    if not stats:
        raise Failed("dry run printed no job table")
    # Rules without a script (all, data) run inside snakemake itself, never as SLURM jobs.
    local = {"all", "data", "database"} | {r for r in stats if re.search(rf"localrule {r}:", text)}
    say("dry run on profiles/slurm (the resources each SLURM job asks for):")
    print(f"    {'rule':22s} {'jobs':>4s} {'threads':>7s} {'cpus_per_task':>13s} {'mem_mb':>7s} {'runtime':>7s}  gres",
          flush=True)
    missing = []
    for rule in sorted(stats):
        r = res.get(rule, {})
        print(f"    {rule:22s} {stats[rule]:4d} {r.get('threads', '?'):>7s} {r.get('cpus_per_task', '-'):>13s} "
              f"{r.get('mem_mb', '-'):>7s} {r.get('runtime', '-'):>7s}  {r.get('gres', '')}", flush=True)
        if rule not in local and not all(k in r for k in ("mem_mb", "runtime", "cpus_per_task")):
            missing.append(rule)
    if missing:
        raise Failed(f"dry run shows no mem_mb/runtime/cpus_per_task for: {', '.join(missing)}")
    if "train" in res and "gpu" not in res["train"].get("gres", "") + res["train"].get("slurm_extra", ""):
        raise Failed("profiles/slurm asks for no GPU for the train rule")
    return res, text


def squeue() -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True, timeout=30)
    return [tuple(line.split("|", 2)) for line in out.stdout.splitlines() if line.count("|") == 2]  # type: ignore


def check_submitted_resources() -> None:
    """What SLURM was really asked for: slurmctld keeps finished jobs for MinJobAge (300 s), so squeue still lists
    the run's jobs. The training job must have asked for the GPU (gres) and every job for its CPUs and memory."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%k|%C|%m|%b|%T"], capture_output=True, text=True,
                         timeout=30).stdout
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 5]
    say("SLURM jobs of the cluster run (id, comment, CPUs, memory, gres, state):")
    for row in sorted(rows, key=lambda r: int(r[0].split("_")[0])):
        print("    " + "  ".join(row), flush=True)
    train = [r for r in rows if r[1] == "rule_train"]
    if not train or not any("gpu" in r[4] for r in train):
        raise Failed(f"the training job did not ask SLURM for a GPU: {train}")


def victim_jobs(text: str, victim: str) -> list[tuple[str, list[str]]]:
    """(wildcard values joined by '_', log files) of every job of `victim` in a dry run's listing."""
    jobs = []
    for block in re.split(r"\n(?=\s*(?:local)?rule \w+:)", text):
        if not re.match(rf"\s*rule {re.escape(victim)}:", block):
            continue
        wc = re.search(r"^\s*wildcards: (.*)$", block, re.M)
        log = re.search(r"^\s*log: (.*)$", block, re.M)
        values = "_".join(kv.partition("=")[2] for kv in wc.group(1).split(", ")) if wc else ""
        jobs.append((values, log.group(1).split(", ") if log else []))
    return jobs


def run_with_fault(smk: Snakemake, victim: str, jobs: list[tuple[str, list[str]]], timeout: float) -> None:
    """Step 3: start the cluster run; once a job of `victim` has started its script (its rule log exists), cancel
    that SLURM job; the run must then fail, and the job's outputs must be missing."""
    if not any(logs for _, logs in jobs):
        raise Failed(f"rule '{victim}' declares no log file to tell when its script runs")
    proc, log = smk.start("slurm-run-with-fault", TARGETS, "--profile", str(PROFILE_SLURM), "--profile",
                          str(PROFILE_CI))
    deadline = time.monotonic() + timeout
    killed = None
    token = re.compile(rf"^rule_(?:\w+_)?{re.escape(victim)}(?:_\w+)?$")
    while proc.poll() is None and time.monotonic() < deadline and not killed:
        # Cheap file checks first; squeue only once some victim script has started.
        started = {values: [f for f in files if (smk.workdir / f).exists()] for values, files in jobs}
        if any(started.values()):
            for jobid, state, comment in squeue():
                head, _, wildcards = comment.partition("_wildcards_")
                if state != "RUNNING" or not token.match(head):
                    continue
                # A grouped job has no wildcards in its comment: any started victim log then tells it is working.
                logs = [f for values, files in started.items() if not wildcards or values == wildcards
                        for f in files]
                if logs:
                    subprocess.run(["scancel", jobid], check=True, timeout=30)
                    killed = (jobid, comment, logs[0])
                    break
        time.sleep(0.1)
    if not killed:
        stop(proc)
        raise Failed(f"no '{victim}' job was caught running its script; last lines of {log}:\n{_tail(log)}")
    jobid, comment, rule_log = killed
    last = _tail(smk.workdir / rule_log, 1).strip()[:160] or "nothing yet (the script had just started)"
    say(f"cancelled SLURM job {jobid} ({comment}) while '{victim}' scripts were running; {rule_log} then said: "
        f"{last}")
    rc = wait(proc, max(deadline - time.monotonic(), 30), "slurm run with fault")
    text = log.read_text(errors="replace")
    if rc == 0:
        raise Failed(f"the run succeeded although job {jobid} was cancelled (it ended before the kill?)")
    # A single job is reported by its SLURM status, a group job by its SLURM log (shown in snakemake's output).
    if not re.search(rf"SLURM-job '{jobid}' failed, SLURM status is: 'CANCELLED|JOB {jobid} ON \S+ CANCELLED", text):
        raise Failed(f"snakemake failed, but not for the cancelled job; last lines of {log}:\n{_tail(log)}")
    say(f"cluster run failed as expected (rc={rc}): snakemake reported job {jobid} as CANCELLED")
    check_submitted_resources()


def snapshot(workdir: Path) -> dict[str, tuple[int, int]]:
    return {name: ((workdir / name).stat().st_mtime_ns, (workdir / name).stat().st_size)
            for name in result_files(workdir)}


def rerun_only_missing(smk: Snakemake, victim: str, n_total: int, timeout: float) -> None:
    """Step 4: the rerun redoes only what is missing and leaves every existing output untouched."""
    before = snapshot(smk.workdir)
    _, text = smk.run("slurm-rerun", TARGETS, "--profile", str(PROFILE_SLURM), "--profile", str(PROFILE_CI),
                      timeout=timeout)
    ran = job_stats(text)  # the plan the rerun printed before it started
    if victim not in ran:
        raise Failed(f"the rerun had no '{victim}' job to redo: {ran}")
    if sum(ran.values()) >= n_total:
        raise Failed(f"the rerun redid everything ({ran}), not only what was missing")
    after = snapshot(smk.workdir)
    touched = sorted(n for n, st in before.items() if after.get(n) != st)
    if touched:
        raise Failed(f"the rerun rewrote outputs that were already complete: {touched}")
    jobs = ", ".join(f"{k} {v}" for k, v in ran.items())
    say(f"rerun on the cluster: {sum(ran.values())} of {n_total} jobs ({jobs}); the {len(before)} files that existed "
        f"were left untouched; {len(after) - len(before)} new")


def downstream_rules(smk: Snakemake, timeout: float) -> set[str]:
    """Rules whose jobs depend on the model (the train rule excluded), from a forced dry run."""
    _, text = smk.run("dry-run-downstream-of-train", TARGETS, "--cores", "2", "-n", "--forcerun", "train",
                      timeout=timeout)
    return set(job_stats(text)) - {"train", "all"}


def outputs_by_rule(smk: Snakemake, timeout: float) -> dict[str, str]:
    """result file -> the rule that made it (snakemake --summary)."""
    _, text = smk.run("summary", TARGETS, "--cores", "1", "--summary", timeout=timeout)
    out = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0].startswith("results/"):
            out[parts[0]] = parts[2]
    return out


def rule_of_file(files: set[str], by_output: dict[str, str]) -> dict[str, str]:
    """file -> rule, for files that are declared outputs or lie inside a declared directory output."""
    out = {}
    for f in files:
        if f in by_output:
            out[f] = by_output[f]
            continue
        dirs = [d for d in by_output if f.startswith(d.rstrip("/") + "/")]
        if dirs:
            out[f] = by_output[max(dirs, key=len)]
    return out


def compare(local: Path, cluster: Path, smk_local: Snakemake, scratch: Path, timeout: float) -> None:
    """Step 5: the cluster's results equal a local run's (see the module docstring for the model)."""
    files_l, files_s = result_files(local), result_files(cluster)
    if files_l != files_s:
        raise Failed(f"different result files: only local {sorted(files_l - files_s)}, "
                     f"only cluster {sorted(files_s - files_l)}")
    try:
        model_verdict = (compare_file(local / MODEL, cluster / MODEL, roots(local), roots(cluster))
                         if MODEL in files_l else "")
        same_model = True
    except Difference as e:
        same_model = False
        model_note = str(e)
    if same_model:
        verdicts, diffs = compare_runs(local, cluster)
        how = {"identical": "the model trained on the cluster is byte-identical to the local one",
               "same content": "the model trained on the cluster equals the local one (identical weights; only "
                               "its timestamps differ)",
               "": "no model in this target"}[model_verdict]
    else:
        say(f"the two trainings differ ({model_note[:200]}); comparing the model's structure, and re-deriving "
            "what depends on it locally from the cluster's model")
        rule_of = rule_of_file(files_l, outputs_by_rule(smk_local, timeout=120))
        after_model = downstream_rules(smk_local, timeout=120)
        downstream = {f for f, rule in rule_of.items() if rule in after_model}
        train_files = {f for f, rule in rule_of.items() if rule == "train"}
        # Files that no rule declares (training checkpoints) belong to a training that differs: not compared.
        undeclared = files_l - set(rule_of)
        upstream = files_l - downstream - train_files - undeclared
        if undeclared:
            say(f"not compared (declared by no rule): {', '.join(sorted(undeclared))}")
        verdicts, diffs = compare_runs(local, cluster, upstream)
        _compare_model_structure(local, cluster, train_files, diffs)
        # Everything after the model, recomputed here from the cluster's own model file.
        rederived = scratch / "rederived"
        # Without the hidden caches: extraction and the index would otherwise reuse the cluster's own work.
        shutil.copytree(cluster / "results", rederived / "results", copy_function=shutil.copy2,
                        ignore=lambda _dir, names: [n for n in names if n.startswith(".")])
        smk_x = Snakemake(rederived, smk_local.configfile, smk_local.logdir)
        smk_x.run("local-rederive-from-cluster-model", TARGETS, "--profile", str(PROFILE_LOCAL), "--cores", "2",
                  "--forcerun", *sorted(after_model), timeout=timeout)
        v2, d2 = compare_runs(rederived, cluster, downstream)
        verdicts.update({f: v + " (from the cluster's model)" for f, v in v2.items()})
        diffs.update(d2)
        how = ("the data stages and the model's structure match the local run; everything downstream of the model "
               "matches a local recomputation from the cluster's model")
    extra = sorted(result_files(cluster, hidden=True) - result_files(local, hidden=True))
    if extra:  # e.g. a temporary file of a write that the kill interrupted: worth knowing, not a result
        say(f"hidden files only in the cluster run (left by the killed job?): {', '.join(extra)}")
    n_ident = sum(v.startswith("identical") for v in verdicts.values())
    if diffs:
        for name, why in sorted(diffs.items()):
            print(f"    DIFFERS {name}: {why}", flush=True)
        raise Failed(f"{len(diffs)} result files differ between the cluster and the local run")
    say(f"results match: {len(verdicts)} files ({n_ident} byte-identical, the rest equal in content); {how}")


def _compare_model_structure(local: Path, cluster: Path, train_files: set[str], diffs: dict[str, str]) -> None:
    import torch

    for name in sorted(train_files):
        if not name.endswith(".pt"):
            continue  # curves and metrics of a training that differs in its last bits: compared via the model
        a = torch.load(local / name, map_location="cpu", weights_only=True)
        b = torch.load(cluster / name, map_location="cpu", weights_only=True)
        sa = {k: (v.dtype, tuple(v.shape)) for k, v in a.get("state_dict", {}).items()}
        sb = {k: (v.dtype, tuple(v.shape)) for k, v in b.get("state_dict", {}).items()}
        if sorted(a) != sorted(b) or sa != sb or a.get("model_config") != b.get("model_config"):
            diffs[name] = "model structure differs (keys, tensor shapes or model_config)"


def start_index_on_the_cluster(scratch: Path, music: Path) -> tuple[subprocess.Popen, Path, Path]:
    """Step 6 begins: `nafp index` through the SLURM profile, on a folder of songs. It runs beside steps 4 and 5,
    whose jobs form one chain and so keep only one of the node's two CPUs busy."""
    results = scratch / "nafp-index"
    log = scratch / "logs" / f"{len(RUNNING) + 1:02d}-nafp-index.log"
    cmd = [sys.executable, "-m", "workflow_lib.cli.main", "index", str(music), "--results", str(results),
           "--profile", "slurm", "--profile", "slurm-ci", "--shards", "3", "--queries-per-length", "20"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=scratch, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    RUNNING.append(proc)
    return proc, log, results


def check_index_on_the_cluster(proc: subprocess.Popen, log: Path, results: Path, music: Path, timeout: float
                               ) -> None:
    """Step 6 ends: every song of the folder searchable, its fingerprint shards made by a SLURM job."""
    rc = wait(proc, timeout, "nafp index")
    n = len(list(music.glob("*.flac")))
    if rc != 0 or f"{n} songs are searchable" not in log.read_text(errors="replace"):
        raise Failed(f"nafp index through SLURM (rc={rc}) did not make the {n} songs searchable; last lines of "
                     f"{log}:\n{_tail(log)}")
    # slurm-logdir: one folder per rule or group that ran as a SLURM job (slurm-ci keeps the logs of those that passed)
    jobs = sorted(p.name for p in (results / "logs" / "slurm").glob("*") if p.is_dir())
    if not any("shards" in j or "extract" in j for j in jobs):
        raise Failed(f"nafp index: no SLURM job made the fingerprint shards (SLURM log folders: {jobs})")
    say(f"nafp index through SLURM: {n} songs searchable (SLURM jobs: {', '.join(jobs)})")


def no_jobs_left() -> None:
    left = squeue()
    if left:
        raise Failed(f"SLURM jobs left after the test: {left}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scratch", type=Path, required=True, help="empty folder for the runs and their logs")
    ap.add_argument("--config", type=Path, default=REPO / ".ci/cluster-tiny.yaml")
    ap.add_argument("--victim", default="extract", help="rule one of whose SLURM jobs is cancelled mid-run")
    ap.add_argument("--target", default="all", help="what to build (default: all)")
    ap.add_argument("--step-timeout", type=float, default=300, help="seconds allowed for each workflow run")
    args = ap.parse_args(argv)
    TARGETS[:] = [args.target]
    if not os.environ.get("SLURM_CONF"):
        print("SLURM_CONF is not set: start a cluster first (.ci/cluster-test.sh does)", file=sys.stderr)
        return 2
    # A TERM from an outer `timeout` must still end the snakemake runs we started.
    signal.signal(signal.SIGTERM, _interrupt)
    logdir = args.scratch / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    local = Snakemake(args.scratch / "local", args.config.resolve(), logdir)
    cluster = Snakemake(args.scratch / "cluster", args.config.resolve(), logdir)
    try:
        res, plan = check_dry_run(cluster, timeout=120)
        jobs = victim_jobs(plan, args.victim)
        if not jobs:
            raise Failed(f"the DAG has no rule '{args.victim}' to kill a job of")
        # The reference run goes alongside the cluster run: the cluster run mostly waits for status checks.
        local_proc, local_log = local.start("local-run", TARGETS, "--profile", str(PROFILE_LOCAL), "--cores", "2")
        run_with_fault(cluster, args.victim, jobs, timeout=args.step_timeout)
        if wait(local_proc, args.step_timeout, "local run") != 0:
            raise Failed(f"the local reference run failed; last lines of {local_log}:\n{_tail(local_log)}")
        n_total = sum(job_stats(local_log.read_text()).values())
        say(f"local reference run done ({n_total} jobs)")
        music = local.workdir / "results" / "demo_corpus" / "music"
        index_proc, index_log, index_results = start_index_on_the_cluster(args.scratch, music)
        index_deadline = time.monotonic() + 1.5 * args.step_timeout  # it shares the node with the rerun
        rerun_only_missing(cluster, args.victim, n_total, timeout=args.step_timeout)
        compare(local.workdir, cluster.workdir, local, args.scratch, timeout=args.step_timeout)
        check_index_on_the_cluster(index_proc, index_log, index_results, music,
                                   max(index_deadline - time.monotonic(), 30))
        no_jobs_left()
    except Failed as e:
        say(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        stop(*RUNNING)
    say("cluster test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
