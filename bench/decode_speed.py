"""Decode + resample speed of workflow_lib.audio.files on one core, in x realtime.

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/decode_speed.py [FOLDER] [--limit N]
Default folder: ../shared/corpus/dev/music (real MP3s, 22.05 kHz mono, 32 kbit/s).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from workflow_lib.audio.files import iter_audio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?",
                    default=str(Path(__file__).resolve().parents[1] / "../shared/corpus/dev/music"))
    ap.add_argument("--limit", type=int, default=40, help="number of files (default 40)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    files = sorted(p for p in Path(args.folder).rglob("*") if p.suffix.lower() in {".mp3", ".ogg", ".flac", ".wav"})
    files = files[: args.limit]
    if not files:
        raise SystemExit(f"no audio files under {args.folder}")
    rates = []
    total_audio = total_wall = 0.0
    for f in files:
        t0 = time.perf_counter()
        n = sum(len(c) for c in iter_audio(f))
        wall = time.perf_counter() - t0
        total_audio += n / 8000
        total_wall += wall
        rates.append(n / 8000 / wall)
    info = sf.info(str(files[0]))
    print(f"files: {len(files)} ({info.format_info}, {info.samplerate} Hz), audio {total_audio / 60:.1f} min")
    print(f"decode + resample to 8 kHz mono, 1 core: {total_audio / total_wall:.0f}x realtime overall, "
          f"per-file median {np.median(rates):.0f}x, min {np.min(rates):.0f}x")


if __name__ == "__main__":
    main()
