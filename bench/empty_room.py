"""The listener left on in a room where no music plays: how often does it name a song?

    .venv/bin/python bench/empty_room.py RESULTS --noise DIR [--levels -60 -50 -40 -30] [--config FILE]

Every recording under ``--noise`` (rooms, streets, rain, wind: no music) is brought to the same RMS, the lot is
joined into one stream and played at each of ``--levels`` dBFS (recorded in 16 bits) into the listener of ``RESULTS``
(``Database.listen``, the decisions of `nafp listen --input FILE --fast`; ``--config`` merged over the folder's
settings, e.g. a folder indexed before 2026-12-06 given today's ``listen:`` defaults). Printed per level: the
decisions that were silence, listening and match, how many songs the listener declared (each one a false
declaration), and the summary's entries (one per place of a song a listening held), with how long each was held and
its best confidence. ``--noise`` may also be a folder of music the database does not hold: the
listener left on while other music plays (bench/README.md, "Other music shipped with the model").
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from workflow_lib import SAMPLE_RATE  # noqa: E402


def room_stream(folder: Path) -> np.ndarray:
    """Every recording below ``folder`` at unit RMS (digital silence left out), joined in name order."""
    from workflow_lib.audio.files import AUDIO_EXTENSIONS, load_audio
    from workflow_lib.data.noise import normalise_rms
    from workflow_lib.evaluation.degrade import rms

    parts = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
        x = load_audio(path)
        if rms(x) > 1e-5:
            parts.append(normalise_rms(x, 1.0))
    if not parts:
        sys.exit(f"{folder}: no audio with sound in it")
    return np.concatenate(parts).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder (a workflow run or `nafp index`)")
    ap.add_argument("--noise", type=Path, required=True,
                    help="a folder of recordings without music (or of music the database does not hold)")
    ap.add_argument("--levels", type=float, nargs="+", default=[-60.0, -50.0, -40.0, -30.0], help="RMS, dBFS")
    ap.add_argument("--config", type=Path, default=None, help="settings merged over the folder's own")
    args = ap.parse_args()
    from workflow_lib.api import Database
    from workflow_lib.evaluation.degrade import quantise_16bit

    room = room_stream(args.noise)
    db = Database.open(args.results, args.config)
    block = SAMPLE_RATE  # pushed a second at a time; the stream cuts its own capture blocks
    print(f"{len(room) / SAMPLE_RATE / 60:.1f} min of audio from {args.noise}; listener of {args.results}")
    for level in args.levels:
        x = quantise_16bit(room * 10 ** (level / 20))  # as a sound card records it
        stream = db.listen(SAMPLE_RATE)
        states: Counter[str] = Counter()
        declared = 0
        for at in range(0, len(x), block):
            for d in stream.push(x[at:at + block]):
                states[d["state"]] += 1
                declared += d["event"] in ("match", "change")  # what the listener announced
        heard = stream.finish()["heard"]  # a listening that jumped is one entry per place
        named = "; ".join(f"{h['title']} at {h['start_s']:.0f} s for {h['end_s'] - h['start_s']:.1f} s "
                          f"(confidence up to {h['max_confidence']:.2f})" for h in heard) or "none"
        print(f"{level:6.0f} dBFS: decisions {sum(states.values())} (silence {states['silence']}, listening "
              f"{states['listening']}, match {states['match']}); songs declared {declared}: {named}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
