"""bench/gpu_pack.py: training banks carried to the device machine come back as the same banks (Opus: close)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_lib.data.clipbank import ClipBank, write_clip_bank

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_pack  # noqa: E402


def tone(seconds: float, f: float) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return (0.3 * np.sin(2 * np.pi * f * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_pack_then_unpack_gives_the_banks_back(tmp_path):
    songs = [tone(s, f) for s, f in ((3.0, 440.0), (2.3, 660.0), (4.1, 523.0))]
    write_clip_bank(tmp_path / "songs", songs, pd.DataFrame({"song_id": ["a", "b", "c"], "name": ["A", "B", "C"]}))
    rng = np.random.default_rng(0)
    ir = (rng.standard_normal(400) * np.exp(-np.arange(400) / 50)).astype(np.float32)
    write_clip_bank(tmp_path / "irs", [ir], pd.DataFrame({"name": ["r"]}), dtype="float32")
    pack = tmp_path / "pack"
    gpu_pack.pack([f"train={tmp_path / 'songs'}"], pack, kbps=24, max_hours=None, raw=False, seed=0)
    gpu_pack.pack([f"irs={tmp_path / 'irs'}"], pack, kbps=24, max_hours=None, raw=True, seed=0)
    gpu_pack.unpack(pack, tmp_path / "out", workers=1)

    back, orig = ClipBank(tmp_path / "out" / "train"), ClipBank(tmp_path / "songs")
    pd.testing.assert_frame_equal(back.meta, orig.meta)  # the same table: names, starts and lengths
    for i in range(len(orig)):
        x, y = orig.clip(i), back.clip(i)
        assert np.corrcoef(x, y)[0, 1] > 0.95  # lossy, but the same audio in the same place
    irs = ClipBank(tmp_path / "out" / "irs")
    assert np.array_equal(irs.clip(0), ClipBank(tmp_path / "irs").clip(0))  # carried as it is


def test_a_subset_keeps_whole_clips_up_to_the_hours_asked(tmp_path):
    clips = [tone(2.0, 300.0 + 50 * i) for i in range(10)]
    write_clip_bank(tmp_path / "songs", clips, pd.DataFrame({"song_id": [str(i) for i in range(10)]}))
    gpu_pack.pack([f"train={tmp_path / 'songs'}"], tmp_path / "pack", kbps=12, max_hours=7 / 3600, raw=False, seed=1)
    gpu_pack.unpack(tmp_path / "pack", tmp_path / "out", workers=1)
    back = ClipBank(tmp_path / "out" / "train")
    assert len(back) == 3 and (back.lengths == 16000).all()  # 3 whole 2 s clips fit in 7 s
    assert back.meta["song_id"].is_unique and len(set(back.meta["song_id"]) - {str(i) for i in range(10)}) == 0
