#!/usr/bin/env python
"""Name the song playing into the microphone: ``nafp listen`` (see ``nafp listen --help``).

    .venv/bin/python scripts/listen.py --list-devices
    .venv/bin/python scripts/listen.py --input clip.mp3 --fast --json
"""
import sys

from workflow_lib.cli.main import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("listen"))
