"""Benchmark of the data stages: demo corpus, generated noise, simulated rooms, and (optionally) the dev corpus.

Usage: .venv/bin/python bench/data_prep.py [--dev ../shared/corpus/dev] [--out /tmp/bench_data_prep]
Prints wall times and counts; nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from workflow_lib.data.demo_corpus import generate_demo_corpus
from workflow_lib.data.irs import prepare_irs
from workflow_lib.data.manifest import list_audio_files
from workflow_lib.data.noise import prepare_noise

SIM = {"n_rooms": 48, "rt60_s": [0.2, 1.0], "room_min_m": [3.0, 3.0, 2.4], "room_max_m": [15.0, 12.0, 5.0]}
NOISE = dict(test_fraction=0.3, max_clip_s=30.0, babble_speakers=(3, 7), babble_clips=60, babble_clip_s=10.0,
             generated_clips=24, seed=0)


def timed(label: str, fn):
    t = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - t:.1f} s", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dev", type=Path, help="dev corpus folder with noise/, speech/, ir/ (optional)")
    ap.add_argument("--out", type=Path, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # quiet: only the figures below
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_data_prep_"))
    print(f"load average at start: {os.getloadavg()[0]:.2f}")

    table = timed("demo corpus, 40 songs x 60 s", lambda: generate_demo_corpus(out / "demo", 40, 60.0, 1234))
    print(f"  {len(table)} songs, {table['key'].nunique()} distinct keys, tempo {table['tempo_bpm'].min():.0f}-"
          f"{table['tempo_bpm'].max():.0f} bpm")
    s = timed("generated noise, 24 clips x 10 s per split", lambda: prepare_noise([], [], out / "gen_noise", **NOISE))
    print(f"  train {s['train']['clips']} clips, test {s['test']['clips']} clips")
    s = timed("simulated rooms, 48 (RT60 0.2-1.0 s)", lambda: prepare_irs([], out / "sim_irs", 0.3, 1.0, SIM, 0))
    print(f"  train {s['train']}, test {s['test']}")
    if args.dev:
        noise = list_audio_files([args.dev / "noise"])
        speech = list_audio_files([args.dev / "speech"])
        s = timed(f"dev noise ({len(noise)} files) + babble from dev speech ({len(speech)} files)",
                  lambda: prepare_noise(noise, speech, out / "dev_noise", **NOISE))
        print(f"  noise files skipped {s['noise_files']['skipped']}, speech decoded {s['speech_files']['decoded']}, "
              f"skipped {s['speech_files']['skipped']}")
        print(f"  train {s['train']}, test {s['test']}")
        irs = list_audio_files([args.dev / "ir"])
        s = timed(f"dev IRs ({len(irs)} files)", lambda: prepare_irs(irs, out / "dev_irs", 0.3, 1.0, SIM, 0))
        print(f"  skipped {s['files']['skipped']}, train {s['train']}, test {s['test']}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
