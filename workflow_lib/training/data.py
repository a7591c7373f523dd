"""Training data: songs decoded once into a memory-mapped bank, and batches of degraded-view inputs drawn from it.

The loader never decodes files per step: ``build_song_bank`` decodes the training (or validation) songs once into a
float16 clip bank under ``results/model/audio/`` and ``ViewSource`` cuts views out of it with plain slicing, together
with a random noise excerpt, an impulse response and the chain's random parameters. Everything random is drawn from
a numpy ``Generator`` keyed by the caller, so a training batch depends only on (seed, epoch, batch number).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import soxr
import torch

from workflow_lib import HOP_SAMPLES, SAMPLE_RATE, SEGMENT_SAMPLES
from workflow_lib.common.atomic import atomic_path, new_npy_map
from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.files import iter_audio
from workflow_lib.common.progress import progress
from workflow_lib.training.augment import FILTER_SETTLE, AugmentConfig, ViewParams, sample_view_params
from workflow_lib.data.clipbank import ClipBank
from workflow_lib.audio.segments import n_segments
from workflow_lib.data.split import unit_hash

log = logging.getLogger(__name__)


# --- song bank -------------------------------------------------------------------------------------------------

def codec_for(song_id: str, codecs: Sequence[str], seed: int) -> str:
    """The codec of a song's codec copy: a seeded hash of its id, so adding songs never changes the others'."""
    return codecs[int(unit_hash(f"codec/{song_id}", seed) * len(codecs)) % len(codecs)]


def build_song_bank(songs_parquet: str | Path, splits_parquet: str | Path, split: str, out_prefix: str | Path,
                    max_songs: int = 0, seed: int = 0, codecs: Sequence[str] = ()) -> dict:
    """Decode every song of ``split`` once into ``out_prefix.npy`` (float16, 8 kHz) + ``.parquet`` (clip bank).

    With ``codecs``, each song also goes through one of them (``codec_for``) into ``{out_prefix}_codec.npy`` /
    ``.parquet``, aligned sample for sample with the clean bank (training cuts codec views from it).
    Memory stays bounded by one song: samples are appended to raw temporary files and then copied into the final
    ``.npy``. Songs that fail to decode or are shorter than one segment are skipped with a logged reason.
    ``max_songs`` > 0 keeps a seeded random subset (e.g. to bound validation time on a large collection).
    """
    from workflow_lib.audio.codecs import CODECS, encode_decode

    unknown = [c for c in codecs if c not in CODECS]
    if unknown:
        raise ValueError(f"unknown codecs {unknown} (choose from {sorted(CODECS)})")
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
    codec_prefix = out_prefix.with_name(out_prefix.name + "_codec")
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_prefix.parent.glob(f".{out_prefix.name}.*.raw"):  # left by a killed (or crashed) run
        stale.unlink(missing_ok=True)
    rows: list[dict] = []
    total = 0
    raws = {}
    for key in ("clean", "codec") if codecs else ("clean",):
        fd, name = tempfile.mkstemp(prefix=f".{out_prefix.name}.{key}.", suffix=".raw", dir=out_prefix.parent)
        os.close(fd)
        raws[key] = Path(name)
    try:
        files = {k: open(p, "wb") for k, p in raws.items()}
        try:
            for song in progress(chosen.itertuples(index=False), total=len(chosen), desc=f"decode {split}",
                                 unit="song", mininterval=5):
                try:
                    audio = np.concatenate(list(iter_audio(song.path)) or [np.zeros(0, np.float32)])
                    if len(audio) < SEGMENT_SAMPLES:
                        raise AudioDecodeError(f"{song.path}: {len(audio) / SAMPLE_RATE:.2f} s is shorter than "
                                               "one segment")
                except AudioDecodeError as exc:
                    log.warning("skipping song %s: %s", song.song_id, exc)
                    continue
                audio = np.clip(audio, -1, 1)
                files["clean"].write(audio.astype(np.float16).tobytes())
                row = {"song_id": song.song_id, "name": str(song.path), "start": total, "length": len(audio)}
                if codecs:
                    codec = codec_for(str(song.song_id), codecs, seed)
                    files["codec"].write(np.clip(encode_decode(audio, codec), -1, 1).astype(np.float16).tobytes())
                    row["codec"] = codec
                rows.append(row)
                total += len(audio)
        finally:
            for f in files.values():
                f.close()
        for key, prefix in (("clean", out_prefix), ("codec", codec_prefix)):
            if key in raws:
                _raw_to_npy(raws[key], prefix.with_suffix(".npy"), total)
    finally:
        for p in raws.values():
            p.unlink(missing_ok=True)
    table = pd.DataFrame(rows, columns=["song_id", "name", "start", "length"] + (["codec"] if codecs else []))
    with atomic_path(out_prefix.with_suffix(".parquet")) as tmp:
        table.drop(columns=["codec"], errors="ignore").to_parquet(tmp, index=False)
    if codecs:
        with atomic_path(codec_prefix.with_suffix(".parquet")) as tmp:
            table.to_parquet(tmp, index=False)
    summary = {"split": split, "songs": len(table), "skipped": len(chosen) - len(table),
               "hours": round(total / SAMPLE_RATE / 3600, 3), "segments": int(sum(n_segments(n) for n in
                                                                                   table["length"])),
               "codecs": table["codec"].value_counts().to_dict() if codecs else {}}
    log.info("song bank %s: %s", out_prefix, summary)
    return summary


def _raw_to_npy(raw_path: Path, npy: Path, total: int) -> None:
    """Copy ``total`` float16 samples from a raw file into a new ``.npy`` (atomically, in blocks)."""
    with atomic_path(npy) as npy_path:
        arr = new_npy_map(npy_path, np.float16, (total,))
        if total:
            src = np.memmap(raw_path, dtype=np.float16, mode="r", shape=(total,))
            step = 1 << 24
            for i in range(0, total, step):
                arr[i:i + step] = src[i:i + step]
            del src
        arr.flush()
        del arr


# --- views -----------------------------------------------------------------------------------------------------

@dataclass
class ViewBatch:
    """Host-side inputs of ``augment.degrade`` for B views (numpy; the waveforms CPU tensors once ``shareable``)."""

    audio: np.ndarray  # (B, history + segment) float32
    irs: np.ndarray  # (B, ir_len) float32: room / resonant space (unit impulse: none)
    noise: np.ndarray  # (B, segment + FILTER_SETTLE) float32
    params: ViewParams
    device_irs: np.ndarray | None = None  # (B, device_len) float32: playback device (unit impulse: none)
    first_channel_off: np.ndarray | None = None  # (B,) bool: the front end's first channel is zeroed
    # (B,) bool: the view is whitened by its own order-``whiten_order`` predictor fitted on the last ``fit_len``
    # samples of the degraded audio (the audio then holds ``fit_len - segment`` more samples of history)
    whiten: np.ndarray | None = None
    whiten_order: int = 0
    fit_len: int = 0

    @staticmethod
    def concat(parts: list["ViewBatch"]) -> "ViewBatch":
        def joined(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        return ViewBatch(np.concatenate([p.audio for p in parts]), np.concatenate([p.irs for p in parts]),
                         np.concatenate([p.noise for p in parts]), ViewParams.concat([p.params for p in parts]),
                         joined([p.device_irs for p in parts]), joined([p.first_channel_off for p in parts]),
                         joined([p.whiten for p in parts]), parts[0].whiten_order, parts[0].fit_len)

    def _with_waveforms(self, f) -> "ViewBatch":
        """The batch with ``f`` applied to each waveform array (the per-view choices as they are)."""
        return ViewBatch(f(self.audio), f(self.irs), f(self.noise), self.params,
                         None if self.device_irs is None else f(self.device_irs), self.first_channel_off,
                         self.whiten, self.whiten_order, self.fit_len)

    def shareable(self) -> "ViewBatch":
        """The waveforms as CPU tensors (sharing the arrays' memory): a worker process hands tensors to the trainer
        through shared memory instead of pickling hundreds of megabytes per batch."""
        return self._with_waveforms(lambda a: torch.from_numpy(np.ascontiguousarray(a)))

    def pin_memory(self) -> "ViewBatch":
        """Page-locked copies of the waveform tensors (called by the DataLoader's pinning thread), so the copy to
        the GPU overlaps the step before."""
        return self._with_waveforms(lambda a: a.pin_memory() if isinstance(a, torch.Tensor) else a)


def _kind_rows(irs: ClipBank | None) -> dict[str, np.ndarray]:
    """Bank rows per kind. Banks written before kinds existed hold rooms only."""
    if irs is None:
        return {"room": np.zeros(0, np.int64), "resonant": np.zeros(0, np.int64), "device": np.zeros(0, np.int64)}
    kinds = irs.meta["kind"].astype(str).to_numpy() if "kind" in irs.meta else np.full(len(irs), "room")
    kinds = np.where(np.isin(kinds, ["room", "resonant", "device"]), kinds, "room")
    return {k: np.flatnonzero(kinds == k) for k in ("room", "resonant", "device")}


class ViewSource:
    """Cuts views (with reverb history), noise excerpts and IRs for segments of a song bank.

    ``codec`` is an optional bank aligned sample for sample with ``songs`` (each song through a low-bitrate codec):
    views drawn with ``codec_prob`` are cut from it. IRs are picked by kind: rooms, resonant spaces
    (``resonant_share`` of the reverberated views) and device responses (chained with ``device_ir_prob``).
    """

    def __init__(self, songs: ClipBank, noise: ClipBank | None, irs: ClipBank | None, cfg: AugmentConfig,
                 segment: int = SEGMENT_SAMPLES, hop: int = HOP_SAMPLES, sample_rate: int = SAMPLE_RATE,
                 codec: ClipBank | None = None):
        self.songs, self.cfg, self.segment, self.hop, self.sr = songs, cfg, segment, hop, sample_rate
        self.noise = noise if noise is not None and len(noise) else None
        self.irs = irs if irs is not None and len(irs) else None
        if codec is not None and not (np.array_equal(codec.starts, songs.starts) and
                                      np.array_equal(codec.lengths, songs.lengths)):
            raise ValueError("the codec bank is not aligned with the song bank (rebuild both)")
        self.codec = codec
        if self.codec is None and cfg.codec_prob > 0:
            log.warning("augment.codec_prob > 0 but there is no codec copy of the songs: views get no codec")
        if self.noise is None and cfg.noise_prob > 0:
            log.warning("no training noise clips: views get no background noise")
        self.kind_rows = _kind_rows(self.irs)
        spaces = len(self.kind_rows["room"]) + len(self.kind_rows["resonant"])
        if spaces == 0 and cfg.reverb_prob > 0:
            log.warning("no training room impulse responses: views get no reverb")
        if cfg.resonant_share > 0 and spaces and not len(self.kind_rows["resonant"]):
            log.warning("augment.resonant_share > 0 but the IR bank holds no resonant spaces")
        if cfg.device_ir_prob > 0 and not len(self.kind_rows["device"]):
            log.warning("augment.device_ir_prob > 0 but the IR bank holds no device responses")
        max_ir = int(cfg.max_ir_s * sample_rate)

        def longest(kinds: tuple[str, ...]) -> int:
            rows = np.concatenate([self.kind_rows[k] for k in kinds])
            return min(int(self.irs.lengths[rows].max()), max_ir) if self.irs is not None and len(rows) else 1

        self.ir_len = longest(("room", "resonant"))
        self.device_len = longest(("device",)) if cfg.device_ir_prob > 0 else 0
        # A whitened view's predictor is fitted on the fit_len samples of degraded audio that end with it, so every
        # view's window holds that much more history when any may be whitened (which ones is drawn after the views;
        # train.degrade_views degrades only those over it, the others from the end of their window).
        self.fit_len = max(int(round(cfg.whiten_fit_s * sample_rate)), segment) if cfg.whiten_prob > 0 else segment
        self.history = self.ir_len - 1 + max(self.device_len - 1, 0) + FILTER_SETTLE + self.fit_len - segment
        self.window = self.history + segment
        lengths = songs.lengths
        counts = np.array([n_segments(int(n), segment, hop) for n in lengths], dtype=np.int64)
        self.song_index = np.repeat(np.arange(len(lengths)), counts)
        self.segment_index = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        """Number of segments (the 0.5 s-hop grid over every song)."""
        return len(self.song_index)

    def _cut(self, samples: np.ndarray, song: int, start: int, speed: float) -> np.ndarray:
        """The window ending at ``start + segment`` (in the song's time after a speed change of ``speed``):
        ``window`` samples, silence before the song's first sample."""
        first = self.songs.starts[song]
        span = int(round(self.window * speed)) if speed != 1.0 else self.window
        end = first + start + (int(round(self.segment * speed)) if speed != 1.0 else self.segment)
        a = end - span
        lo = max(a, first)
        # Sped up, the last segment of a song reaches past its end: silence there, never the next song's samples
        # (nor past the end of the bank).
        hi = min(end, first + int(self.songs.lengths[song]))
        raw = np.zeros(span, dtype=np.float32)
        raw[lo - a:hi - a] = samples[lo:hi]
        if speed == 1.0:
            return raw
        # Played ``speed`` times faster: ``span`` source samples become ``window`` output samples.
        out = soxr.resample(raw, self.sr * speed, self.sr, quality="HQ").astype(np.float32)
        return out[:self.window] if len(out) >= self.window else np.pad(out, (self.window - len(out), 0))

    def views(self, rng: np.random.Generator, rows: np.ndarray, clean: np.ndarray | None = None) -> ViewBatch:
        """One view of each segment ``rows`` (indices into the segment grid), jittered, with its chain inputs.

        Rows where ``clean`` is true get the segment exactly on its grid position with no degradation (only the
        random output level), i.e. what the database holds.
        """
        cfg = self.cfg
        n = len(rows)
        song, seg = self.song_index[rows], self.segment_index[rows]
        length = self.songs.lengths[song]
        start = seg * self.hop
        if cfg.jitter_s > 0:
            j = int(round(cfg.jitter_s * self.sr))
            start = start + rng.integers(-j, j + 1, n)
        if clean is not None:
            start = np.where(clean, seg * self.hop, start)
        dirty = ~clean if clean is not None else np.ones(n, dtype=bool)
        # Source choices are drawn for every row (so the stream of draws does not depend on which are clean).
        speed = np.where((rng.random(n) < cfg.speed_prob) & dirty, rng.uniform(cfg.speed[0], cfg.speed[1], n), 1.0)
        use_codec = (rng.random(n) < cfg.codec_prob) & dirty & (self.codec is not None)
        end_room = np.floor(length / speed).astype(np.int64) - self.segment  # the view must end inside the song
        start = np.clip(start, 0, np.maximum(end_room, 0))
        audio = np.zeros((n, self.window), dtype=np.float32)
        for i in range(n):
            bank = self.codec.samples if use_codec[i] else self.songs.samples
            audio[i] = self._cut(bank, int(song[i]), int(start[i]), float(speed[i]))
        irs = np.zeros((n, self.ir_len), dtype=np.float32)
        irs[:, 0] = 1.0  # unit impulse = no reverb
        noise = np.zeros((n, self.fit_len + FILTER_SETTLE), dtype=np.float32)
        params = sample_view_params(rng, n, cfg)
        if clean is not None:
            params.snr_db[clean] = np.inf
            params.highpass_hz[clean] = params.lowpass_hz[clean] = 0.0
            params.eq_gain_db[clean] = 0.0
            params.compress_ratio[clean] = 1.0
            params.time_mask[clean] = params.freq_mask[clean] = 0
        reverb = (rng.random(n) < cfg.reverb_prob) & dirty
        resonant = rng.random(n) < cfg.resonant_share
        device = (rng.random(n) < cfg.device_ir_prob) & dirty
        rooms, rings, devices = self.kind_rows["room"], self.kind_rows["resonant"], self.kind_rows["device"]
        for i in np.flatnonzero(reverb):
            pool = rings if (resonant[i] and len(rings)) or not len(rooms) else rooms
            if len(pool):
                ir = self.irs.clip(int(pool[rng.integers(len(pool))]))[:self.ir_len]
                irs[i] = 0.0
                irs[i, :len(ir)] = ir
        device_irs = None
        if self.device_len:
            device_irs = np.zeros((n, self.device_len), dtype=np.float32)
            device_irs[:, 0] = 1.0
            for i in np.flatnonzero(device & (len(devices) > 0)):
                h = self.irs.clip(int(devices[rng.integers(len(devices))]))[:self.device_len]
                device_irs[i] = 0.0
                device_irs[i, :len(h)] = h
        if self.noise is not None:
            for i in np.flatnonzero(np.isfinite(params.snr_db)):
                noise[i] = self.noise.random_excerpt(rng, noise.shape[1])
        else:
            params.snr_db[:] = np.inf
        return ViewBatch(audio, irs, noise, params, device_irs)

    def pairs(self, rng: np.random.Generator, rows: np.ndarray) -> ViewBatch:
        """Anchors then positives: two independently jittered and degraded views of each segment (2B views).

        With ``clean_anchor_prob`` > 0 that share of anchors is the clean on-grid segment instead (NAFP's
        original-vs-replica pairs). With ``first_channel_drop_prob`` > 0 that share of pairs has the front end's
        first channel dropped from both views (drawn last, so the views are those of a run without it). With
        ``whiten_prob`` > 0 that share of the degraded views is whitened (``train.degrade_views``)."""
        clean = rng.random(len(rows)) < self.cfg.clean_anchor_prob if self.cfg.clean_anchor_prob > 0 else None
        batch = ViewBatch.concat([self.views(rng, rows, clean), self.views(rng, rows)])
        if self.cfg.first_channel_drop_prob > 0:
            off = rng.random(len(rows)) < self.cfg.first_channel_drop_prob
            batch.first_channel_off = np.concatenate([off, off])
        if self.cfg.whiten_prob > 0:
            # Drawn last as well, per view (a clean anchor stays as the database holds it). The views are those of
            # a run without it but for the noise excerpts' offsets, drawn over the longer fit length.
            whiten = rng.random(2 * len(rows)) < self.cfg.whiten_prob
            if clean is not None:
                whiten[:len(rows)] &= ~clean
            batch.whiten, batch.whiten_order, batch.fit_len = whiten, self.cfg.whiten_order, self.fit_len
        return batch

    def epoch_order(self, epoch_key: Sequence[int], batch_pairs: int) -> list[np.ndarray]:
        """The segment rows of each batch of an epoch: every segment once, shuffled by the generator of
        ``epoch_key`` (the ragged last batch is dropped so every step sees the same number of negatives)."""
        order = np.random.default_rng(epoch_key).permutation(len(self))
        return [order[i * batch_pairs:(i + 1) * batch_pairs] for i in range(len(order) // batch_pairs)]

    def batch(self, key: Sequence[int], rows: np.ndarray) -> ViewBatch:
        """The pairs of the segments ``rows`` drawn by the generator of ``key`` (the epoch's key and the batch's
        number): a batch depends on nothing else, so any process can draw it and a killed run resumes at any
        batch with the very views the uninterrupted run would draw."""
        return self.pairs(np.random.default_rng(list(key)), rows)
