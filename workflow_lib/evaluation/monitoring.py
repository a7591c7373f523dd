"""Monitoring benchmark: seeded synthetic programmes (radio-like) with known ground truth, scanned by the neural
system (``nafp scan``) and by audfprint, scored the way broadcast-monitoring benchmarks score.

A programme strings together excerpts (10 s to whole songs) of database songs never trained on and of unknown
songs (songs the search skips, as if nobody had indexed them), talk stretches and short silences, joined
back to back or by crossfades of 1-4 s, with talk over part of the music, one noise bed at the programme's SNR
and one held-out room. The truth lists every song occurrence (start and end in the programme, where in the song
it starts, how long the crossfades at its ends last); a crossfade's boundary is its middle.

Metrics per programme and overall: precision, recall and F1 of the song label of every second; median boundary
error (s) of matched occurrences; median offset error (s, where in the song); false-alarm minutes per hour of
audio that holds no database song, and the part of them at an occurrence's edge (within ``EDGE_ALARM_S`` of a
start or end of a true occurrence of the same song: an edge run into the audio beside it, not a wrong answer);
realtime factor of the scan. audfprint runs on the same programmes through
windows of ``afp_window_s`` at ``afp_hop_s`` (its own matcher names each window), each second taking the best
window covering it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow_lib import SAMPLE_RATE
from workflow_lib.data.clipbank import ClipBank
from workflow_lib.evaluation.degrade import IR_POOLS, add_noise, ir_pool, limit_peak, reverberate, rms

log = logging.getLogger(__name__)

SR = SAMPLE_RATE
EDGE_ALARM_S = 6.0


@dataclass(frozen=True)
class MonitoringPlan:
    """The ``evaluate.monitoring`` config section."""

    enabled: bool = False
    programmes: int = 4  # per SNR
    minutes: float = 10.0
    snr_db: tuple[float, ...] = (10.0, 0.0)
    unknown_share: float = 0.3  # of the music items, the share from songs outside the database
    talk_share: float = 0.15  # of the items, talk stretches
    talkover_prob: float = 0.2  # a music item gets talk over part of it
    reverb: bool = True
    room_pool: str = "room"  # the impulse-response pool (evaluation.degrade.IR_POOLS) the programmes play through
    whitened: bool = False  # scan in two views (nafp scan --whitened)
    seed: int = 0
    afp_window_s: float = 10.0
    afp_hop_s: float = 5.0
    # nafp scan --min-duration: occurrences shorter than this are left out, for both systems (broadcast monitoring
    # reports plays, not glimpses); 0 scores every occurrence
    min_duration_s: float = 0.0

    def __post_init__(self) -> None:
        if self.room_pool not in IR_POOLS:
            raise ValueError(f"evaluate.monitoring.room_pool: unknown pool {self.room_pool!r} (choose from {IR_POOLS})")

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> "MonitoringPlan":
        from workflow_lib.common.config import check_keys

        d = dict(cfg or {})
        check_keys(d, cls.__dataclass_fields__, "evaluate.monitoring")
        if "snr_db" in d:
            d["snr_db"] = tuple(float(x) for x in d["snr_db"])
        return cls(**d)


@dataclass
class Programme:
    name: str
    audio: np.ndarray
    snr_db: float
    truth: list[dict] = field(default_factory=list)  # song_id, start_s, end_s, song_start_s, fade_in_s, fade_out_s
    unknown_songs: set[str] = field(default_factory=set)
    unknown_truth: list[dict] = field(default_factory=list)  # where unknown songs play, as in truth

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SR


# The levels (RMS) music and talk are mixed at, before the room and the noise bed.
MUSIC_RMS = 0.1
TALK_RMS = 0.05


def talk_like(rng: np.random.Generator, n: int, babble: ClipBank | None) -> np.ndarray:
    """Speech for talk stretches: a babble clip of the held-out bank when there is one, else syllable-rate bursts
    of band-limited noise."""
    if babble is not None and len(babble):
        return babble.random_excerpt(rng, n)
    noise = np.convolve(rng.standard_normal(n), np.hanning(9) / 4.5, "same")
    syll = np.repeat(rng.uniform(0, 1, n // 1600 + 1) > 0.4, 1600)[:n].astype(float)
    return (noise * np.convolve(syll, np.hanning(400) / 200, "same")).astype(np.float32)


def make_programme(name: str, rng: np.random.Generator, known: list[tuple[str, np.ndarray]],
                   unknown: list[tuple[str, np.ndarray]], plan: MonitoringPlan, snr_db: float,
                   noise_bank: ClipBank | None, ir_bank: ClipBank | None, babble: ClipBank | None) -> Programme:
    """One programme of about ``plan.minutes`` with its truth (see the module doc)."""
    target = int(plan.minutes * 60 * SR)
    # the last item starts before the target and may run a whole song (or 40 s of talk) past it
    longest = max([40 * SR] + [len(song) for _, song in known + unknown])
    out = np.zeros(target + longest + 4 * SR, np.float32)
    pos = 0
    truth: list[dict] = []
    used_unknown: set[str] = set()
    unknown_truth: list[dict] = []
    while pos < target:
        roll = rng.random()
        from_music = roll >= plan.talk_share
        if not from_music:
            item, label = talk_like(rng, int(rng.uniform(8, 40) * SR), babble), None
            item = item / max(rms(item), 1e-6) * TALK_RMS
            song_start = 0.0
        else:
            from_unknown = unknown and rng.random() < plan.unknown_share
            sid, song = unknown[rng.integers(len(unknown))] if from_unknown else known[rng.integers(len(known))]
            length = min(len(song), int(rng.uniform(10, max(11, len(song) / SR)) * SR))
            start = int(rng.integers(0, len(song) - length + 1))
            item = song[start:start + length].astype(np.float32)
            item = item / max(rms(item), 1e-6) * MUSIC_RMS
            if rng.random() < plan.talkover_prob:  # a presenter talks over the music
                a = int(rng.integers(0, max(1, length - 6 * SR)))
                b = min(length, a + int(rng.uniform(4, 12) * SR))
                item[a:b] += talk_like(rng, b - a, babble)[:b - a] / max(rms(item[a:b]), 1e-6) * TALK_RMS
            label, song_start = (None if from_unknown else sid), start / SR
            if from_unknown:
                used_unknown.add(sid)
        fade = int(rng.uniform(1, 4) * SR) if (pos > 0 and rng.random() < 0.5) else 0
        fade = min(fade, len(item) // 3, pos)
        if rng.random() < 0.1 and pos > 0 and not fade:  # a short silence between items
            pos += int(rng.uniform(0.5, 3) * SR)
        a = pos - fade
        if fade:
            ramp = np.linspace(0, 1, fade, dtype=np.float32)
            out[a:pos] *= 1 - ramp
            item = item.copy()
            item[:fade] *= ramp
            if truth and abs(truth[-1]["end_s"] - pos / SR) < 1e-6:  # the item before ends mid-fade
                truth[-1]["end_s"] = (a + fade / 2) / SR
                truth[-1]["fade_out_s"] = fade / SR
        out[a:a + len(item)] += item
        t0 = (a + fade / 2) / SR if fade else a / SR
        if from_music and label is None:
            unknown_truth.append({"song_id": sid, "start_s": t0, "end_s": (a + len(item)) / SR,
                                  "song_start_s": song_start + (t0 - a / SR)})
        if label is not None:
            truth.append({"song_id": label, "start_s": t0, "end_s": (a + len(item)) / SR,
                          "song_start_s": song_start + (t0 - a / SR), "fade_in_s": fade / SR, "fade_out_s": 0.0})
        pos = a + len(item)
    audio = out[:pos]
    if plan.reverb and ir_bank is not None and len(ir_bank):
        rooms = ir_pool(ir_bank, plan.room_pool)
        if len(rooms):
            ir = ir_bank.clip(int(rooms[rng.integers(len(rooms))]))
            audio = reverberate(audio, 0, len(audio), ir)
    if noise_bank is not None and len(noise_bank):
        bed = np.concatenate([noise_bank.random_excerpt(rng, min(len(audio), 30 * SR))
                              for _ in range(int(np.ceil(len(audio) / (30 * SR))))])[:len(audio)]
        audio = add_noise(audio, bed, snr_db)
    return Programme(name, limit_peak(audio), snr_db, truth, used_unknown, unknown_truth)


# ------------------------------------------------------------------------------------------------ scoring

def second_labels(occurrences: list[dict], duration_s: float) -> np.ndarray:
    """The song id (or None) at the middle of every whole second."""
    n = int(np.floor(duration_s))
    labels = np.full(n, None, dtype=object)
    mids = np.arange(n) + 0.5
    for o in occurrences:
        labels[(mids >= o["start_s"]) & (mids < o["end_s"])] = o["song_id"]
    return labels


def score_programme(truth: list[dict], pred: list[dict], duration_s: float) -> dict[str, float]:
    """Per-second precision / recall / F1, boundary and offset errors, false alarms on non-database audio."""
    t, p = second_labels(truth, duration_s), second_labels(pred, duration_s)
    tp = int(np.sum((p != None) & (p == t)))  # noqa: E711 (element-wise comparison with None)
    fp = int(np.sum((p != None) & (p != t)))  # noqa: E711
    fn = int(np.sum((t != None) & (p != t)))  # noqa: E711
    if tp + fn == 0:  # no database song plays: the label's F1 is undefined; what was named is false alarms
        prec = rec = f1 = float("nan")
    else:
        prec = tp / (tp + fp) if tp + fp else 1.0
        rec = tp / (tp + fn)
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    no_song = t == None  # noqa: E711
    alarm_at = np.flatnonzero(no_song & (p != None))  # noqa: E711
    alarms = len(alarm_at)
    edge_alarms = sum(any(o["song_id"] == p[s] and min(abs(s + 0.5 - o["start_s"]), abs(s + 0.5 - o["end_s"]))
                          <= EDGE_ALARM_S for o in truth) for s in alarm_at)
    bounds, offsets = [], []
    for o in truth:
        mine = [q for q in pred if q["song_id"] == o["song_id"] and
                min(q["end_s"], o["end_s"]) - max(q["start_s"], o["start_s"]) > 0]
        if not mine:
            continue
        q = max(mine, key=lambda q: min(q["end_s"], o["end_s"]) - max(q["start_s"], o["start_s"]))
        bounds += [abs(q["start_s"] - o["start_s"]), abs(q["end_s"] - o["end_s"])]
        # where in the song the prediction says its start is, against the truth at that same moment
        offsets.append(abs(q["song_start_s"] - (o["song_start_s"] + q["start_s"] - o["start_s"])))
    return {"precision": prec, "recall": rec, "f1": f1,
            "boundary_error_s": float(np.median(bounds)) if bounds else float("nan"),
            "offset_error_s": float(np.median(offsets)) if offsets else float("nan"),
            "no_song_minutes": float(no_song.sum()) / 60, "false_alarm_minutes": alarms / 60,
            "edge_alarm_minutes": edge_alarms / 60,
            "occurrences": len(truth), "found": len(offsets)}


def audfprint_occurrences(afp, audio: np.ndarray, plan: MonitoringPlan, exclude: set[str]) -> list[dict]:
    """audfprint over windows of the programme: each second takes the best window covering it (most matching
    hashes), consecutive seconds of one song and offset form an occurrence."""
    win, hop = int(plan.afp_window_s * SR), int(plan.afp_hop_s * SR)
    n = int(np.floor(len(audio) / SR))
    best = np.zeros(n)
    label = np.full(n, None, dtype=object)
    song_pos = np.full(n, np.nan)
    for a in range(0, max(1, len(audio) - win + 1), hop):
        hits = [h for h in afp.match(audio[a:a + win], 3) if h[0] not in exclude]
        if not hits:
            continue
        sid, count, offset = hits[0]
        lo, hi = int(a / SR), min(n, int((a + win) / SR))
        for s in range(lo, hi):
            if count > best[s]:
                best[s], label[s], song_pos[s] = count, sid, offset + (s - a / SR)
    out: list[dict] = []
    for s in range(n):
        if label[s] is None:
            continue
        if out and out[-1]["song_id"] == label[s] and out[-1]["end_s"] == s and \
                abs(out[-1]["song_start_s"] + (s - out[-1]["start_s"]) - song_pos[s]) < 2.0:
            out[-1]["end_s"] = s + 1
        else:
            out.append({"song_id": label[s], "start_s": float(s), "end_s": float(s + 1), "song_start_s": song_pos[s]})
    return out


# ------------------------------------------------------------------------------------------------ the stage

def run_monitoring(out_path: str | Path, model_path, index_dir, catalogue_path, threshold_path, songs_path,
                   splits_path, noise_prefix, ir_prefix, search_cfg: dict, listen_cfg: dict, eval_cfg: dict,
                   audfprint_params: dict | None, threads: int = 1, min_duration_s: float | None = None
                   ) -> pd.DataFrame:
    """Snakemake entry of the ``monitor`` rule: one row per programme and system (``results/eval/monitoring``).
    ``min_duration_s``: ``nafp scan --min-duration``, for both systems (default: ``evaluate.monitoring``'s;
    bench/listener_operating_point.py tries several)."""
    import torch

    from workflow_lib.audio.files import load_audio
    from workflow_lib.evaluation.plan import QueryPlan
    from workflow_lib.evaluation.songs import (database_song_ids, query_songs, require_held_out_unknowns,
                                               unknown_songs)
    from workflow_lib.listener.settings import ListenConfig
    from workflow_lib.listener.scan import fingerprint_workers, scan_chunks
    from workflow_lib.database.catalogue import song_paths
    from workflow_lib.search.duplicates import twins_of, unknown_exclusion
    from workflow_lib.search.searcher import Searcher, searcher_kwargs

    require_held_out_unknowns(search_cfg)
    torch.set_num_threads(max(1, threads))
    plan = MonitoringPlan.from_config(eval_cfg.get("monitoring"))
    if min_duration_s is None:
        min_duration_s = plan.min_duration_s
    qplan = QueryPlan.from_config(eval_cfg)
    songs = pd.read_parquet(songs_path)
    splits = pd.read_parquet(splits_path)
    db_ids = database_song_ids(Path(index_dir) / "index_meta.parquet")
    known = query_songs(songs, splits, db_ids, qplan.query_splits)
    unknown = unknown_songs(songs, splits, plan.seed, "evaluation")
    unknown = unknown[~unknown["song_id"].isin(set(known["song_id"]))]
    # Unknown music is searched without its twins (songs of the database holding the same music,
    # search.duplicates); those twins then cannot play the known songs either.
    twins = twins_of(index_dir, unknown["song_id"].astype(str), song_paths(songs))
    twin_ids = set().union(*twins.values()) if twins else set()
    known = known[~known["song_id"].isin(twin_ids)]
    rng = np.random.default_rng([plan.seed, 21])

    def pick(table: pd.DataFrame, k: int) -> pd.DataFrame:
        return table.iloc[np.sort(rng.choice(len(table), min(k, len(table)), replace=False))]

    known_audio = [(r.song_id, load_audio(r.path)) for r in pick(known, 40).itertuples()]
    unknown_audio = [(r.song_id, load_audio(r.path)) for r in pick(unknown, 20).itertuples()]
    noise, babble = noise_and_talk(ClipBank(noise_prefix))
    irs = ClipBank(ir_prefix)
    room = plan.room_pool if plan.reverb and len(ir_pool(irs, plan.room_pool)) else "none"
    if plan.reverb and room == "none":
        log.warning("the held-out impulse responses hold no %r response: the programmes play without one",
                    plan.room_pool)
    searcher = Searcher.from_paths(model_path, index_dir, catalogue_path, threshold_path,
                                   **searcher_kwargs(search_cfg))
    listen = ListenConfig.from_dict({k: v for k, v in listen_cfg.items() if k not in ("device", "threads")})
    workers = fingerprint_workers(max(1, threads), searcher.device)  # as nafp scan --threads runs
    afp = None
    if audfprint_params is not None:
        from workflow_lib.evaluation.audfprint import AudfprintParams, build_database

        afp = build_database(songs[songs["song_id"].isin(db_ids)], AudfprintParams.from_dict(audfprint_params),
                             threads)
    rows = []
    for snr in plan.snr_db:
        for k in range(plan.programmes):
            prog = make_programme(f"programme-{snr:g}dB-{k}", np.random.default_rng([plan.seed, int(snr * 10), k]),
                                  known_audio, unknown_audio, plan, snr, noise, irs, babble)
            exclude = set().union(*(unknown_exclusion(sid, twins) if sid in twins else {sid}
                                    for sid, _ in unknown_audio))
            t0 = time.perf_counter()
            res = scan_chunks(searcher, [prog.audio[i:i + 60 * SR] for i in range(0, len(prog.audio), 60 * SR)],
                              listen, name=prog.name, exclude_songs=exclude, min_duration_s=min_duration_s,
                              workers=workers, whitened=plan.whitened)
            pred = [{"song_id": o.song_id, "start_s": o.start_s, "end_s": o.end_s, "song_start_s": o.song_start_s}
                    for o in res.occurrences]
            m = score_programme(prog.truth, pred, prog.duration_s)
            rows.append({"system": "neural", "programme": prog.name, "snr_db": snr, "minutes": prog.duration_s / 60,
                         "min_duration_s": min_duration_s, "room_pool": room, "views": 2 if plan.whitened else 1,
                         "realtime": prog.duration_s / max(time.perf_counter() - t0, 1e-9), **m})
            if afp is not None:
                t0 = time.perf_counter()
                pred = [o for o in audfprint_occurrences(afp, prog.audio, plan, exclude)
                        if o["end_s"] - o["start_s"] >= min_duration_s]
                m = score_programme(prog.truth, pred, prog.duration_s)
                rows.append({"system": "audfprint", "programme": prog.name, "snr_db": snr,
                             "minutes": prog.duration_s / 60, "min_duration_s": min_duration_s, "room_pool": room,
                             "views": 1,
                             "realtime": prog.duration_s / max(time.perf_counter() - t0, 1e-9), **m})
            log.info("%s: %s", prog.name, {k: round(v, 3) for k, v in rows[-1].items() if isinstance(v, float)})
    table = pd.DataFrame(rows)
    from workflow_lib.common.atomic import write_parquet_atomic

    write_parquet_atomic(table, out_path)
    return table


def noise_and_talk(bank: ClipBank) -> tuple[ClipBank, ClipBank | None]:
    """A noise bank split into the noise bed and the talk (its babble clips; None when it has none)."""
    if "kind" in bank.meta and (bank.meta["kind"] == "babble").any():
        return _subset(bank, bank.meta["kind"] != "babble"), _subset(bank, bank.meta["kind"] == "babble")
    return bank, None


def _subset(bank: ClipBank, mask) -> ClipBank:
    """A view of some clips of a bank (same samples, fewer rows)."""
    view = object.__new__(ClipBank)
    view.samples = bank.samples
    view.meta = bank.meta[np.asarray(mask)].reset_index(drop=True)
    view.starts = view.meta["start"].to_numpy(np.int64)
    view.lengths = view.meta["length"].to_numpy(np.int64)
    return view


def summarise_monitoring(table: pd.DataFrame) -> pd.DataFrame:
    """Overall rows per system and SNR: F1 etc. pooled over programmes (false alarms per hour of no-song audio).
    Precision, recall and F1 are means over the programmes in which a database song plays (the others have none)."""
    rows = []
    for (system, snr), g in table.groupby(["system", "snr_db"], sort=False):
        rows.append({"system": system, "snr_db": snr, "programmes": len(g), "minutes": g["minutes"].sum(),
                     "precision": g["precision"].mean(), "recall": g["recall"].mean(), "f1": g["f1"].mean(),
                     "boundary_error_s": g["boundary_error_s"].median(),
                     "offset_error_s": g["offset_error_s"].median(),
                     "false_alarm_min_per_hour": 60 * g["false_alarm_minutes"].sum() /
                     max(g["no_song_minutes"].sum(), 1e-9),
                     # monitoring tables written before edge alarms were counted have no such column
                     "edge_alarm_share": (g["edge_alarm_minutes"].sum() / g["false_alarm_minutes"].sum()
                                          if "edge_alarm_minutes" in g and g["false_alarm_minutes"].sum() > 0
                                          else float("nan")),
                     "realtime": g["realtime"].median()})
    return pd.DataFrame(rows)
