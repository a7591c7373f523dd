#!/usr/bin/env python
"""Identify audio files against the fingerprint database built by the workflow.

    .venv/bin/python scripts/query.py clip1.mp3 clip2.wav [--results results] [--json] [--mode sequence|vote]

Prints one row per file: the song (title and artist from the catalogue), where in the song the clip starts, the
confidence (the share of queries from songs outside the database that score lower) and the time taken. A file
whose best score stays below the calibrated no-match threshold is reported as "no match". Unreadable files are
reported with the reason and make the exit status 1; the other files are still answered.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from any directory
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from workflow_lib.audio.files import AudioDecodeError, load_audio  # noqa: E402
from workflow_lib.search.searcher import MODES, Match  # noqa: E402

log = logging.getLogger("query")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Identify audio files (song and offset) with the fingerprint database.")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (any supported format and length)")
    p.add_argument("--results", default="results", help="workflow results folder (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON lines (one object per file) instead of a table")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="sequence: aligned re-scoring; vote: majority of segment hits (default: config search.mode)")
    p.add_argument("--top-k", type=int, default=None, help="neighbours per query segment (default: config)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: config)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda... (default: config search.device)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for fingerprinting (default: %(default)s; a query is a small batch, more "
                        "threads only pay off for files of minutes)")
    p.add_argument("--config", default=str(REPO / "config" / "config.yaml"),
                   help="config file for the search defaults (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    if args.top_k is not None and args.top_k < 1:
        p.error("--top-k must be at least 1")
    if args.nprobe is not None and args.nprobe < 1:
        p.error("--nprobe must be at least 1")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def search_settings(args: argparse.Namespace) -> dict:
    """Search keyword arguments: the config's ``search:`` section, overridden by the command line."""
    import yaml

    from workflow_lib.search.searcher import searcher_kwargs as search_kwargs

    cfg_path = Path(args.config)
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except FileNotFoundError:
        raise SystemExit(f"error: config file not found: {cfg_path}") from None
    kw = search_kwargs(cfg.get("search", {}))
    for key in ("top_k", "nprobe", "device", "mode"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    return kw


def fmt_offset(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    sign = "-" if s < 0 else ""
    m, sec = divmod(abs(s), 60)
    return f"{sign}{int(m)}:{sec:04.1f}"


def row_for(path: str, match: Match | None, error: str | None, duration_s: float | None) -> dict:
    if error is not None:
        return {"file": path, "error": error}
    assert match is not None
    g = match.best_guess
    guess = None if g is None else {"song_id": g.song_id, "title": g.title, "artist": g.artist,
                                    "offset_s": g.offset_s, "score": round(g.score, 4)}
    return {"file": path, "match": match.is_match, "song_id": match.song_id, "title": match.title,
            "artist": match.artist, "offset_s": match.offset_s, "confidence": round(match.confidence, 4),
            "reason": match.reason, "best_guess": guess,
            "score": round(match.score, 4) if math.isfinite(match.score) else None,
            "decision": round(match.decision, 4) if math.isfinite(match.decision) else None,
            "threshold": round(match.threshold, 4), "mode": match.mode, "query_s": duration_s,
            "seconds": round(match.seconds_taken, 4)}


def print_table(rows: list[dict]) -> None:
    head = ["file", "song", "artist - title", "offset", "confidence", "time"]
    lines = []
    for r in rows:
        name = Path(r["file"]).name
        if "error" in r:
            lines.append([name, "ERROR", r["error"], "", "", ""])
            continue
        song = r["song_id"] if r["match"] else f"no match ({r['reason']})"
        label = " - ".join(x for x in (r["artist"], r["title"]) if x) or "-"
        if not r["match"]:
            g = r["best_guess"]
            label = f"(best guess: {' - '.join(x for x in (g['artist'], g['title']) if x) or g['song_id']})" \
                if g else "-"
        lines.append([name, song or "-", label, fmt_offset(r["offset_s"]) if r["match"] else "-",
                      f"{r['confidence']:.3f}", f"{r['seconds'] * 1000:.0f} ms"])
    widths = [max(len(h), *(len(str(x[i])) for x in lines)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for x in lines:
        print("  ".join(str(v).ljust(w) for v, w in zip(x, widths)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    import torch

    from workflow_lib.search.searcher import Searcher

    torch.set_num_threads(args.threads)
    kw = search_settings(args)
    t0 = time.perf_counter()
    try:
        searcher = Searcher.from_results(args.results, **kw)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: cannot load the database from {args.results}: {exc}", file=sys.stderr)
        return 2
    searcher.embed(np.zeros(8000, dtype=np.float32))  # first-call set-up is not part of any file's time
    log.info("database loaded in %.2f s", time.perf_counter() - t0)
    rows, failed = [], 0
    for path in args.files:
        try:
            audio = load_audio(path)
            match = searcher.identify(audio)
            row = row_for(path, match, None, round(len(audio) / 8000, 3))
        except (AudioDecodeError, ValueError) as exc:
            failed += 1
            row = row_for(path, None, str(exc), None)
        rows.append(row)
        if args.json:  # streamed, so a long batch shows progress
            print(json.dumps(row), flush=True)
    if not args.json:
        print_table(rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
