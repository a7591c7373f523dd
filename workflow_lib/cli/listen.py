"""``nafp listen``: name the song playing into the microphone (or an audio file played through the same path),
continuously, within seconds.

A live line shows the current song, its position (advancing with time), the confidence and the compute time per
decision; events (a song named, a change, the music stopping) get their own lines. Ctrl-C ends the session with a
summary of what was heard. Settings: the ``listen:`` and ``search:`` sections the results folder was built with
(``--config`` merges a file on top), then the options below. Exit status: 0 done, 1 a failure while listening,
2 cannot start. The listening itself is ``listener.core``; this module is the command and the terminal display.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from workflow_lib.api import LISTEN_COMMAND_KEYS, summary_with_song_paths, with_song_path
from workflow_lib.audio.segments import QUERY_SILENCE_DBFS
from workflow_lib.cli.main import EXIT_INPUT, EXIT_OK, common_options, fail
from workflow_lib.cli.text import display_width, fit, fmt_time, song_label, terminal_width
from workflow_lib.common.layout import missing_results
from workflow_lib.listener.decisions import MATCH, SILENCE, Decision, ListenSummary
from workflow_lib.listener.settings import ListenConfig
from workflow_lib.listener.tracks import decision_by_track, summary_by_tracks
from workflow_lib.search.threshold import shown

log = logging.getLogger("nafp.listen")


def add_parser(sub) -> None:
    p = sub.add_parser("listen", help="name the song playing into the microphone, live",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_options(p)
    p.add_argument("--window", type=float, default=None, metavar="SECONDS",
                   help="seconds of recent audio searched each hop (default: listen.window_s)")
    p.add_argument("--consistent", type=int, default=None, metavar="K",
                   help="agreeing hops before a match is declared (default: listen.consistent_hops)")
    p.add_argument("--input", default=None, metavar="FILE", help="play an audio file instead of capturing")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                       help="play --input at real speed, like a live source (default)")
    speed.add_argument("--fast", dest="realtime", action="store_false",
                       help="play --input as fast as the computer allows")
    p.add_argument("--json", action="store_true", help="JSON lines: one object per decision, then a summary")
    p.add_argument("--list-devices", action="store_true", help="list the audio input devices and exit")
    p.add_argument("--device", default=None,
                   help="input device: index or part of its name (default: listen.device, else the system "
                        "default input)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: listen.threads)")
    p.add_argument("--search-device", default=None, help="where the model runs: auto, cpu, cuda (default: config)")
    p.set_defaults(run=run)


@dataclass
class ListenSettings:
    listen: ListenConfig
    search: dict[str, Any]  # Searcher keyword arguments
    device: str | int | None = None
    threads: int = 1
    sources: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def load_settings(results: str, config_path: str | None = None, overrides: dict[str, Any] | None = None
                  ) -> ListenSettings:
    """The settings ``results`` was built with (``common.config.run_config``: its config.yaml, ``config_path``
    merged on top), then command-line ``overrides`` of ``listen:`` keys. Raises ValueError."""
    from workflow_lib.common.config import run_config
    from workflow_lib.search.searcher import searcher_kwargs

    cfg, sources = run_config(results, config_path)
    section = dict(cfg.get("listen") or {})
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    section.update(given)
    if "window_s" in given:  # a shorter --window brings the tail and the minimum match length down with it
        for key in ("tail_s", "min_match_s"):
            if key not in given and key in section and section[key] > given["window_s"]:
                section[key] = given["window_s"]
    cli = {k: section.pop(k) for k in LISTEN_COMMAND_KEYS if k in section}
    try:
        listen = ListenConfig.from_dict(section)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"listen settings: {exc}") from None
    threads = int(cli.get("threads") or 1)
    if threads < 1:
        raise ValueError(f"listen.threads must be at least 1, got {threads}")
    return ListenSettings(listen, searcher_kwargs(cfg.get("search") or {}), cli.get("device"), threads, sources, cfg)


# listen.silence_dbfs before 2026-12-06, which a results folder indexed then records (its config.yaml is the whole
# effective config): quiet captures are named down to QUERY_SILENCE_DBFS only once the folder is indexed again.
OLD_SILENCE_DBFS = -55.0


def old_gate_note(listen: ListenConfig) -> str | None:
    """A note for settings that still gate at the old default, so a user who upgraded learns why a quiet capture
    is "silence" in the listener and the scan while ``nafp query`` names it."""
    if listen.silence_dbfs != OLD_SILENCE_DBFS:
        return None
    return (f"note: listen.silence_dbfs is {OLD_SILENCE_DBFS:g} dBFS, the default before 2026-12-06 (a results folder "
            f"indexed before then records it): quieter seconds are silence here. Since then a capture far from the "
            f"speaker is named down to {QUERY_SILENCE_DBFS:g} dBFS: run nafp index on the folder again, or give "
            f"listen: {{silence_dbfs: {QUERY_SILENCE_DBFS:g}}} in --config.")


def _sigterm_as_interrupt(signum, frame):  # a service manager's stop ends the session like Ctrl-C
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.window is not None and args.window < 1:
        return fail("--window must be at least 1 second")
    if args.consistent is not None and args.consistent < 1:
        return fail("--consistent must be at least 1")
    if args.threads is not None and args.threads < 1:
        return fail("--threads must be at least 1")
    # Only light imports before --list-devices: it answers at once, without loading torch.
    from workflow_lib.listener.devices import FileSource, ListenerError, SoundDeviceSource, format_device_list

    if args.list_devices:
        try:
            from workflow_lib.listener.devices import list_input_devices

            devices = list_input_devices()
        except ListenerError as exc:
            return fail(str(exc))
        if args.json:
            print(json.dumps(devices))
        else:
            print("Audio input devices (* = default):")
            print(format_device_list(devices))
        return EXIT_OK

    from workflow_lib.common.layout import ResultsLayout
    from workflow_lib.listener.worker import Listener
    from workflow_lib.listener.views import TwoViewCore, listener_core

    # Before the settings and the microphone: a missing database is the first thing to fix.
    if problem := missing_results(args.results):
        return fail(problem)
    display = Display(json_lines=args.json)
    try:
        settings = load_settings(args.results, args.config, {"window_s": args.window,
                                                             "consistent_hops": args.consistent,
                                                             "device": args.device, "threads": args.threads})
    except ValueError as exc:
        return fail(str(exc))

    import torch

    from workflow_lib.audio.decoded import AudioDecodeError
    from workflow_lib.search.searcher import Searcher

    torch.set_num_threads(settings.threads)
    if args.search_device:
        settings.search["device"] = args.search_device
    try:
        if args.input:
            source = FileSource(args.input, realtime=args.realtime, block_s=settings.listen.block_s)
        else:
            source = SoundDeviceSource(settings.device, block_s=settings.listen.block_s)
    except (ListenerError, AudioDecodeError) as exc:
        return fail(str(exc))
    t0 = time.perf_counter()
    try:
        searcher = Searcher.from_layout(ResultsLayout.of(args.results, settings.config), **settings.search)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        return fail(f"cannot load the database from {args.results}: {exc}")
    log.info("database loaded in %.2f s", time.perf_counter() - t0)
    display.names, display.song_paths = searcher.tracks, searcher.song_paths
    core = listener_core(searcher, settings.listen)
    listener = Listener(core, source, display, display.message)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    # A shell starting us in the background (cmd &) makes SIGINT ignored; restore it so kill -INT ends the session.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    what = source.name if args.input else f"input device '{source.name}' at {source.sample_rate} Hz"
    views = "; as it is and whitened" if isinstance(core, TwoViewCore) else ""
    if note := old_gate_note(settings.listen):
        display.message(note)
    display.message(f"Listening to {what} (window {settings.listen.window_s:g} s, match after "
                    f"{settings.listen.consistent_hops} agreeing hops{views}). Ctrl-C to stop.")
    status = EXIT_OK
    try:
        if args.input and not args.realtime:
            listener.run()
        else:
            listener.start()
            while not listener.join(0.2):
                pass
    except KeyboardInterrupt:
        listener.stop()
        try:
            listener.join(5.0)
        except ListenerError as exc:
            display.message(f"error: {exc}")
            status = EXIT_INPUT
    except (ListenerError, AudioDecodeError) as exc:
        display.message(f"error: {exc}")
        status = EXIT_INPUT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    core.finish()
    display.summary(listener.summary())
    if not listener.join(0):
        # The worker is stuck in the audio driver (a capture that will not stop): the summary is out, so leave
        # without waiting for PortAudio's exit handler, which would wait on the same driver.
        _leave_now(status)
    if not args.input:
        exit_watchdog(status)
    return status


EXIT_GRACE_S = 5.0


def exit_watchdog(status: int, seconds: float = EXIT_GRACE_S) -> None:
    """Leave with ``status`` at most ``seconds`` from now, whatever the exit is still waiting on. The session is over
    and its summary written, but the interpreter's exit, where PortAudio's exit handler runs, can still wait on the
    audio system: a CI run on a loaded machine saw the listener on ALSA's pulse plugin outlive Ctrl-C by over 30 s
    after its summary. A daemon thread still runs while exit handlers do, so it ends such a wait."""
    def leave() -> None:
        time.sleep(seconds)
        _leave_now(status)

    threading.Thread(target=leave, name="exit-watchdog", daemon=True).start()


def _leave_now(status: int) -> None:
    """End the process with ``status`` at once (output flushed), skipping the interpreter's exit handlers."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# ------------------------------------------------------------------------------------------------ display

# A line is a list of parts (priority, text); the one part marked FLEX (the song) is cut before anything is dropped.
FLEX = -1
# columns the song (with its "best guess" or "now playing" prefix) keeps before lower-priority parts are dropped for it
FLEX_MIN = 24


def decision_line(d: Decision, width: int | None = None) -> str:
    """One status line: stream time, state, song, position in the song, confidence, compute per decision.

    With ``width``, the line fits that many columns: the least useful parts go first (compute time, then the
    scores), and the song's name is cut (kept at least ``FLEX_MIN`` columns) rather than dropped.
    """
    head = f"[{fmt_time(d.stream_s):>7}]"
    tail = f"{d.compute_ms:.0f} ms/decision" + (f", {d.overflows} overflows" if d.overflows else "")
    if d.state == SILENCE:
        parts = [(0, head), (0, f"silence ({d.level_dbfs:.0f} dBFS)"), (1, "listening..."), (3, tail)]
    elif d.state == MATCH:
        parts = [(0, head), (FLEX, "\u266a " + _label(d)),
                 (1, f"at {fmt_time(_into(d, d.song_pos_s))}"), (2, f"confidence {d.confidence:.2f}"), (3, tail)]
    elif d.song_id is None:
        parts = [(0, head), (0, "listening..."), (3, tail)]
    else:
        parts = [(0, head), (0, "listening..."), (FLEX, "best guess " + _label(d)),
                 (1, f"{d.statistic} {d.decision:.3f} (needs {shown(d.threshold):.3f})"), (2, f"{d.streak} in a row"),
                 (3, tail)]
    return compose(parts, width)


def event_line(d: Decision, width: int | None = None, next_track: bool = False) -> str | None:
    """The line of an event, if the decision has one; ``next_track``: the album image playing went on to its next
    track (not an event of the core, which knows the image as one song)."""
    head = f"[{fmt_time(d.stream_s):>7}]"
    if next_track and d.event is None:
        parts = [(0, head), (FLEX, "next track: " + _label(d)), (2, f"confidence {d.confidence:.2f}")]
    elif d.event in ("match", "change"):
        parts = [(0, head), (FLEX, ("now playing: " if d.event == "match" else "changed to: ")
                              + _label(d)), (1, f"at {fmt_time(_into(d, d.song_pos_s))} of the {_what(d)}"),
                 (2, f"confidence {d.confidence:.2f}")]
    elif d.event == "resync":
        parts = [(0, head), (0, "offset corrected:"),
                 (1, f"now at {fmt_time(_into(d, d.song_pos_s))} of the {_what(d)}")]
    elif d.event == "lost":
        parts = [(0, head), (0, "music stopped or changed:"), (1, "listening...")]
    else:
        return None
    return compose(parts, width)


def _label(x) -> str:
    """A decision's or heard song's name; an album image's track with its number (``listener.tracks``)."""
    label = song_label(x.title, x.artist, x.song_id)
    return label if x.track is None else f"{label} (track {x.track})"


def _what(x) -> str:
    return "song" if x.track is None else "track"


def _into(x, song_s: float) -> float:
    """A time in the song as a time in the track playing, for an album image."""
    return song_s - (x.track_start_s or 0.0)


def compose(parts: list[tuple[int, str]], width: int | None, sep: str = "  ") -> str:
    """Join ``(priority, text)`` parts into a line of at most ``width`` columns (None: no limit).

    Parts of priority 2 and above are dropped (highest number first, the last of equals) while the FLEX part would
    have to be cut; parts of priority 1 only while it would be cut below ``FLEX_MIN`` columns. Then the FLEX part
    is cut to what is left, and as a last resort the whole line is cut with an ellipsis.
    """
    kept = list(parts)

    def length(flex_cols: int | None) -> int:
        return sum(display_width(t) if p != FLEX or flex_cols is None else min(display_width(t), flex_cols)
                   for p, t in kept) + display_width(sep) * (len(kept) - 1)

    if width is None:
        return sep.join(t for _, t in kept)
    for floor, flex_cols in ((2, None), (1, FLEX_MIN)):
        while length(flex_cols) > width and any(p >= floor for p, _ in kept):
            worst = max(p for p, _ in kept)
            del kept[max(i for i, (p, _) in enumerate(kept) if p == worst)]
    if length(None) > width:
        room = width - length(0)
        kept = [(p, fit(t, max(room, 1)) if p == FLEX else t) for p, t in kept]
    return fit(sep.join(t for _, t in kept), width)


def _named_after(h) -> str:
    """How long the listener took to name a heard song; a play that began where the song jumped (``by_alignment``)
    was followed there, not named anew."""
    waited = h.declared_s - h.start_s
    return f"named after {waited:.1f} s" if waited > 0 else "followed where the song jumped"


def summary_text(s: ListenSummary) -> str:
    lines = [f"Heard {len(s.heard)} song{'s' if len(s.heard) != 1 else ''} in {fmt_time(s.stream_s)} of audio"
             f"{' from ' + s.device if s.device else ''}:"]
    for h in s.heard:
        lines.append(f"  {fmt_time(h.start_s)}-{fmt_time(h.end_s)}  {_label(h)}  "
                     f"({_what(h)} {fmt_time(_into(h, h.song_start_s))}-"
                     f"{fmt_time(_into(h, h.song_position(h.end_s)))}, "
                     f"confidence {h.max_confidence:.2f}, {_named_after(h)})")
    if not s.heard:
        lines.append("  (nothing recognised)")
    if s.decisions:
        lines.append(f"{s.decisions} decisions, compute per decision p50 {s.compute_ms_p50:.0f} ms, p95 "
                     f"{s.compute_ms_p95:.0f} ms, max {s.compute_ms_max:.0f} ms; input overflows {s.overflows}; "
                     f"audio skipped {s.dropped_s:.1f} s")
    else:
        lines.append(f"no decisions (less than one second of audio); input overflows {s.overflows}")
    return "\n".join(lines)


class Display:
    """Terminal output: a live line rewritten in place (a terminal), a line per decision (a pipe), or JSON lines."""

    def __init__(self, json_lines: bool = False, out: TextIO | None = None, live: bool | None = None,
                 width: Callable[[], int] = terminal_width):
        self.out = out or sys.stdout
        self.width = width
        self.json = json_lines
        self.live = (self.out.isatty() if live is None else live) and not json_lines
        self._dirty = False
        self.names = None  # the database's album tracks (``database.catalogue.TrackNames``), once it is loaded
        self.song_paths: dict[str, str] = {}  # and its songs' files (``Searcher.song_paths``)
        self._playing: tuple[str | None, int | None] = (None, None)  # the song and track last shown as a match

    def __call__(self, d: Decision) -> None:
        d = decision_by_track(d, self.names)
        playing = (d.song_id, d.track) if d.state == MATCH else (None, None)
        next_track = playing[1] is not None and self._playing[0] == playing[0] and self._playing != playing
        self._playing = playing
        if self.json:
            self.out.write(json.dumps({"type": "decision", **with_song_path(d.to_dict(), self.song_paths)}) + "\n")
            self.out.flush()
            return
        if self.live:
            # One row per line: a line wider than the terminal wraps and "\r ESC[2K" clears only its last row, so
            # each line is fitted to the width now (the terminal may have been resized); one column spare, as some
            # terminals wrap when the last column is written.
            width = max(20, self.width() - 1)
            ev = event_line(d, width, next_track)
            if ev:
                self.out.write("\r\x1b[2K" + ev + "\n")
            self.out.write("\r\x1b[2K" + decision_line(d, width))
            self._dirty = True
        else:  # a pipe or a file: whole lines, one per decision
            ev = event_line(d, next_track=next_track)
            if ev:
                self.out.write(ev + "\n")
            self.out.write(decision_line(d) + "\n")
        self.out.flush()

    def message(self, text: str) -> None:
        if self.json:
            self.out.write(json.dumps({"type": "message", "text": text}) + "\n")
        else:
            self._end_line()
            self.out.write(text + "\n")
        self.out.flush()

    def summary(self, s: ListenSummary) -> None:
        s = summary_by_tracks(s, self.names)
        if self.json:
            self.out.write(json.dumps({"type": "summary", **summary_with_song_paths(s.to_dict(), self.song_paths)},
                                      default=_json_default) + "\n")
        else:
            self._end_line()
            self.out.write(summary_text(s) + "\n")
        self.out.flush()

    def _end_line(self) -> None:
        if self._dirty:
            self.out.write("\n")
            self._dirty = False


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)
