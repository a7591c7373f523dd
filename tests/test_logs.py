"""The console handler of every stage and command (``common.logs``)."""

from __future__ import annotations

import io
import logging

import pytest
from tqdm import tqdm

from workflow_lib.common.logs import BarAwareHandler


@pytest.mark.parametrize("handler_class", [BarAwareHandler, pytest.param(logging.StreamHandler, marks=pytest.mark.xfail(
    strict=True, reason="the plain handler glues the line to the bar"))])
def test_a_warning_logged_under_a_progress_bar_gets_a_line_of_its_own(handler_class):
    """The manifest warns about each file it rejects while its "scan music" bar is drawn: the warning must not be
    glued to the bar's line ("... 1/7 [00:00<?, ?file/s]2026-12-05 ... WARNING ... rejected ...")."""
    stream = io.StringIO()
    logger = logging.getLogger("tests.bar")
    logger.propagate = False
    handler = handler_class(stream)
    logger.addHandler(handler)
    try:
        with tqdm(total=3, file=stream, desc="scan music", mininterval=0) as bar:
            bar.update(1)
            logger.warning("rejected damaged.m4a")
            bar.update(2)
    finally:
        logger.removeHandler(handler)
    before = stream.getvalue().split("rejected damaged.m4a")[0]
    assert before.split("\n")[-1].split("\r")[-1].strip() == ""  # nothing of the bar left on the warning's line
    assert "scan music: 100%" in stream.getvalue()  # and the bar went on below it
