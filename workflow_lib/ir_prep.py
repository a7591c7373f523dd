"""Impulse-response clip banks (rooms, microphones, devices): measured files or simulated shoebox rooms.

Measured IRs are held out by file: channels of one file, and L/R files of one recording, stay on one side; rooms and
short device responses are held out separately so that both sides get some of each. Each channel is resampled to
8 kHz, trimmed to start 1 ms before the direct-sound peak and to end at ``max_ir_s`` or where the energy decay curve
falls below -60 dB, faded out and normalised to unit L2 norm (so convolving keeps the signal's energy roughly
unchanged). Without IR files, random shoebox rooms are simulated with pyroomacoustics' image-source method, so
training works without any IR dataset.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from . import SAMPLE_RATE
from .audio_io import FFMPEG_EXTENSIONS, AudioDecodeError, audio_info, load_audio, resample
from .clipbank import write_clip_bank
from .holdout import holdout_split, split_items

log = logging.getLogger(__name__)

SR = SAMPLE_RATE
PRE_PEAK_S = 0.001  # keep 1 ms before the direct sound
FADE_S = 0.01  # half-cosine fade-out at the cut
DECAY_FLOOR_DB = -60.0  # cut where the remaining energy falls below this
MAX_FILE_S = 30.0  # longer files are not impulse responses
ROOM_RT60_S = 0.15  # responses that decay slower are rooms; faster ones are devices, cabinets, microphones
SPLITS = ("train", "test")
META_COLUMNS = ["name", "kind", "source", "rt60_s", "rt60_target_s"]
# "StairwellL", "street2-R", "hall_left": one recording's channels stored as separate files.
_CHANNEL_SUFFIX = re.compile(r"(?:(?<=[a-z0-9])[LR]|[-_ .](?:[LlRr]|left|right|Left|Right))$")


def group_key(path: Path) -> str:
    """Hold-out key: the file stem without a trailing left/right channel marker."""
    return _CHANNEL_SUFFIX.sub("", path.stem) or path.stem


# --------------------------------------------------------------------------------------------- processing

def energy_decay_db(h: np.ndarray) -> np.ndarray:
    """Schroeder backward-integrated energy decay curve in dB relative to the total energy."""
    e = np.cumsum(np.square(h.astype(np.float64))[::-1])[::-1]
    return 10 * np.log10(np.maximum(e / max(e[0], 1e-300), 1e-30))


def estimate_rt60(h: np.ndarray, sr: int = SR) -> float:
    """RT60 from the Schroeder decay curve: a line fitted between -5 and -25 dB (T20), extrapolated to -60 dB.

    NaN when the curve never reaches -25 dB or the fit range is too short to trust.
    """
    if len(h) < 4 or not np.any(h):
        return float("nan")
    edc = energy_decay_db(h)
    below5, below25 = np.flatnonzero(edc <= -5.0), np.flatnonzero(edc <= -25.0)
    if len(below25) == 0 or len(below5) == 0:
        return float("nan")
    i0, i1 = below5[0], below25[0]
    if i1 - i0 < 4:
        return float("nan")
    t = np.arange(i0, i1 + 1) / sr
    slope = np.polyfit(t, edc[i0:i1 + 1], 1)[0]
    return float(-60.0 / slope) if slope < 0 else float("nan")


def process_ir(h: np.ndarray, max_len: int, sr: int = SR) -> tuple[np.ndarray | None, float, str | None]:
    """Trim, cut, fade and normalise one IR at ``sr``. Returns (ir, rt60 estimate, None) or (None, nan, reason)."""
    h = np.asarray(h, dtype=np.float64)
    if len(h) == 0:
        return None, float("nan"), "no samples"
    if not np.all(np.isfinite(h)):
        return None, float("nan"), "non-finite samples"
    if not np.any(np.abs(h) > 1e-7):
        return None, float("nan"), "silent (all zero)"
    peak = int(np.argmax(np.abs(h)))
    h = h[max(0, peak - int(round(PRE_PEAK_S * sr))):]
    rt60 = estimate_rt60(h, sr)  # on the whole tail, before the length cap
    edc = energy_decay_db(h)
    below = np.flatnonzero(edc < DECAY_FLOOR_DB)
    end = min(len(h), max_len, int(below[0]) if len(below) else len(h))
    h = h[:max(end, 1)].copy()
    n_fade = min(int(FADE_S * sr), len(h) // 4)
    if n_fade > 0:
        h[-n_fade:] *= 0.5 * (1 + np.cos(np.linspace(0, np.pi, n_fade)))
    norm = np.linalg.norm(h)
    if norm == 0:
        return None, float("nan"), "nothing left after trimming"
    return (h / norm).astype(np.float32), rt60, None


def read_channels(path: Path) -> list[np.ndarray]:
    """Each channel of an IR file as its own 8 kHz float32 array. Raises AudioDecodeError."""
    info = audio_info(path)
    if info.frames > MAX_FILE_S * info.sample_rate:
        raise AudioDecodeError(f"{path}: {info.duration_s:.1f} s is too long for an impulse response "
                               f"(more than {MAX_FILE_S:.0f} s)")
    if path.suffix.lower() in FFMPEG_EXTENSIONS:
        return [load_audio(path)]  # decoded by ffmpeg, already mixed to mono
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioDecodeError(f"{path}: decoding failed ({exc})") from exc
    return [resample(np.ascontiguousarray(data[:, c]), sr, SR) for c in range(data.shape[1])]


# --------------------------------------------------------------------------------------------- simulation

def _room_for(rt60: float, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator):
    """Random room dimensions for which Sabine's formula allows ``rt60`` (absorption <= 1): big rooms cannot be as
    dry as small ones. Returns (dims, rt60) -- rt60 is raised only if even the smallest room cannot reach it."""
    import pyroomacoustics as pra

    for _ in range(200):
        dims = rng.uniform(lo, hi)
        try:
            pra.inverse_sabine(rt60, dims)
            return dims, rt60
        except ValueError:
            continue
    dims = lo.copy()
    v, s = np.prod(dims), 2 * (dims[0] * dims[1] + dims[0] * dims[2] + dims[1] * dims[2])
    feasible = 24 * np.log(10) * v / (343.0 * s) * 1.01
    log.warning("RT60 %.2f s is too short for rooms of at least %s m: using %.2f s", rt60, lo.tolist(), feasible)
    return dims, max(rt60, feasible)


def _positions(dims: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Source and microphone inside the room, away from the walls and at least 0.5 m apart."""
    margin = np.minimum(0.5, dims / 4)
    for _ in range(100):
        src, mic = rng.uniform(margin, dims - margin, size=(2, 3))
        if np.linalg.norm(src - mic) >= 0.5:
            break
    return src, mic


def _ism_rir(dims, src, mic, absorption: float, max_order: int) -> np.ndarray:
    import pyroomacoustics as pra

    room = pra.ShoeBox(dims, fs=SR, materials=pra.Material(float(absorption)), max_order=int(max_order),
                       air_absorption=False, use_rand_ism=True)
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    return np.asarray(room.rir[0][0], dtype=np.float64)


def _order_for(dims: np.ndarray, seconds: float) -> int:
    """Image-source order whose reflections cover ``seconds`` of the response (as pra.inverse_sabine computes)."""
    r = min(a * b / np.hypot(a, b) for a, b in ((dims[0], dims[1]), (dims[0], dims[2]), (dims[1], dims[2])))
    return max(1, int(np.ceil(343.0 * seconds / r - 1)))


def simulate_room(rt60: float, lo: np.ndarray, hi: np.ndarray, max_ir_s: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, dict]:
    """One random shoebox room with about the requested RT60. Returns (raw RIR at 8 kHz, description).

    Sabine's formula underestimates the decay time of an image-source shoebox, so the absorption is calibrated:
    a cheap low-order simulation measures the decay, the absorption is corrected (RT60 ~ 1/-ln(1-a), Eyring) and
    the room is simulated again. Only as many reflection orders are computed as the kept IR needs.
    """
    import pyroomacoustics as pra

    dims, rt60 = _room_for(rt60, lo, hi, rng)
    src, mic = _positions(dims, rng)
    # pyroomacoustics draws the randomised image-source displacements from its own global generators
    pra.random.seed(numpy=int(rng.integers(2 ** 63)), libroom=int(rng.integers(2 ** 63)))
    absorption, _ = pra.inverse_sabine(rt60, dims)
    # The T20 fit needs the decay down to -25 dB, i.e. 0.42 * RT60; simulate 0.6 * RT60 to keep truncation bias small.
    probe = estimate_rt60(_ism_rir(dims, src, mic, absorption, _order_for(dims, 0.6 * rt60)))
    if np.isfinite(probe) and probe > 0:
        absorption = 1 - (1 - absorption) ** (probe / rt60)
    absorption = float(np.clip(absorption, 1e-3, 0.999))
    keep_s = max(min(rt60, max_ir_s), 0.6 * rt60)
    h = _ism_rir(dims, src, mic, absorption, _order_for(dims, keep_s))
    return h, {"dims": np.round(dims, 2).tolist(), "rt60_target": rt60, "absorption": absorption,
               "distance": float(np.linalg.norm(src - mic))}


# --------------------------------------------------------------------------------------------- main entry point

def _stratified_holdout(keys: list[str], rt60: list[float], test_fraction: float, seed: int) -> np.ndarray:
    """Hold out rooms and short device/cabinet responses separately, so that each side gets reverberant rooms
    whenever there are two or more room recordings (a plain hash split can leave all rooms on one side)."""
    is_room = {k: False for k in keys}
    for k, r in zip(keys, rt60):
        is_room[k] |= bool(np.isfinite(r) and r >= ROOM_RT60_S)
    is_test = np.zeros(len(keys), dtype=bool)
    for room in (True, False):
        idx = [i for i, k in enumerate(keys) if is_room[k] == room]
        if idx:
            is_test[idx] = holdout_split([keys[i] for i in idx], test_fraction, seed,
                                         what="room impulse responses" if room else "device impulse responses")
    if is_test.all() or not is_test.any():
        is_test = holdout_split(keys, test_fraction, seed, what="impulse responses")
    return is_test


def _measured(ir_files: Sequence[Path], max_len: int, test_fraction: float, seed: int, skipped: list[dict]
              ) -> dict[str, tuple[list, list]]:
    irs: list[tuple[Path, np.ndarray, dict]] = []
    for path in tqdm(ir_files, desc="impulse responses", unit="file", mininterval=5):
        try:
            channels = read_channels(path)
        except AudioDecodeError as exc:
            log.warning("skipping impulse response %s: %s", path, exc)
            skipped.append({"path": str(path), "reason": str(exc)})
            continue
        for c, ch in enumerate(channels):
            label = f"{path} channel {c}" if len(channels) > 1 else str(path)
            h, rt60, reason = process_ir(ch, max_len)
            if reason:
                log.warning("skipping impulse response %s: %s", label, reason)
                skipped.append({"path": label, "reason": reason})
                continue
            name = f"{path.name}#ch{c}" if len(channels) > 1 else path.name
            irs.append((path, h, {"name": name, "kind": "measured", "source": str(path), "rt60_s": rt60,
                                  "rt60_target_s": float("nan")}))
    if not irs:
        raise ValueError(f"data.ir_dirs: none of the {len(ir_files)} impulse-response files is usable "
                         f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
    keys = [group_key(p) for p, _, _ in irs]
    if len(set(keys)) >= 2:
        is_test = _stratified_holdout(keys, [row["rt60_s"] for _, _, row in irs], test_fraction, seed)
    elif len(irs) >= 2:
        log.warning("impulse responses all come from one recording (%s): splitting its channels", keys[0])
        is_test = split_items(len(irs), test_fraction)
    else:
        log.warning("only one usable impulse response (%s): it is used for both train and test, so test "
                    "results do not measure unseen acoustics", irs[0][2]["name"])
        return {s: ([irs[0][1]], [irs[0][2]]) for s in SPLITS}
    banks: dict[str, tuple[list, list]] = {s: ([], []) for s in SPLITS}
    for (_, h, row), t in zip(irs, is_test):
        banks["test" if t else "train"][0].append(h)
        banks["test" if t else "train"][1].append(row)
    return banks


def _simulated(n_rooms: int, rt60_range: Sequence[float], room_min: Sequence[float], room_max: Sequence[float],
               max_len: int, test_fraction: float, seed: int) -> dict[str, tuple[list, list]]:
    lo, hi = np.asarray(room_min, dtype=float), np.asarray(room_max, dtype=float)
    if np.any(lo > hi) or np.any(lo <= 0):
        raise ValueError(f"irs.simulate: room_min_m {list(room_min)} must be positive and <= room_max_m "
                         f"{list(room_max)}")
    r_lo, r_hi = float(rt60_range[0]), float(rt60_range[1])
    if not 0 < r_lo <= r_hi:
        raise ValueError(f"irs.simulate.rt60_s must be a range [lo, hi] with 0 < lo <= hi, got {list(rt60_range)}")
    if n_rooms < 2:
        raise ValueError(f"irs.simulate.n_rooms must be at least 2 (one per split), got {n_rooms}")
    rng = np.random.default_rng([seed, 4])
    is_test = split_items(n_rooms, test_fraction)
    banks: dict[str, tuple[list, list]] = {s: ([], []) for s in SPLITS}
    for i in tqdm(range(n_rooms), desc="simulated rooms", unit="room", mininterval=5):
        raw, desc = simulate_room(float(rng.uniform(r_lo, r_hi)), lo, hi, max_len / SR, rng)
        h, rt60, reason = process_ir(raw, max_len)
        if reason:  # cannot happen for a simulated room; fail loudly rather than train on a broken bank
            raise RuntimeError(f"simulated room {i} ({desc}) is unusable: {reason}")
        source = (f"pyroomacoustics shoebox {desc['dims']} m, absorption {desc['absorption']:.3f}, "
                  f"source-mic {desc['distance']:.2f} m")
        split = "test" if is_test[i] else "train"
        banks[split][0].append(h)
        banks[split][1].append({"name": f"room-{i:03d}", "kind": "simulated", "source": source, "rt60_s": rt60,
                                "rt60_target_s": desc["rt60_target"]})
    return banks


def prepare_irs(ir_files: Sequence[str | Path], out_dir: str | Path, test_fraction: float, max_ir_s: float,
                simulate: dict, seed: int) -> dict:
    """Write ``out_dir/{train,test}.{npy,parquet}`` impulse-response clip banks (float32). Returns a summary dict.

    Meta columns: ``name``, ``kind`` (measured / simulated), ``source``, ``rt60_s`` (Schroeder T20 estimate, NaN
    when it cannot be estimated), ``rt60_target_s`` (simulated rooms' requested RT60, NaN for measured), plus
    ``start``, ``length``. ``simulate`` holds ``n_rooms``, ``rt60_s`` [lo, hi], ``room_min_m``, ``room_max_m``.
    """
    if max_ir_s <= 0:
        raise ValueError(f"irs.max_ir_s must be positive, got {max_ir_s}")
    out_dir = Path(out_dir)
    max_len = max(1, int(round(max_ir_s * SR)))
    ir_files = [Path(p) for p in ir_files]
    skipped: list[dict] = []
    if ir_files:
        banks = _measured(ir_files, max_len, test_fraction, seed, skipped)
    else:
        missing = {"n_rooms", "rt60_s", "room_min_m", "room_max_m"} - set(simulate)
        if missing:
            raise ValueError(f"irs.simulate is missing {sorted(missing)}")
        log.warning("no impulse-response folders configured: simulating %d random shoebox rooms with "
                    "pyroomacoustics (RT60 %s s); set data.ir_dirs to measured responses for realistic training",
                    simulate["n_rooms"], list(simulate["rt60_s"]))
        banks = _simulated(int(simulate["n_rooms"]), simulate["rt60_s"], simulate["room_min_m"],
                           simulate["room_max_m"], max_len, test_fraction, seed)
    summary: dict = {"simulated": not ir_files, "files": {"given": len(ir_files), "skipped": len(skipped)},
                     "skipped": skipped}
    for split in SPLITS:
        irs, rows = banks[split]
        meta = pd.DataFrame(rows, columns=META_COLUMNS)
        write_clip_bank(out_dir / split, irs, meta, dtype="float32")
        rt = meta["rt60_s"].to_numpy(dtype=float)
        summary[split] = {"irs": len(irs), "median_length_s": round(float(np.median([len(h) for h in irs])) / SR, 3),
                          "rt60_s_median": round(float(np.nanmedian(rt)), 3) if np.isfinite(rt).any() else None,
                          "rt60_unknown": int((~np.isfinite(rt)).sum())}
        log.info("IR %s bank: %s", split, summary[split])
    return summary
