"""Listener benchmark: compute per decision, and seconds of audio until the first correct answer.

    OMP_NUM_THREADS=1 .venv/bin/python bench/listener_latency.py --results results [--excerpts 100] [--snr 10]

Excerpts are cut at random (seeded) offsets from the database songs (paths from results/catalogue.parquet),
degraded like the evaluation's queries (held-out test noise at --snr dB plus a held-out test impulse response:
results/noise/test, results/irs/test; with --level-db played quieter) and streamed through the listener's core
hop by hop, exactly as the live listener does after resampling: the two views (``listener.views``; ``--one-view``:
the stream as it is only). Reported:

* compute per decision (embedding of the newest segment + the window's sequence searches), p50 / p95 / max, with
  the model on CPU at --threads threads, and the model preset and database size it was measured with;
* seconds of audio until the first decision that names the right song, and the right song at the right offset
  (within 0.5 s); median and p90 over the excerpts (an excerpt never named counts as infinite);
* wrong-song declarations (a match or change to a song that is not playing), per excerpt;
* song changes: pairs of degraded excerpts back to back, seconds after the change until the new song is named;
* songs played again (``--replays``): an excerpt, ``--pause`` seconds of the test noise alone (the listening ends),
  then another place of the same song; seconds until that place is named (``listen.redeclare_s``'s cost);
* false declarations on music the database does not hold: catalogue songs outside the index, or, when every
  catalogue song is indexed, database songs each streamed with itself and its twins left out of every search.

Per decision the search work is bounded: one new segment goes to the index (its neighbours are cached for the
window), and at most ``search.max_candidates`` alignments are re-scored over the window, so the figure grows little
with the database beyond the index's own per-segment latency (bench/index_scale.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_lib import SAMPLE_RATE as SR  # noqa: E402
from workflow_lib.evaluation.degrade import IR_POOLS  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results")
    p.add_argument("--excerpts", type=int, default=100, help="degraded excerpts (default: %(default)s)")
    p.add_argument("--length", type=float, default=12.0, help="seconds per excerpt (default: %(default)s)")
    p.add_argument("--snr", type=float, default=10.0, help="SNR in dB of the test noise (default: %(default)s)")
    p.add_argument("--room", default="room", choices=IR_POOLS,
                   help="impulse-response pool of the held-out responses (default: %(default)s)")
    p.add_argument("--no-reverb", action="store_true")
    p.add_argument("--level-db", type=float, default=None, metavar="DB",
                   help="play every excerpt this many dB under its song's mastered level, recorded in 16 bits (a "
                        "quiet capture: the evaluation's level_db), e.g. -40")
    p.add_argument("--no-raise", action="store_true",
                   help="quiet seconds are not raised before the model (with --set silence_dbfs=-55: the level rule "
                        "before 2026-12-06; bench/quiet_queries.py's query_level_rule)")
    p.add_argument("--changes", type=int, default=30, help="song-change pairs (default: %(default)s)")
    p.add_argument("--replays", type=int, default=0,
                   help="songs played again: an excerpt, a pause of room noise, another place of the same song "
                        "(default: %(default)s)")
    p.add_argument("--pause", type=float, default=6.0, help="seconds of the replays' pause (default: %(default)s)")
    p.add_argument("--unknown", type=int, default=50,
                   help="excerpts of songs outside the database (catalogue songs not in the index)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="config merged over config/config.yaml (listen: section)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a listen: key, e.g. --set tail_s=2.5 (repeatable)")
    p.add_argument("--split", default=None, metavar="NAME",
                   help="query only the database songs of this split (results/split/splits.parquet), e.g. test: "
                        "songs the model never trained on")
    p.add_argument("--query-path-contains", default=None, metavar="TEXT",
                   help="draw excerpts only from database songs whose path contains TEXT (the other songs stay in "
                        "the database as distractors)")
    p.add_argument("--one-view", action="store_true",
                   help="listen to the stream as it is only (without the whitened view: the listener before "
                        "2026-12-04)")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    return p.parse_args()


def pct(x: list[float], q: float) -> float:
    # "higher": no interpolation, so excerpts never named (inf) give inf rather than nan
    return float(np.percentile(np.asarray(x, dtype=np.float64), q, method="higher")) if x else float("nan")


def main() -> None:
    args = parse_args()
    import logging

    import pandas as pd
    import torch

    from workflow_lib.audio.files import load_audio
    from workflow_lib.data.clipbank import ClipBank
    from workflow_lib.evaluation.degrade import Degradation, degrade
    from workflow_lib.cli.listen import load_settings
    from workflow_lib.common.config import run_config
    from workflow_lib.common.layout import ResultsLayout
    from workflow_lib.listener.core import ListenerCore
    from workflow_lib.listener.decisions import MATCH
    from workflow_lib.listener.views import TwoViewCore, listener_core
    from workflow_lib.database.catalogue import song_paths
    from workflow_lib.search.duplicates import twins_of, unknown_exclusion
    from workflow_lib.search.searcher import Searcher
    from workflow_lib.search.ranking import song_set

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    r = Path(args.results)
    settings = load_settings(str(r), args.config, overrides)  # the settings the results folder was built with
    cfg = settings.listen
    if args.no_raise:
        sys.path.insert(0, str(REPO / "bench"))
        from quiet_queries import query_level_rule

        query_level_rule(cfg.silence_dbfs, None)
    # the model the folder was built with (its model.source: trained there, or a bundled or given file)
    layout = ResultsLayout.of(r, run_config(r, args.config)[0])
    searcher = Searcher.from_layout(layout, **{**settings.search, "device": "cpu"})
    db = searcher.db
    cat = pd.read_parquet(r / "catalogue.parquet").set_index("song_id")
    ids = [str(s) for s in db.song_ids if str(s) in cat.index
           and (args.query_path_contains is None or args.query_path_contains in str(cat.loc[str(s), "path"]))]
    if args.split is not None:
        splits = pd.read_parquet(r / "split" / "splits.parquet")
        chosen = set(splits.loc[splits["split"] == args.split, "song_id"].astype(str))
        ids = [sid for sid in ids if sid in chosen]
        if not ids:
            sys.exit(f"no database song of split {args.split!r}")
    songs = {sid: load_audio(cat.loc[sid, "path"]) for sid in ids}
    need = int((args.length + 1) * SR)
    ids = [sid for sid in ids if len(songs[sid]) >= need]
    noise, irs = ClipBank(r / "noise" / "test"), ClipBank(r / "irs" / "test")
    spec = Degradation(snr_db=args.snr, room=None if args.no_reverb else args.room, level_db=args.level_db)
    rng = np.random.default_rng(args.seed)
    n = int(args.length * SR)
    fp = searcher.fingerprinter
    members = getattr(fp, "members", [fp])  # an ensemble names its members' presets
    preset = "+".join(m.model_config.preset for m in members)
    params = sum(p.numel() for p in searcher.fingerprinter.parameters())
    print(f"results {r}: model preset {preset} ({params / 1e6:.2f} M parameters), {db.ntotal} fingerprints of "
          f"{len(db.song_ids)} songs ({db.factory}); {len(ids)} query songs; threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"listen settings: {cfg}")

    def make_core(exclude_songs=()):
        return ListenerCore(searcher, cfg, exclude_songs) if args.one_view else \
            listener_core(searcher, cfg, exclude_songs)

    print("views: " + ("the stream as it is" if not isinstance(make_core(), TwoViewCore)
                       else f"as it is and whitened ({searcher.whitened_view})"))

    def stream(core, x: np.ndarray) -> list:
        return [d for d in (core.push(x[a:a + 4000]) for a in range(0, len(x), 4000)) if d is not None]

    first_song, first_exact, wrong, compute, silent_excerpts = [], [], 0, [], 0
    t0 = time.perf_counter()
    for i in range(args.excerpts):
        sid = ids[i % len(ids)]
        audio = songs[sid]
        start = int(rng.integers(0, len(audio) - n))
        try:
            x, _ = degrade(audio, start, n, spec, rng, noise, irs)
        except ValueError:  # a digitally silent stretch: nothing to name
            silent_excerpts += 1
            continue
        core = make_core()
        ds = stream(core, x)
        compute += [d.compute_ms for d in ds]
        ok_song = [d.stream_s for d in ds if d.state == MATCH and d.song_id == sid]
        ok_exact = [d.stream_s for d in ds if d.state == MATCH and d.song_id == sid
                    and abs(d.song_offset_s - start / SR) <= 0.5]
        first_song.append(ok_song[0] if ok_song else np.inf)
        first_exact.append(ok_exact[0] if ok_exact else np.inf)
        wrong += sum(1 for h in core.heard if h.song_id != sid)
    wall = time.perf_counter() - t0

    change_delay, change_missed, change_wrong = [], 0, 0
    for i in range(args.changes):
        a, b = rng.choice(len(ids), 2, replace=False)
        sa, sb = ids[a], ids[b]
        half = n // 2
        pa = int(rng.integers(0, len(songs[sa]) - half))
        pb = int(rng.integers(0, len(songs[sb]) - half))
        xa, _ = degrade(songs[sa], pa, half, spec, rng, noise, irs)
        xb, _ = degrade(songs[sb], pb, half, spec, rng, noise, irs)
        core = make_core()
        ds = stream(core, np.concatenate([xa, xb]))
        t_change = half / SR
        named = [d.stream_s - t_change for d in ds if d.stream_s > t_change and d.state == MATCH and d.song_id == sb]
        if named:
            change_delay.append(named[0])
        else:
            change_missed += 1
        change_wrong += sum(1 for h in core.heard if h.song_id not in (sa, sb))

    # A song played again after a pause (room noise only, long enough to end the listening) at another place:
    # seconds after it resumes until the second place is named (right song, offset within 0.5 s).
    replay_delay, replay_missed = [], 0
    rr = np.random.default_rng([args.seed, 1])  # its own draws: the figures below stay those of earlier runs
    for i in range(args.replays):
        sid = ids[i % len(ids)]
        audio, half, gap = songs[sid], n // 2, int(args.pause * SR)
        pa, pb = (int(p) for p in rr.choice(len(audio) - half, 2, replace=False))
        xa, _ = degrade(audio, pa, half, spec, rr, noise, irs)
        xb, _ = degrade(audio, pb, half, spec, rr, noise, irs)
        room = noise.random_excerpt(rr, gap).astype(np.float32)  # the noise alone, at its level in the excerpts
        room *= np.sqrt(np.mean(xa ** 2) / max(1e-12, float(np.mean(room ** 2))) / (1 + 10 ** (args.snr / 10)))
        core = make_core()
        ds = stream(core, np.concatenate([xa, room, xb]))
        t_back = (half + gap) / SR
        named = [d.stream_s - t_back for d in ds if d.stream_s > t_back and d.state == MATCH and d.song_id == sid
                 and abs(d.song_offset_s - (pb / SR - t_back)) <= 0.5]
        if named:
            replay_delay.append(named[0])
        else:
            replay_missed += 1

    # Music that is not in the database: every declaration is a false positive.
    outside = [str(s) for s in cat.index if str(s) not in set(map(str, db.song_ids))
               and (args.query_path_contains is None or args.query_path_contains in str(cat.loc[s, "path"]))]
    # Without any (every catalogue song indexed), database songs stand for unknown music: each is streamed with
    # itself and its twins (songs holding the same music, search.duplicates) left out of every search, as the
    # calibration and the monitoring benchmark do.
    left_out = not outside
    pool = outside or ids
    drawn = [pool[int(rng.integers(len(pool)))] if left_out else pool[i % len(pool)]
             for i in range(args.unknown if pool else 0)]
    twins = twins_of(layout.index, set(drawn), song_paths(cat.reset_index())) if left_out else {}
    false_decl, unknown_s, silent_skipped = 0, 0.0, 0
    for sid in drawn:
        audio = songs[sid] if left_out else load_audio(cat.loc[sid, "path"])
        if len(audio) <= n:
            continue
        start = int(rng.integers(0, len(audio) - n))
        try:
            x, _ = degrade(audio, start, n, spec, rng, noise, irs)
        except ValueError:  # a digitally silent stretch: no SNR relative to it, and nothing to declare
            silent_skipped += 1
            continue
        core = make_core(song_set(unknown_exclusion(sid, twins)) if left_out else ())
        stream(core, x)
        false_decl += len(core.heard)
        unknown_s += args.length

    fin = [v for v in first_song if np.isfinite(v)]
    out = {
        "compute_ms_p50": pct(compute, 50), "compute_ms_p95": pct(compute, 95), "compute_ms_max": max(compute),
        "first_song_median_s": pct(first_song, 50), "first_song_p90_s": pct(first_song, 90),
        "first_exact_median_s": pct(first_exact, 50), "first_exact_p90_s": pct(first_exact, 90),
        "named": len(fin), "excerpts": len(first_song), "wrong_song_declarations": wrong,
        "change_delay_median_s": float(np.median(change_delay)) if change_delay else float("nan"),
        "change_missed": change_missed, "changes": args.changes, "change_wrong_song": change_wrong,
        "replay_delay_median_s": float(np.median(replay_delay)) if replay_delay else float("nan"),
        "replay_missed": replay_missed, "replays": args.replays,
        "unknown_minutes": unknown_s / 60, "unknown_false_declarations": false_decl,
    }
    print(f"compute per decision: p50 {out['compute_ms_p50']:.1f} ms, p95 {out['compute_ms_p95']:.1f} ms, "
          f"max {out['compute_ms_max']:.1f} ms ({len(compute)} decisions; {wall:.1f} s for "
          f"{len(first_song) * args.length:.0f} s of audio)")
    print(f"{args.excerpts} excerpts of {args.length:g} s at {args.snr:g} dB SNR"
          f"{'' if args.no_reverb else ' + reverb'}: named {len(fin)}/{len(first_song)}"
          f"{f' ({silent_excerpts} silent excerpts skipped)' if silent_excerpts else ''}; audio until the first "
          f"correct song: median {out['first_song_median_s']:.1f} s, p90 {out['first_song_p90_s']:.1f} s; right "
          f"song and offset (+-0.5 s): median {out['first_exact_median_s']:.1f} s, "
          f"p90 {out['first_exact_p90_s']:.1f} s; "
          f"wrong-song declarations: {wrong}")
    print(f"{args.changes} song changes: new song named after median {out['change_delay_median_s']:.1f} s, "
          f"missed {change_missed}, wrong-song declarations {change_wrong}")
    if args.replays:
        print(f"{args.replays} songs played again after {args.pause:g} s of room noise, at another place: named "
              f"there (offset within 0.5 s) after median {out['replay_delay_median_s']:.1f} s, missed {replay_missed}")
    what = "database songs, each left out of the search with its twins" if left_out else "songs outside the database"
    print(f"{unknown_s / 60:.1f} min of {what} ({len(pool)} songs): {false_decl} false declarations"
          f"{f' ({silent_skipped} silent excerpts skipped)' if silent_skipped else ''}")
    if args.json:
        print(json.dumps({k: (v if not isinstance(v, float) or np.isfinite(v) else None) for k, v in out.items()}))


if __name__ == "__main__":
    main()
