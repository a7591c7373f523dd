"""Songs of the database that hold the same music as another song: the same recording under two names, a track
reused in another game's soundtrack, a song that contains another.

Real collections have them (12 of the 472 songs of the dev + extra corpus: five pairs, and one song contained in
another). They matter wherever a song is searched *as if it were unknown* (calibration's null queries, the
evaluation's unknown-song queries, the monitoring benchmark's unknown music): skipping the song's own fingerprints
still leaves its twin, the search rightly names the twin, and that right answer is counted as a false positive.
Such "false positives" are the top of the null distribution, so they set the threshold for strict rates (the
listener's 0.2 %), making it reject most real matches. Every place that searches a song as unknown therefore skips
the song's twins too.

A twin is found by searching the song's own stored fingerprints in consecutive windows of ``window_segments``
(10 s) covering the song (at most ``max_windows``, evenly spread), each with the song itself skipped. Another song
holds the same music when either
- its aligned score reaches ``min_score`` in at least ``min_windows`` windows: the same recording, whose stored
  fingerprints (of the clean files) score 0.9-0.99 window after window; or
- it reaches ``contained_score`` in at least ``contained_share`` of the windows (and in ``min_windows``): a song
  built on another in a different mix (a game's 31 s "bonus" cue on its "guitar" theme scores 0.81-0.84 in each of
  its three windows).
About 1 % of all windows reach 0.8 against some other song once (and one long song of the corpus does in 6 of its
40 windows against another), mostly quiet or ambient passages: those are the model's own confusions, which a song
searched as unknown must still be able to make, so neither a single window nor a minority of them is enough.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable

import numpy as np
import pandas as pd

from workflow_lib.search.searcher import find_neighbours, search_embeddings

log = logging.getLogger(__name__)

COLUMNS = ["song_id", "duplicate_id", "windows", "windows_searched", "mean_score"]
MAX_WINDOWS = 40
WINDOW_SEGMENTS = 19  # 10 s
MIN_SCORE = 0.85
MIN_WINDOWS = 2
CONTAINED_SCORE = 0.8
CONTAINED_SHARE = 0.5  # of the windows searched


def window_scores(db, song_id: str, max_windows: int = MAX_WINDOWS, window_segments: int = WINDOW_SEGMENTS,
                  top_k: int = 20, max_candidates: int = 200) -> tuple[int, list[tuple[str, float]]]:
    """(windows searched, [(best other song, its aligned score) per window]) for one database song: consecutive
    windows covering it (a song shorter than one window is one window)."""
    rows = db.song_rows(song_id)
    if len(rows) == 0:
        return 0, []
    window_segments = min(window_segments, len(rows))
    n = min(max_windows, max(1, len(rows) // window_segments))
    starts = np.unique(np.linspace(0, len(rows) - window_segments, n).round().astype(int))
    take = (starts[:, None] + np.arange(window_segments)[None, :]).ravel()
    emb = np.asarray(db.vectors[rows[take]], dtype=np.float32)
    nb = find_neighbours(db, emb, top_k, exclude_song=song_id)  # one batched search for every window
    best = []
    for w in range(len(starts)):
        part = slice(w * window_segments, (w + 1) * window_segments)
        res = search_embeddings(db, emb[part], top_k, "sequence", max_candidates, 1, neighbours=nb[part])
        if res.best is not None:
            best.append((res.best.song_id, float(res.best.score)))
    return len(starts), best


def find_duplicates(db, song_ids: Iterable[str] | None = None, max_windows: int = MAX_WINDOWS,
                    window_segments: int = WINDOW_SEGMENTS, min_score: float = MIN_SCORE,
                    min_windows: int = MIN_WINDOWS, top_k: int = 20, max_candidates: int = 200,
                    contained_score: float = CONTAINED_SCORE, contained_share: float = CONTAINED_SHARE
                    ) -> pd.DataFrame:
    """Pairs (song, another song holding the same music) for ``song_ids`` (default: every song), table ``COLUMNS``:
    the other song reaches ``min_score`` in ``min_windows`` windows, or ``contained_score`` in ``contained_share``
    of them (``windows``/``mean_score``: the windows at the rule's level that made it a twin)."""
    ids = [str(s) for s in (db.song_ids if song_ids is None else song_ids)]
    out = []
    for sid in ids:
        n, best = window_scores(db, sid, max_windows, window_segments, top_k, max_candidates)
        named: dict[str, list[float]] = defaultdict(list)
        for other, score in best:
            named[other].append(score)
        need = min(min_windows, n)
        for other, scores in named.items():
            strong = [s for s in scores if s >= min_score]
            contained = [s for s in scores if s >= contained_score]
            # the contained rule needs min_windows windows even in a short song: one window at 0.8 is a confusion
            if len(strong) < need and len(contained) < max(min_windows, contained_share * n):
                continue
            held = strong if len(strong) >= need else contained
            out.append({"song_id": sid, "duplicate_id": other, "windows": len(held), "windows_searched": n,
                        "mean_score": round(float(np.mean(held)), 4)})
    table = pd.DataFrame(out, columns=COLUMNS)
    log.info("duplicates: %d of %d songs share music with another song of the database", table.song_id.nunique(),
             len(ids))
    return table


def duplicate_groups(table: pd.DataFrame | None) -> dict[str, frozenset[str]]:
    """song -> the other songs it must not be searched against when it plays the unknown song: its twins in both
    directions (A found B, or B found A)."""
    groups: dict[str, set[str]] = defaultdict(set)
    if table is not None:
        for a, b in zip(table["song_id"].astype(str), table["duplicate_id"].astype(str)):
            if a != b:
                groups[a].add(b)
                groups[b].add(a)
    return {k: frozenset(v) for k, v in groups.items()}


def unknown_exclusion(song_id: str, groups: dict[str, frozenset[str]]) -> str | frozenset[str]:
    """What to skip when ``song_id`` is searched as unknown: the song, and its twins when it has any."""
    twins = groups.get(song_id)
    return frozenset({song_id, *twins}) if twins else song_id


EXCLUDE_SEP = "|"  # song ids are hex digests: the separator never occurs in one


def format_exclusion(exclude: str | Iterable[str] | None) -> str | None:
    """An exclusion as one table cell (``queries.parquet``'s ``exclude_song``): ids joined by ``EXCLUDE_SEP``."""
    if exclude is None:
        return None
    return exclude if isinstance(exclude, str) else EXCLUDE_SEP.join(sorted(exclude))


def parse_exclusion(cell: object) -> str | frozenset[str] | None:
    """The exclusion a table cell holds: None, one song id, or a set of them."""
    if not isinstance(cell, str) or not cell:
        return None
    ids = cell.split(EXCLUDE_SEP)
    return ids[0] if len(ids) == 1 else frozenset(ids)


def twins_of(index_dir, song_ids: Iterable[str]) -> dict[str, frozenset[str]]:
    """The twins of ``song_ids`` in the database of ``index_dir`` (``find_duplicates``, then ``duplicate_groups``)."""
    from workflow_lib.database.index import FingerprintDB

    ids = list(song_ids)
    if not ids:
        return {}
    return duplicate_groups(find_duplicates(FingerprintDB.load(index_dir), ids))


def load_duplicates(path) -> pd.DataFrame:
    """The table ``find_duplicates`` wrote (CSV); an empty one when ``path`` is None or missing (a database
    built before duplicates were looked for)."""
    from pathlib import Path

    if path is None or not Path(path).exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(path, dtype={"song_id": str, "duplicate_id": str})
