"""`nafp index` drops Snakemake's bookkeeping lines from its terminal and passes everything else as it comes."""

import io
import os
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


def test_ctrl_c_lets_the_workflow_stop_and_its_last_words_through(tmp_path):
    """The terminal's Ctrl-C reaches the whole process group: the workflow's own shutdown messages are read to the
    end (Snakemake removes its lock meanwhile), then `nafp index` stops as interrupted."""
    import signal
    import subprocess
    import textwrap

    child = ("import sys, time\ntry:\n    sys.stderr.write('Building DAG of jobs...\\nready\\n'); sys.stderr.flush()\n"
             "    time.sleep(60)\nexcept KeyboardInterrupt:\n    time.sleep(0.5)\n"
             "    sys.stderr.write('Terminating processes on user request\\n'); sys.exit(1)\n")
    parent = textwrap.dedent(f"""
        import sys
        from workflow_lib.cli.chatter import run_without_chatter
        try:
            run_without_chatter([sys.executable, "-c", {child!r}], sys.stderr.buffer)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\\n")
            sys.exit(130)
        """)
    # Ctrl-C as in a terminal: a test run in the background (nohup ... &) inherits SIGINT ignored, and Python keeps
    # an ignored SIGINT ignored
    proc = subprocess.Popen([sys.executable, "-c", parent], stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr.readline() == b"ready\n"
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 130
    assert rest == b"Terminating processes on user request\ninterrupted\n"
