"""Offline evaluation: a seeded query set cut from the database songs (and from songs outside the database), the
neural system and the audfprint baseline run on the very same files, metrics, a summary table and plots.

Protocol (NAFP-style, see docs/ARCHITECTURE.md "evaluate"):
* ``n_starts`` start points drawn uniformly over all query positions of the query songs (so long songs get more),
  each start used for every query length (1, 2, 3, 5, 6, 10 s by default) and every condition: clean, and test noise
  at each SNR with test-IR reverb and (with some probability) band-limiting. Starts are sample-exact, not on the
  0.5 s segment grid, unless ``grid_aligned`` is set: a real query is never aligned with the database.
* The same for ``n_out_of_db_starts`` starts from songs that are not in the database (for the false-positive rate);
  these songs are disjoint from the ones the no-match threshold was calibrated on (``out_of_db_songs``).
* Metrics per system, mode, condition and length: segment-level top-1 exact (|offset error| <= 0.25 s, i.e. the
  nearest database segment) and near (<= 0.5 s), song-level top-1/3/10 (ignoring the no-match rule, as the paper's
  hit rates do), top-1 accepted (correct song and above the threshold), the false-positive rate of the no-match rule
  on out-of-database queries, and latency percentiles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import HOP_SAMPLES, SAMPLE_RATE
from .atomic import atomic_path, write_text_atomic
from .audio_io import AudioDecodeError, load_audio, write_audio
from .clipbank import ClipBank
from .degrade import MIN_SIGNAL_RMS, Degradation, degrade, rms
from .holdout import holdout_split

log = logging.getLogger(__name__)

NEURAL = "neural"
EXACT_TOL_S = 0.25
NEAR_TOL_S = 0.5
RESULT_COLUMNS = ["query_id", "system", "mode", "top_songs", "top_offsets_s", "top_scores", "score", "is_match",
                  "embed_ms", "search_ms", "total_ms"]
QUERY_COLUMNS = ["query_id", "song_id", "in_db", "source_song_id", "start_s", "start_sample", "length_s", "condition",
                 "snr_db", "reverb", "highpass_hz", "lowpass_hz", "ir", "file"]


# ------------------------------------------------------------------------------------------------ configuration

@dataclass(frozen=True)
class Condition:
    name: str
    snr_db: float | None
    reverb: bool


@dataclass(frozen=True)
class QueryPlan:
    """The ``evaluate:`` config section's query-set keys."""

    seed: int = 0
    n_starts: int = 2000
    n_out_of_db_starts: int = 500
    lengths_s: tuple[float, ...] = (1, 2, 3, 5, 6, 10)
    snr_db: tuple[float, ...] = (0, 5, 10, 15, 20)
    include_clean: bool = True
    reverb: bool = True
    bandlimit_prob: float = 0.5
    highpass_hz: tuple[float, float] = (100.0, 500.0)
    lowpass_hz: tuple[float, float] = (2500.0, 3800.0)
    grid_aligned: bool = False
    query_splits: tuple[str, ...] = ("test",)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "QueryPlan":
        names = set(cls.__dataclass_fields__)
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
        plan = cls(**kw)
        if not plan.lengths_s or min(plan.lengths_s) < 0.5:
            raise ValueError(f"evaluate.lengths_s: need lengths of at least 0.5 s, got {list(plan.lengths_s)}")
        if not plan.include_clean and not plan.snr_db:
            raise ValueError("evaluate: no conditions (include_clean is false and snr_db is empty)")
        return plan

    def conditions(self) -> list[Condition]:
        out = [Condition("clean", None, False)] if self.include_clean else []
        # From the mildest to the hardest, so tables read from easy to hard top to bottom.
        for snr in sorted(self.snr_db, reverse=True):
            out.append(Condition(f"{snr:g} dB" + (" + reverb" if self.reverb else ""), float(snr), self.reverb))
        return out

    def degradation(self, cond: Condition, rng: np.random.Generator) -> Degradation:
        if cond.snr_db is None and not cond.reverb:
            return Degradation()
        hp = lp = None
        if rng.random() < self.bandlimit_prob:
            hp = float(rng.uniform(*self.highpass_hz))
            lp = float(rng.uniform(*self.lowpass_hz))
        return Degradation(cond.snr_db, cond.reverb, hp, lp)

    def digest(self, extra: Any = None) -> str:
        blob = json.dumps([asdict(self), extra], sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ song selection

def database_song_ids(index_meta_path: str | Path) -> set[str]:
    return set(pd.read_parquet(index_meta_path, columns=["song_id"])["song_id"].astype(str).unique())


def query_songs(songs: pd.DataFrame, splits: pd.DataFrame, db_ids: set[str],
                query_splits: Sequence[str]) -> pd.DataFrame:
    """Database songs of the query splits (the songs whose queries must be found)."""
    s = songs.merge(splits[["song_id", "split"]], on="song_id", how="left")
    out = s[s["song_id"].isin(db_ids) & s["split"].isin(list(query_splits))]
    if out.empty:
        raise ValueError(f"no database song belongs to the query splits {list(query_splits)} "
                         f"({len(db_ids)} songs in the database): check evaluate.query_splits")
    return out.reset_index(drop=True)


def out_of_db_songs(songs: pd.DataFrame, splits: pd.DataFrame, db_ids: set[str], seed: int,
                    role: str) -> pd.DataFrame:
    """Songs outside the database, for the no-match rule: ``role`` 'calibration' or 'evaluation'.

    The pool is every manifest song not in the index, preferring songs the model was not trained on (val/test
    songs left out of the database); only when fewer than 4 of those exist are training songs used (logged). The
    pool is split in two by a seeded hash of the song id, so the false-positive rate is never measured on the songs
    the threshold was fitted to.
    """
    if role not in ("calibration", "evaluation"):
        raise ValueError(f"role must be 'calibration' or 'evaluation', got {role!r}")
    s = songs.merge(splits[["song_id", "split"]], on="song_id", how="left")
    pool = s[~s["song_id"].isin(db_ids)]
    unseen = pool[pool["split"] != "train"]
    if len(unseen) >= 4:
        pool = unseen
    elif len(pool):
        log.info("out-of-database songs: only %d not used in training; using the %d songs outside the database, "
                 "training songs included", len(unseen), len(pool))
    pool = pool.sort_values("song_id").reset_index(drop=True)
    if len(pool) < 2:
        log.warning("only %d song(s) outside the database: the no-match rule cannot be calibrated and evaluated on "
                    "separate songs", len(pool))
        return pool if role == "calibration" or len(pool) == 0 else pool.iloc[0:0]
    # Salted keys: the split stage hashes the bare song ids with its own seed (often the same number), and reusing
    # that hash here would correlate the halves with the splits (e.g. all of 'train' lies below 0.6).
    evaluation = holdout_split([f"no-match/{s}" for s in pool["song_id"]], 0.5, seed, what="out-of-database songs")
    return pool[evaluation if role == "evaluation" else ~evaluation].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ cutting queries

def draw_songs(durations: np.ndarray, n: int, min_len_s: float, rng: np.random.Generator) -> np.ndarray:
    """Song index for each of ``n`` starts, uniform over all start positions (weights = usable duration)."""
    usable = np.clip(np.asarray(durations, dtype=np.float64) - min_len_s, 0.0, None)
    if usable.sum() <= 0:
        raise ValueError(f"no song is longer than {min_len_s:g} s, the longest query length")
    return rng.choice(len(usable), size=n, p=usable / usable.sum())


def pick_start(audio: np.ndarray, length: int, rng: np.random.Generator, grid: bool, shortest: int | None = None,
               tries: int = 20) -> int | None:
    """A random start whose excerpt of ``length`` samples, and its first ``shortest`` samples (the shortest query
    cut from this start), are not silent: an SNR relative to silence is undefined. None if every try fails."""
    room = len(audio) - length
    if room < 0:
        return None
    for _ in range(tries):
        start = int(rng.integers(room + 1))
        if grid:
            start -= start % HOP_SAMPLES
        if all(rms(audio[start:start + n]) > 10 * MIN_SIGNAL_RMS for n in {length, shortest or length}):
            return start
    return None


def iter_song_audio(songs: pd.DataFrame, order: np.ndarray) -> Iterator[tuple[int, np.ndarray | None]]:
    """Decode each needed song once (in ``order``'s sorted unique order); unreadable ones yield None (logged)."""
    for i in np.unique(order):
        row = songs.iloc[int(i)]
        try:
            yield int(i), load_audio(row["path"])
        except AudioDecodeError as exc:
            log.warning("skipping song %s for queries: %s", row["song_id"], exc)
            yield int(i), None


@dataclass
class _Start:
    song_pos: int
    song_id: str | None
    start: int
    in_db: bool
    key: int  # seeds everything about this start's queries


def _draw_starts(songs: pd.DataFrame, n: int, plan: QueryPlan, in_db: bool, seed_tag: int,
                 audio_cb: Callable[[_Start, np.ndarray], None]) -> int:
    """Draw ``n`` starts from ``songs`` and call ``audio_cb(start, song_audio)`` for each (songs decoded once)."""
    if n == 0 or songs.empty:
        return 0
    max_len = int(round(max(plan.lengths_s) * SAMPLE_RATE))
    rng = np.random.default_rng([plan.seed, seed_tag])
    which = draw_songs(songs["duration_s"].to_numpy(), n, max(plan.lengths_s), rng)
    done = 0
    for pos, audio in iter_song_audio(songs, which):
        keys = np.flatnonzero(which == pos)
        if audio is None:
            continue
        for key in keys:
            srng = np.random.default_rng([plan.seed, seed_tag, int(key)])
            start = pick_start(audio, max_len, srng, plan.grid_aligned,
                               shortest=int(round(min(plan.lengths_s) * SAMPLE_RATE)))
            if start is None:
                log.info("song %s: no non-silent %g s excerpt found; start %d dropped", songs.iloc[pos]["song_id"],
                         max(plan.lengths_s), key)
                continue
            audio_cb(_Start(pos, str(songs.iloc[pos]["song_id"]), start, in_db, int(key)), audio)
            done += 1
    return done


def write_query_set(out_dir: str | Path, in_db_songs: pd.DataFrame, out_songs: pd.DataFrame, plan: QueryPlan,
                    noise_bank: ClipBank | None, ir_bank: ClipBank | None) -> pd.DataFrame:
    """Cut, degrade and write every query file under ``out_dir/audio`` and the table ``out_dir/queries.parquet``.

    Files go to a hidden partial folder named after the plan; a killed run resumes there (finished files are
    complete, being written atomically) and only the finished set is renamed into place.
    """
    out_dir = Path(out_dir)
    conds = plan.conditions()
    if any(c.snr_db is not None for c in conds) and (noise_bank is None or len(noise_bank) == 0):
        raise ValueError("evaluate: noisy conditions need a non-empty test noise bank")
    if any(c.reverb for c in conds) and (ir_bank is None or len(ir_bank) == 0):
        raise ValueError("evaluate: reverb needs a non-empty test impulse-response bank")
    banks = [[b.meta["name"].astype(str).tolist(), b.lengths.tolist()] if b is not None else None
             for b in (noise_bank, ir_bank)]
    digest = plan.digest([sorted(in_db_songs["song_id"]), sorted(out_songs["song_id"]), banks])
    partial = out_dir / f".partial-{digest}"
    for old in out_dir.glob(".partial-*"):
        if old != partial:
            shutil.rmtree(old, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    n_total = (plan.n_starts + plan.n_out_of_db_starts) * len(plan.lengths_s) * len(conds)
    bar = tqdm(total=n_total, desc="queries", mininterval=10)

    def cut(st: _Start, audio: np.ndarray) -> None:
        for li, length_s in enumerate(plan.lengths_s):
            n = int(round(length_s * SAMPLE_RATE))
            for ci, cond in enumerate(conds):
                qid = f"{'q' if st.in_db else 'x'}{st.key:05d}_{li:02d}{ci:02d}"
                rng = np.random.default_rng([plan.seed, int(st.in_db), st.key, li, ci])
                spec = plan.degradation(cond, rng)
                rel = f"audio/{qid}.flac"
                target = partial / f"{qid}.flac"
                try:
                    query, info = degrade(audio, st.start, n, spec, rng, noise_bank, ir_bank)
                except ValueError as exc:  # e.g. a silent noise excerpt: the SNR is undefined
                    log.warning("query %s (song %s at %.2f s) skipped: %s", qid, st.song_id,
                                st.start / SAMPLE_RATE, exc)
                    bar.update()
                    continue
                if not target.exists():
                    write_audio(target, query)
                rows.append({"query_id": qid, "song_id": st.song_id if st.in_db else None, "in_db": st.in_db,
                             "source_song_id": st.song_id, "start_s": st.start / SAMPLE_RATE,
                             "start_sample": st.start, "length_s": float(length_s), "condition": cond.name,
                             "snr_db": np.nan if spec.snr_db is None else spec.snr_db, "reverb": spec.reverb,
                             "highpass_hz": np.nan if spec.highpass_hz is None else spec.highpass_hz,
                             "lowpass_hz": np.nan if spec.lowpass_hz is None else spec.lowpass_hz,
                             "ir": info["ir"], "file": rel})
                bar.update()

    n_in = _draw_starts(in_db_songs, plan.n_starts, plan, True, 1, cut)
    n_out = _draw_starts(out_songs, plan.n_out_of_db_starts, plan, False, 2, cut)
    bar.close()
    if n_in == 0:
        raise ValueError("no query could be cut from the database songs (all unreadable, silent or too short)")
    if plan.n_out_of_db_starts and n_out == 0:
        log.warning("no out-of-database queries: there are no usable songs outside the database, so the "
                    "false-positive rate cannot be measured")
    table = pd.DataFrame(rows, columns=QUERY_COLUMNS)
    audio_dir = out_dir / "audio"
    if audio_dir.exists():
        shutil.rmtree(audio_dir)
    partial.rename(audio_dir)
    with atomic_path(out_dir / "queries.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    log.info("query set: %d queries (%d starts in the database, %d outside), %d conditions, lengths %s s",
             len(table), n_in, n_out, len(conds), ", ".join(f"{x:g}" for x in plan.lengths_s))
    return table


def make_query_set(out_dir: str | Path, songs_path: str | Path, splits_path: str | Path,
                   index_meta_path: str | Path, noise_prefix: str | Path | None, ir_prefix: str | Path | None,
                   cfg: dict[str, Any]) -> pd.DataFrame:
    """Snakemake entry for the ``eval_queries`` rule."""
    plan = QueryPlan.from_config(cfg)
    songs, splits = pd.read_parquet(songs_path), pd.read_parquet(splits_path)
    db_ids = database_song_ids(index_meta_path)
    in_db = query_songs(songs, splits, db_ids, plan.query_splits)
    out = out_of_db_songs(songs, splits, db_ids, plan.seed, "evaluation")
    log.info("query songs: %d in the database (splits %s), %d outside it", len(in_db), list(plan.query_splits),
             len(out))
    noise = ClipBank(noise_prefix) if noise_prefix else None
    irs = ClipBank(ir_prefix) if ir_prefix else None
    return write_query_set(out_dir, in_db, out, plan, noise, irs)


# ------------------------------------------------------------------------------------------------ running

def _chunked(items: list, fn: Callable[[Any], list[dict]], partial_dir: Path | None, chunk: int,
             desc: str) -> list[dict]:
    """Map ``fn`` over ``items`` in chunks; finished chunks are kept in ``partial_dir`` so a killed run resumes."""
    rows: list[dict] = []
    if partial_dir is not None:
        partial_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(items), desc=desc, mininterval=10)
    for c0 in range(0, len(items), chunk):
        part = partial_dir / f"chunk-{c0 // chunk:06d}.parquet" if partial_dir is not None else None
        if part is not None and part.exists():
            rows += pd.read_parquet(part).to_dict("records")
            bar.update(min(chunk, len(items) - c0))
            continue
        out: list[dict] = []
        for it in items[c0:c0 + chunk]:
            out += fn(it)
            bar.update()
        if part is not None:
            with atomic_path(part) as tmp:
                pd.DataFrame(out).to_parquet(tmp, index=False)
        rows += out
    bar.close()
    return rows


def run_neural(searcher, queries: pd.DataFrame, base_dir: str | Path, modes: Sequence[str] = ("sequence",),
               partial_dir: str | Path | None = None, chunk: int = 500) -> pd.DataFrame:
    """Answer every query file with the neural searcher; one row per query and mode (``RESULT_COLUMNS``).

    Each query is embedded once and searched in every mode; ``embed_ms`` is the fingerprinting time, ``search_ms``
    the neighbour search plus re-scoring of that mode, ``total_ms`` their sum (file decoding is not timed: it is the
    same for both systems and depends on the format, not on the method).
    """
    base = Path(base_dir)
    searcher.embed(np.zeros(SAMPLE_RATE, dtype=np.float32))  # warm-up: first-call allocations are not latency

    def one(q) -> list[dict]:
        audio = load_audio(base / q.file)
        t0 = time.perf_counter()
        emb = searcher.embed(audio)
        embed_ms = (time.perf_counter() - t0) * 1000.0
        out = []
        for mode in modes:
            t1 = time.perf_counter()
            res = searcher.search(emb, mode)
            search_ms = (time.perf_counter() - t1) * 1000.0
            m = searcher.decide(res)
            out.append({"query_id": q.query_id, "system": NEURAL, "mode": mode,
                        "top_songs": [c.song_id for c in res.candidates],
                        "top_offsets_s": [c.offset_s for c in res.candidates],
                        "top_scores": [c.score for c in res.candidates],
                        "score": m.score if res.candidates else float("nan"), "is_match": m.is_match,
                        "confidence": m.confidence, "embed_ms": embed_ms, "search_ms": search_ms,
                        "total_ms": embed_ms + search_ms})
        return out

    rows = _chunked(list(queries.itertuples()), one, Path(partial_dir) if partial_dir else None, chunk,
                    "neural queries")
    return pd.DataFrame(rows)


def evaluate_neural(queries_path: str | Path, out_path: str | Path, results_dir: str | Path, search_cfg: dict,
                    modes: Sequence[str], threads: int = 1) -> pd.DataFrame:
    """Snakemake entry for ``eval_neural``: resumable per chunk of queries."""
    import torch

    from .search import Searcher

    torch.set_num_threads(max(1, threads))
    queries = pd.read_parquet(queries_path)
    r = Path(results_dir)
    searcher = Searcher.from_paths(r / "model" / "model.pt", r / "index", None, r / "index" / "threshold.json",
                                   **search_kwargs(search_cfg))
    out_path = Path(out_path)
    # Finished chunks are reused only for the same queries, model and result-changing search settings.
    same = {k: v for k, v in search_cfg.items() if k not in ("device", "batch_size")}
    key = hashlib.sha1(json.dumps([file_digest(queries_path), file_digest(r / "model" / "model.pt"), same,
                                   list(modes)], sort_keys=True).encode()).hexdigest()[:12]
    partial = out_path.parent / f".partial-{out_path.stem}-{key}"
    for old in out_path.parent.glob(f".partial-{out_path.stem}-*"):
        if old != partial:
            shutil.rmtree(old, ignore_errors=True)
    res = run_neural(searcher, queries, Path(queries_path).parent, modes, partial)
    with atomic_path(out_path) as tmp:
        res.to_parquet(tmp, index=False)
    shutil.rmtree(partial, ignore_errors=True)
    log.info("neural: %d queries x %d modes answered on %s", len(queries), len(modes), searcher.device)
    return res


def file_digest(path: str | Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def search_kwargs(search_cfg: dict) -> dict:
    """``Searcher.from_paths`` keyword arguments from the ``search:`` config section."""
    keys = ("top_k", "nprobe", "max_candidates", "batch_size", "fallback_threshold", "device", "mode")
    return {k: search_cfg[k] for k in keys if k in search_cfg}


# ------------------------------------------------------------------------------------------------ metrics

def _percentile(x: pd.Series, q: float) -> float:
    x = x.dropna()
    return float(np.percentile(x, q)) if len(x) else float("nan")


def score_results(queries: pd.DataFrame, results: pd.DataFrame, exact_tol: float = EXACT_TOL_S,
                  near_tol: float = NEAR_TOL_S) -> pd.DataFrame:
    """Per-query correctness flags (one row per query, system and mode)."""
    q = queries[["query_id", "song_id", "in_db", "start_s", "length_s", "condition"]]
    m = results.merge(q, on="query_id", how="inner", validate="many_to_one")
    if len(m) != len(results):
        raise ValueError(f"{len(results) - len(m)} result rows name queries that are not in the query table")

    def first(v):
        return v[0] if v is not None and len(v) else None

    top_song = m["top_songs"].map(first)
    top_off = m["top_offsets_s"].map(lambda v: float(v[0]) if v is not None and len(v) else np.nan)
    truth = m["song_id"]
    in_db = m["in_db"].astype(bool)
    m["song_top1"] = in_db & (top_song == truth)
    for k in (3, 10):
        m[f"song_top{k}"] = in_db & np.array([v is not None and t in list(v[:k])
                                              for t, v in zip(truth, m["top_songs"])], dtype=bool)
    err = (top_off - m["start_s"]).abs()
    m["seg_top1_exact"] = m["song_top1"] & (err <= exact_tol + 1e-9)
    m["seg_top1_near"] = m["song_top1"] & (err <= near_tol + 1e-9)
    m["song_top1_accepted"] = m["song_top1"] & m["is_match"].astype(bool)
    m["false_positive"] = ~in_db & m["is_match"].astype(bool)
    return m


HIT_METRICS = ["seg_top1_exact", "seg_top1_near", "song_top1", "song_top3", "song_top10", "song_top1_accepted"]


def compute_metrics(queries: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Metrics per (system, mode, condition, length_s); hit rates are fractions of the in-database queries, the
    false-positive rate a fraction of the out-of-database ones, latencies over all queries of the group."""
    m = score_results(queries, results)
    rows = []
    for (system, mode, cond, length), g in m.groupby(["system", "mode", "condition", "length_s"], sort=False):
        ind, outd = g[g["in_db"]], g[~g["in_db"]]
        row = {"system": system, "mode": mode, "condition": cond, "length_s": float(length),
               "n_queries": len(ind), "n_out_of_db": len(outd)}
        for k in HIT_METRICS:
            row[k] = float(ind[k].mean()) if len(ind) else float("nan")
        row["fpr"] = float(outd["false_positive"].mean()) if len(outd) else float("nan")
        for col, name in (("total_ms", "latency"), ("search_ms", "search"), ("embed_ms", "embed")):
            row[f"{name}_p50_ms"] = _percentile(g[col], 50)
            row[f"{name}_p95_ms"] = _percentile(g[col], 95)
        rows.append(row)
    out = pd.DataFrame(rows)
    cond_order = {c: i for i, c in enumerate(queries["condition"].drop_duplicates())}
    out["_c"] = out["condition"].map(cond_order)
    out["_s"] = out["system"] != NEURAL  # the system under test first, baselines after it
    return (out.sort_values(["_s", "system", "mode", "_c", "length_s"]).drop(columns=["_c", "_s"])
            .reset_index(drop=True))


def pooled_fpr(queries: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """False-positive rate per (system, mode, length) over all conditions."""
    m = score_results(queries, results)
    o = m[~m["in_db"]]
    if o.empty:
        return pd.DataFrame(columns=["system", "mode", "length_s", "n_out_of_db", "fpr"])
    return (o.groupby(["system", "mode", "length_s"])["false_positive"].agg(["size", "mean"])
            .rename(columns={"size": "n_out_of_db", "mean": "fpr"}).reset_index())


# ------------------------------------------------------------------------------------------------ reporting

def _label(system: str, mode: str) -> str:
    return f"{system} ({mode})"


def _pivot_md(df: pd.DataFrame, index: list[str], value: str, scale: float = 100.0, fmt: str = "{:.1f}") -> str:
    lengths = sorted(df["length_s"].unique())
    head = "| " + " | ".join(index) + " | " + " | ".join(f"{x:g} s" for x in lengths) + " |"
    sep = "|" + "---|" * (len(index) + len(lengths))
    lines = [head, sep]
    for key, g in df.groupby(index, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        vals = g.set_index("length_s")[value]
        cells = [fmt.format(vals[x] * scale) if x in vals.index and pd.notna(vals[x]) else "–" for x in lengths]
        lines.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def snr_of(condition: str) -> float | None:
    """The SNR in a condition name ("5 dB + reverb" -> 5.0; "clean" -> None)."""
    head = condition.split(" dB")[0]
    try:
        return float(head) if " dB" in condition else None
    except ValueError:
        return None


def target_checks(metrics: pd.DataFrame, fpr: pd.DataFrame) -> list[tuple[str, str, bool | None]]:
    """The issue's acceptance targets, measured: (target, measured, passed or None when not measurable)."""
    checks: list[tuple[str, str, bool | None]] = []
    neu = metrics[(metrics["system"] == NEURAL) & (metrics["mode"] == "sequence")]
    c5 = neu[(neu["condition"] == "clean") & (neu["length_s"] == 5)]
    if len(c5):
        v = float(c5["song_top1"].iloc[0])
        checks.append(("song-level top-1 >= 99 % for clean 5 s queries", f"{v * 100:.1f} %", v >= 0.99))
    base = metrics[metrics["system"] == "audfprint"]
    low = [c for c in metrics["condition"].unique() if (snr_of(c) is not None and snr_of(c) <= 5
                                                        and "reverb" in c)]
    for length in (3.0, 5.0):
        a = neu[neu["condition"].isin(low) & (neu["length_s"] == length)]
        b = base[base["condition"].isin(low) & (base["length_s"] == length)]
        if len(a) and len(b):
            da = float(np.average(a["song_top1"], weights=a["n_queries"]))
            db = float(np.average(b["song_top1"], weights=b["n_queries"]))
            checks.append((f"0-5 dB + reverb, {length:g} s: >= 20 points above audfprint",
                           f"{da * 100:.1f} % vs {db * 100:.1f} % ({(da - db) * 100:+.1f} points)",
                           (da - db) >= 0.20))
        elif len(a):
            checks.append((f"0-5 dB + reverb, {length:g} s: >= 20 points above audfprint",
                           "audfprint baseline not run", None))
    f = fpr[(fpr["system"] == NEURAL) & (fpr["mode"] == "sequence")]
    if len(f):
        tot = float(np.average(f["fpr"], weights=f["n_out_of_db"]))
        worst = float(f["fpr"].max())
        checks.append(("false-positive rate <= 1 % on out-of-database queries",
                       f"{tot * 100:.2f} % overall (worst length {worst * 100:.2f} %, "
                       f"{int(f['n_out_of_db'].sum())} queries)", tot <= 0.01))
    ten = neu[neu["length_s"] == 10]
    if len(ten):
        p50 = float(ten["search_p50_ms"].median())
        tot = float(ten["latency_p50_ms"].median())
        checks.append(("p50 search latency < 20 ms for a 10 s query",
                       f"{p50:.1f} ms search (+ fingerprinting: {tot:.1f} ms in all)", p50 < 20.0))
    return checks


def write_summary(path: str | Path, queries: pd.DataFrame, metrics: pd.DataFrame, fpr: pd.DataFrame,
                  info: dict[str, Any] | None = None) -> str:
    """``summary.md``: the run, the targets, and hit-rate / false-positive / latency tables."""
    info = info or {}
    m = metrics.copy()
    m["system"] = [_label(s, mo) for s, mo in zip(m["system"], m["mode"])]
    n_in = int(queries["in_db"].sum())
    lines = ["# Evaluation summary", ""]
    lines.append(f"{n_in} queries from {queries.loc[queries['in_db'], 'song_id'].nunique()} database songs and "
                 f"{int((~queries['in_db']).sum())} from {queries.loc[~queries['in_db'], 'source_song_id'].nunique()} "
                 f"songs outside the database; conditions: {', '.join(queries['condition'].drop_duplicates())}. "
                 "Degraded conditions: held-out test noise at that SNR, held-out test impulse response (reverb) and "
                 "random band-limiting for part of the queries. Hit rates ignore the no-match rule unless marked "
                 "'accepted'; segment 'exact' = offset within 0.25 s, 'near' = within 0.5 s.")
    for k, v in info.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, val, ok in target_checks(metrics, fpr):
        lines.append(f"| {name} | {val} | {'yes' if ok else ('no' if ok is not None else 'n/a')} |")
    for metric, title in (("song_top1", "Song-level top-1 hit rate (%)"),
                          ("seg_top1_exact", "Segment-level top-1 exact (offset within 0.25 s, %)"),
                          ("seg_top1_near", "Segment-level top-1 near (offset within 0.5 s, %)"),
                          ("song_top3", "Song-level top-3 (%)"), ("song_top10", "Song-level top-10 (%)"),
                          ("song_top1_accepted", "Song-level top-1 and accepted by the no-match rule (%)")):
        lines += ["", f"## {title}", "", _pivot_md(m, ["condition", "system"], metric)]
    if len(fpr):
        f = fpr.copy()
        f["system"] = [_label(s, mo) for s, mo in zip(f["system"], f["mode"])]
        lines += ["", "## False-positive rate on out-of-database queries (%, all conditions)", "",
                  _pivot_md(f, ["system"], "fpr", fmt="{:.2f}")]
    clean_or_all = m[m["condition"] == m["condition"].iloc[0]] if len(m) else m
    lines += ["", f"## Latency per query, condition '{clean_or_all['condition'].iloc[0] if len(m) else ''}' (ms)",
              "", "Fingerprinting + search (decoding not included); search alone below.", "", "p50:", "",
              _pivot_md(clean_or_all, ["system"], "latency_p50_ms", 1.0), "", "p95:", "",
              _pivot_md(clean_or_all, ["system"], "latency_p95_ms", 1.0), "",
              "Search only (p50):", "", _pivot_md(clean_or_all, ["system"], "search_p50_ms", 1.0, "{:.2f}")]
    text = "\n".join(lines) + "\n"
    write_text_atomic(path, text)
    return text


def plot_hit_rates(metrics: pd.DataFrame, path: str | Path, metric: str = "song_top1",
                   ylabel: str = "song-level top-1 (%)") -> None:
    """Hit rate vs query length, one panel per condition, one line per system and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = list(dict.fromkeys(metrics["condition"]))
    ncol = min(3, len(conds))
    nrow = int(np.ceil(len(conds) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False, sharey=True)
    for ax, cond in zip(axes.flat, conds):
        g = metrics[metrics["condition"] == cond]
        for (system, mode), s in g.groupby(["system", "mode"], sort=False):
            s = s.sort_values("length_s")
            ax.plot(s["length_s"], s[metric] * 100, marker="o", label=_label(system, mode),
                    linestyle="--" if system != NEURAL else "-")
        ax.set_title(cond)
        ax.set_xlabel("query length (s)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(conds):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def markdown_to_html(md: str, title: str = "Evaluation summary") -> str:
    """HTML for the subset of Markdown ``write_summary`` produces (headings, paragraphs, bullets, pipe tables), so
    the Snakemake report can show the summary inline."""
    import html

    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
           "body{font-family:sans-serif;margin:1.5em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}"
           "td,th{border:1px solid #bbb;padding:.2em .6em;text-align:right}td:first-child,th:first-child,"
           "td:nth-child(2){text-align:left}</style></head><body>"]
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) + "</tr>")
            for r in table[1:]:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
            out.append("</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    out.append("</body></html>")
    return "\n".join(out)


def calibration_info(threshold_path: str | Path | None) -> dict[str, Any]:
    """Lines for the summary header describing the no-match rule in use."""
    if not threshold_path or not Path(threshold_path).exists():
        return {"no-match rule": "not calibrated (fallback threshold)"}
    from .calibrate import Calibration

    cal = Calibration.load(threshold_path)
    thr = ", ".join(f"{n}: {t:.3f}" for n, t in zip(cal.n_segments, cal.thresholds))
    return {"no-match rule": f"target false-positive rate {cal.target_fpr:g}, calibrated on "
                             f"{sum(len(s) for s in cal.null_scores)} queries from {cal.meta.get('n_songs', '?')} "
                             f"songs outside the database (thresholds by query segments: {thr})",
            "model": cal.meta.get("model_checksum", "?")}


def summarize(queries_path: str | Path, result_paths: Sequence[str | Path], metrics_path: str | Path,
              summary_path: str | Path, html_path: str | Path | None, plot_paths: dict[str, str | Path],
              threshold_path: str | Path | None = None) -> pd.DataFrame:
    """Snakemake entry for ``evaluate``: metrics.parquet, summary.md (+ .html) and the plots from all systems."""
    if isinstance(result_paths, (str, Path)):
        result_paths = [result_paths]
    queries = pd.read_parquet(queries_path)
    results = pd.concat([pd.read_parquet(p) for p in result_paths], ignore_index=True)
    metrics = compute_metrics(queries, results)
    fpr = pooled_fpr(queries, results)
    with atomic_path(metrics_path) as tmp:
        metrics.to_parquet(tmp, index=False)
    text = write_summary(summary_path, queries, metrics, fpr, calibration_info(threshold_path))
    if html_path:
        write_text_atomic(html_path, markdown_to_html(text))
    for metric, path in plot_paths.items():
        plot_hit_rates(metrics, path, metric, {"song_top1": "song-level top-1 (%)",
                                               "seg_top1_exact": "segment top-1 exact (%)"}.get(metric, metric))
    log.info("evaluation: %d metric rows from %d result rows", len(metrics), len(results))
    return metrics
