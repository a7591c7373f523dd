"""Logging set-up shared by the Snakemake adapters and the command-line tools."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# The level of what a job prints to the terminal (its log file keeps every INFO line): `nafp index` sets WARNING,
# so a user sees the stages' progress bars, warnings and errors, not each stage's accounting.
CONSOLE_LEVEL_ENV = "NAFP_CONSOLE_LEVEL"
# "1" when `nafp index` itself writes to a terminal: its stages write to its pipe, and what they write reaches the
# terminal, so their progress is drawn as bars (common.progress). A cluster job's stderr is its log file, whoever
# submitted it.
TERMINAL_ENV = "NAFP_PROGRESS_TERMINAL"


def setup_logging(log_path: str | None = None, level: int = logging.INFO, append: bool = False,
                  history: str | None = None) -> logging.Logger:
    """Log to ``log_path`` (the rule's ``log:`` file) and to stderr, so a failing job shows why in both places
    (stderr from the level named by ``$NAFP_CONSOLE_LEVEL``, when it is set).

    ``append`` keeps what the file holds. ``history`` is a second log that every run of a resumable job appends
    to (Snakemake empties a job's log file when it reruns the job): its earlier lines are copied to the top of
    ``log_path`` first, so the log of a resumed job still shows what the killed run did."""
    console = BarAwareHandler(sys.stderr)
    try:
        console.setLevel(os.environ.get(CONSOLE_LEVEL_ENV, "").upper() or logging.NOTSET)
    except ValueError:  # not a level name: print everything, as without it
        pass
    handlers: list[logging.Handler] = [console]
    if log_path and history and Path(history).is_file():
        earlier = Path(history).read_text(errors="replace")
        if earlier.strip():
            with open(log_path, "a") as f:
                f.write(earlier + "---- the job is resumed: the lines above are from its earlier run(s) ----\n")
            append = True
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="a" if append else "w"))
    if history:
        Path(history).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(history, mode="a"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    quiet_third_party_loggers()
    return logging.getLogger("workflow_lib")


class BarAwareHandler(logging.StreamHandler):
    """The console handler: lines go out through ``tqdm.write``, which lifts this process's progress bars off the
    line first and draws them again below it, so a warning logged while a bar is drawn ("scan music: 40%|...")
    gets a line of its own instead of being glued to the bar's."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def quiet_third_party_loggers() -> None:
    """FAISS announces at INFO which optional CPU builds it could not import, as ModuleNotFoundError text: it
    reads like an error and is not one."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
