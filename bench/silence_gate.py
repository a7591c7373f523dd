"""What measuring the silence gate's level above 300 Hz changes on real music, and what it costs
(bench/README.md, "Hum and a DC offset are silence too").

For every 1 s segment (0.5 s hop) of the songs under MUSIC (every ``--every``-th file), the level as the gate used
to measure it (the RMS of the whole band) and as it measures it now (``segments.segment_levels_db``: above
``LEVEL_BAND_LOW_HZ``). Prints how many segments each gate passes and how many change side, the loudest bin of the
model's magnitude mel spectrogram for the segments by their in-band level (what the front end's +0.06 log floor
leaves of them), and the time the level takes per segment, in a batch and one at a time (the listener's case).

    python bench/silence_gate.py MUSIC [--every 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workflow_lib.audio.files import AUDIO_EXTENSIONS, load_audio  # noqa: E402
from workflow_lib.audio.segments import SILENCE_DBFS, frame, segment_levels_db  # noqa: E402
from workflow_lib.model.features import FrontendConfig, LogMelFrontend  # noqa: E402

BINS = [(-np.inf, -65), (-65, -60), (-60, -55), (-55, -50), (-50, -45)]


def broadband_levels_db(segments: np.ndarray) -> np.ndarray:
    """The gate's level before: the RMS of the whole band, DC included."""
    x = np.asarray(segments, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.mean(x * x, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("music", type=Path)
    ap.add_argument("--every", type=int, default=3, help="take every n-th file (sorted by path)")
    args = ap.parse_args()
    files = sorted(p for p in args.music.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)[::args.every]
    if not files:
        sys.exit(f"no audio files under {args.music}")
    frontend = LogMelFrontend(FrontendConfig())
    before, after, loudest_mel = [], [], []
    for path in files:
        segments = frame(load_audio(path))
        before.append(broadband_levels_db(segments))
        after.append(segment_levels_db(segments))
        with torch.no_grad():
            loudest_mel.append(frontend.spectrogram(torch.from_numpy(np.array(segments))).amax(dim=(1, 2)).numpy())
    before, after, loudest_mel = map(np.concatenate, (before, after, loudest_mel))
    old, new = before >= SILENCE_DBFS, after >= SILENCE_DBFS
    print(f"{len(files)} songs, {len(before)} segments; gate {SILENCE_DBFS:g} dBFS")
    print(f"  passed by the whole-band level: {old.sum()} ({old.mean():.2%}); by the level above 300 Hz: "
          f"{new.sum()} ({new.mean():.2%})")
    print(f"  newly gated: {(old & ~new).sum()} ({(old & ~new).sum() / max(old.sum(), 1):.2%} of those passed "
          f"before); newly passed: {(new & ~old).sum()}")
    loud = before > -50
    diff = before[loud] - after[loud]
    print("  whole band minus above 300 Hz, segments louder than -50 dBFS: median %.1f dB, 10th-90th percentile "
          "%.1f-%.1f dB" % (np.median(diff), *np.percentile(diff, [10, 90])))
    print("  loudest magnitude-mel bin (the log floor adds 0.06) of the segments the old gate passed, by their level "
          "above 300 Hz:")
    for lo, hi in BINS:
        m = old & (after >= lo) & (after < hi)
        if m.any():
            print(f"    {lo:>5} to {hi} dBFS: {m.sum():5d} segments, median {np.median(loudest_mel[m]):.3f}, "
                  f"90th percentile {np.percentile(loudest_mel[m], 90):.3f}")
    batch = np.random.default_rng(0).standard_normal((1000, 8000)).astype(np.float32)
    segment_levels_db(batch[:2])  # scipy.fft's first call plans
    t0 = time.perf_counter()
    for _ in range(5):
        segment_levels_db(batch)
    t1 = time.perf_counter()
    for row in batch[:200]:
        segment_levels_db(row[None, :])
    t2 = time.perf_counter()
    print(f"  cost: {(t1 - t0) / 5:.3f} ms per segment in batches of 1000, "
          f"{(t2 - t1) / 200 * 1e3:.3f} ms for one segment alone")


if __name__ == "__main__":
    main()
