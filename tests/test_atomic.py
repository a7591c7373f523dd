"""common.atomic: write-then-rename, and the leftovers of a killed writer removed by the next writer."""

import os
import subprocess
import sys

import pytest

from workflow_lib.common.atomic import _writer_prefix, atomic_path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_output_appears_only_when_the_block_succeeds(tmp_path):
    final = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(final) as tmp:
        assert tmp.suffix == ".parquet" and tmp.name.startswith(".out.parquet.")
        tmp.write_text("whole")
    assert final.read_text() == "whole" and list(tmp_path.iterdir()) == [final]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_writer(tmp_path):
    """A writer killed before its rename leaves its temporary file; writing the same file again removes it, and
    leaves alone the temporary files of live writers and of other files."""
    final = tmp_path / "trained.faiss"
    killed = tmp_path / f"{_writer_prefix(final, _dead_pid())}abc123.faiss"
    live = tmp_path / f"{_writer_prefix(final, os.getppid())}def456.faiss"  # a live process of this host
    other_host = tmp_path / ".trained.faiss.othernode-12345.ghi789.faiss"  # a node sharing the folder
    other_file = tmp_path / f"{_writer_prefix(tmp_path / 'trained.json', _dead_pid())}jkl.json"
    for p in (killed, live, other_host, other_file):
        p.write_text("left")
    with atomic_path(final) as tmp:
        tmp.write_text("index")
    assert final.read_text() == "index"
    assert not killed.exists() and live.exists() and other_host.exists() and other_file.exists()
