"""Classic landmark baseline: audfprint (Dan Ellis; the numpy-2 PyPI port ``audfprint2``) over the same database songs
and the very same query files as the neural system, so both land in one table.

Audio is decoded by our own loader (``audio_io``: no ffmpeg needed) at 8 kHz, exactly what the neural system sees,
and analysed at 8 kHz: database songs and queries carry the same band, and resampling 8 kHz audio up to audfprint's
usual 11025 Hz would leave an empty top band in which its log-spectrogram floor starves the peak picker (on the dev
corpus that cost 17 points of clean 5 s top-1). Otherwise audfprint's own defaults are kept (density 20 hashes/s,
fan-out 3, 5 peaks per frame, 4 sub-frame shifts for queries and 1 for the database, a match needs at least 5
time-consistent hashes); its no-match rule is that minimum count.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow_lib import SAMPLE_RATE
from workflow_lib.common.atomic import file_digest
from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.files import load_audio, resample
from workflow_lib.common.background import ordered_map
from workflow_lib.common.progress import progress
from workflow_lib.evaluation.chunks import finish, partial_dir, run_in_chunks
from workflow_lib.search.duplicates import parse_exclusion
from workflow_lib.common.config import check_keys

log = logging.getLogger(__name__)

SYSTEM = "audfprint"


def require_audfprint():
    """Import audfprint2 or fail with the fix in the message."""
    try:
        import audfprint2  # noqa: F401
        from audfprint2.core import analyzer, hash_table, matcher
    except ImportError as exc:
        raise ImportError("the audfprint baseline needs the 'audfprint2' package, which is not installed: "
                          "pip install audfprint2 (or set evaluate.baseline_audfprint: false)") from exc
    return analyzer, hash_table, matcher


@dataclass(frozen=True)
class AudfprintParams:
    sample_rate: int = SAMPLE_RATE
    density: float = 20.0
    fanout: int = 3
    peaks_per_frame: int = 5
    freq_sd: float = 30.0
    query_shifts: int = 4
    db_shifts: int = 1
    match_window: int = 2
    min_count: int = 5
    search_depth: int = 100
    hashbits: int = 20
    bucket_size: int = 100
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AudfprintParams":
        d = dict(d or {})
        check_keys(d, cls.__dataclass_fields__, "audfprint parameter")
        return cls(**d)


class LandmarkAnalyzer:
    """audfprint's peak picking and landmark hashing, fed with 8 kHz arrays."""

    def __init__(self, params: AudfprintParams):
        analyzer, _, _ = require_audfprint()
        self._mod = analyzer
        self.params = params
        a = analyzer.Analyzer(density=params.density)
        a.target_sr = params.sample_rate
        a.maxpksperframe = params.peaks_per_frame
        a.maxpairsperpeak = params.fanout
        a.f_sd = params.freq_sd
        self.analyzer = a

    @property
    def hop_s(self) -> float:
        return self.analyzer.n_hop / self.params.sample_rate

    def hashes(self, audio_8k: np.ndarray, shifts: int) -> np.ndarray:
        """(time, hash) landmark pairs, with sub-frame shifts and deduplication as ``Analyzer.wavfile2hashes``."""
        sr = self.params.sample_rate
        d = np.asarray(resample(np.asarray(audio_8k, dtype=np.float32), SAMPLE_RATE, sr), dtype=np.float32)
        parts = []
        for shift in range(max(1, shifts)):
            off = int(shift / max(1, shifts) * self.analyzer.n_hop)
            peaks = self.analyzer.find_peaks(d[off:], sr)
            if peaks:
                parts.append(self._mod.landmarks2hashes(self.analyzer.peaks2landmarks(peaks)))
        if not parts:
            return np.zeros((0, 2), dtype=np.int32)
        return np.unique(np.concatenate(parts).astype(np.int64), axis=0).astype(np.int32)


class Audfprint:
    """A landmark hash table with its analyzer and matcher."""

    def __init__(self, params: AudfprintParams, max_song_s: float = 600.0):
        _, hash_table, matcher = require_audfprint()
        self.params = params
        self.landmarks = LandmarkAnalyzer(params)
        # Enough time bits for the longest song, else offsets in long songs alias (audfprint's default is 14 bits,
        # about 6 minutes at 11 kHz).
        frames = int(max_song_s / self.landmarks.hop_s) + 1
        self.table = hash_table.HashTable(hashbits=params.hashbits, depth=params.bucket_size,
                                          maxtime=max(1 << 14, 1 << int(np.ceil(np.log2(frames)))))
        self.matcher = matcher.Matcher()
        self.matcher.window = params.match_window
        self.matcher.threshcount = params.min_count
        self.matcher.search_depth = params.search_depth
        self.names: list[str] = []

    def store(self, name: str, hashes: np.ndarray) -> None:
        self.table.store(name, [(int(t), int(x)) for t, x in hashes.tolist()])
        self.names.append(name)

    def add(self, name: str, audio_8k: np.ndarray) -> int:
        h = self.landmarks.hashes(audio_8k, self.params.db_shifts)
        self.store(name, h)
        return len(h)

    def match_hashes(self, h: np.ndarray, n_results: int = 10) -> list[tuple[str, int, float]]:
        """Best matches as (name, time-consistent hash count, offset of the query in the song in seconds)."""
        if len(h) == 0:
            return []
        res = np.asarray(self.matcher.match_hashes(self.table, h))
        out: list[tuple[str, int, float]] = []
        seen: set[int] = set()
        for track, count, align, *_ in res.tolist():
            if track in seen:  # audfprint may report several alignments per track; keep its best
                continue
            seen.add(track)
            out.append((str(self.table.names[track]), int(count), float(align) * self.landmarks.hop_s))
            if len(out) >= n_results:
                break
        return out

    def match(self, audio_8k: np.ndarray, n_results: int = 10) -> list[tuple[str, int, float]]:
        return self.match_hashes(self.landmarks.hashes(audio_8k, self.params.query_shifts), n_results)


# ---------------------------------------------------------------------------------------------- evaluation run

def _song_hashes(args: tuple[str, str, dict]) -> tuple[str, np.ndarray | None, float, str | None]:
    """Worker: decode one database song and return its landmark hashes."""
    song_id, path, params = args
    afp = _worker_afp(params)
    try:
        audio = load_audio(path)
    except AudioDecodeError as exc:
        return song_id, None, 0.0, str(exc)
    return song_id, afp.hashes(audio, afp.params.db_shifts), len(audio) / SAMPLE_RATE, None


def _query_hashes(args: tuple[str, str, dict]) -> tuple[str, np.ndarray | None, float, str | None]:
    """Worker: decode one query file and return its landmark hashes and the analysis time in ms."""
    query_id, path, params = args
    afp = _worker_afp(params)
    try:
        audio = load_audio(path)
    except AudioDecodeError as exc:
        return query_id, None, 0.0, str(exc)
    t0 = time.perf_counter()
    h = afp.hashes(audio, afp.params.query_shifts)
    return query_id, h, (time.perf_counter() - t0) * 1000.0, None


_WORKER: dict[str, LandmarkAnalyzer] = {}


def _worker_afp(params: dict) -> LandmarkAnalyzer:
    """One analyzer per process (workers never hold the hash table)."""
    key = repr(sorted(params.items()))
    if key not in _WORKER:
        _WORKER.clear()
        _WORKER[key] = LandmarkAnalyzer(AudfprintParams(**params))
    return _WORKER[key]


def build_database(songs: pd.DataFrame, params: AudfprintParams, threads: int = 1) -> Audfprint:
    """Fingerprint every ``song_id, path, duration_s`` row into one hash table (unreadable songs are skipped)."""
    random.seed(params.seed)  # the table drops entries of full buckets at random
    afp = Audfprint(params, max_song_s=float(songs["duration_s"].max()) + 1.0 if len(songs) else 600.0)
    items = [(r.song_id, r.path, asdict(params)) for r in songs.itertuples()]
    n_hashes = 0
    analysed = progress(ordered_map(_song_hashes, items, threads, processes=True), total=len(items),
                        desc="audfprint database", mininterval=10)
    for song_id, h, dur, err in analysed:
        if err is not None:
            log.warning("audfprint: skipping database song %s: %s", song_id, err)
            continue
        afp.store(song_id, h)
        n_hashes += len(h)
    log.info("audfprint database: %d songs, %d hashes", len(afp.names), n_hashes)
    return afp


def run_queries(afp: Audfprint, queries: pd.DataFrame, threads: int = 1, n_results: int = 10,
                folder: Path | None = None, chunk: int = 1000) -> pd.DataFrame:
    """Answer every query file; one row per query in the shared result layout (``neural.RESULT_COLUMNS``).

    Query files are analysed by ``threads`` worker processes and matched here. Unknown-song queries drop their own
    song from audfprint's answers (leave-one-song-out: its hash counts are per song, so this equals a database
    without it). With ``folder``, every finished chunk of queries is kept there, so a killed run resumes.
    """
    excluded = {}
    for r in queries.itertuples():
        ex = parse_exclusion(getattr(r, "exclude_song", None))
        if ex is not None:
            excluded[r.query_id] = frozenset([ex]) if isinstance(ex, str) else ex
    items = [(r.query_id, r.file, asdict(afp.params)) for r in queries.itertuples()]
    pool = ProcessPoolExecutor(threads) if threads > 1 else None

    def process(todo) -> list[dict]:
        analysed = pool.map(_query_hashes, todo, chunksize=4) if pool else map(_query_hashes, todo)
        rows = []
        for qid, h, analyse_ms, err in analysed:
            if err is not None:
                raise AudioDecodeError(f"query {qid}: {err}")
            t0 = time.perf_counter()
            skip = excluded.get(qid, frozenset())
            hits = afp.match_hashes(h, n_results + len(skip))
            hits = [hit for hit in hits if hit[0] not in skip][:n_results]
            match_ms = (time.perf_counter() - t0) * 1000.0
            rows.append({"query_id": qid, "system": SYSTEM, "mode": "landmark",
                         "top_songs": [s for s, _, _ in hits], "top_offsets_s": [o for _, _, o in hits],
                         "top_scores": [float(c) for _, c, _ in hits],
                         "score": float(hits[0][1]) if hits else 0.0,
                         # audfprint reports only alignments with at least min_count consistent hashes
                         "is_match": bool(hits), "confidence": float("nan"), "embed_ms": analyse_ms,
                         "search_ms": match_ms, "total_ms": analyse_ms + match_ms})
        return rows

    try:
        return run_in_chunks(items, process, folder, chunk, "audfprint queries")
    finally:
        if pool is not None:
            pool.shutdown()


def run_baseline(queries_path: str | Path, songs_path: str | Path, index_meta_path: str | Path,
                 out_path: str | Path, params: dict | None = None, threads: int = 1) -> pd.DataFrame:
    """Snakemake entry: database = the songs of the neural index, queries = the evaluation query files."""
    p = AudfprintParams.from_dict(params)
    queries = pd.read_parquet(queries_path)
    base = Path(queries_path).parent
    queries["file"] = [str(base / f) for f in queries["file"]]
    db_ids = set(pd.read_parquet(index_meta_path, columns=["song_id"])["song_id"].astype(str))
    songs = pd.read_parquet(songs_path)
    songs = songs[songs["song_id"].astype(str).isin(db_ids)]
    if songs.empty:
        raise ValueError(f"{index_meta_path}: none of its songs are in {songs_path}")
    t0 = time.perf_counter()
    afp = build_database(songs, p, threads)
    log.info("audfprint database built in %.1f s", time.perf_counter() - t0)
    # Finished chunks are reused only for the very same query table, database songs and settings.
    folder = partial_dir(out_path, [file_digest(queries_path), sorted(afp.names), asdict(p)])
    res = run_queries(afp, queries, threads, folder=folder)
    finish(out_path, res, folder)
    log.info("audfprint: %d queries answered, %d matched", len(res), int(res["is_match"].sum()))
    return res
