"""Progress bars where no terminal shows them (``common.progress``): lines of their own in a log file or a pipe."""

from __future__ import annotations

import io
import logging
import time

import pytest

from workflow_lib.common import progress as progress_module
from workflow_lib.common.logs import TERMINAL_ENV, BarAwareHandler
from workflow_lib.common.progress import on_terminal, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def short_interval(monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_INTERVAL_S", 0.05)
    monkeypatch.delenv(TERMINAL_ENV, raising=False)


def slow_work(stream, n: int = 8, **kwargs) -> None:
    for _ in progress(range(n), file=stream, desc="scan music", unit="file", **kwargs):
        time.sleep(0.03)


def test_in_a_log_file_each_update_is_a_line_of_its_own(short_interval):
    stream = io.StringIO()
    slow_work(stream)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) >= 2  # at least one update on the way, then the last
    assert all(line.startswith("scan music: ") and line == line.strip() for line in lines)
    assert lines[-1].startswith("scan music: 8/8 file (100 %)")


def test_a_log_line_under_a_bar_in_a_log_file_is_neither_glued_nor_padded(short_interval):
    stream = io.StringIO()
    logger = logging.getLogger("tests.progress")
    logger.propagate = False
    handler = BarAwareHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        for i in progress(range(6), file=stream, desc="scan music", unit="file"):
            time.sleep(0.03)
            if i == 3:
                logger.warning("rejected damaged.m4a")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert "WARNING rejected damaged.m4a" in lines
    assert all(line.startswith("scan music: ") for line in lines if "WARNING" not in line)


def test_work_shorter_than_the_interval_writes_no_line():
    stream = io.StringIO()
    for _ in progress(range(100), file=stream, desc="catalogue"):
        pass
    assert stream.getvalue() == ""


def test_a_bar_asked_for_only_on_a_terminal_stays_silent_in_a_log_file(short_interval):
    stream = io.StringIO()
    slow_work(stream, disable=None)
    assert stream.getvalue() == ""


def test_a_bar_whose_total_is_unknown_counts_without_a_percentage(short_interval):
    stream = io.StringIO()
    for _ in progress(iter(range(5)), file=stream, desc="noise files", unit="file"):
        time.sleep(0.03)
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("noise files: 5 file in ") and "%" not in last


def test_on_a_terminal_the_bar_is_drawn_in_place(short_interval):
    stream = Terminal()
    slow_work(stream, mininterval=0)
    assert "\r" in stream.getvalue()  # tqdm's own live bar
    assert "|" in stream.getvalue()


def test_a_stage_of_nafp_index_run_from_a_terminal_draws_bars_but_a_cluster_job_does_not(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv(TERMINAL_ENV, "0")
    assert not on_terminal(pipe)
    monkeypatch.setenv(TERMINAL_ENV, "1")
    assert on_terminal(pipe)
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # its stderr is the job's log file
    assert not on_terminal(pipe)
    assert on_terminal(Terminal())


def test_nafp_index_tells_its_stages_whether_a_terminal_shows_them(monkeypatch):
    from workflow_lib.cli.index import stage_env

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for stderr, drawn in ((Terminal(), True), (io.StringIO(), False)):  # `nafp index` in a terminal; `> index.log`
        env = stage_env(False, stderr)
        monkeypatch.setenv(TERMINAL_ENV, env[TERMINAL_ENV])
        assert on_terminal(io.StringIO()) is drawn  # a stage's stderr is nafp index's pipe
