"""``nafp index MUSIC_DIR...``: make a music collection searchable with the bundled model, no training.

Runs the workflow's ``searchable`` target (manifest, fingerprints of every song, the FAISS index, the catalogue and
the no-match calibration) with the collection's folders, the bundled model (or ``--model``) and the results folder
as its working directory. Progress is Snakemake's and each job's; a killed run is resumed by the same command, and
running it again after adding files picks them up. Ends by printing what to run next.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from workflow_lib.cli.main import EXIT_OK, EXIT_SETUP, fail
from workflow_lib.cli.text import count
from workflow_lib.common.config import REPO
from workflow_lib.common.layout import BUNDLED_MODELS
from workflow_lib.common.logs import CONSOLE_LEVEL_ENV, TERMINAL_ENV

INDEX_CONFIG = "index-config.yaml"  # written into the results folder: the same command resumes with it


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="make a folder of music searchable with the bundled model (no training)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("music", nargs="+", metavar="MUSIC_DIR", help="folders of music, scanned recursively")
    p.add_argument("--results", default="results", help="where the database goes (default: %(default)s)")
    p.add_argument("--model", default="bundled",
                   help="bundled (default: the fastest), bundled-pair (two models searched as one: about twice "
                        "the compute, more right answers in resonant spaces, noisy rooms and speed changes, the "
                        "better choice for `nafp listen`; models/README.md), or the path of a model file")
    p.add_argument("--cores", default=None,
                   help="CPU cores to use (default: all; with --profile, the profile's: the most one job may ask for)")
    p.add_argument("--profile", action="append", default=None, metavar="PROFILE",
                   help="run the stages through a Snakemake profile: slurm (a SLURM job per group of fingerprint "
                        "shards, from a login node; docs/cluster.md), local, or a profile folder; repeat to layer "
                        "one over another")
    p.add_argument("--shards", type=int, default=None,
                   help="fingerprint jobs (extract.n_shards; default: this machine's CPUs, at least 2). On a "
                        "cluster, pick them so that one runs 10-60 minutes (docs/cluster.md, sizing)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the jobs that would run, with the threads, memory and time each asks for (a cluster "
                        "profile's resources too), and run none")
    p.add_argument("--queries-per-length", type=int, default=1000,
                   help="unknown-song queries per query length for the no-match calibration (default: 1000; "
                        "more hold the threshold steadier, for proportionally more calibration time)")
    p.add_argument("--unknown-music", action="append", default=None, metavar="DIR",
                   help="other music, not to be indexed, that stands for the songs the database does not hold: the "
                        "no-match rule is calibrated on it too. The bundled models bring 40 songs of such music "
                        "(models/README.md); with a model of your own, a collection of under 20 songs or 45 "
                        "minutes needs it (else more unknown music is answered than the rule's 1 %%). Give it at "
                        "every run")
    p.add_argument("--config", default=None, help="a config file merged over the index settings")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="Snakemake's full output and each stage's log lines (else only in RESULTS/logs/)")
    p.set_defaults(run=run)


# The listener's and scan's per-window false-positive rate for the bundled pair (listen.max_fpr; 0.005, the default,
# for a model of your own): its calibrated thresholds run further under their rate in held-out conditions than the
# single model's, and at 0.005 it named a sixth fewer songs at 0 dB; 0.007 met every monitoring target on the
# programmes of seeds 3-8, with the first pair and with the shipped one (bench/README.md, "Two models side by side",
# "The pair's second member...").
PAIR_LISTEN_MAX_FPR = 0.007
# And a song that leads the window at one alignment for 16 hops (8 s) is declared below the threshold
# (listen.persistent_hops; off in the default settings): with the pair it named a drum loop no threshold reached and
# lifted the 0 dB F1 on every group of programme seeds, false alarms staying under 1 min/h over all of them
# (bench/README.md, "A song that leads without passing the threshold").
PAIR_LISTEN_PERSISTENT_HOPS = 16
# The bundled single model declares after 12 hops (6 s). Both follow a song across a dip only towards 3 s that hold
# (listen.follow_island_s). Over 192 programmes (seeds 0-47) the bundled model of 2026-12-01 then scored F1 0.983 /
# 0.919 at 10 / 0 dB with 0.93 false-alarm min/h (without either: 0.963 / 0.861, 0.60), the pair 0.987 / 0.941,
# 0.75 (persistence alone: 0.987 / 0.952, 0.94) (bench/README.md, "Edges: a stretch that holds").
BUNDLED_LISTEN_PERSISTENT_HOPS = 12
# The bundled model of 2026-12-05 (fine-tuned with whitened views) separates songs better, and its per-window rate
# runs higher at 0.005: on the programmes of seeds 0-11 its scan's false alarms rose to 0.90 / 1.06 min/h at 10 / 0
# dB (its first stage 0.76 / 0.78). Its scan decides at 0.003 (listen.scan_max_fpr): over seeds 0-23 F1 0.984 /
# 0.916 and 0.93 / 0.63 min/h (first stage at 0.005: 0.981 / 0.911, 0.99 / 0.57). The live listener keeps 0.005,
# where it names more songs sooner than at 0.003 (97 against 95 of 100 in a room at 10 dB, a median 3.0 s to the
# first right song against 4.0 s) with as few false declarations (bench/README.md, "The whitened-view model
# shipped").
BUNDLED_SCAN_MAX_FPR = 0.003
FOLLOW_ISLAND_S = 3.0
# With the other music in its index, a small collection's thresholds halve, and music resembling one of its songs
# set that song off again and again at wandering places (listen.redeclare_s): over 3.4 h of other music beside 10
# songs, 20 declarations instead of 32 (bench/README.md, "A song declared again").
REDECLARE_S = 120.0


def index_config(music: list[Path], model: str, queries_per_length: int, shards: int | None = None,
                 unknown: list[Path] = ()) -> dict:
    """Settings of an index-only run: every song in the database, nothing trained, results in the folder itself;
    ``unknown`` music is only searched as unknown, by the calibration."""
    cfg = {"results": ".",
           "data": {"music_dirs": [str(m) for m in music], "unknown_dirs": [str(u) for u in unknown]},
           "model": {"source": model},
           "split": {"fractions": {"train": 0.0, "val": 0.0, "test": 1.0, "distractor": 0.0}},
           "extract": {"splits": ["train", "val", "test", "distractor"],
                       "n_shards": shards or max(2, os.cpu_count() or 2)},
           # no evaluation follows, so every song gives null queries (a half is kept for it otherwise)
           # the model's other music in the index and its null queries in the calibration (database.other_music)
           "index": {"other_music": True},
           "search": {"calibration": {"queries_per_length": queries_per_length, "songs": "all",
                                      "bundled_other_music": True}}}
    cfg["listen"] = {"redeclare_s": REDECLARE_S}
    if model == "bundled-pair":
        cfg["listen"].update(max_fpr=PAIR_LISTEN_MAX_FPR, persistent_hops=PAIR_LISTEN_PERSISTENT_HOPS,
                             follow_island_s=FOLLOW_ISLAND_S)
    elif model == "bundled":
        cfg["listen"].update(scan_max_fpr=BUNDLED_SCAN_MAX_FPR, persistent_hops=BUNDLED_LISTEN_PERSISTENT_HOPS,
                             follow_island_s=FOLLOW_ISLAND_S)
    return cfg


# Below this, a failed run is blamed on the disk: a run writes tens of MB per 10 h of music (fingerprints, index,
# noise and room banks), and not every writer's error says that the disk is full (FAISS's, a map's SIGBUS).
LOW_DISK_BYTES = 100 * 1024 ** 2


def low_disk(folder: Path) -> str | None:
    """'the disk of FOLDER has N MB free' when that is under ``LOW_DISK_BYTES``, else None."""
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    return f"the disk of {folder} has {free / 1024 ** 2:.0f} MB free" if free < LOW_DISK_BYTES else None


def run(args: argparse.Namespace) -> int:
    import yaml

    music = [Path(m).expanduser().resolve() for m in args.music]
    unknown = [Path(u).expanduser().resolve() for u in args.unknown_music or []]
    missing = [str(m) for m in [*music, *unknown] if not m.is_dir()]
    if missing:
        return fail(f"not a folder: {', '.join(missing)}")
    if overlap := [f"{u} and {m}" for u in unknown for m in music if u == m or u in m.parents or m in u.parents]:
        return fail(f"--unknown-music: a folder of unknown music must lie apart from the music folders (its songs "
                    f"would be indexed, or the collection's searched as unknown): {'; '.join(overlap)}")
    from workflow_lib.data.folders import is_utf8, not_utf8_folder

    results = Path(args.results).expanduser().resolve()
    undecodable = [f for f in [*music, *unknown, results] if not is_utf8(f)]
    if undecodable:  # the run's config and tables hold the paths, and hold UTF-8 only
        return fail("; ".join(not_utf8_folder(f) for f in undecodable))
    from workflow_lib.audio.files import AUDIO_EXTENSIONS  # here: `nafp --help` starts without the decoders

    empty = [str(m) for m in [*music, *unknown] if not _holds_audio(m, AUDIO_EXTENSIONS)]
    if empty:
        return fail(f"no audio files under {', '.join(empty)} (looked for {', '.join(sorted(AUDIO_EXTENSIONS))})")
    model = args.model
    if model not in BUNDLED_MODELS:
        model = str(Path(model).expanduser().resolve())
        if not Path(model).is_file():
            return fail(f"--model: no such file: {args.model}")
        # Loaded once here (torch's import, seconds) so that a file that is no model is named before any stage,
        # not in every fingerprint job's traceback.
        from workflow_lib.model.model_file import ModelFileError, load_fingerprinter

        try:
            load_fingerprinter(model)
        except ModelFileError as exc:
            return fail(f"--model: {exc}")
    if args.queries_per_length < 10:
        return fail("--queries-per-length must be at least 10")
    if args.shards is not None and args.shards < 1:
        return fail("--shards must be at least 1")
    profiles = [profile_folder(p) for p in args.profile or []]
    if no_such := [p for p, folder in zip(args.profile or [], profiles) if folder is None]:
        return fail(f"--profile: no such profile: {', '.join(no_such)} (a name in {REPO / 'profiles'}: "
                    f"{', '.join(PROFILE_NAMES)}; or a folder with a config.yaml)")
    settings = index_config(music, model, args.queries_per_length, args.shards, unknown)
    problem = config_problem(settings, args.config)
    if problem:  # named before any stage: running the same command again would not help
        return fail(problem)
    from workflow_lib.common.locks import run_alive

    if run_alive(results / ".snakemake"):  # before its settings file is rewritten under the running stages
        return fail(f"another run is indexing into {results} now (nafp index or the workflow): let it end, or stop "
                    "it, then run this again", EXIT_SETUP)
    made_here = args.dry_run and not results.exists()
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, a folder of someone else's, a read-only disk
        what = "is a file, not a folder" if results.is_file() else f"cannot be made ({exc.strerror or exc})"
        return fail(f"--results {args.results}: {what}")
    cfg_path = results / INDEX_CONFIG
    cfg_path.write_text("# Settings of `nafp index` for this folder (rewritten by each run of it).\n" +
                        yaml.safe_dump(settings, sort_keys=False))
    # One --configfile with both files: Snakemake merges the files of one option, but a repeated option keeps only
    # its last (the index settings would be lost, and the defaults' demo corpus run in the folder). The target goes
    # first: after a list option it would be read as one more file.
    cmd = [sys.executable, "-m", "snakemake", "searchable", "-s", str(REPO / "Snakefile"), "--directory", str(results),
           *[x for folder in profiles for x in ("--profile", str(folder))],
           # a profile's own cores (on a cluster: the most CPUs one job may ask for) unless asked otherwise
           *(["--cores", str(args.cores or "all")] if args.cores or not profiles else []),
           "--configfile", str(cfg_path), *([str(Path(args.config).resolve())] if args.config else [])]
    if args.dry_run:
        return dry_run(cmd, results, made_here)
    if not args.verbose:
        cmd += ["--quiet", "progress", "rules", "host"]  # what a user needs: the stages' own progress bars
    through = f"; through {' + '.join(args.profile)}" if profiles else ""
    calibrated_on = f"; unknown music: {', '.join(map(str, unknown))}" if unknown else ""
    print(f"indexing {', '.join(map(str, music))} into {results} (model: {model}{through}{calibrated_on})",
          file=sys.stderr)
    env = stage_env(args.verbose, sys.stderr)
    before = _indexed_songs(results)
    if args.verbose:
        rc = subprocess.run(cmd, cwd=results, env=env).returncode
    else:  # the stages' bars, warnings and errors; not Snakemake's own bookkeeping lines
        from workflow_lib.cli.chatter import run_without_chatter

        rc = run_without_chatter(cmd, _binary(sys.stderr), cwd=results, env=env)
    if rc != 0:
        if low := low_disk(results):
            return fail(f"indexing stopped (Snakemake exit status {rc}): {low}, which is likely why. Free some "
                        "space, then run the same command again to resume.", EXIT_SETUP)
        return fail(f"indexing stopped (Snakemake exit status {rc}); the messages above say why. Run the same "
                    "command again to resume.", EXIT_SETUP)
    after = _indexed_songs(results)
    n = len(after or ())
    left_out = rejected_summary(results / "manifest" / "rejected.csv")
    if left_out:
        print("\n" + left_out)
    print(f"\n{count(n, 'song')} {'is' if n == 1 else 'are'} searchable in {results}"
          f"{change_note(before, after)}. Next:\n" + next_steps(results))
    return EXIT_OK


def dry_run(cmd: list[str], results: Path, made_here: bool) -> int:
    """Snakemake's own dry run of the index (every job with its resources), printed as it is; a results folder
    made only for it is removed again."""
    import shutil

    try:
        rc = subprocess.run([*cmd, "--dry-run"], cwd=results).returncode
    finally:
        if made_here:
            shutil.rmtree(results, ignore_errors=True)
    if rc != 0:
        return fail(f"the dry run stopped (Snakemake exit status {rc}); the messages above say why", EXIT_SETUP)
    print("dry run: nothing was run" + (f"; {results} was made for it and removed again" if made_here else ""),
          file=sys.stderr)
    return EXIT_OK


# The profiles of this repository a user may name (profiles/default is Snakemake's own, always loaded; slurm-ci
# fits profiles/slurm to the CI's one-node test cluster).
PROFILE_NAMES = ("local", "slurm", "slurm-ci")


def profile_folder(profile: str) -> Path | None:
    """The folder of a ``--profile``: one of ``PROFILE_NAMES``, else a folder holding a config.yaml; None if
    neither."""
    folder = REPO / "profiles" / profile if profile in PROFILE_NAMES else Path(profile).expanduser().resolve()
    return folder if (folder / "config.yaml").is_file() else None


def config_problem(settings: dict, config_path: str | None) -> str | None:
    """What is wrong with the run's config (the defaults, ``settings``, then the ``--config`` file, merged as
    Snakemake will), or None."""
    from workflow_lib.common.config import DEFAULT_CONFIG, ConfigError, merge, read_yaml, validate

    try:
        user = read_yaml(config_path) if config_path else {}
        validate(merge(merge(read_yaml(DEFAULT_CONFIG), settings), user),
                 ["config/config.yaml", "the index settings", *([config_path] if config_path else [])])
    except ConfigError as exc:
        return f"{exc}; nothing was run"
    return None


def change_note(before: set[str] | None, after: set[str] | None) -> str:
    """`` (2 added, 1 removed since the last run)``, or nothing on a first run or when the songs are the same."""
    if before is None or after is None or before == after:
        return ""
    return f" ({len(after - before)} added, {len(before - after)} removed since the last run)"


def next_steps(results: Path) -> str:
    """The commands to run next, with the folder quoted for the shell where it needs it (spaces, quotes)."""
    r = shlex.quote(str(results))
    return (f"  nafp query CLIP.mp3 --results {r}          name the song of a file\n"
            f"  nafp scan RECORDING.wav --results {r}      every song in a long recording\n"
            f"  nafp listen --results {r}                  the microphone, live\n"
            f"  nafp db add NEW_FOLDER --results {r}       add songs later (no retraining)")


def rejected_summary(rejected_csv: Path, show: int = 5) -> str:
    """The files the manifest left out, a line each with the first line of its reason (the first ``show`` of them),
    so that a user sees them after the stages' logs; empty when none was left out. Files that are not audio at all
    (cover art, rip logs, playlists: files with another extension) are counted by extension instead of listed, so
    that they do not hide the audio files that could not be used; rejected.csv lists them all."""
    import csv
    from collections import Counter

    from workflow_lib.audio.files import AUDIO_EXTENSIONS

    try:
        with open(rejected_csv, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return ""
    # By what the path is, not by the reason's words: a folder that cannot be read, a broken link or a name that is
    # not UTF-8 (shown escaped) is no regular file, and stays listed.
    listed, other = [], []
    for r in rows:
        path = Path(r.get("path") or "")
        (other if path.suffix.lower() not in AUDIO_EXTENSIONS and path.is_file() else listed).append(r)
    lines = []
    if listed:
        lines.append(f"{count(len(listed), 'file')} {'was' if len(listed) == 1 else 'were'} not indexed "
                     f"({rejected_csv} has every reason):")
    for r in listed[:show]:
        reason = (r.get("reason") or "").splitlines()[0] if r.get("reason") else "?"
        lines.append(f"  {r.get('path')}: {reason}")
    if len(listed) > show:
        lines.append(f"  ... and {len(listed) - show} more")
    if other:
        kinds = Counter(Path(r["path"]).suffix.lower() or "(no extension)" for r in other).most_common()
        shown_kinds = ", ".join(f"{k} {n}" for k, n in kinds[:4]) + (f", {len(kinds) - 4} more kinds"
                                                                    if len(kinds) > 4 else "")
        lines.append(f"{'Also ' if listed else ''}{count(len(other), 'file')} {'is' if len(other) == 1 else 'are'} "
                     f"not audio ({shown_kinds}){'' if listed else f'; {rejected_csv} lists them'}.")
    return "\n".join(lines)


def _holds_audio(folder: Path, extensions: set[str]) -> bool:
    """Whether any file below ``folder`` has one of ``extensions`` (stops at the first): an empty or mistyped
    folder is named here in one line instead of in the manifest stage's traceback."""
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, files in os.walk(folder, followlinks=True):  # as the manifest walks: links followed once
        if any(Path(f).suffix.lower() in extensions for f in files if not f.startswith(".")):
            return True
        real = [os.path.realpath(os.path.join(dirpath, d)) for d in dirnames]
        dirnames[:] = [d for d, r in zip(dirnames, real) if not d.startswith(".") and r not in seen]
        seen.update(real)
    return False


def _binary(stream):
    """The byte stream below a text stream (or the text stream, fed decoded bytes, where it has none: a test's)."""
    if hasattr(stream, "buffer"):
        return stream.buffer

    class Decoded:
        def write(self, data: bytes) -> None:
            stream.write(data.decode("utf-8", "replace"))

        def flush(self) -> None:
            stream.flush()

    return Decoded()


def stage_env(verbose: bool, stderr) -> dict[str, str]:
    """The environment of the workflow's stages, whose stderr is this command's pipe (the chatter filter's)."""
    env = dict(os.environ)
    if not verbose:  # each stage's accounting stays in its log file (results/logs/)
        env.setdefault(CONSOLE_LEVEL_ENV, "WARNING")
    env[TERMINAL_ENV] = "1" if stderr.isatty() else "0"  # live bars where someone watches them, else lines
    return env


def _indexed_songs(results: Path) -> set[str] | None:
    """The song ids of the folder's index but its other music (``database.other_music``), or None when it has none
    (yet)."""
    import pyarrow.parquet as pq

    from workflow_lib.database.other_music import is_other_music

    try:
        ids = pq.read_table(results / "index" / "index_meta.parquet", columns=["song_id"]).column(0)
    except (OSError, ValueError):  # no index yet, or a damaged one that the run replaces
        return None
    return {str(s) for s in ids.unique().to_pylist() if not is_other_music(s)}
