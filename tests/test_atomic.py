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


def test_a_mapped_file_on_a_full_disk_is_an_error_that_says_so(tmp_path, monkeypatch):
    """A map of a sparse file meets a full disk as SIGBUS when a page is written back; its blocks are reserved first,
    so the full disk is an OSError naming the folder, what was needed and what is free."""
    import errno

    import numpy as np

    from workflow_lib.common.atomic import new_npy_map

    arr = new_npy_map(tmp_path / "v.npy", np.float16, (1000, 64))
    arr[:] = 1.0
    arr.flush()
    del arr
    assert np.load(tmp_path / "v.npy").sum() == 64000
    assert os.stat(tmp_path / "v.npy").st_blocks * 512 >= 128000  # reserved, not sparse

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match=r"no space left on the disk of .*: 4 MB needed, \d+ MB free") as caught:
        new_npy_map(tmp_path / "w.npy", np.float16, (2_000_000,))
    assert caught.value.errno == errno.ENOSPC

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)  # such a file system: the map as it is
    assert new_npy_map(tmp_path / "x.npy", np.float16, (10,)).shape == (10,)
