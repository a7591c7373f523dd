"""How much of a 1 s segment's embedding depends on the order of its sound: the cosine between a segment's
fingerprint and that of the same second played backwards, beside the segments a quarter and a half second later
(the database's hop is 0.5 s) and a random other segment.

Segments of ``--per-song`` random starts in every ``--every``-th song of ``--music`` (sorted by name; the silence gate
left out, so quiet starts are skipped here instead), fingerprinted by ``--model``.

    .venv/bin/python bench/segment_order.py --model models/nafp-small.pt --music ../shared/corpus/dev/music
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from workflow_lib import SAMPLE_RATE, SEGMENT_SAMPLES  # noqa: E402
from workflow_lib.audio.files import load_audio  # noqa: E402
from workflow_lib.database.extract import load_model  # noqa: E402
from workflow_lib.model.embed import embed_segments  # noqa: E402


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/nafp-small.pt")
    ap.add_argument("--music", required=True, type=Path)
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--per-song", type=int, default=20)
    args = ap.parse_args()

    model, _ = load_model(args.model, "cpu")
    rng = np.random.default_rng(0)
    shifts = {"a quarter second later": SAMPLE_RATE // 4, "half a second later (one hop)": SAMPLE_RATE // 2}
    views: dict[str, list[np.ndarray]] = {"segment": [], "played backwards": [], **{k: [] for k in shifts}}
    songs = sorted(p for p in args.music.iterdir() if p.suffix.lower() in {".mp3", ".flac", ".wav", ".ogg"})
    for path in songs[::args.every]:
        audio = load_audio(path)
        for _ in range(args.per_song):
            start = int(rng.integers(0, len(audio) - 2 * SEGMENT_SAMPLES))
            segment = audio[start:start + SEGMENT_SAMPLES]
            if np.sqrt(np.mean(segment ** 2)) < 1e-3:  # about -60 dBFS: silence, which the database never holds
                continue
            views["segment"].append(segment)
            views["played backwards"].append(segment[::-1].copy())
            for name, shift in shifts.items():
                views[name].append(audio[start + shift:start + shift + SEGMENT_SAMPLES])
    emb = {name: embed_segments(model, np.stack(v), silence_dbfs=None) for name, v in views.items()}
    others = emb["segment"][rng.permutation(len(emb["segment"]))]
    print(f"{args.model}: {len(emb['segment'])} segments of {len(songs[::args.every])} songs")
    for name, other in [*((k, emb[k]) for k in views if k != "segment"), ("a random other segment", others)]:
        c = cosine(emb["segment"], other)
        print(f"  cosine with the segment {name:32s} mean {c.mean():.3f}  median {np.median(c):.3f}  "
              f"10th percentile {np.percentile(c, 10):.3f}")


if __name__ == "__main__":
    main()
