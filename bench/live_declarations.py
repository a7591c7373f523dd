"""What tells the live listener's declarations of the right song from those of other music: two candidate signals.

    .venv/bin/python bench/live_declarations.py DB --unknown DIR [--noise DIR] [--snr 10 0] [--plays 3]

The recordings of ``bench/scan_edges.py`` (same ``--seed``, same draws: unknown music, 40-60 s of a database song,
unknown music) go through the live listener (``Database.listen``, as `nafp listen --input FILE --fast`). Each
declaration (a ``match`` or ``change`` event) is *right* when it names the play's song while the play lasts (from
1 s before it to 6 s after), else *other*. Per condition the script prints, for right and other declarations:
- the *alignment lift* at the declaration: over the window that declared it (its ``n_segments``), the median of
  the declared alignment's similarity with the song minus the song's similarity at other alignments
  (``listener.follow.unaligned_similarity``, the scan's self-null), from the recording's own fingerprints (the
  as-is view);
- how many *jumped early*: moved to a place of their song more than ``CONTINUATION_TOLERANCE_S`` away (a ``resync``)
  within 10 s of being declared;
and which songs the other declarations named. A signal worth a rule separates the two groups.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from scan_edges import parser, setup, with_noise  # noqa: E402
from workflow_lib import SAMPLE_RATE  # noqa: E402

EARLY_S = 10.0


def lift_at(db, fingerprints: np.ndarray, song_id: str, stream_s: float, offset_s: float, n_segments: int) -> float:
    """The declared alignment's median similarity over the song's own at other alignments, on the window of
    ``n_segments`` that ends at ``stream_s`` (the song at ``offset_s`` + stream time)."""
    from workflow_lib import HOP_S
    from workflow_lib.listener.follow import similarity_at, unaligned_similarity

    index = db.searcher.db
    code = index.song_position(song_id)
    last = int(round(stream_s / HOP_S)) - 2  # the newest segment ends at stream_s: it starts 1 s earlier
    first = max(0, last - n_segments + 1)
    q = fingerprints[first:last + 1].astype(np.float32)
    start = first + int(round(offset_s / HOP_S))
    aligned = similarity_at(index, code, start, q)
    ok = np.isfinite(aligned) & (np.abs(q).sum(axis=1) > 0)  # silent segments have zero fingerprints
    if not ok.any():
        return float("nan")
    return float(np.median(aligned[ok] - unaligned_similarity(index, code, start, q)[ok]))


def main() -> int:
    args = parser(__doc__).parse_args()

    from workflow_lib.audio.segments import QUERY_LEVEL_DBFS
    from workflow_lib.listener.decisions import CONTINUATION_TOLERANCE_S
    from workflow_lib.model.embed import embed_audio

    db, plays, noise, conditions, rng = setup(args)
    s = db.searcher
    titles = dict(zip(db.songs["song_id"], db.songs["title"]))
    for snr in conditions:
        found = {True: [], False: []}  # right? -> (lift, jumped early)
        named = Counter()
        for audio, song_id, start_s, end_s in plays:
            audio = with_noise(audio, noise, snr, rng)
            fps = embed_audio(s.fingerprinter, audio, s.batch_size, s.device, raise_to_dbfs=QUERY_LEVEL_DBFS)
            stream = db.listen(SAMPLE_RATE)
            decisions = stream.push(audio)
            stream.finish()
            for i, d in enumerate(decisions):
                if d["event"] not in ("match", "change"):
                    continue
                right = d["song_id"] == song_id and start_s - 1.0 <= d["stream_s"] <= end_s + 6.0
                jumped = False
                for later in decisions[i + 1:]:
                    if later["stream_s"] > d["stream_s"] + EARLY_S or later["event"] in ("lost", "change"):
                        break
                    if later["event"] == "resync" and \
                            abs(later["song_offset_s"] - d["song_offset_s"]) > CONTINUATION_TOLERANCE_S:
                        jumped = True
                        break
                lift = lift_at(db, fps, d["song_id"], d["stream_s"], d["song_offset_s"], d["n_segments"])
                found[right].append((lift, jumped))
                if not right:
                    named[titles.get(d["song_id"], d["song_id"])] += 1
        label = "clean" if snr is None else f"{snr:g} dB"
        for right in (True, False):
            rows = found[right]
            lifts = np.array([x for x, _ in rows if np.isfinite(x)])
            pct = ", ".join(f"{p}th {np.percentile(lifts, p):.2f}" for p in (10, 50, 90)) if len(lifts) else "-"
            print(f"{label}: {'right' if right else 'other'} declarations {len(rows)}; alignment lift {pct}; "
                  f"jumped within {EARLY_S:g} s {sum(j for _, j in rows)}")
        print(f"{label}: other declarations named " + (", ".join(f"{t} {n}" for t, n in named.most_common()) or "-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
