"""What the silence gate's level counting the model's band changes on real music, what it costs, and how quiet
music the model can still name (bench/README.md, "Hum and a DC offset are silence too").

For every 1 s segment (0.5 s hop) of the songs under MUSIC (every ``--every``-th file): the level the gate used to
compare (the RMS), the level above ``LEVEL_BAND_LOW_HZ`` alone, and the gate's level now
(``segments.segment_levels_db``: the lower of the RMS and the band's level plus ``BAND_ALLOWANCE_DB``). Prints how
many segments each passes and how many change side, the loudest bin of the model's magnitude mel spectrogram for
them by their level in the band (what the front end's +0.06 log floor leaves of them), and the time the level takes
per segment, in a batch and one at a time (the listener's case).

With ``--results DB`` (a database holding the songs of MUSIC, e.g. made by ``nafp index MUSIC``): ``--per-song``
5 s excerpts of each song, scaled so that their level in the band is each of ``--levels``, searched with the gate
switched off: how quiet music can be above 300 Hz for the model to still name it.

    python bench/silence_gate.py MUSIC [--every 3] [--results DB --per-song 8 --levels -50 -55 -60 -65 -70]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workflow_lib.audio import segments as gate  # noqa: E402
from workflow_lib.audio.files import AUDIO_EXTENSIONS, load_audio  # noqa: E402
from workflow_lib.audio.segments import SILENCE_DBFS, band_levels_db, frame, segment_levels_db  # noqa: E402
from workflow_lib.model.features import FrontendConfig, LogMelFrontend  # noqa: E402

BINS = [(-np.inf, -65), (-65, -60), (-60, -55), (-55, -50), (-50, -45)]


def rms_levels_db(segments: np.ndarray) -> np.ndarray:
    """The gate's level before 2026-12-05: the RMS of the whole band, DC included."""
    x = np.asarray(segments, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.mean(x * x, axis=1))


def segment_counts(files: list[Path]) -> None:
    frontend = LogMelFrontend(FrontendConfig())
    rms, band, now, loudest_mel = [], [], [], []
    for path in files:
        segments = frame(load_audio(path))
        rms.append(rms_levels_db(segments))
        band.append(band_levels_db(segments))
        now.append(segment_levels_db(segments))
        with torch.no_grad():
            loudest_mel.append(frontend.spectrogram(torch.from_numpy(np.array(segments))).amax(dim=(1, 2)).numpy())
    rms, band, now, loudest_mel = map(np.concatenate, (rms, band, now, loudest_mel))
    old, new, band_only = rms >= SILENCE_DBFS, now >= SILENCE_DBFS, band >= SILENCE_DBFS
    print(f"{len(files)} songs, {len(rms)} segments; gate {SILENCE_DBFS:g} dBFS, allowance in the band "
          f"{gate.BAND_ALLOWANCE_DB:g} dB")
    for name, passed in (("the RMS (before)", old), ("the band's level alone", band_only), ("the gate now", new)):
        print(f"  passed by {name}: {passed.sum()} ({passed.mean():.2%}); newly gated against the RMS: "
              f"{(old & ~passed).sum()}, newly passed: {(passed & ~old).sum()}")
    loud = rms > -50
    diff = rms[loud] - band[loud]
    print("  RMS minus the band's level, segments louder than -50 dBFS: median %.1f dB, 10th-90th percentile "
          "%.1f-%.1f dB" % (np.median(diff), *np.percentile(diff, [10, 90])))
    print("  loudest magnitude-mel bin (the log floor adds 0.06) of the segments the RMS passed, by their level in "
          "the band (gated now / of them):")
    for lo, hi in BINS:
        m = old & (band >= lo) & (band < hi)
        if m.any():
            print(f"    {lo:>5} to {hi} dBFS: {(m & ~new).sum():4d} / {m.sum():5d} segments, median "
                  f"{np.median(loudest_mel[m]):.3f}, 90th percentile {np.percentile(loudest_mel[m], 90):.3f}")


def cost() -> None:
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


def quiet_music(files: list[Path], results: Path, per_song: int, levels: list[float]) -> None:
    from workflow_lib.common.config import run_config
    from workflow_lib.common.layout import ResultsLayout
    from workflow_lib.database.catalogue import load_catalogue
    from workflow_lib.model import embed
    from workflow_lib.search.searcher import Searcher, searcher_kwargs

    cfg, _ = run_config(results, None)
    layout = ResultsLayout.of(results, cfg)
    searcher = Searcher.from_layout(layout, **{**searcher_kwargs(cfg.get("search", {})), "device": "cpu"})
    by_path = {str(Path(p).resolve()): sid for sid, p in load_catalogue(layout.catalogue)["path"].items()}
    embed.segment_levels_db = lambda x, sr=8000: np.full(len(x), np.inf)  # the gate off: what the model can do
    rng = np.random.default_rng(0)
    queries = []
    for path in files:
        sid = by_path.get(str(path.resolve()))
        if sid is None:
            continue
        audio = load_audio(path)
        for start in rng.integers(10 * 8000, max(10 * 8000 + 1, len(audio) - 15 * 8000), per_song):
            queries.append((sid, audio[start:start + 5 * 8000]))
    print(f"{len(queries)} excerpts of 5 s from {len(queries) // per_song} songs of {results}, the gate off:")
    for level in levels:
        right = accepted = 0
        for sid, q in queries:
            now = 10 * np.log10(np.mean(10 ** (band_levels_db(frame(q)) / 10)))
            m = searcher.identify((q * 10 ** ((level - now) / 20)).astype(np.float32))
            hit = m.best_guess is not None and m.best_guess.song_id == sid
            right += hit
            accepted += hit and m.is_match
        print(f"  {level:g} dBFS above 300 Hz: best guess right {right}/{len(queries)}, accepted {accepted}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("music", type=Path)
    ap.add_argument("--every", type=int, default=3, help="take every n-th file (sorted by path)")
    ap.add_argument("--results", type=Path, help="a database of MUSIC's songs: also measure quiet excerpts")
    ap.add_argument("--per-song", type=int, default=8)
    ap.add_argument("--levels", type=float, nargs="+", default=[-50, -55, -60, -65, -70])
    args = ap.parse_args()
    files = sorted(p for p in args.music.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        sys.exit(f"no audio files under {args.music}")
    segment_counts(files[::args.every])
    cost()
    if args.results:
        quiet_music(files, args.results, args.per_song, args.levels)


if __name__ == "__main__":
    main()
