"""Listener operating point: nafp scan's decision (the listener's own) on seeded 10-minute programmes (4: 10 and 0 dB,
crossfades, talk, held-out rooms, unknown songs) for several listen.max_fpr and consistent_hops values; prints F1,
precision, recall and false-alarm minutes per programme (bench/README.md, "Listener operating point").

    python bench/listener_operating_point.py RESULTS [--model M] [--max-fpr 0.002 0.005 none] [--hops 2 3]
"""
import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from workflow_lib.common.layout import ResultsLayout  # noqa: E402
from workflow_lib.audio.files import load_audio  # noqa: E402
from workflow_lib.data.clipbank import ClipBank  # noqa: E402
from workflow_lib.evaluation.monitoring import MonitoringPlan, make_programme, _subset, score_programme  # noqa: E402
from workflow_lib.evaluation.plan import QueryPlan  # noqa: E402
from workflow_lib.evaluation.songs import database_song_ids, query_songs, unknown_songs  # noqa: E402
from workflow_lib.listener.core import ListenConfig  # noqa: E402
from workflow_lib.listener.scan import scan_chunks  # noqa: E402
from workflow_lib.search.searcher import Searcher, searcher_kwargs  # noqa: E402
from workflow_lib.search.duplicates import twins_of  # noqa: E402
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("results", type=Path, help="a results folder of the workflow (with its index and calibration)")
ap.add_argument("--model", help="model file (default: the results folder's model.source)")
ap.add_argument("--max-fpr", nargs="+", default=["0.002", "0.005", "none"])
ap.add_argument("--hops", nargs="+", type=int, default=[2, 3])
args = ap.parse_args()
r = args.results
cfg = yaml.safe_load((r / "config.yaml").read_text())
ev = cfg["evaluate"]; ev["monitoring"] = {"enabled": True}
plan = MonitoringPlan.from_config(ev["monitoring"]); qplan = QueryPlan.from_config(ev)
songs = pd.read_parquet(r / "manifest/songs.parquet"); splits = pd.read_parquet(r / "split/splits.parquet")
db_ids = database_song_ids(r / "index/index_meta.parquet")
known = query_songs(songs, splits, db_ids, qplan.query_splits)
unknown = unknown_songs(songs, splits, plan.seed, "evaluation")
unknown = unknown[~unknown["song_id"].isin(set(known["song_id"]))]
twins = twins_of(r / "index", unknown["song_id"].astype(str))
tw = set().union(*twins.values()) if twins else set()
known = known[~known["song_id"].isin(tw)]
rng = np.random.default_rng([plan.seed, 21])


def pick(t, k):
    return t.iloc[np.sort(rng.choice(len(t), min(k, len(t)), replace=False))]


known_audio = [(x.song_id, load_audio(x.path)) for x in pick(known, 40).itertuples()]
unknown_audio = [(x.song_id, load_audio(x.path)) for x in pick(unknown, 20).itertuples()]
noise = ClipBank(r / "noise/test")
babble = _subset(noise, noise.meta["kind"] == "babble"); noise = _subset(noise, noise.meta["kind"] != "babble")
irs = ClipBank(r / "irs/test")
s = Searcher.from_paths(args.model or ResultsLayout.of(r, cfg).model, r / "index", r / "catalogue.parquet", r / "index/threshold.json", **searcher_kwargs(cfg["search"]))
listen = ListenConfig.from_dict({k: v for k, v in cfg["listen"].items() if k not in ("device", "threads")})
progs = [make_programme(f"p{snr}-{k}", np.random.default_rng([plan.seed, int(snr * 10), k]), known_audio, unknown_audio, plan, snr, noise, irs, babble) for snr in (10.0, 0.0) for k in (0, 1)]
print("max_fpr hops | per programme: (F1, precision, recall, false-alarm min, no-song min, boundary error s)")
for fpr in [None if v.lower() in ("none", "null") else float(v) for v in args.max_fpr]:
    for K in args.hops:
        cfgl = dataclasses.replace(listen, max_fpr=fpr, consistent_hops=K)
        ms = []
        for prog in progs:
            res = scan_chunks(s, [prog.audio[i:i + 60 * 8000] for i in range(0, len(prog.audio), 60 * 8000)], cfgl, exclude_songs={x for x, _ in unknown_audio})
            pred = [{"song_id": o.song_id, "start_s": o.start_s, "end_s": o.end_s, "song_start_s": o.song_start_s} for o in res.occurrences]
            ms.append(score_programme(prog.truth, pred, prog.duration_s))
        print(fpr, K, [ (round(m["f1"],3), round(m["precision"],3), round(m["recall"],3), round(m["false_alarm_minutes"],2), round(m["no_song_minutes"],1), round(m["boundary_error_s"],1)) for m in ms])
