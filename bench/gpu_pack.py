"""Carry training banks to a machine that cannot read the corpus (the `device` tool's GPU: 64 MiB per call).

    pack   NAME=BANK_PREFIX... --out DIR [--kbps 12] [--max-hours H] [--raw]
    unpack DIR --out BANK_DIR

`pack` writes each clip of a clip bank (workflow_lib.data.clipbank) as Ogg Opus at the bank's 8 kHz (libsndfile,
through soundfile: a project dependency, so the far side decodes with what it already has), or, with --raw, the bank
as it is (impulse responses: small, and a codec would smear their onsets). --max-hours keeps a seeded random subset
of whole clips. `unpack` rebuilds banks with the same tables, each clip cut or padded to its recorded length.
Opus at 12 kbit/s is lossy: training on it is a compromise of the carry limit, said wherever its models are reported.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_lib.common.atomic import atomic_path, write_parquet_atomic, write_text_atomic  # noqa: E402
from workflow_lib.data.clipbank import ClipBank, write_clip_bank  # noqa: E402

SR = 8000


def opus_level(kbps: float) -> float:
    """libsndfile's Opus compression level for a bit rate (measured: 0.9 -> 32, 0.95 -> 19.6, 1.0 -> 6.6 kbit/s)."""
    return float(np.clip(1.0 - (kbps - 6.6) / 256.0, 0.0, 1.0))


def encode(clip: np.ndarray, kbps: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(clip, -1, 1), SR, format="OGG", subtype="OPUS", compression_level=opus_level(kbps))
    return buf.getvalue()


def pack(prefixes: list[str], out: Path, kbps: float, max_hours: float | None, raw: bool, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for item in prefixes:
        name, _, prefix = item.partition("=")
        prefix = Path(prefix)
        bank = ClipBank(prefix)
        dest = out / name
        if raw:
            dest.mkdir(exist_ok=True)
            _copy_atomic(prefix.with_suffix(".npy"), dest / "raw.npy")
            write_parquet_atomic(bank.meta, dest / "meta.parquet")
            print(f"{prefix}: {len(bank)} clips as they are", flush=True)
            continue
        keep = np.arange(len(bank))
        if max_hours is not None:
            order = np.random.default_rng(seed).permutation(len(bank))
            hours = np.cumsum(bank.lengths[order]) / SR / 3600
            keep = np.sort(order[:max(1, int(np.searchsorted(hours, max_hours, side="right")))])
        dest.mkdir(exist_ok=True)
        (dest / "meta.parquet").unlink(missing_ok=True)
        total = 0
        for n, i in enumerate(keep):
            data = encode(bank.clip(int(i)), kbps)
            (dest / f"{n:05d}.opus").write_bytes(data)
            total += len(data)
        # The table last: a pack killed half-way has none, so unpack refuses it instead of reading old clips.
        write_parquet_atomic(bank.meta.iloc[keep].drop(columns=["start", "length"]).assign(length=bank.lengths[keep]),
                        dest / "meta.parquet")
        print(f"{prefix}: {len(keep)} of {len(bank)} clips, {bank.lengths[keep].sum() / SR / 3600:.2f} h, "
              f"{total / 2**20:.1f} MiB at {kbps} kbit/s", flush=True)
    record = out / "pack.json"  # what each bank went through, for whoever reports a model trained on it
    done = json.loads(record.read_text()) if record.exists() else {}
    done.update({item.partition("=")[0]: "as it is" if raw else {"kbps": kbps, "max_hours": max_hours, "seed": seed}
                 for item in prefixes})
    write_text_atomic(record, json.dumps(done, indent=1))


def _copy_atomic(src: Path, final: Path) -> None:
    with atomic_path(final) as tmp:
        shutil.copy(src, tmp)


def _decode(path: Path, length: int) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32")
    if sr != SR:
        raise ValueError(f"{path}: {sr} Hz, expected {SR}")
    return np.pad(x[:length], (0, max(0, length - len(x))))


def unpack(src: Path, out: Path, workers: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for dest in sorted(p for p in src.iterdir() if p.is_dir()):
        if not (dest / "meta.parquet").exists():
            raise SystemExit(f"{dest}: no meta.parquet: its pack did not finish (pack it again)")
        meta = pd.read_parquet(dest / "meta.parquet")
        if (dest / "raw.npy").exists():
            _copy_atomic(dest / "raw.npy", (out / dest.name).with_suffix(".npy"))
            write_parquet_atomic(meta, (out / dest.name).with_suffix(".parquet"))
            continue
        files = [dest / f"{n:05d}.opus" for n in range(len(meta))]
        with ProcessPoolExecutor(workers) as pool:
            clips = list(pool.map(_decode, files, meta["length"].tolist()))
        write_clip_bank(out / dest.name, clips, meta.drop(columns=["length"]))
        print(f"{dest.name}: {len(clips)} clips, {meta['length'].sum() / SR / 3600:.2f} h", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("prefixes", nargs="+", metavar="NAME=BANK_PREFIX")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--kbps", type=float, default=12.0)
    p.add_argument("--max-hours", type=float)
    p.add_argument("--raw", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    u = sub.add_parser("unpack")
    u.add_argument("src", type=Path)
    u.add_argument("--out", type=Path, required=True)
    u.add_argument("--workers", type=int, default=8)
    a = ap.parse_args()
    if a.cmd == "pack" and not all("=" in item for item in a.prefixes):
        ap.error("pack takes NAME=BANK_PREFIX (e.g. train=runs/x/results/model/audio/train)")
    if a.cmd == "pack":
        pack(a.prefixes, a.out, a.kbps, a.max_hours, a.raw, a.seed)
    else:
        unpack(a.src, a.out, a.workers)


if __name__ == "__main__":
    main()
