"""libmpg123's damaged-frame lines are counted per file (manifest column), not printed (issue 16.2)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import soundfile as sf

from workflow_lib.audio.decoder_messages import DecoderMessages, captured_stderr, is_decoder_line
from workflow_lib.audio.files import iter_audio
from workflow_lib.data.manifest import build_manifest


def _damaged_mp3(path, seed: int = 1) -> None:
    """An MP3 with bytes overwritten inside frames: libmpg123 skips them and says so on stderr."""
    sr = 44100
    t = np.arange(sr * 8) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.5 * t)
    x = (x + 0.05 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    sf.write(path, x, sr, format="MP3")
    b = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for pos in rng.integers(2000, len(b) - 2000, 40):
        b[pos + 6:pos + 12] = rng.integers(0, 256, 6, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(b))


def test_decoder_lines_are_counted_and_other_stderr_passes_through(capfd):
    msgs = DecoderMessages()
    with captured_stderr(msgs):
        os.write(2, b"[src/libmpg123/layer3.c:INT123_do_layer3():1774] error: part2_3_length (832) too large\n")
        os.write(2, b"Note: Trying to resync...\n")
        os.write(2, b"something else the program said\n")
        print("python stderr line", file=sys.stderr)
    err = capfd.readouterr().err
    assert msgs.count == 2 and "part2_3_length" in msgs.examples[0]
    assert "libmpg123" not in err and "resync" not in err
    assert "something else the program said" in err and "python stderr line" in err
    assert not is_decoder_line("2026-11-30 INFO workflow_lib.x: note: fine")


def test_a_damaged_mp3_decodes_quietly_and_the_manifest_counts_its_messages(tmp_path, capfd):
    music = tmp_path / "music"
    music.mkdir()
    _damaged_mp3(music / "damaged.mp3")
    sf.write(music / "clean.wav", 0.2 * np.sin(np.arange(8000 * 5) / 3.0).astype(np.float32), 8000)
    capfd.readouterr()
    msgs = DecoderMessages()
    audio = np.concatenate(list(iter_audio(music / "damaged.mp3", messages=msgs)))
    assert len(audio) > 7 * 8000 and msgs.count > 0
    assert "libmpg123" not in capfd.readouterr().err
    songs, rejected = build_manifest([("music", music)], min_duration_s=3.0)
    assert rejected.empty
    counts = dict(zip(songs.rel_path, songs.decoder_messages))
    assert counts["clean.wav"] == 0 and counts["damaged.mp3"] == msgs.count
    assert "libmpg123" not in capfd.readouterr().err


def test_a_cut_off_mp3_is_named_truncated_without_the_decoders_own_warning(tmp_path, capfd):
    """libmpg123 warns that the Xing header's stream size is off when an MP3 was cut short: the error says
    "truncated" already, so the warning is counted, not printed."""
    from workflow_lib.audio.decoded import AudioDecodeError

    path = tmp_path / "cut.mp3"
    _damaged_mp3(path)
    path.write_bytes(path.read_bytes()[:20000])
    capfd.readouterr()
    msgs = DecoderMessages()
    with pytest.raises(AudioDecodeError, match="truncated"):
        list(iter_audio(path, messages=msgs))
    assert "Xing" not in capfd.readouterr().err and any("Xing" in e for e in msgs.examples)
