"""Training throughput (pairs/s) and inference speed (segments/s) of the model presets on this machine.

Usage: .venv/bin/python bench/train_throughput.py [--presets small nafp] [--threads 2] [--batch-sizes 128 ...]
       [--view-workers auto 0 N ...] [--steps 8] [--device auto] [--augment-config config/config.yaml]
       [--default-malloc]

Training steps are the real ones (``workflow_lib.training.train.train_step`` fed by ``training.batches.BatchStream``,
its background thread or ``--view-workers`` processes, epoch after epoch as training runs): view cutting (speed
changes resampled on the host), on-device degradation (rooms, resonant spaces, device responses, noise, filters,
compression), log-mel, masking, forward, NT-Xent, backward and LAMB, with the augmentation
chain of ``--augment-config``'s ``train.augment`` (default: config/config.yaml, the bundled model's chain). The data
are generated (songs of random notes and their "codec copy", white noise, exponentially decaying responses of the
lengths the recipe uses: 3 s rooms, 2 s resonant spaces, 50 ms device responses): speed does not depend on content.
Besides the pipelined rate, each line gives the two halves alone: the host drawing batches (the same stream, nothing
stepped) and the device's step on one prepared batch again and again, so it says which bounds the run. Inference is
the eager ``Fingerprinter`` (log-mel included) on batches of 1 s segments.
"""

from __future__ import annotations

import argparse
import os

from workflow_lib.common.cpu_process import keep_freed_memory, setup_cpu_process

setup_cpu_process()  # as scripts/train.py does, before torch loads OpenMP (malloc: see --default-malloc)
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workflow_lib.common.config import read_yaml
from workflow_lib.training.augment import AugmentConfig
from workflow_lib.data.clipbank import ClipBank, write_clip_bank
from workflow_lib.model.network import Fingerprinter, count_parameters, model_config_from
from workflow_lib.training.settings import TrainConfig
from workflow_lib.model.embed import resolve_device
from workflow_lib.training.train import make_optimizer, train_step
from workflow_lib.training.batches import BatchStream, epoch_key, view_workers
from workflow_lib.training.data import ViewSource


SONGS = 64  # one minute each: 7,616 segments, 11 batches of 640 pairs per epoch


def make_banks(d: Path, seed: int = 0) -> tuple[ClipBank, ClipBank, ClipBank, ClipBank]:
    rng = np.random.default_rng(seed)
    sr = 8000
    songs = []
    for _ in range(SONGS):
        t = np.arange(60 * sr) / sr
        f = 200 * 2 ** (rng.integers(0, 36, 60 * 4) / 12).repeat(sr // 4)
        songs.append((0.3 * np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-4 * (t % 0.25))).astype(np.float32))
    meta = pd.DataFrame({"song_id": [str(i) for i in range(SONGS)], "name": [str(i) for i in range(SONGS)]})
    write_clip_bank(d / "songs", songs, meta)
    write_clip_bank(d / "songs_codec", songs, meta)  # read like the codec copy (same layout; content is irrelevant)
    write_clip_bank(d / "noise", [0.1 * rng.standard_normal(10 * sr).astype(np.float32) for _ in range(8)],
                    pd.DataFrame({"name": [str(i) for i in range(8)]}))
    irs, kinds = [], []
    for kind, seconds, decay_s in [("room", 3.0, 0.4), ("resonant", 2.0, 0.3), ("device", 0.05, 0.005)]:
        for _ in range(4):
            n = int(seconds * sr)
            ir = rng.standard_normal(n) * np.exp(-np.arange(n) / (decay_s * sr))
            irs.append((ir / np.linalg.norm(ir)).astype(np.float32))
            kinds.append(kind)
    write_clip_bank(d / "irs", irs, pd.DataFrame({"name": [str(i) for i in range(len(irs))], "kind": kinds}),
                    dtype="float32")
    return ClipBank(d / "songs"), ClipBank(d / "noise"), ClipBank(d / "irs"), ClipBank(d / "songs_codec")


def _seconds_per_batch(stream: BatchStream, consume, n: int) -> float:
    """Median seconds per batch of ``n`` consumed after the first (which starts the workers and warms up kernels),
    epoch after epoch as training draws them (the workers outlive epochs)."""
    batches = itertools.chain.from_iterable(stream.epoch(e) for e in itertools.count(1))
    times, t = [], time.perf_counter()
    for i, views in zip(range(n + 1), batches):
        consume(views)
        now = time.perf_counter()
        if i:
            times.append(now - t)
        t = now
    return statistics.median(times)


def bench_training(preset: str, src: ViewSource, batch_size: int, steps: int, device: torch.device,
                   workers: int) -> dict:
    torch.manual_seed(0)
    model = Fingerprinter(model_config_from(preset)).to(device).train()
    cfg = TrainConfig(batch_size=batch_size, device=str(device))
    optimizer, scheduler = make_optimizer(model, cfg, 10, {"steps": 1000})
    use_amp = device.type == "cuda"
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": use_amp}
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    def step(views) -> None:
        train_step(model, views, optimizer, scheduler, scaler, cfg.temperature, device, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize()

    pairs = cfg.batch_pairs
    with BatchStream(src, 0, pairs, workers, pin=device.type == "cuda") as stream:
        sec = _seconds_per_batch(stream, step, steps)
    with BatchStream(src, 0, pairs, workers) as stream:  # the host's half alone
        host = _seconds_per_batch(stream, lambda views: None, steps)
    views = src.batch(epoch_key(0, 1) + [0], src.epoch_order(epoch_key(0, 1), pairs)[0])  # epoch 1's first batch
    step(views)
    alone = []  # the device's half alone: one prepared batch, again and again
    for _ in range(steps):
        t = time.perf_counter()
        step(views)
        alone.append(time.perf_counter() - t)
    return {"params": count_parameters(model), "sec_per_step": sec, "pairs_per_s": pairs / sec,
            "host_pairs_per_s": pairs / host, "step_pairs_per_s": pairs / statistics.median(alone),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")}


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
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128], help="views per step (anchors + positives)")
    ap.add_argument("--augment-config", default="config/config.yaml",
                    help="a config file whose train.augment section is the chain timed (default: the bundled model's)")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per preset (median reported)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--inference-batches", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--view-workers", nargs="+", default=["auto"],
                    help="processes drawing the batches (train.view_workers: auto, 0 = the background thread, N)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc malloc at its defaults (the scripts call keep_freed_memory)")
    args = ap.parse_args()
    tuned = False if args.default_malloc else keep_freed_memory()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"malloc {'tuned' if tuned else 'default'}, load average {os.getloadavg()[0]:.2f} at start")
    if device.type == "cuda":
        print(f"GPU {torch.cuda.get_device_name(device)}")
    augment = AugmentConfig.from_dict(read_yaml(args.augment_config)["train"]["augment"])
    print(f"augmentation: train.augment of {args.augment_config}")
    with tempfile.TemporaryDirectory() as tmp:
        songs, noise, irs, codec = make_banks(Path(tmp))
        src = ViewSource(songs, noise, irs, augment, codec=codec)
        for preset in args.presets:
            for batch_size, setting in itertools.product(args.batch_sizes, args.view_workers):
                workers = view_workers(setting if setting == "auto" else int(setting), device)
                tr = bench_training(preset, src, batch_size, args.steps, device, workers)
                drawn = f"{workers} worker processes" if workers else "the background thread"
                print(f"{preset}: {tr['params'] / 1e6:.2f} M parameters, {batch_size // 2} pairs per step, batches "
                      f"drawn by {drawn}: training {tr['pairs_per_s']:.1f} pairs/s ({tr['sec_per_step']:.3f} s/step); "
                      f"alone: host views "
                      f"{tr['host_pairs_per_s']:.1f} pairs/s, device step {tr['step_pairs_per_s']:.1f} pairs/s; "
                      f"peak device memory {tr['peak_gib']:.1f} GiB", flush=True)
            inf = {b: bench_inference(preset, device, b, 3.0) for b in args.inference_batches}
            inf_s = ", ".join(f"batch {b}: {r:.0f} seg/s ({r / 2:.0f}x realtime at 0.5 s hop)" for b, r in inf.items())
            print(f"{preset} inference: {inf_s}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
