"""How quiet a capture may be: 3 s clips of database songs under reddish noise at 10 dB SNR, played at lower and
lower levels (16-bit, as a sound card delivers them), answered by a results folder's database through the Python
interface. Prints per level the right best guesses, the right answers the no-match rule accepts, and the share of
the clips' 1 s segments under the silence gate (`audio.segments.SILENCE_DBFS`, searched as silence).

    .venv/bin/python bench/quiet_queries.py RESULTS --music ../shared/corpus/dev/music [--attenuations 0 -20 -30]

Songs: every ``--every``-th audio file of ``--music`` (sorted) that the database holds, ``--clips`` each.
``--raise-to DBFS`` tries raising every second that the gate passes but that is quieter than DBFS to that level
before the model (a change of the product tried here, in every view the search makes, not in the product).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_lib import SAMPLE_RATE  # noqa: E402
from workflow_lib.audio.files import AUDIO_EXTENSIONS, load_audio  # noqa: E402
from workflow_lib.audio.segments import SILENCE_DBFS, frame, segment_levels_db  # noqa: E402

CLIP_S, SNR_DB = 3.0, 10.0


def reddish_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Integrated white noise with its slowest drift taken out: most of its energy low, like a room's rumble."""
    walk = np.cumsum(rng.standard_normal(n))
    return (walk - np.convolve(walk, np.ones(200) / 200, "same")).astype(np.float32)


def raise_quiet_seconds(floor_dbfs: float) -> None:
    """Every fingerprint made from here on (``embed_audio`` calls ``embed_segments`` by its module's name) is of
    the segments quieter than ``floor_dbfs`` but above the gate raised to ``floor_dbfs``."""
    from workflow_lib.model import embed

    plain = embed.embed_segments

    def raised(fingerprinter, segments, *args, **kwargs):
        levels = segment_levels_db(segments)
        quiet = (levels > SILENCE_DBFS) & (levels < floor_dbfs)
        gain = np.where(quiet, 10 ** ((floor_dbfs - np.where(quiet, levels, floor_dbfs)) / 20), 1.0)
        return plain(fingerprinter, (segments * gain[:, None]).astype(np.float32), *args, **kwargs)

    embed.embed_segments = raised


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results")
    ap.add_argument("--music", required=True, type=Path)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--songs", type=int, default=38)
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--attenuations", type=float, nargs="+", default=[0, -20, -30, -35, -40, -45])
    ap.add_argument("--raise-to", type=float, default=None, metavar="DBFS")
    args = ap.parse_args()
    if args.raise_to is not None:
        raise_quiet_seconds(args.raise_to)

    from workflow_lib.api import Database

    db = Database.open(args.results, device="cpu")
    catalogue = pd.read_parquet(Path(args.results) / "catalogue.parquet")
    song_of = {str(Path(p).resolve()): s for p, s in zip(catalogue.path, catalogue.song_id) if isinstance(p, str)}
    files = [p.resolve() for p in sorted(args.music.iterdir())[::args.every]
             if p.suffix.lower() in AUDIO_EXTENSIONS and str(p.resolve()) in song_of][:args.songs]
    if not files:
        raise SystemExit(f"no song of {args.music} is in {args.results}'s catalogue")
    rng = np.random.default_rng(0)
    clips = []
    n = int(CLIP_S * SAMPLE_RATE)
    for path in files:
        audio = load_audio(path)
        for _ in range(args.clips):
            start = int(rng.integers(0, len(audio) - n))
            clip = audio[start:start + n]
            noise = reddish_noise(n, rng)
            noise *= np.sqrt(np.mean(clip ** 2) / np.mean(noise ** 2) / 10 ** (SNR_DB / 10))
            clips.append((song_of[str(path)], clip + noise))
    print(f"{args.results}: {len(clips)} clips of {CLIP_S:g} s from {len(files)} songs, reddish noise at "
          f"{SNR_DB:g} dB SNR, 16-bit")
    for att in args.attenuations:
        right = accepted = gated = segments = 0
        for song, clip in clips:
            query = (np.round(np.clip(clip * 10 ** (att / 20), -1, 1) * 32767) / 32767).astype(np.float32)
            levels = segment_levels_db(frame(query))
            gated += int(np.sum(~(levels > SILENCE_DBFS)))
            segments += len(levels)
            answer = db.query(query, sample_rate=SAMPLE_RATE)
            guess = answer["best_guess"] or answer
            right += guess["song_id"] == song
            accepted += answer["song_id"] == song
        print(f"  {att:+4.0f} dB: best guess right {right} of {len(clips)}, right and accepted {accepted}; "
              f"segments under the silence gate {100 * gated / segments:.1f} %")


if __name__ == "__main__":
    main()
