#!/usr/bin/env python
"""Name the song playing into the microphone, continuously, within seconds.

    .venv/bin/python scripts/listen.py                      # default input device, results/ of the workflow
    .venv/bin/python scripts/listen.py --list-devices
    .venv/bin/python scripts/listen.py --device 3           # or part of a device name: --device USB
    .venv/bin/python scripts/listen.py --input clip.mp3     # play a file through the same path, at real speed
    .venv/bin/python scripts/listen.py --input clip.mp3 --fast --json

A live line shows the current song, its position (advancing with time), the confidence and the compute time per
decision; events (a song named, a change, the music stopping) get their own lines. Ctrl-C ends the session with a
summary of what was heard. Settings: the ``listen:`` and ``search:`` sections of config/config.yaml (``--config``
merges a file on top), then the options below. Exit status: 0 done, 1 a failure while listening, 2 cannot start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from any directory
    sys.path.insert(0, str(REPO))

log = logging.getLogger("listen")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Identify the music playing into a microphone (or a file), live.")
    p.add_argument("--results", default="results",
                   help="workflow results folder with model/, index/ and catalogue.parquet (default: %(default)s)")
    p.add_argument("--config", default=None,
                   help="config file merged over config/config.yaml (its listen: and search: sections)")
    p.add_argument("--window", type=float, default=None, metavar="SECONDS",
                   help="seconds of recent audio searched each hop (default: config listen.window_s)")
    p.add_argument("--consistent", type=int, default=None, metavar="K",
                   help="agreeing hops before a match is declared (default: config listen.consistent_hops)")
    p.add_argument("--input", default=None, metavar="FILE", help="play an audio file instead of capturing")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                       help="play --input at real speed, like a live source (default)")
    speed.add_argument("--fast", dest="realtime", action="store_false",
                       help="play --input as fast as the computer allows")
    p.add_argument("--json", action="store_true", help="JSON lines: one object per decision, then a summary")
    p.add_argument("--list-devices", action="store_true", help="list the audio input devices and exit")
    p.add_argument("--device", default=None,
                   help="input device: index or part of its name (default: config listen.device, else the system "
                        "default input)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: config)")
    p.add_argument("--search-device", default=None, help="where the model runs: auto, cpu, cuda (default: config)")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    args = p.parse_args(argv)
    if args.window is not None and args.window < 1:
        p.error("--window must be at least 1 second")
    if args.consistent is not None and args.consistent < 1:
        p.error("--consistent must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def _sigterm_as_interrupt(signum, frame):  # a service manager's stop ends the session like Ctrl-C
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    # Only light imports before --list-devices: it answers at once, without loading torch.
    from workflow_lib.listener.devices import FileSource, ListenerError, SoundDeviceSource, format_device_list

    if args.list_devices:
        try:
            from workflow_lib.listener.devices import list_input_devices

            devices = list_input_devices()
        except ListenerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(devices))
        else:
            print("Audio input devices (* = default):")
            print(format_device_list(devices))
        return 0

    from workflow_lib.cli.listen import Display, load_settings
    from workflow_lib.listener.core import Listener, ListenerCore

    display = Display(json_lines=args.json)
    try:
        settings = load_settings(args.config, {"window_s": args.window, "consistent_hops": args.consistent,
                                               "device": args.device, "threads": args.threads})
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    from workflow_lib.audio.files import AudioDecodeError
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        searcher = Searcher.from_results(args.results, **settings.search)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: cannot load the database from {args.results}: {exc}", file=sys.stderr)
        return 2
    log.info("database loaded in %.2f s", time.perf_counter() - t0)

    core = ListenerCore(searcher, settings.listen)
    listener = Listener(core, source, display)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    # A shell starting us in the background (cmd &) makes SIGINT ignored; restore it so kill -INT ends the session.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    what = source.name if args.input else f"input device '{source.name}' at {source.sample_rate} Hz"
    display.message(f"Listening to {what} (window {settings.listen.window_s:g} s, match after "
                    f"{settings.listen.consistent_hops} agreeing hops). Ctrl-C to stop.")
    status = 0
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
            status = 1
    except (ListenerError, AudioDecodeError) as exc:
        display.message(f"error: {exc}")
        status = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    core.finish()
    display.summary(listener.summary())
    if not listener.join(0):
        # The worker is stuck in the audio driver (a capture that will not stop): the summary is out, so leave
        # without waiting for PortAudio's exit handler, which would wait on the same driver.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status

if __name__ == "__main__":
    sys.exit(main())
