"""Does dereverberating the query help in resonant spaces? WPE (weighted prediction error, ``nara_wpe``) on an
evaluation run's own query files (bench/README.md, "Realistic evaluation", the ablation paragraph, and "Dereverberation
inside the whitened view").

Each query is searched in the views asked for (``--views``): ``plain`` (as it is), ``white`` (the searcher's whitened
view, ``WhitenedView.make``), ``wpe`` (WPE alone, the first try), ``wpe+white`` (WPE, then the whitened view),
``notch`` (the query's narrow stationary spectral lines cut, ``notch``: "Cutting the ringing lines" in bench/README.md)
and ``notch+white`` (cut, then whitened). Rules:
each view alone, and the product's pick (the view whose margin is larger) between ``plain`` and each other view.
Unseen-song queries give top-1 and right-and-accepted; the evaluation's unknown-song queries (searched with their
song and its twins skipped, as the evaluation searches them) give each rule its own thresholds for ``--fpr``, fitted
per length on them pooled over conditions (as the calibrate rule pools), and the false-positive rate per condition.
``--paired A B`` prints the queries rule B answers right and A does not, and the reverse.

``nara_wpe`` is not a dependency of the project (neither way paid enough): ``pip install nara_wpe`` first (only
for the ``wpe`` views).

    python bench/query_dereverb.py RESULTS [--n 200] [--lengths 3 5 10] [--conditions C ...]
        [--views plain white wpe+white] [--taps 10] [--delay 3] [--frame 256] [--out rows.parquet]
        [--paired "plain|white" "plain|wpe+white"]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_lib import SAMPLE_RATE  # noqa: E402
from workflow_lib.audio.files import load_audio  # noqa: E402
from workflow_lib.cli.query import load_searcher  # noqa: E402
from workflow_lib.search.duplicates import parse_exclusion  # noqa: E402
from query_whiten import pick_rule, saved_or_collected  # noqa: E402

VIEWS = ("plain", "white", "wpe", "wpe+white", "notch", "notch+white")


def dereverb(x: np.ndarray, taps: int, delay: int, frame: int) -> np.ndarray:
    """``x`` through offline single-channel WPE (frames of ``frame`` samples, a quarter-frame shift, 3 iterations),
    at ``x``'s RMS and length."""
    from nara_wpe.utils import istft, stft
    from nara_wpe.wpe import wpe_v8 as wpe  # the library's batched version of the same algorithm

    x = np.asarray(x, dtype=np.float64)
    spec = stft(x, size=frame, shift=frame // 4).T[:, None, :]  # (frequencies, 1 channel, frames)
    out = istft(wpe(spec, taps=taps, delay=delay, iterations=3)[:, 0, :].T, size=frame, shift=frame // 4)[:len(x)]
    out = np.pad(out, (0, max(0, len(x) - len(out))))
    return (out * np.sqrt(np.mean(x ** 2) / max(np.mean(out ** 2), 1e-20))).astype(np.float32)


def notch(x: np.ndarray, nperseg: int = 4096, width_hz: float = 60.0, margin_db: float = 3.0,
          max_cut_db: float = 30.0) -> np.ndarray:
    """``x`` with its narrow stationary spectral lines cut: the query's long-term spectrum at 2 Hz resolution (Welch,
    0.5 s Hann segments), each bin's rise above the running median of +-``width_hz`` around it, and a zero-phase
    filter that takes that rise (less ``margin_db``, at most ``max_cut_db``) out. A resonance that rings for a second
    is a line a few hertz wide standing over the music's and the noise's broad spectrum; this flattens only those."""
    from scipy import ndimage, signal

    x = np.asarray(x, dtype=np.float64)
    n = min(nperseg, 1 << int(np.log2(max(len(x) // 2, 256))))
    _, psd = signal.welch(x, SAMPLE_RATE, window="hann", nperseg=n)
    level = 10 * np.log10(psd + 1e-20)
    width = max(3, int(round(2 * width_hz * n / SAMPLE_RATE)) | 1)
    rise = level - ndimage.median_filter(level, size=width, mode="nearest")
    gain = 10 ** (-np.clip(rise - margin_db, 0.0, max_cut_db) / 20)
    h = np.fft.fftshift(np.fft.irfft(gain, n)) * np.hanning(n)  # zero-phase FIR, centred
    out = signal.fftconvolve(x, h, mode="same")
    return (out * np.sqrt(np.mean(x ** 2) / max(np.mean(out ** 2), 1e-20))).astype(np.float32)


def collect(args: argparse.Namespace) -> pd.DataFrame:
    searcher, _ = load_searcher(argparse.Namespace(results=args.results, config=None))  # as `nafp query` opens it
    queries = pd.read_parquet(args.results / "eval" / "queries" / "queries.parquet")
    conditions = args.conditions or queries["condition"].unique()
    chosen = queries[queries["condition"].isin(conditions) & queries["length_s"].isin(args.lengths)
                     & queries["group"].isin(["unseen", "unknown"])]
    chosen = chosen.groupby(["group", "condition", "length_s"]).head(args.n)
    rows, wpe_s = [], 0.0
    for i, q in enumerate(chosen.itertuples(), 1):
        x = load_audio(args.results / "eval" / "queries" / q.file, SAMPLE_RATE)
        skip = parse_exclusion(q.exclude_song)  # the song and its twins, as the evaluation skips them
        t0 = time.perf_counter()
        wet = dereverb(x, args.taps, args.delay, args.frame) if {"wpe", "wpe+white"} & set(args.views) else None
        wpe_s += time.perf_counter() - t0
        cut = notch(x) if {"notch", "notch+white"} & set(args.views) else None
        make = {"plain": lambda: x, "white": lambda: searcher.whitened_view.make(x), "wpe": lambda: wet,
                "wpe+white": lambda: searcher.whitened_view.make(wet), "notch": lambda: cut,
                "notch+white": lambda: searcher.whitened_view.make(cut)}
        for view in args.views:
            result = searcher.search(searcher.embed(make[view]()), exclude_song=skip)
            best = result.best
            rows.append({"query_id": q.query_id, "group": q.group, "condition": q.condition,
                         "length_s": q.length_s, "view": view,
                         "right": best is not None and best.song_id == q.song_id,
                         "margin": searcher.decision(result) if best is not None else -np.inf})
        if i % 500 == 0:
            print(f"{i}/{len(chosen)} queries", file=sys.stderr, flush=True)
    if {"wpe", "wpe+white"} & set(args.views):
        print(f"WPE: {1000 * wpe_s / max(len(chosen), 1):.1f} ms per query", file=sys.stderr)
    return pd.DataFrame(rows)


def rules_of(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    wide = rows.pivot_table(index=["group", "condition", "length_s", "query_id"], columns="view",
                            values=["right", "margin"], aggfunc="first")
    views = [v for v in VIEWS if ("margin", v) in wide.columns]
    out = {v: pick_rule(wide, [v]) for v in views}
    out.update({f"plain|{v}": pick_rule(wide, ["plain", v]) for v in views if v != "plain"})
    return out


def report(rows: pd.DataFrame, fpr: float) -> None:
    table = []
    for name, r in rules_of(rows).items():
        r = r.reset_index()
        for length, by_length in r.groupby("length_s"):
            threshold = float(np.quantile(by_length[by_length["group"] == "unknown"]["margin"], 1 - fpr))
            for condition, g in by_length.groupby("condition", sort=False):
                found, unknown = g[g["group"] == "unseen"], g[g["group"] == "unknown"]
                table.append({"rule": name, "length_s": length, "condition": condition, "queries": len(found),
                              "top-1 %": 100 * found["right"].mean(),
                              "right and accepted %": 100 * (found["right"] & (found["margin"] >= threshold)).mean(),
                              "FPR %": 100 * (unknown["margin"] >= threshold).mean(), "threshold": threshold})
    t = pd.DataFrame(table)
    names = list(dict.fromkeys(t["rule"]))
    print(f"{t['queries'].max()} unseen-song queries per cell; thresholds for {100 * fpr:g} % per rule and length")
    for column in ("top-1 %", "right and accepted %", "FPR %"):
        wide = t.pivot_table(index=["length_s", "condition"], columns="rule", values=column, sort=False)[names]
        print(f"\n{column}\n" + wide.round(1).to_string())
    print("\nthresholds\n" + t.pivot_table(index="length_s", columns="rule", values="threshold")[names].round(3)
          .to_string())


def paired(rows: pd.DataFrame, a: str, b: str) -> None:
    rules = rules_of(rows)
    seen = rules[a].index.get_level_values("group") == "unseen"
    ra, rb = rules[a][seen]["right"], rules[b][seen]["right"]
    t = pd.DataFrame({f"right by {b} only": rb & ~ra, f"right by {a} only": ra & ~rb})
    t = t.groupby(level=["condition", "length_s"], sort=False).sum()
    print(f"\n{b} against {a}, unseen-song queries\n" + t.to_string() + f"\nall: {t.sum().to_dict()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder of the workflow with results/eval/queries")
    ap.add_argument("--n", type=int, default=200, help="queries per group, condition and length (the first ones)")
    ap.add_argument("--lengths", type=float, nargs="+", default=[3.0, 5.0, 10.0])
    ap.add_argument("--conditions", nargs="+", help="of the evaluation's conditions (default: all of them)")
    ap.add_argument("--views", nargs="+", choices=VIEWS, default=["plain", "white", "wpe+white"])
    ap.add_argument("--taps", type=int, default=10)
    ap.add_argument("--delay", type=int, default=3)
    ap.add_argument("--frame", type=int, default=256, help="WPE's frame in samples at 8 kHz (shift: a quarter)")
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--out", type=Path, help="save (or, when it exists, reuse) the per-query rows as Parquet")
    ap.add_argument("--paired", nargs=2, metavar=("RULE_A", "RULE_B"), help='e.g. "plain|white" "plain|wpe+white"')
    args = ap.parse_args()
    rows = saved_or_collected(args.out, lambda: collect(args))
    report(rows, args.fpr)
    if args.paired:
        paired(rows, *args.paired)
    return 0


if __name__ == "__main__":
    sys.exit(main())
