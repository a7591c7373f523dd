"""Logging set-up shared by the Snakemake adapters and the command-line tools."""

from __future__ import annotations

import logging
import sys


def setup_logging(log_path: str | None = None, level: int = logging.INFO, append: bool = False) -> logging.Logger:
    """Log to ``log_path`` (the rule's ``log:`` file) and to stderr, so a failing job shows why in both places.

    ``append`` keeps what the file holds (a resumed job's log continues the killed run's lines)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="a" if append else "w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    return logging.getLogger("workflow_lib")
