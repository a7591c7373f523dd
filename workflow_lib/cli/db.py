"""``nafp db add|remove|info|list``: edit or describe the fingerprint database of a results folder, without
retraining anything.

``add`` fingerprints files (or every audio file below folders) with the folder's model and appends them to the
index and the catalogue; ``remove`` deletes songs by id, file or folder; both are recorded under ``fingerprints/``
so that a later workflow run keeps them. ``info`` describes the database, ``list`` prints its songs (table or
CSV).
"""

from __future__ import annotations

import argparse
import json
import sys

from workflow_lib.cli.main import EXIT_INPUT, EXIT_OK, EXIT_SETUP, common_options, fail
from workflow_lib.cli.text import count, display_width, fit, fmt_time, pad, printable
from workflow_lib.common.layout import missing_results
from workflow_lib.search.threshold import recalibration_advice


def add_parser(sub) -> None:
    p = sub.add_parser("db", help="add songs to, remove songs from, describe or list a database",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    a = dbsub.add_parser("add", help="fingerprint audio files (or every audio file below folders) and add them")
    a.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    a.add_argument("--replace", action="store_true", help="re-fingerprint files that are already in the database")
    a.add_argument("--batch-size", type=int, default=256, help="segments per model batch (default: 256)")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda... (default: auto)")
    r = dbsub.add_parser("remove", help="remove songs by id, file or folder")
    r.add_argument("song_ids", nargs="+", metavar="SONG_ID_FILE_OR_DIR",
                   help="a song id (`nafp db list`), the path of a song's file (even one deleted since), or a "
                        "folder: every song whose file was below it")
    i = dbsub.add_parser("info", help="describe the database")
    i.add_argument("--json", action="store_true", help="print JSON")
    li = dbsub.add_parser("list", help="list the songs in the database")
    li.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    for q in (a, r, i, li):
        common_options(q)
        q.add_argument("--threads", type=int, default=2,
                       help="CPU threads (model, FAISS, decoding the files to add; default: 2)")
        q.set_defaults(run=run)


def _settings(args):
    from workflow_lib.common.config import run_config
    from workflow_lib.common.layout import ResultsLayout

    cfg, _ = run_config(args.results, args.config)
    return ResultsLayout.of(args.results, cfg), cfg


def run(args: argparse.Namespace) -> int:
    from workflow_lib.common.config import ConfigError
    from workflow_lib.common.cpu_process import setup_cpu_process

    if args.threads < 1:
        return fail("--threads must be at least 1")
    if problem := missing_results(args.results):
        return fail(problem)
    setup_cpu_process()  # before torch and faiss load
    from workflow_lib.database.edit import add_files, list_songs, remove_songs

    try:
        layout, cfg = _settings(args)
        if args.db_command == "add":
            data = cfg.get("data", {})
            res = add_files(layout, args.paths, batch_size=args.batch_size, device=args.device,
                            threads=args.threads, replace=args.replace,
                            min_duration_s=data.get("min_duration_s", 3.0),
                            silence_dbfs=data.get("silence_dbfs", -60.0))
            print(f"added {count(len(res['added']), 'song')} ({count(res['fingerprints'], 'fingerprint')})"
                  + (f" -> {res['file']}" if res["file"] else ""))
            for s in res["skipped"]:
                print(f"skipped {printable(s['path'])}: {printable(s['reason'])}", file=sys.stderr)
            _advise_recalibration(layout)
            return EXIT_INPUT if res["skipped"] else EXIT_OK
        if args.db_command == "remove":
            removed, missing = remove_songs(layout, args.song_ids, threads=args.threads)
            print(f"removed {count(len(removed), 'song')}")
            if removed:  # their ids are remembered: a rebuild must not bring them back, even from a new file
                print("note: removed songs stay out when the folders are indexed again, even if their files change; "
                      "`nafp db add FILE` puts a file back", file=sys.stderr)
            for s in missing:
                print(f"not in the database: {printable(s)}", file=sys.stderr)
            return EXIT_INPUT if missing else EXIT_OK
        if args.db_command == "list":
            songs = list_songs(layout)
            if args.csv:
                songs.to_csv(sys.stdout, index=False)
            else:
                print_songs(songs)
            return EXIT_OK
        from workflow_lib.api import describe

        info = describe(layout)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print_info(info)
        return EXIT_OK
    except ConfigError as exc:
        return fail(str(exc), EXIT_SETUP)
    except BrokenPipeError:  # the reader of the listing has gone: main ends quietly
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # our errors name the file or id; no traceback needed
        return fail(str(exc), EXIT_INPUT if args.db_command in ("add", "remove") else EXIT_SETUP)


def _advise_recalibration(layout) -> None:
    from workflow_lib.database.index import read_sidecar
    from workflow_lib.database.other_music import collection_songs

    advice = recalibration_advice(layout.threshold, collection_songs(read_sidecar(layout.index)))
    if advice:
        print(f"note: {advice}", file=sys.stderr)


def print_info(info: dict) -> None:
    mb = 1 << 20
    mem = info["memory_bytes"]
    search = "exact (every fingerprint)" if info["nprobe"] is None else f"{info['nprobe']} lists probed"
    rows = [("songs", f"{info['songs']}  ({info['hours']} h of audio)"),
            *([("other music", f"{count(info['other_music_songs'], 'song')} shipped with the model, indexed beside "
                               "yours: a query that finds one first is no match")]
              if info.get("other_music_songs") else []),
            ("fingerprints", f"{info['fingerprints']}  ({info['dim']}-d, {info['disk_bytes_per_fingerprint']} "
                             "bytes each on disk)" if info["fingerprints"] else f"0  ({info['dim']}-d)"),
            ("index", f"{info['factory']}, {search}"),
            ("model", info["model_checksum"]),
            ("folder", info["index"]),
            ("memory", f"{mem['index'] / mb:.1f} MiB index + {mem['row_map'] / mb:.1f} MiB id map in memory; "
                       f"{mem['vectors_mmap'] / mb:.1f} MiB of vectors memory-mapped"),
            ("built", f"{info['built_at']} in {info['build_seconds']} s"),
            ("edits", f"{info['added_files']} added file(s), {info['removed_songs']} removed song(s)"),
            ("no-match rule", info["recalibrate"] or info["little_music"] or (
                f"calibrated{_music(info['calibrated_on'])}; still fits the database's size" if info["calibrated"]
                else "not calibrated (no threshold.json)"))]
    for key, value in rows:
        print(f"{key:14s} {value}")
    for h in info["history"]:
        print(f"{'':14s} {h['at']} {h['op']} {count(h['songs'], 'song')} ({count(h['rows'], 'fingerprint')})")


def _music(music: dict | None) -> str:
    """' on 50 songs (140 min of music, 40 of them shipped with the model)' for ``api.describe``'s ``calibrated_on``."""
    if not music:
        return ""
    parts = ([f"{music['minutes']:.0f} min of music"] if music["minutes"] is not None else []) + (
        [f"{music['shipped_songs']} of them shipped with the model"] if music["shipped_songs"] else [])
    return f" on {count(music['songs'], 'song')}" + (f" ({', '.join(parts)})" if parts else "")


def print_songs(songs) -> None:
    head = ("artist", "title", "length", "song id")
    rows = [(printable(a) if isinstance(a, str) and a else "-",
             (printable(t) if isinstance(t, str) and t else "-") + (f" [{n} tracks]" if n else ""), fmt_time(d), s)
            for s, t, a, d, n in zip(songs["song_id"], songs["title"], songs["artist"], songs["duration_s"],
                                     songs["tracks"])]
    widths = [min(max([len(h)] + [display_width(r[i]) for r in rows]), 40) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(pad(fit(v, w), w) for v, w in zip(r, widths)))
    print(count(len(rows), "song"), file=sys.stderr)
