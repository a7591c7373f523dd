"""Join audio files into one album image with its cue sheet, as a CD ripper leaves them (bench/README.md, "Albums
kept as one file with a cue sheet").

    python bench/album_image.py A.mp3 B.mp3 C.mp3 --out FOLDER [--title "Dev Sampler"]

Writes FOLDER/TITLE.flac (44.1 kHz stereo, the files one after the other, decoded by ffmpeg) and FOLDER/TITLE.cue in
Windows-1252 with CRLF lines, its FILE line naming TITLE.wav (the ripper's first output), one track per file titled
after the file name. Prints where each track starts.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100


def decode(path: Path, tmp: Path) -> np.ndarray:
    wav = tmp / "part.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(path), "-ar", str(RATE), "-ac", "2", str(wav)],
                   check=True)
    return sf.read(wav, dtype="float32")[0]


def cue_time(seconds: float) -> str:
    frames = int(round(seconds * 75))
    return f"{frames // 4500:02d}:{frames // 75 % 60:02d}:{frames % 75:02d}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="Album image")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sheet = ['PERFORMER "Various"', f'TITLE "{args.title}"', f'FILE "{args.title}.wav" WAVE']
    parts, start = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(args.files, 1):
            audio = decode(path, Path(tmp))
            title = path.stem.split("__")[-1].replace("_", " ").title()
            sheet += [f"  TRACK {i:02d} AUDIO", f'    TITLE "{title}"', f"    INDEX 01 {cue_time(start)}"]
            print(f"track {i}: {title} from {start:.2f} s ({path.name})")
            parts.append(audio)
            start += len(audio) / RATE
    sf.write(args.out / f"{args.title}.flac", np.concatenate(parts), RATE)
    (args.out / f"{args.title}.cue").write_bytes(("\r\n".join(sheet) + "\r\n").encode("cp1252"))
    print(f"{args.out / (args.title + '.flac')}: {start:.2f} s, with {args.title}.cue")


if __name__ == "__main__":
    main()
