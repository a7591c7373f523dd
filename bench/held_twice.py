"""A recording held twice in a database (two files of it that are not the same bytes): are its clips answered?

    .venv/bin/python bench/held_twice.py DB --copies ID ID [--noise DIR] [--snr 10 0] [--lengths 1 3 5] [--ir FILE]

Clips of every song of the database ``DB`` (a results folder of `nafp index`; from its files, at 20, 24, ... 136 s)
are queried through the Python interface (``Database.query``), as they are and with ``--noise`` (a folder of
background recordings) at each ``--snr``; with ``--ir`` (a room's impulse response), played in that room first
(``evaluation.degrade.reverberate``, with the reverb of what played before the clip). A clip is right when the
answer is accepted and names its song, or, for the songs given with ``--copies`` (the song ids of the two files of
one recording), either copy. The script prints, per condition and length, how many clips of the recording held
twice and of the songs held once were right.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from workflow_lib import SAMPLE_RATE  # noqa: E402

OFFSETS_S = range(20, 140, 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a results folder made by `nafp index`")
    ap.add_argument("--copies", nargs=2, required=True, metavar="ID", help="the song ids of one recording's two files")
    ap.add_argument("--noise", type=Path, help="background recordings to add at each --snr")
    ap.add_argument("--snr", nargs="+", type=float, default=[10.0, 0.0])
    ap.add_argument("--lengths", nargs="+", type=float, default=[1.0, 3.0, 5.0])
    ap.add_argument("--ir", type=Path, help="an impulse response every clip is played through")
    args = ap.parse_args()

    from workflow_lib.api import Database
    from workflow_lib.audio.files import load_audio
    from workflow_lib.data.manifest import list_audio_files
    from workflow_lib.evaluation.degrade import add_noise, reverberate

    db = Database.open(args.results)
    copies = set(args.copies)
    songs = {sid: load_audio(path) for sid, path in zip(db.songs["song_id"], db.songs["path"])
             if sid != args.copies[1]}  # the recording's clips are cut from its first file
    noise = np.concatenate([load_audio(p) for p in sorted(list_audio_files([args.noise]))]) if args.noise else None
    ir = load_audio(args.ir) if args.ir else None
    rng = np.random.default_rng(0)
    print(f"{args.results}: {len(db.songs)} songs, one recording held twice ({', '.join(args.copies)})"
          + (f"; every clip played through {args.ir.name}" if ir is not None else ""))
    for snr in [None] + (list(args.snr) if noise is not None else []):
        for length in args.lengths:
            right = {"twice": [0, 0], "once": [0, 0]}
            for sid, audio in songs.items():
                held = "twice" if sid in copies else "once"
                for at_s in OFFSETS_S:
                    start, n = int(at_s * SAMPLE_RATE), int(length * SAMPLE_RATE)
                    x = audio[start:start + n] if ir is None else reverberate(audio, start, n, ir)
                    if not np.any(x):
                        continue  # digital silence in the file there: no clip of the song (and no SNR to set)
                    if snr is not None:
                        at = int(rng.integers(0, len(noise) - len(x)))
                        x = add_noise(x, noise[at:at + len(x)], snr)
                    answer = db.query(x, sample_rate=SAMPLE_RATE)
                    right[held][0] += 1
                    right[held][1] += bool(answer["match"] and (answer["song_id"] in copies if held == "twice"
                                                                 else answer["song_id"] == sid))
            label = "clean" if snr is None else f"{snr:g} dB"
            print(f"{label}, {length:g} s: the recording held twice {right['twice'][1]} of {right['twice'][0]} right "
                  f"and accepted; the songs held once {right['once'][1]} of {right['once'][0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
