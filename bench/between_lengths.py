"""Clips of a length between two calibrated ones, against a results folder: how many are accepted (bench/README.md,
"A threshold of -inf", paragraph "Between such a length and a finite one").

    .venv/bin/python bench/between_lengths.py DB --unknown DIR --known DIR [--length 1.5] [--every 0.5]

Cuts a clip of ``--length`` seconds every ``--every`` seconds from each audio file of the two folders (songs the
database does not hold, and the database's own), answers each through ``workflow_lib.api.Database.query`` and
prints how many the no-match rule accepted, with the thresholds of the calibrated lengths around that length.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_lib import HOP_S, SAMPLE_RATE, SEGMENT_S  # noqa: E402
from workflow_lib.api import Database  # noqa: E402
from workflow_lib.audio.files import AUDIO_EXTENSIONS, load_audio  # noqa: E402
from workflow_lib.search.threshold import shown  # noqa: E402


def accepted(db: Database, folder: Path, length_s: float, every_s: float) -> tuple[int, int]:
    hits = n = 0
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
        audio = load_audio(path)
        for start in np.arange(0.0, len(audio) / SAMPLE_RATE - length_s + 1e-9, every_s):
            clip = audio[int(start * SAMPLE_RATE):int((start + length_s) * SAMPLE_RATE)]
            hits += bool(db.query(clip, sample_rate=SAMPLE_RATE)["match"])
            n += 1
    return hits, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--unknown", type=Path, required=True, help="songs the database does not hold")
    ap.add_argument("--known", type=Path, required=True, help="the database's own songs")
    ap.add_argument("--length", type=float, default=1.5)
    ap.add_argument("--every", type=float, default=0.5)
    args = ap.parse_args()
    db = Database.open(args.results)
    n_segments = int(round((args.length - SEGMENT_S) / HOP_S)) + 1
    cal = db.searcher.calibration
    print(f"{args.length:g} s = {n_segments} segments; one-view thresholds by length: "
          + ", ".join(f"{n}: {shown(t):.4f}" for n, t in zip(cal.n_segments, cal.thresholds))
          + f"; at {n_segments}: {shown(cal.threshold(n_segments)):.4f}")
    for name, folder in (("unknown", args.unknown), ("known", args.known)):
        hits, n = accepted(db, folder, args.length, args.every)
        print(f"{name}: {hits} of {n} clips accepted")


if __name__ == "__main__":
    main()
