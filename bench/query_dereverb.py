"""Does dereverberating the query help in resonant spaces? WPE (weighted prediction error, ``nara_wpe``) on each
query before search, against the query as it is, on an evaluation run's own query files: song-level top-1 of the
best guess per condition and length (bench/README.md, "Realistic evaluation", the ablation paragraph).

``nara_wpe`` is not a dependency of the project (the experiment did not pay): ``pip install nara_wpe`` first.

    python bench/query_dereverb.py runs/devx_eval_new/results [--n 100] [--taps 10] [--delay 3]
        [--conditions "resonant|5 dB + resonant|5 dB + room|0 dB + long reverb"]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402

from workflow_lib.cli.query import load_searcher  # noqa: E402

FRAME, SHIFT = 256, 64  # 32 ms frames, 8 ms shift at 8 kHz


def dereverb(x: np.ndarray, taps: int, delay: int) -> np.ndarray:
    from nara_wpe.utils import istft, stft
    from nara_wpe.wpe import wpe

    spec = stft(x, size=FRAME, shift=SHIFT).T[:, None, :]  # (frequencies, 1 channel, frames)
    out = istft(wpe(spec, taps=taps, delay=delay, iterations=3)[:, 0, :].T, size=FRAME, shift=SHIFT)[:len(x)]
    return np.pad(out, (0, max(0, len(x) - len(out)))).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder of the workflow with results/eval/queries")
    ap.add_argument("--n", type=int, default=100, help="queries per condition and length (the first ones)")
    ap.add_argument("--taps", type=int, default=10)
    ap.add_argument("--delay", type=int, default=3)
    ap.add_argument("--lengths", type=float, nargs="+", default=[3.0, 5.0])
    ap.add_argument("--conditions", default="resonant|5 dB + resonant|5 dB + room|0 dB + long reverb")
    args = ap.parse_args()
    searcher, _ = load_searcher(argparse.Namespace(results=args.results, config=None))  # as `nafp query` opens it
    queries = pd.read_parquet(args.results / "eval" / "queries" / "queries.parquet")
    print("condition | length s | queries | top-1 as it is | top-1 after WPE")
    for condition in args.conditions.split("|"):
        for length in args.lengths:
            chosen = queries[(queries["group"] == "unseen") & queries["in_db"] & (queries["condition"] == condition)
                             & (queries["length_s"] == length)].head(args.n)
            right = np.zeros(2, int)
            for q in chosen.itertuples():
                audio, _ = sf.read(args.results / "eval" / "queries" / q.file, dtype="float32")
                for k, x in enumerate((audio, dereverb(audio, args.taps, args.delay))):
                    match, _ = searcher.identify_detailed(x)
                    right[k] += match.best_guess is not None and match.best_guess.song_id == q.song_id
            print(f"{condition} | {length:g} | {len(chosen)} | {right[0]} | {right[1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
