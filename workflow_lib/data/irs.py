"""Impulse-response clip banks: measured files plus simulated rooms and resonant spaces, split train / test.

Every response has a ``kind``: ``room`` (a space with reverberation), ``resonant`` (a space whose few narrow
resonances ring for up to 2 s: the model's measured weak spot) or ``device`` (a loudspeaker, cabinet or microphone:
decays in under ``ROOM_RT60_S``), and an ``origin``: ``measured`` or ``simulated``. Training chains a device
response after a room, so all kinds live in one bank and the loader picks by kind.

Measured IRs are held out by file: channels of one file, and L/R files of one recording, stay on one side; rooms and
short device responses are held out separately so that both sides get some of each, and ``holdout`` patterns pin
chosen files to the evaluation side (e.g. the one long real hall). Each channel is resampled to 8 kHz, trimmed to
start 1 ms before the direct-sound peak and to end at ``max_ir_s`` (3 s by default: real halls ring that long) or
where the energy decay curve falls below -60 dB, faded out and normalised to unit L2 norm (so convolving keeps the
signal's energy roughly unchanged).

Simulated responses come from ``acoustics``: shoebox rooms with RT60 drawn log-uniformly over ``rt60_s`` (image
sources for the early part, a stochastic late tail after it) and resonant spaces (modal banks and damped combs).
The two sides draw from separate random streams, so no simulated response is shared; their RT60s are stratified so
the evaluation side covers the whole range, long halls included.
"""

from __future__ import annotations

import logging
import fnmatch
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import soundfile as sf

from workflow_lib import SAMPLE_RATE
from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.files import FFMPEG_EXTENSIONS, audio_info, load_audio, resample
from workflow_lib.common.progress import progress
from workflow_lib.data.clipbank import write_clip_bank
from workflow_lib.data.acoustics import (energy_decay_db, estimate_rt60, hybrid_room, positions, resonant_response,
                                        room_for)
from workflow_lib.data.holdout import holdout_split
from workflow_lib.data.split import unit_hash

log = logging.getLogger(__name__)

SR = SAMPLE_RATE
PRE_PEAK_S = 0.001  # keep 1 ms before the direct sound
FADE_S = 0.01  # half-cosine fade-out at the cut
DECAY_FLOOR_DB = -60.0  # cut where the remaining energy falls below this
MAX_FILE_S = 30.0  # longer files are not impulse responses
ROOM_RT60_S = 0.15  # responses that decay slower are rooms; faster ones are devices, cabinets, microphones
SPLITS = ("train", "test")
KINDS = ("room", "resonant", "device")
META_COLUMNS = ["name", "kind", "origin", "source", "rt60_s", "rt60_target_s"]
# "StairwellL", "street2-R", "hall_left": one recording's channels stored as separate files.
_CHANNEL_SUFFIX = re.compile(r"(?:(?<=[a-z0-9])[LR]|[-_ .](?:[LlRr]|left|right|Left|Right))$")


def group_key(path: Path) -> str:
    """Hold-out key: the file stem without a trailing left/right channel marker."""
    return _CHANNEL_SUFFIX.sub("", path.stem) or path.stem


# --------------------------------------------------------------------------------------------- processing

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


# --------------------------------------------------------------------------------------------- main entry point

def measured_kind(rt60: float) -> str:
    """Rooms ring for longer than ``ROOM_RT60_S``; faster decays are devices (speakers, cabinets, microphones)."""
    return "room" if np.isfinite(rt60) and rt60 >= ROOM_RT60_S else "device"


def _stratified_holdout(keys: list[str], kinds: list[str], test_fraction: float, seed: int,
                        pinned: set[str]) -> np.ndarray:
    """Hold out each kind separately (so each side gets reverberant rooms whenever there are two or more room
    recordings; a plain hash split can leave all rooms on one side); ``pinned`` keys always go to the test side."""
    key_kind = {}
    for k, kind in zip(keys, kinds):
        key_kind[k] = "room" if kind == "room" or key_kind.get(k) == "room" else kind
    is_test = np.zeros(len(keys), dtype=bool)
    for kind in sorted(set(key_kind.values())):
        idx = [i for i, k in enumerate(keys) if key_kind[k] == kind and k not in pinned]
        if not idx:
            continue
        if any(key_kind[k] == kind for k in pinned):
            # The evaluation side already has this kind (pinned): hash the rest, only keeping training non-empty.
            free = sorted({keys[i] for i in idx})
            test = {k for k in free if unit_hash(k, seed) < test_fraction}
            if test == set(free):
                test.discard(max(free, key=lambda k: (unit_hash(k, seed), k)))
            is_test[idx] = [keys[i] in test for i in idx]
        else:
            is_test[idx] = holdout_split([keys[i] for i in idx], test_fraction, seed,
                                         what=f"measured {kind} impulse responses")
    is_test |= np.array([k in pinned for k in keys], dtype=bool)
    if is_test.all() or not is_test.any():
        is_test = holdout_split(keys, test_fraction, seed, what="impulse responses") | \
            np.array([k in pinned for k in keys], dtype=bool)
    return is_test


def _measured(ir_files: Sequence[Path], max_len: int, test_fraction: float, seed: int, holdout: Sequence[str],
              skipped: list[dict]) -> dict[str, tuple[list, list]]:
    irs: list[tuple[Path, np.ndarray, dict]] = []
    for path in progress(ir_files, desc="impulse responses", unit="file", mininterval=5):
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
            irs.append((path, h, {"name": name, "kind": measured_kind(rt60), "origin": "measured",
                                  "source": str(path), "rt60_s": rt60, "rt60_target_s": float("nan")}))
    banks: dict[str, tuple[list, list]] = {s: ([], []) for s in SPLITS}
    if not irs:
        if ir_files:
            log.warning("data.ir_dirs: none of the %d impulse-response files is usable (first: %s: %s)",
                        len(ir_files), skipped[0]["path"], skipped[0]["reason"])
        return banks
    keys = [group_key(p) for p, _, _ in irs]
    pinned = {k for (p, _, _), k in zip(irs, keys) if any(fnmatch.fnmatch(p.name, pat) for pat in holdout)}
    unmatched = [pat for pat in holdout if not any(fnmatch.fnmatch(p.name, pat) for p, _, _ in irs)]
    if unmatched:
        log.warning("irs.holdout: no impulse-response file matches %s", unmatched)
    if len(set(keys)) >= 2:
        is_test = _stratified_holdout(keys, [row["kind"] for _, _, row in irs], test_fraction, seed, pinned)
    else:
        log.warning("measured impulse responses all come from one recording (%s): it goes to the %s side",
                    keys[0], "test" if pinned else "train")
        is_test = np.full(len(irs), bool(pinned))
    for (_, h, row), t in zip(irs, is_test):
        banks["test" if t else "train"][0].append(h)
        banks["test" if t else "train"][1].append(row)
    return banks


def _stratified_log_uniform(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """``n`` values log-uniform over [lo, hi], one in each of ``n`` equal-probability strata, in random order."""
    u = (rng.permutation(n) + rng.random(n)) / max(n, 1)
    return np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))


def _simulated(simulate: dict, max_len: int, test_fraction: float, seed: int) -> dict[str, tuple[list, list]]:
    """Simulated rooms and resonant spaces for both sides, from separate random streams."""
    lo, hi = np.asarray(simulate["room_min_m"], dtype=float), np.asarray(simulate["room_max_m"], dtype=float)
    if np.any(lo > hi) or np.any(lo <= 0):
        raise ValueError(f"irs.simulate: room_min_m {list(lo)} must be positive and <= room_max_m {list(hi)}")
    ranges = {}
    for key in ("rt60_s", "resonant_t60_s"):
        r = simulate.get(key, [0.3, 2.0])
        if not 0 < float(r[0]) <= float(r[1]):
            raise ValueError(f"irs.simulate.{key} must be a range [lo, hi] with 0 < lo <= hi, got {list(r)}")
        ranges[key] = (float(r[0]), float(r[1]))
    banks: dict[str, tuple[list, list]] = {s: ([], []) for s in SPLITS}
    counts = {"room": int(simulate.get("n_rooms", 0)), "resonant": int(simulate.get("n_resonant", 0))}
    for kind, total in counts.items():
        if total < 0:
            raise ValueError(f"irs.simulate: a count must be >= 0, got {total}")
        if total == 0:
            continue
        n_test = min(max(int(round(total * test_fraction)), 1), total - 1) if total >= 2 else 0
        for split, n in (("train", total - n_test), ("test", n_test)):
            rng = np.random.default_rng([seed, 4, KINDS.index(kind), SPLITS.index(split)])
            targets = _stratified_log_uniform(rng, n, *ranges["rt60_s" if kind == "room" else "resonant_t60_s"])
            for i in progress(range(n), desc=f"simulated {kind} ({split})", unit="ir", mininterval=10):
                if kind == "room":
                    dims, rt60 = room_for(float(targets[i]), lo, hi, rng)
                    src, mic = positions(dims, rng)
                    raw = hybrid_room(rt60, dims, src, mic, rng, max_len / SR)
                    desc = (f"shoebox {np.round(dims, 1).tolist()} m, source-mic "
                            f"{np.linalg.norm(src - mic):.1f} m, image sources + stochastic tail")
                    target = rt60
                else:
                    t60 = float(targets[i])
                    raw, info = resonant_response(rng, (max(ranges["resonant_t60_s"][0], 0.5 * t60), t60))
                    desc = ", ".join(f"{k} {v}" for k, v in info.items())
                    target = t60
                h, rt60_est, reason = process_ir(raw, max_len)
                if reason:  # cannot happen for a simulated response; fail loudly rather than train on a broken bank
                    raise RuntimeError(f"simulated {kind} {i} ({desc}) is unusable: {reason}")
                banks[split][0].append(h)
                banks[split][1].append({"name": f"{kind}-{split}-{i:03d}", "kind": kind, "origin": "simulated",
                                        "source": desc, "rt60_s": rt60_est, "rt60_target_s": target})
    return banks


def prepare_irs(ir_files: Sequence[str | Path], out_dir: str | Path, test_fraction: float, max_ir_s: float,
                simulate: dict, seed: int, holdout: Sequence[str] = ()) -> dict:
    """Write ``out_dir/{train,test}.{npy,parquet}`` impulse-response clip banks (float32). Returns a summary dict.

    Meta columns: ``name``, ``kind`` (room / resonant / device), ``origin`` (measured / simulated), ``source``,
    ``rt60_s`` (Schroeder T20 estimate, NaN when it cannot be estimated), ``rt60_target_s`` (simulated responses'
    requested decay, NaN for measured), plus ``start``, ``length``. ``simulate`` holds ``n_rooms``, ``rt60_s``,
    ``room_min_m``, ``room_max_m``, ``n_resonant``, ``resonant_t60_s``.
    """
    if max_ir_s <= 0:
        raise ValueError(f"irs.max_ir_s must be positive, got {max_ir_s}")
    out_dir = Path(out_dir)
    max_len = max(1, int(round(max_ir_s * SR)))
    ir_files = [Path(p) for p in ir_files]
    skipped: list[dict] = []
    measured = _measured(ir_files, max_len, test_fraction, seed, holdout, skipped)
    simulated = _simulated(simulate, max_len, test_fraction, seed)
    banks = {s: (measured[s][0] + simulated[s][0], measured[s][1] + simulated[s][1]) for s in SPLITS}
    if not banks["train"][0] or not banks["test"][0]:
        raise ValueError("no impulse responses for both sides: give data.ir_dirs with usable files (two or more "
                         "recordings) or simulate rooms (irs.simulate.n_rooms >= 2)")
    if not ir_files:
        log.info("no impulse-response folders configured: using simulated rooms and resonant spaces only; set "
                 "data.ir_dirs to measured responses for more realistic training")
    summary: dict = {"files": {"given": len(ir_files), "skipped": len(skipped)}, "skipped": skipped}
    for split in SPLITS:
        irs, rows = banks[split]
        meta = pd.DataFrame(rows, columns=META_COLUMNS)
        write_clip_bank(out_dir / split, irs, meta, dtype="float32")
        rt = meta["rt60_s"].to_numpy(dtype=float)
        summary[split] = {"irs": len(irs), "by_kind": {f"{k} ({o})": int(n) for (k, o), n in
                                                       meta.groupby(["kind", "origin"]).size().items()},
                          "median_length_s": round(float(np.median([len(h) for h in irs])) / SR, 3),
                          "rt60_s_median": round(float(np.nanmedian(rt)), 3) if np.isfinite(rt).any() else None,
                          "rooms_rt60_ge_1_5_s": int(((meta["kind"] == "room") & (rt >= 1.5)).sum())}
        log.info("IR %s bank: %s", split, summary[split])
    return summary
