"""False positives of the no-match rule on a user's own collection: music that is not in the database, queried
against a database made by `nafp index` (small collections, and collections of short pieces).

    .venv/bin/python bench/collection_fpr.py make --music DIR --out FOLDER --songs 25
    .venv/bin/nafp index FOLDER/collection --results FOLDER/db
    .venv/bin/python bench/collection_fpr.py measure --results FOLDER/db --unknown FOLDER/unknown

``make`` writes the collection from the first ``--songs`` songs of ``--music`` (sorted by name), whole, or with
``--pieces`` one piece of 3-8 s from each (a jingle library; pieces of one song would share passages, and naming
the other is then right) plus ``--long`` whole songs after them. It cuts the unknown clips (1 s and 3 s) from the
last ``--unknown-songs`` songs, which the collection never holds. ``measure`` queries every unknown clip through
the Python interface, as it is and with white noise at each ``--snr``, and prints per length the share accepted:
every one is a false positive. The calibration's thresholds are printed too.

``make`` also writes ``known/``, clips of the collection's own songs (``measure --known``: the share of right best
guesses that the rule accepts), and two kinds of music made from the collection to try as ``nafp index
--unknown-music``: ``shifted/`` (every song played ``--shift-semitones`` faster or slower) and ``reversed/``
(every song played backwards).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soxr  # noqa: E402

from workflow_lib import SAMPLE_RATE  # noqa: E402
from workflow_lib.audio.files import load_audio, write_audio  # noqa: E402
from workflow_lib.evaluation.degrade import MIN_SIGNAL_RMS, add_noise, rms  # noqa: E402

LENGTHS_S = (1.0, 3.0)


def songs_of(music: Path) -> list[Path]:
    return sorted(p for p in music.rglob("*") if p.suffix.lower() in {".mp3", ".flac", ".wav", ".ogg"})


def with_white_noise(x: np.ndarray, snr: float | None, rng: np.random.Generator) -> np.ndarray:
    """``x`` with white noise at ``snr`` dB (None: as it is). The noise is drawn even for a silent clip, which has
    no level to set it by and stays silent, so that every clip after it gets the same noise whatever came before."""
    if snr is None:
        return x
    noise = rng.standard_normal(len(x)).astype(np.float32)
    return x if rms(x) < MIN_SIGNAL_RMS else add_noise(x, noise, snr)


def write_clips(audio: np.ndarray, stem: Path, per_length: int, rng: np.random.Generator) -> int:
    """``per_length`` clips of every length in ``LENGTHS_S`` from random starts, as STEM_{length}s_{j}.wav."""
    for length in LENGTHS_S:
        n = int(length * SAMPLE_RATE)
        for j in range(per_length):
            start = int(rng.integers(len(audio) - n))
            write_audio(stem.parent / f"{stem.name}_{length:g}s_{j}.wav", audio[start:start + n])
    return per_length * len(LENGTHS_S)


def make(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    songs = songs_of(Path(args.music))
    needed = args.songs + args.long + args.unknown_songs
    if len(songs) < needed:
        raise SystemExit(f"{args.music}: {len(songs)} songs, {needed} needed")
    collection, unknown = Path(args.out) / "collection", Path(args.out) / "unknown"
    collection.mkdir(parents=True, exist_ok=True)
    unknown.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(songs[:args.songs]):
        audio = load_audio(path)
        if args.pieces:
            n = int(rng.uniform(3.0, 8.0) * SAMPLE_RATE)
            start = int(rng.integers(len(audio) - n))
            audio = audio[start:start + n]
        write_audio(collection / f"{'piece' if args.pieces else 'song'}{i:03d}.wav", audio)
    for i, path in enumerate(songs[args.songs:args.songs + args.long]):
        write_audio(collection / f"long{i}.wav", load_audio(path))
    clips = 0
    for i, path in enumerate(songs[-args.unknown_songs:]):
        clips += write_clips(load_audio(path), unknown / f"u{i:03d}", args.clips_per_song, rng)
    kind = "pieces of 3-8 s" if args.pieces else "whole songs"
    print(f"{args.songs} {kind} and {args.long} more whole songs in {collection}; {clips} unknown clips in {unknown}")
    known, shifted, backwards = (Path(args.out) / name for name in ("known", "shifted", "reversed"))
    for folder in (known, shifted, backwards):
        folder.mkdir(exist_ok=True)
    for song in sorted(collection.glob("*.wav")):
        audio = load_audio(song)
        write_clips(audio, known / f"{song.stem}_", args.known_clips_per_song, rng)
        for semitones in args.shift_semitones:  # played faster or slower: other notes, other tempo
            factor = 2.0 ** (semitones / 12.0)
            write_audio(shifted / f"{song.stem}_{semitones:+g}st.wav",
                        soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32))
        write_audio(backwards / f"{song.stem}_rev.wav", audio[::-1].copy())
    print(f"{args.known_clips_per_song} clips per length of every collection song in {known}; its songs shifted by "
          f"{args.shift_semitones} semitones in {shifted}, and played backwards in {backwards}")


def measure(args: argparse.Namespace) -> None:
    from workflow_lib.api import Database

    db = Database.open(args.results)
    # --cohort: songs indexed from under that folder (as the catalogue records the path, links not followed) stand
    # for other music kept in the database beside the collection, never answered
    cohort = Path(args.cohort).absolute() if args.cohort else None
    hidden = set() if cohort is None else {song for song, path in db.songs["path"].items()
                                           if Path(path).is_relative_to(cohort)}
    calibration = json.loads((Path(args.results) / "index" / "threshold.json").read_text())
    print(f"{args.results}: {len(db.songs)} songs, the calibration's null queries from "
          f"{calibration['meta'].get('n_songs')} of them; target false-positive rate {calibration['target_fpr']}"
          + (f"; {len(hidden)} of them a cohort of other music, never answered" if cohort else ""))
    for row in calibration["lengths"]:
        print(f"  calibrated {row['n_segments']} segment(s): threshold {row['threshold']:.4f} "
              f"from {row['n_queries']} null queries")
    clips = sorted(Path(args.unknown).glob("*.wav"))
    known = sorted(Path(args.known).glob("*.wav")) if args.known else []
    rng = np.random.default_rng(0)
    for snr in [None, *args.snr]:
        accepted = {length: [] for length in LENGTHS_S}
        right = {length: [] for length in LENGTHS_S}  # of the known clips: (best guess right, right and accepted)
        for clip in clips + known:
            x = with_white_noise(load_audio(clip), snr, rng)
            source, _, clip_name = clip.stem.rpartition("__")
            length = float(clip_name.split("_")[-2].rstrip("s"))
            answer = db.query(x, sample_rate=SAMPLE_RATE)
            if answer["song_id"] in hidden:  # a cohort song leads: no match
                answer = {**answer, "song_id": None, "title": None}
            if not source:
                accepted[length].append(answer["song_id"] is not None)
                continue
            guess = answer["best_guess"] or answer
            right[length].append((guess["title"] == source, answer["title"] == source))
        condition = "clean" if snr is None else f"{snr:g} dB white noise"
        print(f"  {condition}: " + "; ".join(f"{length:g} s accepted {sum(hits)} of {len(hits)} "
                                             f"({100 * np.mean(hits):.2f} %)" for length, hits in accepted.items()))
        if known:
            print("    collection clips: " + "; ".join(
                f"{length:g} s best guess right {sum(g for g, _ in r)} of {len(r)}, of those accepted "
                f"{sum(a for _, a in r)} ({100 * sum(a for _, a in r) / max(1, sum(g for g, _ in r)):.1f} %)"
                for length, r in right.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("--music", required=True)
    mk.add_argument("--out", required=True)
    mk.add_argument("--songs", type=int, required=True)
    mk.add_argument("--pieces", action="store_true")
    mk.add_argument("--long", type=int, default=0)
    mk.add_argument("--unknown-songs", type=int, default=50)
    mk.add_argument("--clips-per-song", type=int, default=16)
    mk.add_argument("--known-clips-per-song", type=int, default=8)
    mk.add_argument("--shift-semitones", type=float, nargs="*", default=[-3.0, 3.0])
    me = sub.add_parser("measure")
    me.add_argument("--results", required=True)
    me.add_argument("--unknown", required=True)
    me.add_argument("--known", help="clips of the collection's own songs (make's known/): how many are accepted")
    me.add_argument("--snr", type=float, nargs="*", default=[0.0])
    me.add_argument("--cohort", help="songs of the database indexed from under this folder are other music kept "
                                     "beside the collection: an answer naming one is no match")
    args = ap.parse_args()
    make(args) if args.command == "make" else measure(args)


if __name__ == "__main__":
    main()
