#!/usr/bin/env python
"""Edit or inspect the fingerprint database of a results folder, without retraining anything.

    .venv/bin/python scripts/db.py [--results results] add FILE_OR_DIR... [--replace]
    .venv/bin/python scripts/db.py [--results results] remove SONG_ID...
    .venv/bin/python scripts/db.py [--results results] info [--json]

``add`` fingerprints the files with the folder's model (results/model/model.pt), appends them to the index and the
catalogue; ``remove`` deletes songs by id. Both are recorded under results/fingerprints/ so that a later
``snakemake build_index`` keeps them. Exit status 1 on errors (the message names the file or id).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from any directory
    sys.path.insert(0, str(REPO))

from workflow_lib.common.cpu_process import setup_cpu_process  # noqa: E402

setup_cpu_process()  # before torch and faiss load

from workflow_lib.common.logs import setup_logging  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Add songs to, remove songs from, or describe the fingerprint database.")
    p.add_argument("--results", default="results", help="workflow results folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the model and FAISS (default: 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="fingerprint audio files (or every audio file below folders) and add them")
    a.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
    a.add_argument("--replace", action="store_true", help="re-fingerprint files that are already in the database")
    a.add_argument("--batch-size", type=int, default=256, help="segments per model batch (default: 256)")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda... (default: auto)")
    r = sub.add_parser("remove", help="remove songs by id")
    r.add_argument("song_ids", nargs="+", metavar="SONG_ID")
    i = sub.add_parser("info", help="describe the database")
    i.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(None, logging.INFO if args.verbose else logging.WARNING)
    from workflow_lib.database.edit import add_files, database_info, remove_songs

    try:
        if args.command == "add":
            res = add_files(args.results, args.paths, batch_size=args.batch_size, device=args.device,
                            threads=args.threads, replace=args.replace)
            print(f"added {len(res['added'])} songs ({res['fingerprints']} fingerprints) -> {res['file']}")
            for s in res["skipped"]:
                print(f"skipped {s['path']}: {s['reason']}")
            return 0
        if args.command == "remove":
            removed, missing = remove_songs(args.results, args.song_ids, threads=args.threads)
            print(f"removed {len(removed)} songs")
            for s in missing:
                print(f"not in the database: {s}")
            return 1 if missing else 0
        info = database_info(args.results)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for key in ("index", "model_checksum", "factory", "nprobe", "songs", "fingerprints", "hours",
                        "disk_bytes_per_fingerprint", "built_at", "build_seconds", "added_files", "removed_songs"):
                print(f"{key:28s} {info[key]}")
            print(f"{'memory_bytes':28s} {info['memory_bytes']}")
            for h in info["history"]:
                print(f"{'edit':28s} {h['at']} {h['op']} {h['songs']} songs ({h['rows']} fingerprints)")
        return 0
    except (OSError, ValueError, RuntimeError) as exc:  # our errors name the file or id; no traceback needed
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
