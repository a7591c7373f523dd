"""``nafp scan FILE...``: every song in long recordings (radio, TV, DJ mixes, podcasts), with where each starts and
ends in the recording and in the song, and the gaps between them (silence, or no match: unknown music or talk).

``-`` reads audio on stdin: WAV as a stream, e.g. ``ffmpeg -i show.m4a -f wav - | nafp scan -``, or a whole MP3, FLAC,
Ogg or MP4 file. Runs as fast as the CPU allows with the listener's decision logic and the results folder's calibrated
no-match rule. Output: a readable table (default), ``--json`` lines or ``--csv``, one row per occurrence or gap;
``--plot PNG`` draws the timeline. ``--min-duration 10`` reports only plays of 10 s or more (radio and TV monitoring).
``--whitened`` also scans the recording whitened, as a query of 3 s or more is searched
(``listener.scan.merge_views``): for a recording made with a microphone in a small, tiled or resonant room
(bench/README.md, "Scanning in two views").

An album kept as one file with a cue sheet is a row per track: ``title``/``artist`` are the track's, ``track`` its
number, ``track_start_s`` where it starts in the file (``song_start_s``/``song_end_s`` stay times in the file) and
``album`` the file's own title; null for other songs.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from workflow_lib.cli.main import EXIT_INPUT, EXIT_OK, EXIT_SETUP, common_options, fail
from workflow_lib.cli.text import fmt_time, printable, song_label
from workflow_lib.common.layout import missing_results

FIELDS = ["file", "kind", "start_s", "end_s", "song_id", "title", "artist", "song_start_s", "song_end_s",
          "confidence", "whitened", "track", "track_start_s", "album", "song_path"]


def add_parser(sub) -> None:
    p = sub.add_parser("scan", help="every song in a long recording, with where it starts and ends",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE_OR_DIR",
                   help="recordings (any supported format), folders (every audio file below them), or - for audio on "
                        "stdin (WAV, MP3, FLAC, Ogg, MP4)")
    common_options(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON lines, one object per occurrence or gap")
    out.add_argument("--csv", action="store_true", help="CSV with a header, one row per occurrence or gap")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="draw the timeline (one PNG per file; with several files, FILE's name is added)")
    p.add_argument("--window", type=float, default=None, metavar="SECONDS",
                   help="seconds of audio searched together (default: listen.window_s)")
    p.add_argument("--min-duration", type=float, default=0.0, metavar="SECONDS",
                   help="report only occurrences at least this long (default: 0, every one); e.g. 10 for radio "
                        "monitoring, where a few seconds of a song are more often a false alarm than a play")
    p.add_argument("--whitened", action="store_true",
                   help="also scan the recording whitened (as a query of 3 s or more is searched): for recordings "
                        "made in a small, tiled or resonant room; fingerprints every second twice")
    p.add_argument("--device", default=None, help="where the model runs: auto, cpu, cuda (default: search.device)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the model (default: 2)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        return fail("--threads must be at least 1")
    if not args.min_duration >= 0:
        return fail(f"--min-duration must be 0 or more seconds, got {args.min_duration:g}")
    if args.files.count("-") > 1:
        return fail("- (stdin) can be given once")
    if problem := missing_results(args.results):
        return fail(problem)
    from workflow_lib.cli.listen import load_settings, old_gate_note
    from workflow_lib.api import SetupError, scan_recording, with_song_path
    from workflow_lib.cli.query import expand_folders, load_searcher

    try:
        settings = load_settings(args.results, args.config, {"window_s": args.window})
    except ValueError as exc:
        return fail(str(exc))
    if note := old_gate_note(settings.listen):
        print(note, file=sys.stderr)
    import torch

    from workflow_lib.audio.decoded import AudioDecodeError
    from workflow_lib.audio.files import iter_audio
    from workflow_lib.audio.piped import iter_piped_audio
    from workflow_lib.listener.scan import fingerprint_workers, plot_timeline, whitened_view

    torch.set_num_threads(args.threads)
    try:
        searcher, _ = load_searcher(args, {"device": args.device})
    except SetupError as exc:
        return fail(str(exc), EXIT_SETUP)
    workers = fingerprint_workers(args.threads, searcher.device)
    if args.whitened:
        try:
            whitened_view(searcher)
        except ValueError as exc:
            return fail(str(exc), EXIT_SETUP)
    writer = csv.DictWriter(sys.stdout, FIELDS) if args.csv else None
    if writer:
        writer.writeheader()
    failed = 0
    files, plots = expand_folders(args.files), set()
    for path, unscannable in files:
        if unscannable:  # left by expand_folders: a folder without audio, or one that cannot be read
            failed += 1
            print(f"error: {printable(unscannable)}", file=sys.stderr)
            continue
        chunks = iter_piped_audio(sys.stdin.buffer) if path == "-" else iter_audio(path)
        try:
            # an album image played through: a row per track; shorter than a segment: an error, not even a gap
            result = scan_recording(searcher, chunks, settings.listen, "stdin" if path == "-" else path,
                                    args.min_duration, workers, args.whitened)
        except (AudioDecodeError, ValueError) as exc:
            failed += 1
            print(f"error: {printable(exc)}", file=sys.stderr)
            continue
        rows = [with_song_path(r, searcher.song_paths) for r in result.rows()]
        if args.json:
            for r in rows:
                print(json.dumps(r), flush=True)
        elif writer:
            writer.writerows(rows)
        else:
            print_timeline(result)
        if args.plot:
            target = Path(args.plot) if len(files) == 1 else \
                Path(args.plot).with_name(f"{Path(args.plot).stem}-{Path(path).stem}{Path(args.plot).suffix}")
            while target in plots:  # two recordings of one name (in two folders): one drawing each
                target = target.with_name(f"{target.stem}-2{target.suffix}")
            plots.add(target)
            plot_timeline(result, target)
            print(f"timeline drawn: {target}", file=sys.stderr)
    return EXIT_INPUT if failed else EXIT_OK


def print_timeline(result) -> None:
    print(f"{printable(result.name)}: {fmt_time(result.duration_s)} scanned in {result.compute_s:.1f} s "
          f"({result.duration_s / max(result.compute_s, 1e-9):.0f}x realtime), {len(result.occurrences)} "
          f"occurrence{'s' if len(result.occurrences) != 1 else ''}")
    for r in result.timeline():
        span = f"{fmt_time(r.start_s):>9} - {fmt_time(r.end_s):<9}"
        if r.kind == "song":
            where = "song" if r.track is None else \
                f"track {r.track}" + (f" of {printable(r.album)}" if r.album else "") + " at"
            into = r.track_start_s or 0.0  # times into the track of an album image
            print(f"  {span} {song_label(r.title, r.artist, r.song_id)}  ({where} {fmt_time(r.song_start_s - into)}-"
                  f"{fmt_time(r.song_end_s - into)}, confidence {r.confidence:.2f})")
        else:
            print(f"  {span} ({r.kind})")
