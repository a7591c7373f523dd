"""Make the other music shipped beside a model (``database.other_music``): the fingerprints of its bank's songs.

    .venv/bin/python bench/make_other_music.py --root /work/nafp-extra/corpus/music --model models/nafp-small.pt

The songs are those the model's bank of null queries was cut from (``models/<model>.null.npz``, its ``meta['songs']``
titles: the file names under ``--root``, as bench/make_null_bank.py took them), fingerprinted with the model as the
``extract`` stage does, each under the id ``other-music:<title>``. Written beside the model
(``models/<model>.other.parquet``, or ``--out``); prints what it wrote.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from workflow_lib.audio.files import AUDIO_EXTENSIONS  # noqa: E402
from workflow_lib.common.layout import null_bank_path, other_music_path  # noqa: E402
from workflow_lib.database.extract import extract_songs, load_model  # noqa: E402
from workflow_lib.database.other_music import other_music_id  # noqa: E402
from workflow_lib.evaluation.null_bank import NullBank  # noqa: E402


def bank_song_files(bank: NullBank, root: Path) -> pd.DataFrame:
    """The bank's songs' files under ``root`` (``song_id``, ``path``, ``duration_s``), by title; every one must be
    there."""
    by_stem = {p.stem: p for p in sorted(root.iterdir()) if p.suffix.lower() in AUDIO_EXTENSIONS}
    songs = bank.meta.get("songs", [])
    missing = [s["title"] for s in songs if s["title"] not in by_stem]
    if missing:
        raise SystemExit(f"{len(missing)} of the bank's {len(songs)} songs are not under {root}: {missing[:5]}")
    return pd.DataFrame({"song_id": [other_music_id(s["title"]) for s in songs],
                         "path": [str(by_stem[s["title"]]) for s in songs],
                         "duration_s": [float(s["duration_s"]) for s in songs]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, type=Path, help="the music folder the bank's songs come from")
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=None, help="default: beside the model")
    args = ap.parse_args()

    out = args.out or other_music_path(args.model)
    bank = NullBank.load(null_bank_path(args.model))
    songs = bank_song_files(bank, args.root)
    fingerprinter, identity = load_model(args.model, "cpu")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # no part files beside the shipped one
        meta = extract_songs(fingerprinter, identity, songs, out, device="cpu", reuse=False, cache_dir=cache)
    if meta.skipped:
        raise SystemExit(f"{len(meta.skipped)} song(s) could not be fingerprinted: {meta.skipped}")
    print(f"{out}: {meta.n_songs} songs ({songs['duration_s'].sum() / 60:.0f} min), {meta.n_rows} fingerprints, "
          f"{out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
