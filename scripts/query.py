#!/usr/bin/env python
"""Identify audio files: ``nafp query`` (see ``nafp query --help``).

    .venv/bin/python scripts/query.py clip1.mp3 clip2.wav [--results results] [--json]
"""
import sys

from workflow_lib.cli.main import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("query"))
