"""File queries in which the song fills only part of the file: ``nafp query``'s answer (``api.answer_file``:
the whole file's answer, replaced by the scan's longest occurrence when the scan finds one) for files of talk
followed by an excerpt of a database song, in a held-out room with held-out noise; prints how often the right song
is named (and placed within 2 s of where it starts in the file), a wrong one, or none, per SNR and short-play rule
(bench/README.md, "A short play must hold").

    python bench/partial_file_queries.py RESULTS [--model M] [--files 100] [--talk-s 10] [--song-s 10]
        [--snr 10 0] [--short-play 15:0.55 none] [--seed 0] [--room POOL] [--views 1 2]

The songs are the evaluation's query songs (database songs no model trained on); the talk is the held-out babble,
the room one of the held-out room responses, the noise bed the held-out noise, mixed as the monitoring programmes
mix them (``evaluation.monitoring``). ``--room resonant`` plays them in a held-out resonant space instead (any pool
of ``evaluation.degrade.IR_POOLS``); ``--views 1`` scans a file in one view, as ``nafp query`` did before
2026-12-04 (``2``: as it is and whitened, what it does now when the whole file is searched in both views).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_lib import SAMPLE_RATE as SR  # noqa: E402
from workflow_lib.audio.files import load_audio  # noqa: E402
from workflow_lib.api import answer_file, listen_config  # noqa: E402
from workflow_lib.common.config import run_config  # noqa: E402
from workflow_lib.common.layout import ResultsLayout  # noqa: E402
from workflow_lib.data.clipbank import ClipBank  # noqa: E402
from workflow_lib.evaluation.degrade import add_noise, ir_pool, limit_peak, reverberate, rms  # noqa: E402
from workflow_lib.evaluation.monitoring import MUSIC_RMS, TALK_RMS, noise_and_talk, talk_like  # noqa: E402
from workflow_lib.evaluation.plan import QueryPlan  # noqa: E402
from workflow_lib.evaluation.songs import database_song_ids, query_songs  # noqa: E402
from workflow_lib.listener import scan  # noqa: E402
from workflow_lib.search.searcher import Searcher, searcher_kwargs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder of the workflow (with its index and calibration)")
    ap.add_argument("--model", help="model file (default: the results folder's model.source)")
    ap.add_argument("--files", type=int, default=100, help="files per SNR (default %(default)s)")
    ap.add_argument("--talk-s", type=float, default=10.0, help="talk before the song (s; default %(default)s)")
    ap.add_argument("--song-s", type=float, default=10.0, help="the song's excerpt (s; default %(default)s)")
    ap.add_argument("--snr", nargs="+", type=float, default=[10.0, 0.0], help="noise bed SNR (dB)")
    ap.add_argument("--short-play", nargs="+", default=[f"{scan.SHORT_PLAY_S:g}:{scan.SHORT_PLAY_SIMILARITY:g}"],
                    help="S:SIM values of the scan's short-play rule to try (none: off; default: the scan's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--room", default="room", help="impulse-response pool of the files (default %(default)s)")
    ap.add_argument("--views", nargs="+", type=int, choices=[1, 2], default=[2],
                    help="the scan's views (default: 2, as nafp query)")
    args = ap.parse_args()
    r = args.results
    cfg, _ = run_config(r)
    layout = ResultsLayout.of(r, cfg)
    searcher = Searcher.from_paths(args.model or layout.model, r / "index", r / "catalogue.parquet",
                                   r / "index" / "threshold.json", **searcher_kwargs(cfg["search"]))
    listen = listen_config(cfg)
    songs = query_songs(pd.read_parquet(r / "manifest" / "songs.parquet"),
                        pd.read_parquet(r / "split" / "splits.parquet"),
                        database_song_ids(r / "index" / "index_meta.parquet"),
                        QueryPlan.from_config(cfg["evaluate"]).query_splits)
    noise, babble = noise_and_talk(ClipBank(r / "noise" / "test"))
    irs = ClipBank(r / "irs" / "test")
    rooms = ir_pool(irs, args.room)
    rules = {v: (0.0, 0.0) if v.lower() in ("none", "null") else tuple(float(x) for x in v.split(":"))
             for v in args.short_play}
    talk_n, song_n = int(args.talk_s * SR), int(args.song_s * SR)
    counts: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    cache: dict[str, np.ndarray] = {}
    for snr in args.snr:
        rng = np.random.default_rng([args.seed, int(snr * 10)])
        for i in range(args.files):
            row = songs.iloc[int(rng.integers(len(songs)))]
            if row.song_id not in cache:
                cache[row.song_id] = load_audio(row.path)
            song = cache[row.song_id]
            if len(song) < song_n:
                continue
            start = int(rng.integers(0, len(song) - song_n + 1))
            part = song[start:start + song_n]
            talk = talk_like(rng, talk_n, babble)
            audio = np.concatenate([talk / max(rms(talk), 1e-6) * TALK_RMS, part / max(rms(part), 1e-6) * MUSIC_RMS])
            audio = reverberate(audio.astype(np.float32), 0, len(audio), irs.clip(int(rooms[rng.integers(len(rooms))])))
            audio = limit_peak(add_noise(audio, noise.random_excerpt(rng, len(audio)), snr))
            for (name, (shortest, floor)), views in itertools.product(rules.items(), args.views):
                scan.SHORT_PLAY_S, scan.SHORT_PLAY_SIMILARITY = shortest, floor
                match, result = answer_file(searcher, audio, listen, f"file-{i}", whitened=views == 2)
                best = result.best if result is not None else None
                named = best.song_id if best is not None else (match.song_id if match.is_match else None)
                placed = best is not None and abs(best.start_s - args.talk_s) <= 2.0
                kind = "none" if named is None else "right" if named == row.song_id else "wrong"
                c = counts[(snr, name, views)]
                c[kind] += 1
                c["right, placed"] += kind == "right" and placed
                c["right, whole-file answer"] += kind == "right" and best is None
                c["files"] += 1
        print(f"SNR {snr:g} dB done", flush=True)
    print(f"{args.talk_s:g} s of talk then {args.song_s:g} s of a database song, held-out {args.room} response and "
          f"noise; {args.files} files per SNR; answer as `nafp query` gives it")
    for (snr, name, views), c in counts.items():
        n = c["files"]
        print(f"SNR {snr:g} dB, short play {name}, {views} view{'s' if views > 1 else ''}: right {c['right']} "
              f"({100 * c['right'] / n:.1f} %; placed within 2 s {c['right, placed']}, by the whole-file answer "
              f"{c['right, whole-file answer']}), wrong {c['wrong']}, no match {c['none']}, of {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
