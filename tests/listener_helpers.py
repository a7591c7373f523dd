"""A tiny but real results folder for the listener tests, built with the workflow's own library functions.

Demo-corpus songs (``demo_corpus.generate_demo_corpus``), generated noise and simulated rooms (``noise_prep``,
``ir_prep``), a small NAFP model trained for about half a minute on the database songs (``train.train_model``: an
untrained encoder maps every segment to nearly the same point, so degraded audio needs a trained one), fingerprint
extraction and a FAISS index (``extract``, ``index``), the catalogue, and a no-match threshold fitted on songs that
are not in the database (``calibrate``). The layout is the workflow's (docs/ARCHITECTURE.md), so
``Searcher.from_results`` and ``scripts/listen.py --results`` load it as they would load ``results/``.

The trained model is cached in pytest's cache folder under a key made of the training settings and the source of
every module that shapes it, so repeated local runs skip the training; CI (a fresh checkout) trains once per run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import workflow_lib
from workflow_lib.audio.files import load_audio
from workflow_lib.data.clipbank import ClipBank, write_clip_bank
from workflow_lib.search.threshold import DEFAULT_STATISTIC as STATISTIC

SR = 8000
N_SONGS, SONG_S, CORPUS_SEED = 11, 24.0, 7
DB_SONGS = 5  # demo-000..004 go into the database (and are trained on: a "seen" database, NAFP paper section 4.2)
TRAIN_ONLY_SONGS = (5, 6, 7)  # trained on, not in the database: more negatives, so unknown music lands apart
CALIBRATION_SONGS = (8, 9, 10)  # outside the database and never trained on: the no-match threshold is fitted on them
EPOCHS = 12
MODEL = {"channels": [16, 16, 32, 32, 64, 64, 128, 128], "dim": 64, "head_hidden": 16}
TRAIN = {"max_epochs": EPOCHS, "max_minutes": 10.0, "batch_size": 64, "lr": 2e-3, "warmup_epochs": 1.0, "patience": 12,
         "val_queries": 40, "eval_batch": 64, "seed": 0, "device": "cpu"}
# Modules whose code decides what the trained model is: a change to any of them retrains.
_MODEL_SOURCES = ("model/network.py", "model/features.py", "training/train.py", "training/augment.py",
                  "training/data.py", "training/losses.py", "training/settings.py", "training/checkpoint.py",
                  "data/demo_corpus.py", "model/model_file.py", "data/noise.py", "data/irs.py", "data/acoustics.py")


@dataclass
class ListenerWorld:
    results: Path  # results folder: model/model.pt, index/, index/threshold.json, catalogue.parquet
    songs: dict[str, np.ndarray]  # song id -> 8 kHz audio, every generated song
    paths: dict[str, Path]
    db_ids: list[str]
    noise: ClipBank  # held-out ("test") noise for degrading queries
    irs: ClipBank  # held-out rooms


def _cache_key() -> str:
    h = hashlib.sha256(json.dumps([MODEL, TRAIN, N_SONGS, SONG_S, CORPUS_SEED, DB_SONGS, TRAIN_ONLY_SONGS]).encode())
    src = Path(workflow_lib.__file__).parent
    for name in _MODEL_SOURCES:
        h.update((src / name).read_bytes())
    return h.hexdigest()[:16]


def build_world(root: Path, cache_dir: Path | None) -> ListenerWorld:
    from workflow_lib.training.augment import AugmentConfig
    from workflow_lib.evaluation.calibration import collect_null_scores, fit_from_candidates
    from workflow_lib.database.catalogue import build_catalogue
    from workflow_lib.data.demo_corpus import generate_demo_corpus
    from workflow_lib.evaluation.plan import Condition, QueryPlan
    from workflow_lib.database.extract import extract_songs, load_model
    from workflow_lib.database.index_build import build_index
    from workflow_lib.data.irs import prepare_irs
    from workflow_lib.data.manifest import song_id_for
    from workflow_lib.model.network import ModelConfig
    from workflow_lib.model.model_file import model_checksum
    from workflow_lib.data.noise import prepare_noise
    from workflow_lib.search.searcher import Searcher
    from workflow_lib.training.settings import TrainConfig
    from workflow_lib.training.train import train_model

    torch.set_num_threads(1)
    results = root / "results"
    corpus = results / "demo_corpus"
    generate_demo_corpus(corpus, N_SONGS, SONG_S, CORPUS_SEED)
    files = sorted((corpus / "music").glob("demo-*.flac"))
    ids = [song_id_for("music", f.name) for f in files]
    paths = dict(zip(ids, files))
    songs = {sid: load_audio(p) for sid, p in paths.items()}
    db_ids = ids[:DB_SONGS]
    table = pd.DataFrame({"song_id": ids, "path": [str(p) for p in files],
                          "duration_s": [len(songs[s]) / SR for s in ids]})

    prepare_noise([], [], results / "noise", test_fraction=0.3, max_clip_s=30.0, babble_speakers=(3, 7),
                  babble_clips=0, babble_clip_s=10.0, generated_clips=4, seed=0)
    prepare_irs([], results / "irs", test_fraction=0.3, max_ir_s=0.5, seed=0,
                simulate={"n_rooms": 8, "rt60_s": [0.2, 0.6], "room_min_m": [3.0, 3.0, 2.4],
                          "room_max_m": [8.0, 6.0, 3.0]})

    model_path = results / "model" / "model.pt"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"model-{_cache_key()}.pt" if cache_dir is not None else None
    if cached is not None and cached.exists():
        shutil.copyfile(cached, model_path)
    else:
        banks = root / "banks"
        train_ids = db_ids + [ids[i] for i in TRAIN_ONLY_SONGS]
        write_clip_bank(banks / "train", [songs[s] for s in train_ids],
                        pd.DataFrame({"song_id": train_ids, "name": train_ids}))
        val = ids[CALIBRATION_SONGS[0]]
        write_clip_bank(banks / "val", [songs[val]], pd.DataFrame({"song_id": [val], "name": [val]}))
        cfg = TrainConfig(**TRAIN, augment=AugmentConfig(max_ir_s=0.5))
        train_model(banks / "train", banks / "val", results / "noise" / "train", results / "irs" / "train",
                    model_path, root / "metrics.csv", root / "curves.png", root / "ckpt" / "last.pt", cfg,
                    ModelConfig(**MODEL, preset="small"))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_path, cached)

    fingerprinter, identity = load_model(model_path, "cpu")
    shard = results / "fingerprints" / "shard-0.parquet"
    extract_songs(fingerprinter, identity, table[table.song_id.isin(db_ids)], shard, device="cpu", reuse=False)
    build_index([shard], results / "index")
    build_catalogue(table[table.song_id.isin(db_ids)]).to_parquet(results / "catalogue.parquet", index=False)

    # No-match threshold from real searches of degraded excerpts of songs outside the database.
    searcher = Searcher.from_results(results, device="cpu")
    plan = QueryPlan(lengths_s=(1, 2, 3, 5), conditions=(
        Condition("clean"), Condition("20 dB + room", 20.0, "room"), Condition("10 dB + room", 10.0, "room")))
    null_ids = [ids[i] for i in CALIBRATION_SONGS]
    scores = collect_null_scores(searcher, table[table.song_id.isin(null_ids)].reset_index(drop=True),
                                 ClipBank(results / "noise" / "train"), ClipBank(results / "irs" / "train"), plan,
                                 n_per_length=50, noise_share=0.1, seed=0)
    fit_from_candidates(scores, STATISTIC, 0.02, {"model_checksum": model_checksum(model_path)}).save(
        results / "index" / "threshold.json")
    return ListenerWorld(results, songs, paths, db_ids, ClipBank(results / "noise" / "test"),
                         ClipBank(results / "irs" / "test"))


_WORLD: dict[str, ListenerWorld] = {}


def listener_world(tmp_path_factory, cache) -> ListenerWorld:
    """Built once per test session (both listener test modules share it)."""
    if "world" not in _WORLD:
        cache_dir = Path(cache.mkdir("nafp-listener-model")) if cache is not None else None
        _WORLD["world"] = build_world(tmp_path_factory.mktemp("listener"), cache_dir)
    return _WORLD["world"]
