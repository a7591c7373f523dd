"""The live listener line in a real terminal (tmux): one row per line at 80 columns, the whole line at 200.

A line wider than the terminal wraps, and the ``\\r ESC[2K`` that rewrites it clears only its last row, so the other
rows stay on screen as fragments (issue 16.1). The test runs ``nafp listen`` in a detached tmux pane of a given
width on a results folder whose catalogue has long titles, and reads the screen back with ``capture-pane``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from tests.listener_helpers import SR, listener_world
from workflow_lib.cli.listen import decision_line, event_line
from workflow_lib.cli.text import display_width
from workflow_lib.listener.decisions import LISTENING, MATCH, SILENCE, Decision

REPO = Path(__file__).resolve().parents[1]
LONG_TITLE = "An Unusually Long Song Title That Will Not Fit In A Narrow Terminal Pane"
LONG_ARTIST = "The Band With A Rather Long Name"


def _decision(**kw) -> Decision:
    base = dict(stream_s=83.5, state=MATCH, song_id="demo-001", title=LONG_TITLE, artist=LONG_ARTIST,
                song_pos_s=61.2, song_offset_s=-22.3, score=0.41, threshold=0.28, confidence=0.93,
                above_threshold=True, streak=3, n_segments=9, compute_ms=87.0, embed_ms=60.0, search_ms=20.0,
                level_dbfs=-30.0, event="match", window_cut=False, overflows=2, dropped_s=0.0)
    return Decision(**{**base, **kw})


@pytest.mark.parametrize("state", [MATCH, LISTENING, SILENCE])
def test_every_line_fits_its_width_and_keeps_the_title_start(state):
    d = _decision(state=state)
    full = decision_line(d)
    assert "ms/decision" in full and "overflows" in full
    for width in range(20, 220, 7):
        line = decision_line(d, width)
        assert display_width(line) <= width
        if display_width(full) <= width:
            assert line == full
        elif state != SILENCE and width >= 50:
            assert line.startswith("[ 1:23.5]") and "An Unusu" in line
    assert decision_line(d, 80).count("\u2026") <= 1


def test_the_song_is_cut_before_its_position_is_dropped():
    line = decision_line(_decision(), 80)
    assert "at 1:01.2" in line and "\u2026" in line  # position kept, title cut
    assert "ms/decision" not in line  # the compute time went first
    ev = event_line(_decision(), 80)
    assert ev.startswith("[ 1:23.5]  now playing: \"An Unusually") and display_width(ev) <= 80
    short = _decision(title="Hey", artist=None)
    assert decision_line(short, 80) == decision_line(short)  # a line that fits is left whole


# ------------------------------------------------------------------------------------------------ in tmux

@pytest.fixture(scope="module")
def long_titles(tmp_path_factory, request):
    """The listener test world's results, its catalogue given long titles (the index and model are linked)."""
    world = listener_world(tmp_path_factory, getattr(request.config, "cache", None))
    root = tmp_path_factory.mktemp("long_titles")
    results = root / "results"
    results.mkdir()
    for item in world.results.iterdir():
        if item.name != "catalogue.parquet":
            (results / item.name).symlink_to(item)
    cat = pd.read_parquet(world.results / "catalogue.parquet")
    cat["title"] = [f"{LONG_TITLE} {i}" for i in range(len(cat))]
    cat["artist"] = LONG_ARTIST
    cat.to_parquet(results / "catalogue.parquet", index=False)
    sid = world.db_ids[1]
    clip = root / "clip.wav"
    sf.write(clip, world.songs[sid][2 * SR:14 * SR], SR)
    return results, clip


def _run_in_tmux(width: int, command: list[str], timeout: float = 180.0) -> list[str]:
    session = f"nafp-test-{uuid.uuid4().hex[:8]}"
    done = "=== listen ended ==="
    shell = shlex.join(command) + f"; echo '{done}'; sleep 600"
    tmux = ["tmux", "-L", session, "-f", "/dev/null"]  # a private server: no user tmux settings, no shared sizes
    # The pane's first program can start before the session takes its -x/-y size (it then sees 80x24): start on a
    # placeholder, and run the command in the pane once it has its size.
    # The environment as Python sees it: GNU readline (imported by pytest) exports COLUMNS/LINES of the terminal
    # pytest started in at the C level, which a child would otherwise inherit.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", str(width), "-y", "50", "sleep 600"], check=True,
                   env=env)
    try:
        size = subprocess.run([*tmux, "display-message", "-p", "-t", session, "#{pane_width}"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert size == str(width), f"the tmux pane is {size} columns wide, not {width}"
        subprocess.run([*tmux, "respawn-pane", "-k", "-t", session, shell], check=True)
        deadline = time.monotonic() + timeout
        while True:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", session, "-S", "-2000"],
                                    capture_output=True, text=True, check=True).stdout
            if done in screen or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert done in screen, f"nafp listen did not finish in {timeout} s:\n{screen}"
        return screen.splitlines()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (tools/setup.sh installs it)")
@pytest.mark.parametrize("width", [80, 200])
def test_live_line_in_a_terminal_pane(long_titles, width):
    results, clip = long_titles
    rows = _run_in_tmux(width, [sys.executable, "-m", "workflow_lib.cli.main", "listen", "--results", str(results),
                                "--input", str(clip), "--fast", "--search-device", "cpu"])
    events = ("now playing:", "changed to:", "offset corrected:", "music stopped")
    live = [r for r in rows if r.startswith("[") and not any(e in r for e in events)]
    # Rewritten in place: one live row is left on screen (the last decision), no wrapped fragments of earlier ones.
    assert len(live) == 1, "\n".join(rows)
    assert all(display_width(r) <= width for r in rows)
    named = [r for r in rows if "now playing:" in r]
    assert len(named) == 1 and LONG_TITLE[:20] in named[0]
    if width == 200:  # wide enough: nothing cut
        assert "\u2026" not in live[0] and LONG_ARTIST in live[0] and "ms/decision" in live[0]
    else:
        assert "\u2026" in live[0] and "at " in live[0]
