"""Background-noise clip banks for training and evaluation: recorded noise, speech babble, or generated noise.

Noise files are held out by file (a seeded hash of the file name, see ``holdout``), decoded to 8 kHz, cut at
stretches of digital silence and into clips of at most ``max_clip_s``, and RMS-normalised to ``TARGET_RMS`` so that
mixing at a given SNR later only needs the excerpt's own level. Speech files are held out the same way before any
babble is built, so test babble only contains held-out speakers' clips. Without noise files, coloured, tonal and
textured noises are generated instead (with a logged notice), so training works on a fresh machine.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from workflow_lib import SAMPLE_RATE
from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.files import load_audio
from workflow_lib.common.progress import progress
from workflow_lib.data.clipbank import write_clip_bank
from workflow_lib.data.holdout import holdout_split, split_items

log = logging.getLogger(__name__)

SR = SAMPLE_RATE
TARGET_RMS = 0.1  # -20 dBFS: every clip is scaled to this RMS
MIN_CLIP_S = 0.5  # shorter pieces are sound events (a key press, a knock), strung together into event clips
MIN_EVENT_S = 0.02  # shorter pieces are dropped
EVENT_GAP_S = (0.03, 0.6)  # pause range between strung-together events
QUIET_PEAK = 1e-4  # -80 dBFS: a 10 ms frame whose peak stays below this is digital silence
QUIET_GAP_S = 0.1  # runs of silent frames at least this long are cut out
SILENT_RMS_DBFS = -70.0  # a file whose non-silent audio is quieter than this is skipped as silent
GENERATED_CLIP_S = 10.0
SPLITS = ("train", "test")
META_COLUMNS = ["name", "kind", "source"]


# --------------------------------------------------------------------------------------------- clip helpers

def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the runs of True in ``mask``."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def active_pieces(x: np.ndarray, min_len: int = int(MIN_CLIP_S * SR)) -> list[np.ndarray]:
    """Split ``x`` at stretches of digital silence (>= QUIET_GAP_S below -80 dBFS) and drop pieces < ``min_len``."""
    frame = SR // 100
    n_frames = -(-len(x) // frame)
    padded = np.zeros(n_frames * frame, dtype=np.float32)
    padded[:len(x)] = np.abs(x)
    quiet = padded.reshape(n_frames, frame).max(axis=1) < QUIET_PEAK
    starts, ends = _runs(quiet)
    long_gap = (ends - starts) * frame >= QUIET_GAP_S * SR
    cut = np.zeros(n_frames, dtype=bool)
    for s, e in zip(starts[long_gap], ends[long_gap]):
        cut[s:e] = True
    keep_s, keep_e = _runs(~cut)
    pieces = [x[s * frame:min(e * frame, len(x))] for s, e in zip(keep_s, keep_e)]
    return [p for p in pieces if len(p) >= min_len]


def cut_clips(x: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Cut ``x`` into the fewest near-equal clips of at most ``max_len`` samples."""
    k = max(1, -(-len(x) // max_len))
    return list(np.array_split(x, k))


def normalise_rms(x: np.ndarray, target: float = TARGET_RMS) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return (x * (target / rms)).astype(np.float32) if rms > 0 else x.astype(np.float32)


def _dbfs(x: np.ndarray) -> float:
    return 10 * np.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-30)


def file_clips(path: Path, max_len: int) -> tuple[list[np.ndarray], list[np.ndarray], str | None]:
    """Decode one noise file into normalised clips and short events.

    Returns (clips, events, None), or ([], [], reason) when the file is skipped. Events are pieces shorter than
    MIN_CLIP_S (e.g. one key press per file); they are strung together into clips per split later.
    """
    try:
        x = load_audio(path)
    except AudioDecodeError as exc:
        return [], [], f"unreadable: {exc}"
    if len(x) == 0:
        return [], [], "no audio samples"
    if not np.all(np.isfinite(x)):
        return [], [], "non-finite samples"
    pieces = active_pieces(x, int(MIN_EVENT_S * SR))
    if not pieces:
        return [], [], f"silent: nothing above {20 * np.log10(QUIET_PEAK):.0f} dBFS for {MIN_EVENT_S} s"
    level = _dbfs(np.concatenate(pieces))
    if level < SILENT_RMS_DBFS:
        return [], [], f"silent: RMS {level:.1f} dBFS is below {SILENT_RMS_DBFS:.0f} dBFS"
    min_len = int(MIN_CLIP_S * SR)
    clips = [normalise_rms(c) for p in pieces if len(p) >= min_len for c in cut_clips(p, max_len)]
    events = [normalise_rms(p) for p in pieces if len(p) < min_len]
    return clips, events, None


def string_events(events: list[tuple[str, np.ndarray]], clip_len: int, rng: np.random.Generator
                  ) -> list[tuple[np.ndarray, list[str]]]:
    """Shuffle short events (name, audio) into clips of about ``clip_len`` samples with random pauses and levels.

    Every event is used once; returns (clip, names of its events) pairs.
    """
    if not events:
        return []
    order = rng.permutation(len(events))
    out, parts, names, total = [], [], [], 0
    for k, i in enumerate(order):
        name, ev = events[i]
        parts += [ev * 10 ** (rng.uniform(-6, 0) / 20), np.zeros(int(rng.uniform(*EVENT_GAP_S) * SR), np.float32)]
        names.append(name)
        total += len(parts[-2]) + len(parts[-1])
        if total >= clip_len or k == len(order) - 1:
            out.append((normalise_rms(np.concatenate(parts[:-1])), names))  # no trailing pause
            parts, names, total = [], [], 0
    return out


# --------------------------------------------------------------------------------------------- generated noise

def _shape(rng: np.random.Generator, n: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise coloured by a gain function of frequency (Hz), applied in the FFT domain."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    return np.fft.irfft(spec * gain(f), n)


def _slow_envelope(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """A smooth random positive envelope varying at about ``rate_hz``."""
    env = _shape(rng, n, lambda f: np.exp(-(f / rate_hz) ** 2))
    env /= np.abs(env).max() + 1e-12
    return env


def _gen_white(rng, n):
    return rng.standard_normal(n)


def _gen_pink(rng, n):
    return _shape(rng, n, lambda f: 1 / np.sqrt(np.maximum(f, 20.0)))


def _gen_brown(rng, n):
    return _shape(rng, n, lambda f: 1 / np.maximum(f, rng.uniform(15, 40)))


def _gen_hum(rng, n):
    """Mains hum with harmonics, a little wobble and a pink floor."""
    t = np.arange(n) / SR
    f0 = float(rng.choice([50.0, 60.0])) * (1 + rng.uniform(-0.003, 0.003))
    x = np.zeros(n)
    for k in range(1, int(3800 // f0)):
        amp = rng.uniform(0.2, 1.0) / k ** rng.uniform(0.5, 1.5)
        if k % 2 == 0:
            amp *= rng.uniform(0.1, 0.6)  # rectifier buzz is mostly odd harmonics
        x += amp * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    x *= 1 + 0.1 * _slow_envelope(rng, n, 0.5)
    floor = _gen_pink(rng, n)
    return x / np.std(x) + 0.1 * floor / np.std(floor)


def _gen_crowd(rng, n):
    """Murmur: many speech-band noise 'voices', each switched by a syllable-rate envelope."""
    x = np.zeros(n)
    for _ in range(int(rng.integers(8, 24))):
        formants = rng.uniform([250, 900, 2200], [800, 1800, 3200])
        # formant bumps with the spectral tilt of speech (most energy below 1 kHz)
        voice = _shape(rng, n, lambda f: (sum(np.exp(-((f - fc) / 250) ** 2) for fc in formants) + 0.05)
                       / (1 + f / 600))
        syll = np.maximum(_slow_envelope(rng, n, rng.uniform(3, 7)), 0) ** 1.5
        x += rng.uniform(0.3, 1.0) * voice / (np.std(voice) + 1e-12) * syll
    return x


def _gen_traffic(rng, n):
    """Low rumble with vehicles passing by (broad swells of band-limited noise)."""
    rumble = _shape(rng, n, lambda f: 1 / np.maximum(f, 20) / (1 + (f / rng.uniform(300, 800)) ** 4))
    rumble /= np.std(rumble)
    t = np.arange(n) / SR
    swell = np.full(n, 0.3)
    for c in rng.uniform(0, n / SR, int(rng.integers(1, 5))):
        swell += rng.uniform(0.5, 2.0) * np.exp(-((t - c) / rng.uniform(0.8, 2.5)) ** 2)
    hiss = _shape(rng, n, lambda f: np.exp(-((f - 1500) / 900) ** 2))
    return rumble * swell + 0.5 * hiss / np.std(hiss) * swell


def _gen_rain(rng, n):
    """Rain / crackle: dense random droplets (short decaying high-passed bursts) over a soft pink bed."""
    rate = rng.uniform(50, 600)
    impulses = np.zeros(n)
    hits = rng.integers(0, n, int(rate * n / SR))
    np.add.at(impulses, hits, rng.lognormal(0, 0.8, len(hits)) * rng.choice([-1, 1], len(hits)))
    kernel_t = np.arange(int(0.01 * SR)) / SR
    kernel = np.exp(-kernel_t / rng.uniform(0.0008, 0.003))
    drops = np.fft.irfft(np.fft.rfft(impulses, 2 * n) * np.fft.rfft(kernel, 2 * n), 2 * n)[:n]
    drops = np.fft.irfft(np.fft.rfft(drops) * (1 / (1 + (rng.uniform(400, 1500) / np.maximum(
        np.fft.rfftfreq(n, 1 / SR), 1)) ** 2)), n)
    bed = _gen_pink(rng, n)
    return drops / (np.std(drops) + 1e-12) + rng.uniform(0.1, 0.5) * bed / np.std(bed)


def _gen_fan(rng, n):
    """Fan / air conditioning: band noise plus blade-pass tones with a slow wobble."""
    fc = rng.uniform(200, 1500)
    width = fc * rng.uniform(0.4, 1.0)
    band = _shape(rng, n, lambda f: np.exp(-((f - fc) / width) ** 2) + 0.05)
    bp = rng.uniform(40, 150)
    wobble = 1 + 0.005 * _slow_envelope(rng, n, 0.3)
    phase = 2 * np.pi * np.cumsum(bp * wobble) / SR
    tones = sum(rng.uniform(0.1, 0.6) / k * np.sin(k * phase + rng.uniform(0, 6.3)) for k in range(1, 6))
    return band / np.std(band) + tones * rng.uniform(0.3, 1.5)


GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "white": _gen_white, "pink": _gen_pink, "brown": _gen_brown, "hum": _gen_hum, "crowd": _gen_crowd,
    "traffic": _gen_traffic, "rain": _gen_rain, "fan": _gen_fan,
}


def generate_noise(n_clips: int, clip_s: float, rng: np.random.Generator, split: str
                   ) -> tuple[list[np.ndarray], list[dict]]:
    """``n_clips`` generated clips cycling through every noise type (each with its own random parameters)."""
    n = int(clip_s * SR)
    kinds = list(GENERATORS)
    clips, rows = [], []
    for i in range(n_clips):
        kind = kinds[i % len(kinds)]
        clips.append(normalise_rms(GENERATORS[kind](rng, n)))
        rows.append({"name": f"generated-{split}-{i:03d}-{kind}", "kind": "generated", "source": f"generated:{kind}"})
    return clips, rows


# --------------------------------------------------------------------------------------------- babble

def _load_speech(path: Path, part: tuple[float, float]) -> tuple[np.ndarray | None, str | None]:
    """Decode a speech clip, keep the ``part`` fraction range, trim quiet edges, normalise. (audio, skip reason)."""
    try:
        x = load_audio(path)
    except AudioDecodeError as exc:
        return None, f"unreadable: {exc}"
    x = x[int(part[0] * len(x)):int(part[1] * len(x))]
    if len(x) == 0 or not np.all(np.isfinite(x)):
        return None, "no usable samples"
    frame = SR // 100
    n_frames = len(x) // frame
    if n_frames == 0:
        return None, "shorter than 10 ms"
    energy = 10 * np.log10(np.mean(x[:n_frames * frame].reshape(n_frames, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy > energy.max() - 40)  # trim leading/trailing pauses
    x = x[loud[0] * frame:(loud[-1] + 1) * frame]
    if len(x) < 0.3 * SR:
        return None, "less than 0.3 s of speech"
    if _dbfs(x) < SILENT_RMS_DBFS:
        return None, f"silent (RMS {_dbfs(x):.1f} dBFS)"
    return normalise_rms(x), None


class _SpeechPool:
    """Draws speech clips of one split in shuffled order (every clip once before any repeats), decoding lazily."""

    def __init__(self, items: list[tuple[Path, tuple[float, float]]], rng: np.random.Generator,
                 skipped: list[dict]):
        self.items, self.rng, self.skipped = items, rng, skipped
        self.cache: dict[int, np.ndarray | None] = {}
        self.queue: deque[int] = deque()

    def usable(self) -> int:
        return sum(v is not None for v in self.cache.values())

    def draw(self) -> tuple[Path, np.ndarray] | None:
        """The next usable clip, or None when none of the pool's clips can be decoded."""
        if not self.items:
            return None
        for _ in range(2 * len(self.items) + 1):
            if not self.queue:
                self.queue.extend(self.rng.permutation(len(self.items)).tolist())
            i = self.queue.popleft()
            if i not in self.cache:
                path, part = self.items[i]
                audio, reason = _load_speech(path, part)
                if reason:
                    log.warning("skipping speech file %s: %s", path, reason)
                    self.skipped.append({"path": str(path), "reason": reason})
                self.cache[i] = audio
            if self.cache[i] is not None:
                return self.items[i][0], self.cache[i]
            if len(self.cache) == len(self.items) and self.usable() == 0:
                return None
        return None


def make_babble(pool: _SpeechPool, n_clips: int, speakers: tuple[int, int], clip_s: float,
                rng: np.random.Generator, split: str) -> tuple[list[np.ndarray], list[dict]]:
    """Each clip sums ``speakers`` talkers (random count in the inclusive range), each talker a chain of speech
    clips with short pauses, at a random level within 6 dB."""
    n = int(clip_s * SR)
    clips, rows = [], []
    for i in progress(range(n_clips), desc=f"babble {split}", unit="clip", mininterval=5):
        mix = np.zeros(n)
        used: list[str] = []
        for _ in range(int(rng.integers(speakers[0], speakers[1] + 1))):
            parts, total = [], 0
            lead_in = int(rng.uniform(0, 2.0) * SR)  # start mid-utterance
            while total < n + lead_in:
                got = pool.draw()
                if got is None:
                    break
                path, speech = got
                used.append(path.name)
                gap = np.zeros(int(rng.uniform(0.05, 0.6) * SR))
                parts += [speech, gap]
                total += len(speech) + len(gap)
            if not parts:
                break
            talker = np.concatenate(parts)[lead_in:lead_in + n]
            mix[:len(talker)] += 10 ** (rng.uniform(-6, 0) / 20) * talker
        if not used:
            break
        clips.append(normalise_rms(mix))
        rows.append({"name": f"babble-{split}-{i:03d}", "kind": "babble", "source": ";".join(used)})
    return clips, rows


# --------------------------------------------------------------------------------------------- main entry point

def _split_single_clip(clip: np.ndarray, test_fraction: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    min_len = int(MIN_CLIP_S * SR)
    if len(clip) < 2 * min_len:
        raise ValueError(f"{what}: too little audio ({len(clip) / SR:.2f} s) to hold out a test part; "
                         f"need at least {2 * MIN_CLIP_S} s")
    cut = int(np.clip(round(len(clip) * (1 - test_fraction)), min_len, len(clip) - min_len))
    return normalise_rms(clip[:cut]), normalise_rms(clip[cut:])


def _file_items(paths: list[Path], per_file: dict[Path, tuple[list, list]], clip_len: int,
                rng: np.random.Generator, split: str) -> list[tuple[np.ndarray, dict]]:
    """Clips of the given files plus their short events strung into event clips, with meta rows."""
    items = [(clip, {"name": f"{path.name}#{j:03d}", "kind": "noise", "source": str(path)})
             for path in paths for j, clip in enumerate(per_file[path][0])]
    events = [(path.name, ev) for path in paths for ev in per_file[path][1]]
    for j, (clip, names) in enumerate(string_events(events, clip_len, rng)):
        items.append((clip, {"name": f"events-{split}-{j:03d}", "kind": "noise", "source": ";".join(names)}))
    return items


def _assign_noise(per_file: dict[Path, tuple[list, list]], test_fraction: float, seed: int, clip_len: int,
                  banks: dict[str, tuple[list, list]]) -> None:
    paths = list(per_file)
    if len({p.name for p in paths}) >= 2:
        is_test = holdout_split([p.name for p in paths], test_fraction, seed, what="noise files")
        for k, split in enumerate(SPLITS):
            chosen = [p for p, t in zip(paths, is_test) if t == (split == "test")]
            for clip, row in _file_items(chosen, per_file, clip_len, np.random.default_rng([seed, k, 3]), split):
                banks[split][0].append(clip)
                banks[split][1].append(row)
        return
    # One file only: hold out its last clips (or the end of its only clip), so train and test stay disjoint.
    log.warning("only one noise file (%s): splitting its clips between train and test", paths[0].name)
    items = _file_items(paths, per_file, clip_len, np.random.default_rng([seed, 0, 3]), "all")
    if len(items) == 1:
        clip, row = items[0]
        train, test = _split_single_clip(clip, test_fraction, f"noise file {paths[0]}")
        items = [(train, {**row, "name": row["name"] + "-a"}), (test, {**row, "name": row["name"] + "-b"})]
    for (clip, row), t in zip(items, split_items(len(items), test_fraction)):
        banks["test" if t else "train"][0].append(clip)
        banks["test" if t else "train"][1].append(row)


def _speech_pools(speech_files: Sequence[Path], test_fraction: float, seed: int
                  ) -> dict[str, list[tuple[Path, tuple[float, float]]]]:
    """Speech held out by file name; a single file is split in time instead."""
    paths = [Path(p) for p in speech_files]
    if len({p.name for p in paths}) < 2:
        log.warning("only one speech file: babble uses its first %.0f%% for train and the rest for test",
                    100 * (1 - test_fraction))
        cut = min(max(1 - test_fraction, 0.1), 0.9)
        return {"train": [(p, (0.0, cut)) for p in paths], "test": [(p, (cut, 1.0)) for p in paths]}
    is_test = holdout_split([p.name for p in paths], test_fraction, seed, what="speech files")
    return {"train": [(p, (0.0, 1.0)) for p, t in zip(paths, is_test) if not t],
            "test": [(p, (0.0, 1.0)) for p, t in zip(paths, is_test) if t]}


def prepare_noise(noise_files: Sequence[str | Path], speech_files: Sequence[str | Path], out_dir: str | Path,
                  test_fraction: float, max_clip_s: float, babble_speakers: tuple[int, int], babble_clips: int,
                  babble_clip_s: float, generated_clips: int, seed: int) -> dict:
    """Write ``out_dir/{train,test}.{npy,parquet}`` noise clip banks (float16). Returns a summary dict.

    Meta columns: ``name``, ``kind`` (noise / babble / generated), ``source`` (file path, the speech files mixed
    into a babble clip, or the generator), plus the bank's ``start``, ``length``. ``babble_clips`` and
    ``generated_clips`` are per split.
    """
    lo, hi = (int(v) for v in babble_speakers)
    if not 1 <= lo <= hi:
        raise ValueError(f"noise.babble_speakers must be a range [lo, hi] with 1 <= lo <= hi, got {babble_speakers}")
    if max_clip_s < MIN_CLIP_S:
        raise ValueError(f"noise.max_clip_s must be at least {MIN_CLIP_S} s, got {max_clip_s}")
    out_dir = Path(out_dir)
    noise_files = [Path(p) for p in noise_files]
    speech_files = [Path(p) for p in speech_files]
    banks: dict[str, tuple[list, list]] = {s: ([], []) for s in SPLITS}
    skipped: list[dict] = []

    if noise_files:
        per_file: dict[Path, tuple[list, list]] = {}
        for path in progress(noise_files, desc="noise files", unit="file", mininterval=5):
            clips, events, reason = file_clips(path, int(max_clip_s * SR))
            if reason:
                log.warning("skipping noise file %s: %s", path, reason)
                skipped.append({"path": str(path), "reason": reason})
            else:
                per_file[path] = (clips, events)
        if not per_file:
            raise ValueError(f"data.noise_dirs: none of the {len(noise_files)} noise files is usable "
                             f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
        _assign_noise(per_file, test_fraction, seed, int(min(GENERATED_CLIP_S, max_clip_s) * SR), banks)
    else:
        # Said without naming a stage: this bank feeds training views, calibration and evaluation queries alike,
        # and `nafp index` runs no training.
        log.warning("no noise folders configured: using generated noise (%s), %d clips per split, wherever the "
                    "workflow adds background noise; set data.noise_dirs to real recordings for realistic noise",
                    ", ".join(GENERATORS), generated_clips)
        for k, split in enumerate(SPLITS):
            clips, rows = generate_noise(generated_clips, min(GENERATED_CLIP_S, max_clip_s),
                                         np.random.default_rng([seed, k, 1]), split)
            banks[split][0].extend(clips)
            banks[split][1].extend(rows)

    speech_skipped: list[dict] = []
    speech_used = 0
    if speech_files and babble_clips > 0:
        pools = _speech_pools(speech_files, test_fraction, seed)
        for k, split in enumerate(SPLITS):
            rng = np.random.default_rng([seed, k, 2])
            pool = _SpeechPool(pools[split], rng, speech_skipped)
            clips, rows = make_babble(pool, babble_clips, (lo, hi), babble_clip_s, rng, split)
            speech_used += pool.usable()
            if not clips:
                log.warning("no usable speech clips for the %s split: no %s babble", split, split)
            banks[split][0].extend(clips)
            banks[split][1].extend(rows)
        if speech_used == 0:
            raise ValueError(f"data.speech_dirs: none of the {len(speech_files)} speech files is usable "
                             f"(first: {speech_skipped[0]['path']}: {speech_skipped[0]['reason']})")
    elif speech_files:
        log.info("noise.babble_clips is 0: speech files are not used")

    summary: dict = {"generated_fallback": not noise_files,
                     "noise_files": {"given": len(noise_files), "skipped": len(skipped)},
                     "speech_files": {"given": len(speech_files), "decoded": speech_used,
                                      "skipped": len(speech_skipped)},
                     "skipped": skipped + speech_skipped}
    for split in SPLITS:
        clips, rows = banks[split]
        if not clips:  # cannot happen by construction; guard so an empty bank never reaches training
            raise RuntimeError(f"noise {split} bank is empty")
        meta = pd.DataFrame(rows, columns=META_COLUMNS)
        write_clip_bank(out_dir / split, clips, meta, dtype="float16")
        summary[split] = {"clips": len(clips), "seconds": round(sum(len(c) for c in clips) / SR, 1),
                          **meta["kind"].value_counts().to_dict()}
        log.info("noise %s bank: %d clips, %.1f min (%s)", split, len(clips), summary[split]["seconds"] / 60,
                 ", ".join(f"{k} {v}" for k, v in meta["kind"].value_counts().items()))
    return summary
