"""``nafp query FILE...``: name the song of each file and where in the song it starts.

Prints one row per file: the song (title and artist from the catalogue), where in the song the clip starts, the
confidence (1 - the p-value of the answer among queries of unknown songs, see ``search.answers.Match``) and the
time taken (``--json`` also names the file each song was indexed from, ``song_path``; ``--candidates N`` lists the
N best candidate songs under each answer, ``candidates`` in the JSON; a song held twice, one recording indexed
from two files, lists the other under its answer, ``copies`` in the JSON). A file whose answer fails
the calibrated no-match rule is "no match" (with the reason), and its best guess is shown apart. Unreadable files
are reported with the reason and make the exit status 1; the others are still answered. A folder stands for every
audio file below it; ``-`` reads audio on stdin: WAV as a stream (e.g. ``arecord -d 5 -f S16_LE -r 16000 | nafp
query -``), or a whole MP3, FLAC, Ogg or MP4 file (``cat clip.mp3 | nafp query -``).

A file longer than twice the listening window may hold the song in only part of it (10 s of talk, then the
song), or several songs: it is also scanned (``nafp scan``; in two views, as it is and whitened, when the whole
file is searched in both), and when the scan finds occurrences the answer is the longest one, with its time range
in the file (``file_start_s``, ``file_end_s``; ``offset_s`` is then where in the song that range starts), how many
occurrences the file holds (``occurrences``; see them with ``nafp scan``) and whether only the whitened view found
it (``whitened``).

A song that is an album kept as one file with a cue sheet is answered with the track playing at the offset:
``title`` and ``artist`` are the track's, ``track`` its number, ``track_start_s`` where it starts in the file (the
offset into the track is ``offset_s - track_start_s``) and ``album`` the file's own title; null for other songs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

from workflow_lib.audio.segments import QUERY_SILENCE_DBFS
from workflow_lib.cli.main import EXIT_INPUT, EXIT_OK, EXIT_SETUP, common_options, fail
from workflow_lib.cli.text import display_width, fmt_time, pad, printable
from workflow_lib.common.layout import missing_results

log = logging.getLogger("nafp.query")


def add_parser(sub) -> None:
    from workflow_lib.search.ranking import MODES

    p = sub.add_parser("query", help="name the song (and offset) of audio files",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE_OR_DIR",
                   help="audio files (any supported format and length), or folders: every audio file below them; "
                        "- for audio on stdin (WAV, MP3, FLAC, Ogg, MP4)")
    common_options(p)
    p.add_argument("--json", action="store_true", help="print JSON lines (one object per file) instead of a table")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="sequence: aligned re-scoring; vote: majority of segment hits (default: search.mode)")
    p.add_argument("--top-k", type=int, default=None, help="neighbours per query segment (default: search.top_k)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: search.nprobe)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda... (default: search.device)")
    p.add_argument("--candidates", type=int, default=0, metavar="N",
                   help="also list the N best candidate songs of each answer, best first, with their offsets and "
                        "match scores (JSON: candidates; default: none)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for fingerprinting (default: %(default)s; a query is a small batch, more "
                        "threads only pay off for files of minutes)")
    p.set_defaults(run=run)


def load_searcher(args: argparse.Namespace, overrides: dict | None = None):
    """The ``Searcher`` of ``args.results`` with the settings it was built with (``--config`` and explicit options
    override them): ``api.open_searcher``. Raises ``SetupError``."""
    from workflow_lib.api import open_searcher

    return open_searcher(args.results, args.config, overrides)


def expand_folders(items: list[str]) -> list[tuple[str, str | None]]:
    """Each folder among ``items`` replaced by the audio files below it (as the manifest walks: sorted, hidden
    files skipped); files stay as they are. Each comes with the reason it cannot be answered, or None: a folder
    without audio, and what below a folder may hide audio (a folder that cannot be read, a broken link), are
    answered as errors, not passed over."""
    from workflow_lib.data.folders import audio_below

    out: list[tuple[str, str | None]] = []
    for item in items:
        if not Path(item).is_dir():
            out.append((item, None))
            continue
        files, hidden = audio_below(Path(item))
        out += [(str(p), None) for p in files] + [(h["path"], f"{h['path']}: {h['reason']}") for h in hidden]
        if not files and not hidden:
            out.append((item, f"{item}: a folder without audio files"))
    return out


def _song_and_offset(x: dict) -> tuple[str, float | None]:
    """An answer's (or candidate's) "artist - title", named by its track for an album image, and its offset (into
    the track then)."""
    label = " - ".join(printable(v) for v in (x["artist"], x["title"]) if v) or printable(x["song_id"])
    if x.get("track") is not None:  # the offset column is then into the track
        label += f" (track {x['track']}" + (f" of {printable(x['album'])})" if x.get("album") else ")")
    return label, None if x["offset_s"] is None else x["offset_s"] - (x.get("track_start_s") or 0.0)


def print_table(rows: list[dict], out=None) -> None:
    out = out or sys.stdout
    head = ["file", "song", "artist - title", "offset", "confidence", "time"]
    lines = []
    names = [Path(r["file"]).name for r in rows]
    shared = {n for n, k in Counter(names).items() if k > 1}
    for r, name in zip(rows, names):
        # the file's name, or its path as given where two files share a name (01.mp3 of two albums)
        name = printable(r["file"] if name in shared else name)
        if "error" in r:
            lines.append([name, "ERROR", printable(r["error"]), "", "", ""])
            continue
        offset = None
        if r["match"]:
            song = printable(r["song_id"])
            label, offset = _song_and_offset(r)
        else:
            song = f"no match ({r['reason']})"
            g = r["best_guess"]
            named = " - ".join(printable(x) for x in (g["artist"], g["title"]) if x) if g else ""
            label = f"(best guess: {named or printable(g['song_id'])})" if g else "-"
            if r["reason"] == "silence":
                label = "(digital silence)" if r.get("level_dbfs") is None else \
                    f"(loudest second {r['level_dbfs']:.0f} dBFS, under the {QUERY_SILENCE_DBFS:.0f} dBFS gate)"
        if r.get("occurrences"):
            label += (f" [at {fmt_time(r['file_start_s'])}-{fmt_time(r['file_end_s'])} of the file"
                      + (f"; {r['occurrences']} occurrences, see nafp scan]" if r["occurrences"] > 1 else "]"))
        lines.append([name, song, label, fmt_time(offset) if r["match"] else "-", f"{r['confidence']:.3f}",
                      f"{r['seconds'] * 1000:.0f} ms"])
        for c in (r.get("copies") or ()) if r["match"] else ():  # the same recording under other songs of the database
            named, at = _song_and_offset(c)
            lines.append(["", f"  = {printable(c['song_id'])}", f"{named} (the same recording)", fmt_time(at), "",
                          ""])
        for rank, c in enumerate(r.get("candidates") or [], 1):  # --candidates: one line each, under the answer
            named, at = _song_and_offset(c)
            lines.append(["", f"  {rank}. {printable(c['song_id'])}", f"{named} (score {c['score']:.3f})",
                          fmt_time(at), "", ""])
    widths = [max(len(h), *(display_width(str(x[i])) for x in lines)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)), file=out)
    for x in lines:
        print("  ".join(pad(str(v), w) for v, w in zip(x, widths)), file=out)


def run(args: argparse.Namespace) -> int:
    if args.top_k is not None and args.top_k < 1:
        return fail("--top-k must be at least 1")
    if args.nprobe is not None and args.nprobe < 1:
        return fail("--nprobe must be at least 1")
    if args.threads < 1:
        return fail("--threads must be at least 1")
    if args.candidates < 0:
        return fail("--candidates must be 0 or more")
    if args.files.count("-") > 1:
        return fail("- (stdin) can be given once")
    if problem := missing_results(args.results):  # before torch loads (seconds)
        return fail(problem)
    import numpy as np
    import torch

    from workflow_lib.api import SetupError, answer, listen_config, row_for
    from workflow_lib.audio.decoded import AudioDecodeError
    from workflow_lib.audio.files import load_audio
    from workflow_lib.audio.piped import iter_piped_audio
    from workflow_lib.common.progress import progress

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        searcher, cfg = load_searcher(args, {"top_k": args.top_k, "nprobe": args.nprobe, "device": args.device,
                                             "mode": args.mode})
    except SetupError as exc:
        return fail(str(exc), EXIT_SETUP)
    searcher.warm_up()  # first-call set-up is not part of any file's time
    log.info("database loaded in %.2f s", time.perf_counter() - t0)
    listen = listen_config(cfg)
    rows, failed = [], 0
    files = expand_folders(args.files)
    # a bar for a long batch whose table comes at the end (JSON lines stream); only on a terminal
    for path, unanswerable in progress(files, desc="query", unit="file", leave=False,
                                      disable=None if not args.json and len(files) > 1 else True):
        name = "stdin" if path == "-" else path
        try:
            if unanswerable:  # left by expand_folders: a folder without audio, or one that cannot be read
                raise AudioDecodeError(unanswerable)
            if path == "-":  # a pipe: read to its end, then answered like a file
                audio = np.concatenate([np.zeros(0, np.float32), *iter_piped_audio(sys.stdin.buffer)])
            else:
                audio = load_audio(path)
            row = answer(searcher, audio, listen, name, args.candidates)
        except (AudioDecodeError, ValueError) as exc:
            failed += 1
            row = row_for(name, None, str(exc), None)
        rows.append(row)
        if args.json:  # streamed, so a long batch shows progress
            print(json.dumps(row), flush=True)
    if not args.json:
        print_table(rows)
    return EXIT_INPUT if failed else EXIT_OK
