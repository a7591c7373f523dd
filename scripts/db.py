#!/usr/bin/env python
"""Edit or describe a fingerprint database: ``nafp db`` (see ``nafp db --help``).

    .venv/bin/python scripts/db.py add /data/new_albums [--results results]
    .venv/bin/python scripts/db.py list --csv
"""
import sys

from workflow_lib.cli.main import run_subcommand

if __name__ == "__main__":
    sys.exit(run_subcommand("db"))
