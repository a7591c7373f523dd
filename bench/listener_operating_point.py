"""Listener operating point: the monitor stage (``evaluation.monitoring.run_monitoring``: seeded 10-minute
programmes at 10 and 0 dB with crossfades, talk, held-out rooms and unknown songs, scanned by ``nafp scan``'s decision,
the listener's own) rerun for several listen.max_fpr, consistent_hops and window_s values and programme seeds;
prints F1, precision, recall, false-alarm minutes and boundary error per programme, then the pooled figures per setting
(bench/README.md, "Listener operating point" and "Scanning: following the song").

    python bench/listener_operating_point.py RESULTS [--model M] [--max-fpr 0.002 0.005 none] [--hops 2 3]
        [--seeds 0 1 2] [--edge-share 0.5 0.6] [--self-null-gap 0.03 none] [--follow-island-s 3 0]
        [--min-duration 0 10] [--short-play 15:0.55 none] [--window 5 7.5] [--persistent-hops 12 none] [--threads 2]
        [--room POOL] [--snr 10 0] [--programmes 4] [--views 1 2]

``--edge-share`` tries other values of ``listener.follow.EDGE_SHARE`` (how far below an occurrence's typical
similarity the scan still follows it), ``--self-null-gap`` of ``listener.follow.SELF_NULL_GAP`` (how far above its
similarity at other alignments a song must score to be followed; ``none``: not asked, the rule before 2026-12-02),
``--follow-island-s`` of ``listen.follow_island_s`` (how long a stretch must hold for the following to cross a dip
towards it; 0: any, the rule before 2026-12-03), ``--short-play S:SIM`` of ``listener.scan.SHORT_PLAY_S`` and
``SHORT_PLAY_SIMILARITY`` (an occurrence shorter than S s is kept only if its median aligned similarity reaches SIM;
``none``: every occurrence, the rule until 2026-12-03; bench/README.md, "A short play must hold"). ``--room`` plays
the programmes through another pool of held-out responses (``evaluation.degrade.IR_POOLS``: ``resonant`` for a
resonant space), ``--views 2`` scans them in two views (``nafp scan --whitened``; bench/README.md, "Scanning in two
views").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from workflow_lib.common.config import run_config  # noqa: E402
from workflow_lib.common.layout import ResultsLayout  # noqa: E402
from workflow_lib.evaluation.monitoring import run_monitoring, summarise_monitoring  # noqa: E402
from workflow_lib.listener import follow, scan  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder of the workflow (with its index and calibration)")
    ap.add_argument("--model", help="model file (default: the results folder's model.source)")
    ap.add_argument("--max-fpr", nargs="+", default=["0.002", "0.005", "none"])
    ap.add_argument("--hops", nargs="+", type=int, default=[2, 3])
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="programme seeds (evaluate.monitoring.seed; default: the results folder's)")
    ap.add_argument("--edge-share", nargs="+", type=float, default=[follow.EDGE_SHARE])
    ap.add_argument("--self-null-gap", nargs="+", default=[str(follow.SELF_NULL_GAP)])
    ap.add_argument("--follow-island-s", nargs="+", type=float, default=None,
                    help="listen.follow_island_s values to try (s; default: the results folder's)")
    ap.add_argument("--min-duration", nargs="+", type=float, default=[0.0],
                    help="nafp scan --min-duration values to try (s; default 0: every occurrence)")
    ap.add_argument("--short-play", nargs="+", default=[f"{scan.SHORT_PLAY_S:g}:{scan.SHORT_PLAY_SIMILARITY:g}"],
                    help="S:SIM values of the short-play rule to try (none: off; default: the scan's)")
    ap.add_argument("--window", nargs="+", type=float, default=None,
                    help="listen.window_s values to try (s; default: the results folder's)")
    ap.add_argument("--persistent-hops", nargs="+", default=None,
                    help="listen.persistent_hops values to try (none: off; default: the results folder's)")
    ap.add_argument("--silence-dbfs", type=float, default=None,
                    help="listen.silence_dbfs, the scan's gate (default: the results folder's; a folder made before "
                         "2026-12-06 records -55, today's default is -65)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for the model (default 2)")
    ap.add_argument("--room", default=None, help="impulse-response pool of the programmes (default: the folder's)")
    ap.add_argument("--snr", nargs="+", type=float, default=None, help="SNRs of the programmes (default: the folder's)")
    ap.add_argument("--programmes", type=int, default=None, help="programmes per SNR (default: the folder's)")
    ap.add_argument("--views", nargs="+", type=int, choices=[1, 2], default=[1],
                    help="1: the recording as it is; 2: also whitened (nafp scan --whitened)")
    args = ap.parse_args()
    r = args.results
    cfg, _ = run_config(r)  # the settings the folder was built with
    monitoring = {**cfg["evaluate"].get("monitoring", {}), "enabled": True}
    for key, value in (("room_pool", args.room), ("snr_db", args.snr), ("programmes", args.programmes)):
        if value is not None:
            monitoring[key] = value
    seeds = args.seeds if args.seeds is not None else [monitoring.get("seed", 0)]
    model = args.model or ResultsLayout.of(r, cfg).model
    print("max_fpr hops edge_share self_null_gap follow_island_s min_duration short_play window persistent_hops views "
          "seed | per programme: (F1, precision, recall, false-alarm min, no-song min, boundary error s)")
    windows = args.window or [cfg["listen"]["window_s"]]
    persists = [None if v.lower() in ("none", "null") else int(v) for v in args.persistent_hops] \
        if args.persistent_hops else [cfg["listen"].get("persistent_hops")]
    short_plays = [(0.0, 0.0) if v.lower() in ("none", "null") else tuple(float(x) for x in v.split(":"))
                   for v in args.short_play]
    settings = [(fpr, hops, share, gap, island, shortest, short, window, persist, views)
                for fpr in [None if v.lower() in ("none", "null") else float(v) for v in args.max_fpr]
                for hops in args.hops for share in args.edge_share
                for gap in [float("inf") if v.lower() in ("none", "null") else float(v) for v in args.self_null_gap]
                for island in (args.follow_island_s or [cfg["listen"]["follow_island_s"]])
                for shortest in args.min_duration for short in short_plays for window in windows
                for persist in persists for views in args.views]
    for fpr, hops, share, gap, island, shortest, short, window, persist, views in settings:
        follow.EDGE_SHARE, follow.SELF_NULL_GAP = share, gap
        scan.SHORT_PLAY_S, scan.SHORT_PLAY_SIMILARITY = short
        # --max-fpr is the rate the scan decides at (a folder's recorded listen.scan_max_fpr would override it)
        listen = {**cfg["listen"], "max_fpr": fpr, "scan_max_fpr": None, "consistent_hops": hops, "window_s": window,
                  "persistent_hops": persist, "follow_island_s": island}
        if args.silence_dbfs is not None:
            listen["silence_dbfs"] = args.silence_dbfs
        tables = []
        for seed in seeds:
            evaluate = {**cfg["evaluate"], "monitoring": {**monitoring, "seed": seed, "whitened": views == 2}}
            with tempfile.TemporaryDirectory() as tmp:
                table = run_monitoring(Path(tmp) / "monitoring.parquet", model, r / "index",
                                       r / "catalogue.parquet", r / "index" / "threshold.json",
                                       r / "manifest" / "songs.parquet", r / "split" / "splits.parquet",
                                       r / "noise" / "test", r / "irs" / "test", cfg["search"], listen, evaluate,
                                       None, threads=args.threads, min_duration_s=shortest)
            figures = [tuple(round(float(x[k]), 3) for k in (
                "f1", "precision", "recall", "false_alarm_minutes", "no_song_minutes", "boundary_error_s"))
                for x in table.to_dict("records")]
            print(fpr, hops, share, gap, island, shortest, f"{short[0]:g}:{short[1]:g}", window, persist, views,
                  seed, figures)
            tables.append(table)
        pooled = summarise_monitoring(pd.concat(tables, ignore_index=True))
        print(f"pooled over seeds {seeds}, max_fpr {fpr}, consistent_hops {hops}, edge_share {share}, "
              f"self_null_gap {gap:g}, follow_island_s {island:g}, min_duration {shortest:g} s, "
              f"short play {short[0]:g} s at {short[1]:g}, window {window:g} s, "
              f"persistent_hops {persist}, views {views}, room {monitoring.get('room_pool', 'room')}, "
              f"silence gate {listen['silence_dbfs']:g} dBFS:")
        print(pooled.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
