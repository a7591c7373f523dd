#!/usr/bin/env python
"""Extraction speed: decode + log-mel + model, in x realtime, for the model presets, against the CPU's matmul peak.

    .venv/bin/python bench/extract_speed.py [--presets small nafp] [--songs 8] [--threads 2] [--seconds 6]

Prints, per preset: parameters, FLOPs per 1 s segment, model throughput in several execution variants (eager,
channels-last, torch.compile, bfloat16 autocast, batch sizes), the achieved GFLOP/s as a share of the measured
matmul peak, and the end-to-end extraction speed (``embed_file`` on real songs: decoding, resampling, framing,
front end and model) in segments/s and x realtime (one segment per 0.5 s of audio). Weights are random: speed does
not depend on them.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from workflow_lib.audio.files import iter_audio  # noqa: E402
from workflow_lib.model.embed import embed_file, optimize_for_inference  # noqa: E402
from workflow_lib.model.network import Fingerprinter, count_parameters, model_config_from  # noqa: E402

SEG_PER_S = 2.0  # segments per second of audio at 0.5 s hop


CPU_RATES: dict[str, float] = {}


def rate(fn, x: torch.Tensor, seconds: float) -> float:
    """Segments per second of ``fn(x)`` over about ``seconds`` (after two warm-up calls).

    Also records in ``CPU_RATES`` the rate per CPU-second of this process times the thread count: what the
    code would do with the cores to itself (the machine is shared; wall-clock rates drop with other work).
    """
    with torch.inference_mode():
        fn(x)
        fn(x)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            fn(x)
            n += len(x)
    CPU_RATES["last"] = n / max(time.process_time() - c0, 1e-9) * torch.get_num_threads()
    return n / (time.perf_counter() - t0)


def matmul_peak(threads: int, seconds: float) -> dict[str, float]:
    """GFLOP/s of a large square float32 (and bfloat16) matmul: the machine's practical compute ceiling."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(2048, 2048, dtype=dtype)
        b = torch.randn(2048, 2048, dtype=dtype)
        torch.mm(a, b)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b)
            n += 1
        name = str(dtype).split(".")[1]
        out[name + " wall"] = 2 * 2048 ** 3 * n / (time.perf_counter() - t0) / 1e9
        out[name] = 2 * 2048 ** 3 * n / (time.process_time() - c0) * threads / 1e9
    return out


def flops_per_segment(model: torch.nn.Module) -> tuple[float, float]:
    """(total, front end) FLOPs of one segment, counted by torch (convolutions and matmuls)."""
    x = torch.randn(1, 8000)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x)
    total = fc.get_total_flops()
    with torch.inference_mode(), FlopCounterMode(display=False) as fc2:
        model.frontend(x)
    return float(total), float(fc2.get_total_flops())


def dev_songs(n: int) -> list[str]:
    files = sorted(glob.glob("/work/shared/corpus/dev/music/*.mp3"))
    if not files:
        raise SystemExit("no dev corpus at /work/shared/corpus/dev/music")
    step = max(1, len(files) // n)
    return files[::step][:n]


def end_to_end(model: torch.nn.Module, files: list[str], batch_size: int) -> tuple[float, float, float]:
    """(audio seconds, wall seconds, segments) of extracting the files the way the extract rule does."""
    t0 = time.perf_counter()
    segs = 0
    for f in files:
        segs += len(embed_file(model, f, batch_size=batch_size))
    wall = time.perf_counter() - t0
    return segs / SEG_PER_S, wall, segs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["small", "nafp"])
    p.add_argument("--songs", type=int, default=8, help="dev-corpus songs for the end-to-end figure")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=6.0, help="measuring time per variant")
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()}")
    peak = matmul_peak(args.threads, args.seconds / 2)  # wall-clock: a shared machine lowers it too
    print(f"matmul peak (2048^3), per CPU-second x threads: float32 {peak['float32']:.0f} GFLOP/s, bfloat16 "
          f"{peak['bfloat16']:.0f} GFLOP/s (wall-clock {peak['float32 wall']:.0f} / {peak['bfloat16 wall']:.0f})")

    files = dev_songs(args.songs)
    t0 = time.perf_counter()
    audio_s = sum(len(c) for f in files for c in iter_audio(f)) / 8000
    dec = time.perf_counter() - t0
    print(f"decode + resample only: {audio_s:.0f} s of audio in {dec:.2f} s = {audio_s / dec:.0f}x realtime")

    for preset in args.presets:
        torch.manual_seed(0)
        model = Fingerprinter(model_config_from(preset)).eval()
        total, front = flops_per_segment(model)
        print(f"\n== preset {preset}: {count_parameters(model) / 1e6:.2f} M parameters, {total / 1e6:.1f} MFLOP per "
              f"segment ({front / 1e6:.1f} in the front end)")
        bs = args.batch_size
        x = torch.randn(bs, 8000)
        with torch.inference_mode():
            spec = model.frontend(x)
        results: dict[str, tuple[float, float]] = {}

        flops: dict[str, float] = {}

        def measure(name: str, fn, inp: torch.Tensor, work: float = total) -> None:
            results[name] = (rate(fn, inp, args.seconds), CPU_RATES["last"])
            flops[name] = work

        measure("front end only (eager)", model.frontend, x, front)
        for b in (64, bs):
            measure(f"eager, batch {b}", model, x[:b])
        cl = Fingerprinter(model_config_from(preset)).eval().to(memory_format=torch.channels_last)
        cl.load_state_dict(model.state_dict())
        measure("eager, channels-last encoder",
                lambda w: cl.encoder(cl.frontend(w).contiguous(memory_format=torch.channels_last)), x)

        def bf16(w: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(w)
        measure("eager, bfloat16 autocast", bf16, x)
        compiled = optimize_for_inference(model)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ref = model(x[:37])
            got = compiled(x[:37])
        compile_s = time.perf_counter() - t0
        err = float((ref - got).abs().max())
        measure(f"torch.compile (dynamic batch), batch {bs}", compiled, x)
        measure("torch.compile, batch 64", compiled, x[:64])
        measure("torch.compile encoder only (no front end)", compiled.compiled, spec, total - front)

        def bf16c(w: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return compiled(w)
        measure("torch.compile + bfloat16 autocast", bf16c, x)
        print(f"   compile: {compile_s:.1f} s (first call), max |difference| to eager {err:.1e}")
        print(f"   {'variant':44s} {'wall-clock':>24s}   {'per CPU-second x threads':>30s}")
        for name, (r, rc) in results.items():
            print(f"   {name:44s} {r:7.0f} seg/s = {r / SEG_PER_S:5.0f}x   {rc:7.0f} seg/s = {rc / SEG_PER_S:5.0f}x"
                  f"  {rc * flops[name] / 1e9:5.1f} GFLOP/s ({100 * rc * flops[name] / 1e9 / peak['float32']:.0f}% "
                  "of peak)")
        for name, m in (("compiled", compiled), ("eager", model)):
            c0 = time.process_time()
            audio, wall, segs = end_to_end(m, files if name == "compiled" else files[:3], bs)
            cpu = (time.process_time() - c0) / args.threads
            print(f"   END TO END, {name} model (decode + resample + framing + features + model, "
                  f"{audio / 60:.1f} min of audio): wall-clock {audio / wall:.0f}x realtime, per CPU-second x "
                  f"threads {audio / cpu:.0f}x realtime")
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
