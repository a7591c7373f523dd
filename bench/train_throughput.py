"""Training throughput (pairs/s) and inference speed (segments/s) of the model presets on this machine.

Usage: .venv/bin/python bench/train_throughput.py [--presets small nafp] [--threads 2] [--batch-size 128]
       [--steps 8] [--device auto] [--default-malloc]

Training steps are the real ones (``workflow_lib.training.train.train_step`` fed by ``ViewSource`` through the prefetch
thread): view cutting, on-device degradation (1 s impulse responses, noise, filters), log-mel, masking, forward,
NT-Xent, backward and LAMB. The data are generated (songs of random notes, white noise, exponentially decaying
impulse responses): speed does not depend on content. Inference is the eager ``Fingerprinter`` (log-mel
included) on batches of 1 s segments.
"""

from __future__ import annotations

import argparse
import os

from workflow_lib.common.cpu_process import keep_freed_memory, setup_cpu_process

setup_cpu_process()  # as scripts/train.py does, before torch loads OpenMP (malloc: see --default-malloc)
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workflow_lib.training.augment import AugmentConfig
from workflow_lib.data.clipbank import ClipBank, write_clip_bank
from workflow_lib.model.network import Fingerprinter, count_parameters, model_config_from
from workflow_lib.training.train import TrainConfig, make_optimizer, resolve_device, train_step
from workflow_lib.common.background import prefetch
from workflow_lib.training.data import ViewSource


def make_banks(d: Path, seed: int = 0) -> tuple[ClipBank, ClipBank, ClipBank]:
    rng = np.random.default_rng(seed)
    sr = 8000
    songs = []
    for _ in range(16):
        t = np.arange(30 * sr) / sr
        f = 200 * 2 ** (rng.integers(0, 36, 30 * 4) / 12).repeat(sr // 4)
        songs.append((0.3 * np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-4 * (t % 0.25))).astype(np.float32))
    write_clip_bank(d / "songs", songs, pd.DataFrame({"song_id": [str(i) for i in range(16)],
                                                      "name": [str(i) for i in range(16)]}))
    write_clip_bank(d / "noise", [0.1 * rng.standard_normal(10 * sr).astype(np.float32) for _ in range(8)],
                    pd.DataFrame({"name": [str(i) for i in range(8)]}))
    irs = []
    for k in range(8):
        ir = rng.standard_normal(sr) * np.exp(-np.arange(sr) / (0.02 * sr * (k + 1)))
        irs.append((ir / np.linalg.norm(ir)).astype(np.float32))
    write_clip_bank(d / "irs", irs, pd.DataFrame({"name": [str(i) for i in range(8)]}), dtype="float32")
    return ClipBank(d / "songs"), ClipBank(d / "noise"), ClipBank(d / "irs")


def bench_training(preset: str, src: ViewSource, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = Fingerprinter(model_config_from(preset)).to(device).train()
    cfg = TrainConfig(batch_size=args.batch_size, device=str(device))
    optimizer, scheduler = make_optimizer(model, cfg, 10, {"steps": 1000})
    use_amp = device.type == "cuda"
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": use_amp}
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    rng = np.random.default_rng(0)
    batches = prefetch(src.pairs(rng, rng.choice(len(src), cfg.batch_pairs, replace=False))
                       for _ in range(args.steps + 1))
    times = []
    t = time.perf_counter()
    for i, views in enumerate(batches):
        train_step(model, views, optimizer, scheduler, scaler, cfg.temperature, device, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if i:  # the first step warms up allocators and kernels
            times.append(now - t)
        t = now
    sec = statistics.median(times)
    return {"params": count_parameters(model), "sec_per_step": sec, "pairs_per_s": cfg.batch_pairs / sec}


@torch.inference_mode()
def bench_inference(preset: str, device: torch.device, batch: int, seconds: float) -> float:
    model = Fingerprinter(model_config_from(preset)).to(device).eval()
    x = (0.1 * torch.randn(batch, 8000)).to(device)
    model(x)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        model(x)
        n += batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["small", "nafp"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128, help="views per step (anchors + positives)")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per preset (median reported)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--inference-batches", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc malloc at its defaults (the scripts call keep_freed_memory)")
    args = ap.parse_args()
    tuned = False if args.default_malloc else keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"malloc {'tuned' if tuned else 'default'}, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        songs, noise, irs = make_banks(Path(tmp))
        src = ViewSource(songs, noise, irs, AugmentConfig())
        for preset in args.presets:
            tr = bench_training(preset, src, args, device)
            inf = {b: bench_inference(preset, device, b, 3.0) for b in args.inference_batches}
            inf_s = ", ".join(f"batch {b}: {r:.0f} seg/s ({r / 2:.0f}x realtime at 0.5 s hop)" for b, r in inf.items())
            print(f"{preset}: {tr['params'] / 1e6:.2f} M parameters; training {tr['pairs_per_s']:.1f} pairs/s "
                  f"({tr['sec_per_step']:.2f} s/step of {args.batch_size // 2} pairs); inference {inf_s}")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
