"""Training data: songs decoded once into a memory-mapped bank, and batches of degraded-view inputs drawn from it.

The loader never decodes files per step: ``build_song_bank`` decodes the training (or validation) songs once into a
float16 clip bank under ``results/model/audio/`` and ``ViewSource`` cuts views out of it with plain slicing, together
with a random noise excerpt, an impulse response and the chain's random parameters. Everything random is drawn from
a numpy ``Generator`` handed in by the caller, so an epoch's batches depend only on (seed, epoch).
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import HOP_SAMPLES, SAMPLE_RATE, SEGMENT_SAMPLES
from .atomic import atomic_path
from .audio_io import AudioDecodeError, iter_audio
from .augment import FILTER_SETTLE, AugmentConfig, ViewParams, sample_view_params
from .clipbank import ClipBank
from .segments import n_segments

log = logging.getLogger(__name__)

T = TypeVar("T")


# --- song bank -------------------------------------------------------------------------------------------------

def build_song_bank(songs_parquet: str | Path, splits_parquet: str | Path, split: str, out_prefix: str | Path,
                    max_songs: int = 0, seed: int = 0) -> dict:
    """Decode every song of ``split`` once into ``out_prefix.npy`` (float16, 8 kHz) + ``.parquet`` (clip bank).

    Memory stays bounded by one decoding chunk: samples are appended to a raw temporary file and then copied into
    the final ``.npy``. Songs that fail to decode or are shorter than one segment are skipped with a logged reason.
    ``max_songs`` > 0 keeps a seeded random subset (e.g. to bound validation time on a large collection).
    """
    songs = pd.read_parquet(songs_parquet)
    splits = pd.read_parquet(splits_parquet)
    for name, table, cols in (("songs", songs, {"song_id", "path"}), ("splits", splits, {"song_id", "split"})):
        missing = cols - set(table.columns)
        if missing:
            raise ValueError(f"{songs_parquet if name == 'songs' else splits_parquet}: missing columns "
                             f"{sorted(missing)}")
    chosen = songs.merge(splits[splits["split"] == split][["song_id"]], on="song_id").sort_values("song_id")
    if max_songs and len(chosen) > max_songs:
        chosen = chosen.sample(n=max_songs, random_state=seed).sort_values("song_id")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    total = 0
    fd, raw_name = tempfile.mkstemp(prefix=f".{out_prefix.name}.", suffix=".raw", dir=out_prefix.parent)
    os.close(fd)
    raw_path = Path(raw_name)
    try:
        with open(raw_path, "wb") as raw:
            for song in tqdm(chosen.itertuples(index=False), total=len(chosen), desc=f"decode {split}", unit="song",
                             mininterval=5):
                n = 0
                try:
                    for chunk in iter_audio(song.path):
                        raw.write(np.clip(chunk, -1, 1).astype(np.float16).tobytes())
                        n += len(chunk)
                    if n < SEGMENT_SAMPLES:
                        raise AudioDecodeError(f"{song.path}: {n / SAMPLE_RATE:.2f} s is shorter than one segment")
                except AudioDecodeError as exc:
                    log.warning("skipping song %s: %s", song.song_id, exc)
                    raw.seek(total * 2)  # drop what this song had written
                    raw.truncate()
                    continue
                rows.append({"song_id": song.song_id, "name": str(song.path), "start": total, "length": n})
                total += n
        with atomic_path(out_prefix.with_suffix(".npy")) as npy_path:
            arr = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.float16, shape=(total,))
            if total:
                src = np.memmap(raw_path, dtype=np.float16, mode="r", shape=(total,))
                step = 1 << 24
                for i in range(0, total, step):
                    arr[i:i + step] = src[i:i + step]
                del src
            arr.flush()
            del arr
    finally:
        raw_path.unlink(missing_ok=True)
    table = pd.DataFrame(rows, columns=["song_id", "name", "start", "length"])
    with atomic_path(out_prefix.with_suffix(".parquet")) as tmp:
        table.to_parquet(tmp, index=False)
    summary = {"split": split, "songs": len(table), "skipped": len(chosen) - len(table),
               "hours": round(total / SAMPLE_RATE / 3600, 3), "segments": int(sum(n_segments(n) for n in
                                                                                   table["length"]))}
    log.info("song bank %s: %s", out_prefix, summary)
    return summary


# --- views -----------------------------------------------------------------------------------------------------

@dataclass
class ViewBatch:
    """Host-side inputs of ``augment.degrade`` for B views (numpy)."""

    audio: np.ndarray  # (B, history + segment) float32
    irs: np.ndarray  # (B, ir_len) float32
    noise: np.ndarray  # (B, segment + FILTER_SETTLE) float32
    params: ViewParams

    @staticmethod
    def concat(parts: list["ViewBatch"]) -> "ViewBatch":
        return ViewBatch(np.concatenate([p.audio for p in parts]), np.concatenate([p.irs for p in parts]),
                         np.concatenate([p.noise for p in parts]), ViewParams.concat([p.params for p in parts]))


class ViewSource:
    """Cuts views (with reverb history), noise excerpts and IRs for segments of a song bank."""

    def __init__(self, songs: ClipBank, noise: ClipBank | None, irs: ClipBank | None, cfg: AugmentConfig,
                 segment: int = SEGMENT_SAMPLES, hop: int = HOP_SAMPLES, sample_rate: int = SAMPLE_RATE):
        self.songs, self.cfg, self.segment, self.hop, self.sr = songs, cfg, segment, hop, sample_rate
        self.noise = noise if noise is not None and len(noise) else None
        self.irs = irs if irs is not None and len(irs) else None
        if self.noise is None and cfg.noise_prob > 0:
            log.warning("no training noise clips: views get no background noise")
        if self.irs is None and cfg.reverb_prob > 0:
            log.warning("no training impulse responses: views get no reverb")
        max_ir = int(cfg.max_ir_s * sample_rate)
        self.ir_len = min(int(self.irs.lengths.max()), max_ir) if self.irs is not None else 1
        self.history = self.ir_len - 1 + FILTER_SETTLE
        self.window = self.history + segment
        lengths = songs.lengths
        counts = np.array([n_segments(int(n), segment, hop) for n in lengths], dtype=np.int64)
        self.song_index = np.repeat(np.arange(len(lengths)), counts)
        self.segment_index = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        """Number of segments (the 0.5 s-hop grid over every song)."""
        return len(self.song_index)

    def views(self, rng: np.random.Generator, rows: np.ndarray, clean: np.ndarray | None = None) -> ViewBatch:
        """One view of each segment ``rows`` (indices into the segment grid), jittered, with its chain inputs.

        Rows where ``clean`` is true get the segment exactly on its grid position with no degradation (only the
        random output level), i.e. what the database holds.
        """
        n = len(rows)
        song, seg = self.song_index[rows], self.segment_index[rows]
        length = self.songs.lengths[song]
        start = seg * self.hop
        if self.cfg.jitter_s > 0:
            j = int(round(self.cfg.jitter_s * self.sr))
            start = start + rng.integers(-j, j + 1, n)
        if clean is not None:
            start = np.where(clean, seg * self.hop, start)
        start = np.clip(start, 0, length - self.segment)
        audio = np.zeros((n, self.window), dtype=np.float32)
        for i in range(n):
            a = self.songs.starts[song[i]] + start[i] - self.history
            lo = max(a, self.songs.starts[song[i]])  # nothing before the song's first sample: silence
            audio[i, lo - a:] = self.songs.samples[lo:a + self.window]
        irs = np.zeros((n, self.ir_len), dtype=np.float32)
        irs[:, 0] = 1.0  # unit impulse = no reverb
        noise = np.zeros((n, self.segment + FILTER_SETTLE), dtype=np.float32)
        params = sample_view_params(rng, n, self.cfg)
        if clean is not None:
            params.snr_db[clean] = np.inf
            params.highpass_hz[clean] = params.lowpass_hz[clean] = params.eq_gain_db[clean] = 0.0
            params.time_mask[clean] = params.freq_mask[clean] = 0
        dirty = ~clean if clean is not None else np.ones(n, dtype=bool)
        if self.irs is not None:
            for i in np.flatnonzero((rng.random(n) < self.cfg.reverb_prob) & dirty):
                ir = self.irs.clip(int(rng.integers(len(self.irs))))[:self.ir_len]
                irs[i] = 0.0
                irs[i, :len(ir)] = ir
        if self.noise is not None:
            for i in np.flatnonzero(np.isfinite(params.snr_db)):
                noise[i] = self.noise.random_excerpt(rng, noise.shape[1])
        else:
            params.snr_db[:] = np.inf
        return ViewBatch(audio, irs, noise, params)

    def pairs(self, rng: np.random.Generator, rows: np.ndarray) -> ViewBatch:
        """Anchors then positives: two independently jittered and degraded views of each segment (2B views).

        With ``clean_anchor_prob`` > 0 that share of anchors is the clean on-grid segment instead (NAFP's
        original-vs-replica pairs)."""
        clean = rng.random(len(rows)) < self.cfg.clean_anchor_prob if self.cfg.clean_anchor_prob > 0 else None
        return ViewBatch.concat([self.views(rng, rows, clean), self.views(rng, rows)])

    def epoch_batches(self, rng: np.random.Generator, batch_pairs: int) -> Iterator[ViewBatch]:
        """Every segment once, shuffled, in batches of ``batch_pairs`` pairs (the ragged last batch is dropped so
        every step sees the same number of negatives)."""
        order = rng.permutation(len(self))
        for i in range(len(order) // batch_pairs):
            yield self.pairs(rng, order[i * batch_pairs:(i + 1) * batch_pairs])

    def song_segments(self, song: int) -> tuple[int, int]:
        """(first row, number of rows) of ``song`` in the segment grid."""
        rows = np.flatnonzero(self.song_index == song)
        return (int(rows[0]), len(rows)) if len(rows) else (0, 0)


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Produce ``items`` in a background thread, ``depth`` ahead, so batch assembly overlaps the training step.

    The order is unchanged (one producer), so runs stay deterministic. Errors in the producer re-raise here.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # hand every failure to the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
