"""Where `nafp scan` puts a song's edges when other music plays before and after it.

    .venv/bin/python bench/scan_edges.py DB --unknown DIR [--noise DIR] [--snr 10 0] [--plays 3] [--live]

For every song of the database ``DB`` (a results folder of `nafp index`), ``--plays`` recordings are made: 20-40 s of
a song that is not in it (from ``--unknown``), 40-60 s of the database song from a random place, 20-40 s of another
unknown song, joined without a gap (a radio or a DJ set going on to music the database does not hold). Each is
scanned as it is and, with ``--noise`` (a folder of background recordings), with that noise at each ``--snr``. The
script prints, per condition, how many plays were found (an occurrence of the right song overlapping the play),
the signed errors of their start and end (positive: late), and the seconds named as another song. With ``--live``
the recordings go through the live listener instead (``Database.listen``, as `nafp listen --input FILE --fast`) and
its end-of-session summary (``heard``) is measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from workflow_lib import SAMPLE_RATE  # noqa: E402


def excerpt(audio: np.ndarray, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """``seconds`` of ``audio`` from a random start (all of it if shorter)."""
    n = min(len(audio), int(seconds * SAMPLE_RATE))
    start = int(rng.integers(0, len(audio) - n + 1))
    return audio[start:start + n]


def spread(errors: list[float]) -> str:
    """Signed median, and the median and 90th percentile of the size, of edge errors in seconds."""
    e = np.asarray(errors)
    return (f"median {np.median(e):+.2f} s, |error| median {np.median(np.abs(e)):.2f} / 90th "
            f"{np.percentile(np.abs(e), 90):.2f} s, over 2 s {int(np.sum(np.abs(e) > 2))}") if len(e) else "-"


def recordings(songs, unknown: list[np.ndarray], plays: int, rng: np.random.Generator
               ) -> list[tuple[np.ndarray, str, float, float]]:
    """``plays`` recordings per database song (``songs``: ``Database.songs``): unknown music, the song from a random
    place, unknown music, joined without a gap. Each as (8 kHz audio, song id, play start s, play end s)."""
    from workflow_lib.audio.files import load_audio

    out = []
    for song_id, path in zip(songs["song_id"], songs["path"]):
        song = load_audio(path)
        for _ in range(plays):
            before = excerpt(unknown[int(rng.integers(len(unknown)))], rng.uniform(20, 40), rng)
            play = excerpt(song, rng.uniform(40, 60), rng)
            after = excerpt(unknown[int(rng.integers(len(unknown)))], rng.uniform(20, 40), rng)
            start_s = len(before) / SAMPLE_RATE
            out.append((np.concatenate([before, play, after]), song_id, start_s, start_s + len(play) / SAMPLE_RATE))
    return out


def with_noise(audio: np.ndarray, noise: np.ndarray | None, snr: float | None, rng: np.random.Generator
               ) -> np.ndarray:
    """``audio`` with a random stretch of ``noise`` at ``snr`` dB (as it is for ``snr`` None)."""
    if snr is None:
        return audio
    from workflow_lib.evaluation.degrade import add_noise

    at = int(rng.integers(0, max(1, len(noise) - len(audio))))
    return add_noise(audio, np.resize(noise[at:at + len(audio)], len(audio)), snr)


def heard(db, audio: np.ndarray) -> list[dict]:
    """The songs the live listener's summary names for ``audio`` (8 kHz), with their stream times."""
    stream = db.listen(SAMPLE_RATE)
    stream.push(audio)
    return stream.finish()["heard"]


def parser(doc: str) -> argparse.ArgumentParser:
    """The options of the benchmarks that play these recordings (this one adds ``--live``)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a results folder made by `nafp index`")
    ap.add_argument("--unknown", required=True, type=Path, help="music the database does not hold")
    ap.add_argument("--noise", type=Path, help="background recordings to add at each --snr")
    ap.add_argument("--snr", nargs="+", type=float, default=[10.0, 0.0])
    ap.add_argument("--plays", type=int, default=3, help="recordings per database song (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def setup(args: argparse.Namespace):
    """The database, its recordings (``recordings``), the noise (None without ``--noise``), the conditions (None:
    as it is, else an SNR) and the generator that drew the recordings and draws the noise; the first line printed."""
    from workflow_lib.api import Database
    from workflow_lib.audio.files import load_audio
    from workflow_lib.data.manifest import list_audio_files

    db = Database.open(args.results)
    unknown = [load_audio(p) for p in sorted(list_audio_files([args.unknown]))]
    noise = np.concatenate([load_audio(p) for p in sorted(list_audio_files([args.noise]))]) if args.noise else None
    rng = np.random.default_rng(args.seed)
    plays = recordings(db.songs, unknown, args.plays, rng)
    print(f"{args.results}: {len(db.songs)} songs, {len(plays)} recordings; unknown music: {len(unknown)} files")
    return db, plays, noise, [None] + (list(args.snr) if noise is not None else []), rng


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--live", action="store_true", help="measure the live listener's summary, not the scan")
    args = ap.parse_args()
    db, plays, noise, conditions, rng = setup(args)
    for snr in conditions:
        starts, ends, other_s, missed = [], [], 0.0, 0
        for audio, song_id, start_s, end_s in plays:
            audio = with_noise(audio, noise, snr, rng)
            rows = heard(db, audio) if args.live else \
                [r for r in db.scan(audio, sample_rate=SAMPLE_RATE) if r["kind"] == "song"]
            mine = [r for r in rows if r["song_id"] == song_id and min(r["end_s"], end_s) > max(r["start_s"], start_s)]
            other_s += sum(r["end_s"] - r["start_s"] for r in rows if r not in mine)
            if not mine:
                missed += 1
                continue
            starts.append(min(r["start_s"] for r in mine) - start_s)
            ends.append(max(r["end_s"] for r in mine) - end_s)
        label = "clean" if snr is None else f"{snr:g} dB"
        print(f"{label}: found {len(starts)} of {len(plays)}; start {spread(starts)}; end {spread(ends)}; "
              f"named as another song {other_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
