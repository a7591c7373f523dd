"""`nafp index` drops Snakemake's bookkeeping lines from its terminal and passes everything else as it comes."""

import io
import sys

import pytest

from workflow_lib.cli.chatter import ChatterFilter, run_without_chatter

STREAM = (b"Using workflow specific profile /x/profiles/default for setting default command line arguments.\n"
          b"Building DAG of jobs...\n"
          b"Select jobs to execute...\nExecute 2 jobs...\n"
          b"scan music:   0%|          | 0/3\rscan music: 100%|##########| 3/3\n"
          b"2026-12-05 WARNING workflow_lib.data.manifest: rejected x.mp3: empty file\n"
          b"Execute the plan: not one of Snakemake's lines\n"
          b"Select jobs to execute...\nExecute 1 jobs...\n"
          b"Error in rule manifest:\n    log: logs/manifest.log (check log file(s) for error details)\n"
          b"Complete log(s): /x/.snakemake/log/a.snakemake.log\nElapsed time: 0:00:03.1\n")
KEPT = (b"scan music:   0%|          | 0/3\rscan music: 100%|##########| 3/3\n"
        b"2026-12-05 WARNING workflow_lib.data.manifest: rejected x.mp3: empty file\n"
        b"Execute the plan: not one of Snakemake's lines\n"
        b"Error in rule manifest:\n    log: logs/manifest.log (check log file(s) for error details)\n")


@pytest.mark.parametrize("piece", [1, 7, 64, len(STREAM)])
def test_only_the_bookkeeping_lines_are_dropped_however_the_stream_is_cut(piece):
    out = io.BytesIO()
    filt = ChatterFilter(out)
    for i in range(0, len(STREAM), piece):
        filt.feed(STREAM[i:i + piece])
    filt.close()
    assert out.getvalue() == KEPT


def test_a_progress_bar_is_shown_at_once_not_at_the_end_of_its_line():
    out = io.BytesIO()
    filt = ChatterFilter(out)
    filt.feed(b"calibration queries:  15%|#5        | 600/4000")
    assert out.getvalue() == b"calibration queries:  15%|#5        | 600/4000"
    filt.feed(b"\rcalibration queries:  31%")
    assert out.getvalue().endswith(b"\rcalibration queries:  31%")
    filt.feed(b"Select jobs")  # may be the start of a bookkeeping line: held until its end
    assert out.getvalue().endswith(b"31%")
    filt.feed(b" to execute...\n")
    assert out.getvalue().endswith(b"31%")


def test_the_status_and_every_other_line_of_the_command_come_through():
    out = io.BytesIO()
    code = ("import sys; sys.stderr.write('Building DAG of jobs...\\nreal error\\n'); sys.stderr.flush(); "
            "sys.exit(3)")
    assert run_without_chatter([sys.executable, "-c", code], out) == 3
    assert out.getvalue() == b"real error\n"
