"""Edit the tags of MP3 files as a tag editor does, leaving the audio as it is: for `nafp index` run again after a
collection was retagged (bench/README.md, "Running `nafp index` again on a changed folder").

    python bench/retag.py FOLDER --count 30 [--seed 0]

Each chosen file's ID3v2 tag gets a TXXX frame ("retagged by bench/retag.py") in front of its frames, so the file's
first bytes and size change while the MPEG frames after the tag stay byte for byte; a file without an ID3v2 tag gets
one. Prints what it changed. Only ID3v2.3/2.4 tags without a footer are rewritten (others are skipped and named).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def _syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def _unsyncsafe(b: bytes) -> int:
    return (b[0] << 21) | (b[1] << 14) | (b[2] << 7) | b[3]


def retagged(data: bytes, note: str) -> bytes | None:
    """The file's bytes with a TXXX frame added to its ID3v2 tag (a new v2.4 tag where it has none); None when the
    tag is of a kind this does not rewrite."""
    body = b"\x03" + b"nafp bench\x00" + note.encode()  # UTF-8, description, value
    if data[:3] != b"ID3":
        frame = b"TXXX" + _syncsafe(len(body)) + b"\x00\x00" + body
        return b"ID3\x04\x00\x00" + _syncsafe(len(frame)) + frame + data
    major, flags = data[3], data[5]
    if major not in (3, 4) or flags & 0x10 or flags & 0x80:  # other versions, a footer, unsynchronisation
        return None
    size = _unsyncsafe(data[6:10])
    frame_size = _syncsafe(len(body)) if major == 4 else len(body).to_bytes(4, "big")
    frame = b"TXXX" + frame_size + b"\x00\x00" + body
    start = 10
    if flags & 0x40:  # an extended header comes before the frames
        ext = _unsyncsafe(data[10:14]) if major == 4 else int.from_bytes(data[10:14], "big") + 4
        start += ext
    return data[:6] + _syncsafe(size + len(frame)) + data[10:start] + frame + data[start:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    files = sorted(p for p in args.folder.rglob("*.mp3") if p.is_file() and not p.is_symlink())
    chosen = random.Random(args.seed).sample(files, min(args.count, len(files)))
    done = 0
    for path in chosen:
        new = retagged(path.read_bytes(), f"retagged by bench/retag.py (seed {args.seed})")
        if new is None:
            print(f"skipped (tag kind not rewritten): {path}")
            continue
        tmp = path.with_name(path.name + ".retag-tmp")
        tmp.write_bytes(new)
        tmp.replace(path)
        done += 1
    print(f"retagged {done} of {len(files)} MP3 files below {args.folder}")


if __name__ == "__main__":
    main()
