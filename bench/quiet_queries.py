"""How quiet a capture may be: 3 s clips of database songs under brown noise at 10 dB SNR, played at lower and
lower levels (16-bit, as a sound card delivers them), answered by a results folder's database through the Python
interface. Prints per level the right best guesses, the right answers the no-match rule accepts, and the share of
the clips' 1 s segments under the query's silence gate (`audio.segments.QUERY_SILENCE_DBFS`, searched as
silence; a query's seconds quieter than `QUERY_LEVEL_DBFS` are raised to it before the model).

    .venv/bin/python bench/quiet_queries.py RESULTS --music ../shared/corpus/dev/music [--attenuations 0 -20 -30]

Songs: every ``--every``-th audio file of ``--music`` (sorted) that the database holds, ``--clips`` each.
``--gate DBFS``, ``--raise-to DBFS`` and ``--no-raise`` try another rule for the query's seconds (``--gate -55
--no-raise``: the rule before 2026-12-06, the database's gate). ``--noise DIR`` also plays 5 s clips of the
recordings in DIR (rooms, streets, rain: no music) at each ``--noise-levels`` RMS level and prints how many are
answered with a song (every one a false positive) and how many are silence. ``--passages`` instead queries the
quiet passages of the database's own songs (every catalogue song; one 3 s stretch each whose every second is -55 to
-38 dBFS: fingerprinted in the database as they are, not raised), as they are, under brown noise at 10 dB and 20 dB
louder, to show what raising only the query's quiet seconds costs there.
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
from workflow_lib.data.noise import GENERATORS, normalise_rms  # noqa: E402
from workflow_lib.evaluation.degrade import add_noise, quantise_16bit  # noqa: E402
from workflow_lib.audio.segments import (QUERY_LEVEL_DBFS, QUERY_SILENCE_DBFS, SILENCE_DBFS, frame,  # noqa: E402
                                         segment_levels_db)

CLIP_S, SNR_DB = 3.0, 10.0


def played(x: np.ndarray, gain_db: float) -> np.ndarray:
    """``x`` ``gain_db`` louder, as a 16-bit sound card delivers it."""
    return quantise_16bit(x * 10 ** (gain_db / 20))


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)


def query_level_rule(gate_dbfs: float, raise_to: float | None) -> None:
    """Every query fingerprint made from here on (``embed_audio`` calls ``embed_segments`` by its module's name; a
    query's call is the one that asks for a raise) gates at ``gate_dbfs`` and raises to ``raise_to`` (None: not at
    all) instead of the product's ``QUERY_SILENCE_DBFS`` and ``QUERY_LEVEL_DBFS``."""
    from workflow_lib.model import embed

    product = embed.embed_segments

    def tried(fingerprinter, segments, batch_size=embed.DEFAULT_BATCH_SIZE, device=None, silence_dbfs=SILENCE_DBFS,
              levels=None, raise_to_dbfs=None):
        if raise_to_dbfs is not None:  # a query's seconds; the database's extraction asks for no raise
            silence_dbfs = None if silence_dbfs is None else gate_dbfs
            raise_to_dbfs = raise_to
        return product(fingerprinter, segments, batch_size, device, silence_dbfs, levels, raise_to_dbfs)

    embed.embed_segments = tried


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results")
    ap.add_argument("--music", type=Path, help="the songs' folder (not with --passages)")
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--songs", type=int, default=38)
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--attenuations", type=float, nargs="+", default=[0, -20, -30, -35, -40, -45])
    ap.add_argument("--gate", type=float, default=QUERY_SILENCE_DBFS, metavar="DBFS")
    ap.add_argument("--raise-to", type=float, default=QUERY_LEVEL_DBFS, metavar="DBFS")
    ap.add_argument("--no-raise", action="store_true")
    ap.add_argument("--noise", type=Path)
    ap.add_argument("--noise-levels", type=float, nargs="+", default=[-30, -45, -55, -60, -65])
    ap.add_argument("--noise-clips", type=int, default=200)
    ap.add_argument("--passages", action="store_true",
                    help="query the quiet passages of the database's songs instead (their every second -55 to -38 "
                         "dBFS)")
    ap.add_argument("--listen-minutes", type=float, default=0.0,
                    help="also stream this many minutes of the --noise recordings at each level through the live "
                         "listener and count the songs it declares")
    args = ap.parse_args()
    if args.no_raise or args.raise_to != QUERY_LEVEL_DBFS or args.gate != QUERY_SILENCE_DBFS:
        query_level_rule(args.gate, None if args.no_raise else args.raise_to)

    from workflow_lib.api import Database

    db = Database.open(args.results, device="cpu")
    catalogue = pd.read_parquet(Path(args.results) / "catalogue.parquet")
    if args.passages:
        return quiet_passages(db, catalogue, np.random.default_rng(0))
    if args.music is None:
        raise SystemExit("--music is needed (or --passages)")
    song_of = {str(Path(p).resolve()): s for p, s in zip(catalogue.path, catalogue.song_id) if isinstance(p, str)}
    files = [p.resolve() for p in audio_files(args.music)[::args.every] if str(p.resolve()) in song_of][:args.songs]
    if not files:
        raise SystemExit(f"no song of {args.music} is in {args.results}'s catalogue")
    rng = np.random.default_rng(0)
    clips = []
    n = int(CLIP_S * SAMPLE_RATE)
    for path in files:
        audio = load_audio(path)
        kept = 0
        while kept < args.clips:
            start = int(rng.integers(0, len(audio) - n))
            try:  # the evaluation's mixing; a silent start has no SNR and is drawn again
                mixed = add_noise(audio[start:start + n], GENERATORS["brown"](rng, n), SNR_DB)
            except ValueError:
                continue
            clips.append((song_of[str(path)], mixed))
            kept += 1
    print(f"{args.results}: {len(clips)} clips of {CLIP_S:g} s from {len(files)} songs, brown noise "
          f"(data.noise) at {SNR_DB:g} dB SNR, 16-bit")
    level_cosines(db, load_audio(files[0]), args.attenuations)
    for att in args.attenuations:
        right = accepted = gated = segments = 0
        for song, clip in clips:
            query = played(clip, att)
            levels = segment_levels_db(frame(query))
            gated += int(np.sum(~(levels >= args.gate)))
            segments += len(levels)
            answer = db.query(query, sample_rate=SAMPLE_RATE)
            guess = answer["best_guess"] or answer
            right += guess["song_id"] == song
            accepted += answer["song_id"] == song
        print(f"  {att:+4.0f} dB: best guess right {right} of {len(clips)}, right and accepted {accepted}; "
              f"segments under the silence gate {100 * gated / segments:.1f} %")
    if args.noise and args.noise_clips > 0:
        noise_queries(db, args, rng)
    if args.noise and args.listen_minutes > 0:
        noise_listened(db, args, rng)


def quiet_passages(db, catalogue: pd.DataFrame, rng: np.random.Generator) -> None:
    """One 3 s stretch of every catalogue song whose every second is -55 to -38 dBFS (over the database's gate,
    under the query's raise: its fingerprints were made from the quiet audio), queried as it is, under brown noise
    at 10 dB SNR and 20 dB louder (a capture louder than the file)."""
    hop_s, n = 0.5, int(CLIP_S * SAMPLE_RATE)
    span = int(round((CLIP_S - 1) / hop_s)) + 1  # the 1 s segments a 3 s stretch holds
    clips, levels = [], []
    for song, path in zip(catalogue.song_id, catalogue.path):
        audio = load_audio(path)
        lv = segment_levels_db(frame(audio))
        levels.append(lv)
        quiet = (lv >= SILENCE_DBFS) & (lv <= -38.0)
        fits = np.flatnonzero(np.convolve(quiet.astype(int), np.ones(span, int), "valid") == span)
        if len(fits):
            start = int(fits[rng.integers(len(fits))] * hop_s * SAMPLE_RATE)
            clips.append((str(song), audio[start:start + n]))
    lv = np.concatenate(levels)
    between = np.mean((lv >= SILENCE_DBFS) & (lv < QUERY_LEVEL_DBFS)) * 100
    print(f"{len(catalogue)} songs, {len(lv)} one-second segments at a {hop_s:g} s hop: "
          f"{np.mean(lv < SILENCE_DBFS) * 100:.1f} % under {SILENCE_DBFS:g} dBFS (not indexed), {between:.1f} % from "
          f"there to {QUERY_LEVEL_DBFS:g} dBFS; {len(clips)} quiet stretches of {CLIP_S:g} s (16-bit)")
    for name, gain_db, noisy in (("as they are", 0.0, False), ("brown noise at 10 dB", 0.0, True),
                                 ("20 dB louder", 20.0, False)):
        right = accepted = 0
        for song, clip in clips:
            x = add_noise(clip, GENERATORS["brown"](rng, len(clip)), SNR_DB) if noisy else clip
            answer = db.query(played(x, gain_db), sample_rate=SAMPLE_RATE)
            right += (answer["best_guess"] or answer)["song_id"] == song
            accepted += answer["song_id"] == song
        print(f"  {name}: best guess right {right} of {len(clips)}, right and accepted {accepted}")


def level_cosines(db, audio: np.ndarray, attenuations: list[float]) -> None:
    """How the model alone hears a quieter second: the mean cosine of 40 s of one song's fingerprints (no gate, no
    raise) at each attenuation with those at full level, and with the seconds raised back to full level first."""
    from workflow_lib.audio.segments import frame
    from workflow_lib.model.embed import embed_segments

    segs = np.ascontiguousarray(frame(audio[60 * SAMPLE_RATE:100 * SAMPLE_RATE]))
    fp = db.searcher.fingerprinter

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))

    full = embed_segments(fp, segs, silence_dbfs=None)
    for att in attenuations:
        quiet = played(segs, att)
        print(f"  the model alone, {len(segs)} seconds {att:+.0f} dB: cosine with full level "
              f"{cos(full, embed_segments(fp, quiet, silence_dbfs=None)):.3f}, raised back first "
              f"{cos(full, embed_segments(fp, quiet * 10 ** (-att / 20), silence_dbfs=None)):.3f}")


def noise_queries(db, args: argparse.Namespace, rng: np.random.Generator) -> None:
    files = audio_files(args.noise)
    n = int(5.0 * SAMPLE_RATE)
    clips = []
    while len(clips) < args.noise_clips:
        audio = load_audio(files[int(rng.integers(len(files)))])
        if len(audio) > n:
            start = int(rng.integers(0, len(audio) - n))
            clip = audio[start:start + n]
            if np.mean(clip ** 2) > 0:
                clips.append(normalise_rms(clip, 1.0))
    print(f"{len(clips)} clips of 5 s from {args.noise} (no music), 16-bit")
    for level in args.noise_levels:
        answered = silence = 0
        for clip in clips:
            query = played(clip, level)
            answer = db.query(query, sample_rate=SAMPLE_RATE)
            answered += answer["song_id"] is not None
            silence += answer["reason"] == "silence"
        print(f"  RMS {level:+4.0f} dBFS: answered with a song {answered} of {len(clips)}, silence {silence}")


def noise_listened(db, args: argparse.Namespace, rng: np.random.Generator) -> None:
    """The listener fed ``--listen-minutes`` of the noise recordings one after another (each at the level), in
    0.5 s blocks as a capture delivers them; every song it declares is a false declaration."""
    from dataclasses import replace

    files = audio_files(args.noise)
    parts, total = [], 0
    for i in rng.permutation(len(files)):
        audio = load_audio(files[i])
        if len(audio) and np.mean(audio ** 2) > 0:
            parts.append(normalise_rms(audio, 1.0))
            total += len(audio)
        if total >= args.listen_minutes * 60 * SAMPLE_RATE:
            break
    stream_audio = np.concatenate(parts)[:int(args.listen_minutes * 60 * SAMPLE_RATE)]
    db.listen_settings = replace(db.listen_settings, silence_dbfs=args.gate)
    print(f"{len(stream_audio) / SAMPLE_RATE / 60:.1f} minutes of {args.noise} through the live listener "
          f"(gate {args.gate:g} dBFS), 16-bit")
    block = SAMPLE_RATE // 2
    for level in args.noise_levels:
        x = played(stream_audio, level)
        stream = db.listen(sample_rate=SAMPLE_RATE)
        silent = decisions = declared = 0
        for at in range(0, len(x), block):
            for decision in stream.push(x[at:at + block]):
                decisions += 1
                silent += decision.get("state") == "silence"
                declared += decision.get("event") in ("match", "change")  # what the listener announced
        heard = stream.finish()["heard"]  # a listening that jumped is one entry per place
        held_s = sum(h["end_s"] - h["start_s"] for h in heard)
        print(f"  RMS {level:+4.0f} dBFS: songs declared {declared} ({held_s:.1f} s in all); silence {silent} of "
              f"{decisions} decisions")


if __name__ == "__main__":
    main()
