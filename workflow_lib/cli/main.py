"""``nafp``: one command with subcommands for everything a user does with a fingerprint database.

    nafp index MUSIC_DIR...      make a folder of music searchable with the bundled model (no training)
    nafp query FILE...           name the song (and where in it) of audio files
    nafp scan FILE...            every song in a long recording, with where it starts and ends
    nafp listen                  name the song playing into the microphone, live
    nafp db add|remove|info|list edit or describe a database

Every subcommand takes ``--results DIR`` (default ``results``) and reads the settings that folder was built with
(``DIR/config.yaml``, written by the workflow); explicit options override them. Answers go to stdout, logs and
progress to stderr. Exit status: 0 done, 1 some input failed (the others were still answered), 2 usage or set-up
error (nothing was done).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

from workflow_lib import __version__
from workflow_lib.common.logs import BarAwareHandler, quiet_third_party_loggers

# subcommand -> module under workflow_lib.cli with add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {"index": "index", "query": "query", "scan": "scan", "listen": "listen", "db": "db"}
EXIT_OK, EXIT_INPUT, EXIT_SETUP = 0, 1, 2


def common_options(p: argparse.ArgumentParser) -> None:
    """Options every subcommand has."""
    p.add_argument("--results", default="results",
                   help="results folder of a workflow run or of `nafp index` (default: %(default)s)")
    p.add_argument("--config", default=None,
                   help="config file merged over the settings the results folder was built with")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nafp", description="Neural audio fingerprinting: make music searchable, then "
                                "name songs in files, recordings and the microphone.")
    p.add_argument("--version", action="version", version=f"nafp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        mod = importlib.import_module(f"workflow_lib.cli.{module}")
        mod.add_parser(sub)
    return p


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[BarAwareHandler(sys.stderr)],
                        force=True, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    quiet_third_party_loggers()


def fail(message: str, status: int = EXIT_SETUP) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


_sigint_seen = False


def _note_sigint(signum, frame) -> None:
    """Python's own Ctrl-C handler, remembering that it ran: a library that turns the KeyboardInterrupt into an error
    of its own (numpy, interrupted while its C extension imports, raises ImportError) still met a Ctrl-C."""
    global _sigint_seen
    _sigint_seen = True
    signal.default_int_handler(signum, frame)


def main(argv: list[str] | None = None) -> int:
    global _sigint_seen
    _sigint_seen = False  # a call of its own (the tests call main again and again in one process)
    # Not where the caller ignores Ctrl-C (a background job), nor outside the main thread (signal.signal refuses)
    watch = (threading.current_thread() is threading.main_thread()
             and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if watch:
        signal.signal(signal.SIGINT, _note_sigint)
    try:  # Ctrl-C at any moment (even while torch is still importing) ends quietly
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help(sys.stderr)
            return EXIT_SETUP
        setup_logging(getattr(args, "verbose", False))
        return int(args.run(args))
    except BrokenPipeError:  # `nafp ... | head`: the reader has gone; end quietly, as other Unix tools do
        # Python flushes stdout at exit and would complain again: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the signal
    except (KeyboardInterrupt, Exception) as exc:  # any error after a Ctrl-C is the Ctrl-C
        if not (isinstance(exc, KeyboardInterrupt) or _sigint_seen):
            raise
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if watch:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def entry() -> None:
    """The ``nafp`` command (and ``python -m workflow_lib.cli.main``): ``main``, then exit with its status. The
    answer is out by then, so a Ctrl-C while the interpreter shuts down is ignored (it printed a traceback and
    ended the process by the signal instead of the status)."""
    status = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(status)


def run_subcommand(name: str, argv: list[str] | None = None) -> int:
    """Entry of the ``scripts/*.py`` wrappers: ``nafp NAME ARGS...``."""
    return main([name, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    entry()
