"""Songs of the database that hold the same music as another song: the same recording under two names, a track
reused in another game's soundtrack, a song that contains another.

Real collections have them (16 of the 472 songs of the dev + extra corpus: five pairs and one song contained in
another by the rules below, and two pairs that share passages). They matter wherever a song is searched *as if it
were unknown* (calibration's null queries, the evaluation's unknown-song queries, the monitoring benchmark's unknown
music): skipping the song's own fingerprints still leaves its twin, the search rightly names the twin, and that
right answer is counted as a false positive.
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

Songs can also share only passages: a game track that reuses another's rendered bars (planetblupi's music003
holds about 30 s of music001). Their 10 s windows mix shared and own audio and stay under both rules, yet a
listener rightly names music001 wherever those bars play (the monitoring benchmark counted 2 of its 2.7 held-out
false-alarm minutes there). Where the songs' audio can be read (``find_shared_passages``), 5 s windows whose best
other song scores 0.88 are checked against that song's audio at the place the search found: two windows that
correlate at 0.6 make a twin, or one that correlates at 0.9 (the same audio beyond doubt). The fingerprint alone
cannot tell: sustained chords score 0.9 against another song's too, but their audio does not correlate.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from workflow_lib.search.copies import SAME_MUSIC_SCORE
from workflow_lib import HOP_S
from workflow_lib.search.ranking import find_neighbours, search_embeddings

log = logging.getLogger(__name__)

COLUMNS = ["song_id", "duplicate_id", "windows", "windows_searched", "mean_score"]
MAX_WINDOWS = 40
WINDOW_SEGMENTS = 19  # 10 s
MIN_SCORE = SAME_MUSIC_SCORE  # a twin's windows score as two files of one recording do
MIN_WINDOWS = 2
CONTAINED_SCORE = 0.8
CONTAINED_SHARE = 0.5  # of the windows searched
PASSAGE_SEGMENTS = 9  # 5 s
PASSAGE_MAX_WINDOWS = 200
PASSAGE_SCORE = 0.88
PASSAGE_CORRELATION = 0.6
PASSAGE_WINDOWS = 2
# One window whose audio correlates this well is the same audio on its own: unrelated music stays under 0.15, and
# tracks of one game built from the same samples under 0.6, so no second window is needed to rule out chance. A short
# song may have only one window at the fingerprint score that is checked (Plee the Bear's 30 s "title-screen" holds
# "back": 0.93 in one window, 0.62 in a second that scores 0.82; bench/README.md, "Seeds 48-71").
SAME_AUDIO_CORRELATION = 0.9


def window_answers(db, song_id: str, max_windows: int = MAX_WINDOWS, window_segments: int = WINDOW_SEGMENTS,
                   top_k: int = 20, max_candidates: int = 200) -> tuple[int, list[tuple[float, str, float, float]]]:
    """(windows searched, [(window start in the song (s), best other song, its aligned score, where in that song
    (s)) per window]) for one database song: consecutive windows covering it (a song shorter than one window is
    one window), each searched with the song itself skipped."""
    rows = db.song_rows(song_id)
    if len(rows) == 0:
        return 0, []
    window_segments = min(window_segments, len(rows))
    n = min(max_windows, max(1, len(rows) // window_segments))
    starts = np.unique(np.linspace(0, len(rows) - window_segments, n).round().astype(int))
    take = (starts[:, None] + np.arange(window_segments)[None, :]).ravel()
    emb = np.asarray(db.vectors[rows[take]], dtype=np.float32)
    nb = find_neighbours(db, emb, top_k, exclude_song=song_id)  # one batched search for every window
    answers = []
    for w, start in enumerate(starts):
        part = slice(w * window_segments, (w + 1) * window_segments)
        res = search_embeddings(db, emb[part], top_k, "sequence", max_candidates, 1, neighbours=nb[part])
        if res.best is not None:
            answers.append((float(start * HOP_S), res.best.song_id, float(res.best.score), res.best.offset_s))
    return len(starts), answers


def window_scores(db, song_id: str, max_windows: int = MAX_WINDOWS, window_segments: int = WINDOW_SEGMENTS,
                  top_k: int = 20, max_candidates: int = 200) -> tuple[int, list[tuple[str, float]]]:
    """(windows searched, [(best other song, its aligned score) per window]) (``window_answers``)."""
    n, answers = window_answers(db, song_id, max_windows, window_segments, top_k, max_candidates)
    return n, [(other, score) for _, other, score, _ in answers]


def find_duplicates(db, song_ids: Iterable[str] | None = None, max_windows: int = MAX_WINDOWS,
                    window_segments: int = WINDOW_SEGMENTS, min_score: float = MIN_SCORE,
                    min_windows: int = MIN_WINDOWS, top_k: int = 20, max_candidates: int = 200,
                    contained_score: float = CONTAINED_SCORE, contained_share: float = CONTAINED_SHARE
                    ) -> pd.DataFrame:
    """Pairs (song, another song holding the same music) for ``song_ids`` (default: every song), table ``COLUMNS``:
    the other song reaches ``min_score`` in ``min_windows`` windows, or ``contained_score`` in ``contained_share``
    of them (``windows``/``mean_score``: the windows at the rule's level that made it a twin)."""
    ids = [str(s) for s in (db.song_ids if song_ids is None else song_ids)]
    out = [row for sid in ids for row in duplicates_of(db, sid, max_windows, window_segments, min_score,
                                                       min_windows, top_k, max_candidates, contained_score,
                                                       contained_share)]
    table = pd.DataFrame(out, columns=COLUMNS)
    log.info("duplicates: %d of %d songs share music with another song of the database", table.song_id.nunique(),
             len(ids))
    return table


def duplicates_of(db, sid: str, max_windows: int = MAX_WINDOWS, window_segments: int = WINDOW_SEGMENTS,
                  min_score: float = MIN_SCORE, min_windows: int = MIN_WINDOWS, top_k: int = 20,
                  max_candidates: int = 200, contained_score: float = CONTAINED_SCORE,
                  contained_share: float = CONTAINED_SHARE) -> list[dict]:
    """``find_duplicates``' rows for one song."""
    n, best = window_scores(db, sid, max_windows, window_segments, top_k, max_candidates)
    named: dict[str, list[float]] = defaultdict(list)
    for other, score in best:
        named[other].append(score)
    need = min(min_windows, n)
    out = []
    for other, scores in named.items():
        strong = [s for s in scores if s >= min_score]
        contained = [s for s in scores if s >= contained_score]
        # the contained rule needs min_windows windows even in a short song: one window at 0.8 is a confusion
        if len(strong) < need and len(contained) < max(min_windows, contained_share * n):
            continue
        held = strong if len(strong) >= need else contained
        out.append({"song_id": sid, "duplicate_id": other, "windows": len(held), "windows_searched": n,
                    "mean_score": round(float(np.mean(held)), 4)})
    return out


def audio_correlation(window: np.ndarray, other: np.ndarray) -> float:
    """Highest normalised cross-correlation of ``window`` against every equally long stretch of ``other`` (the
    same audio: about 1; unrelated music: under 0.3)."""
    from scipy import signal

    if len(other) < len(window) or not np.any(window):
        return 0.0
    window = window.astype(np.float64)
    other = other.astype(np.float64)
    dots = signal.correlate(other, window, mode="valid", method="fft")
    power = np.concatenate([[0.0], np.cumsum(other ** 2)])
    energy = power[len(window):] - power[:-len(window)]  # of every stretch as long as the window
    return float(np.max(np.abs(dots) / (np.linalg.norm(window) * np.sqrt(np.maximum(energy, 0.0)) + 1e-12)))


def find_shared_passages(db, song_ids: Iterable[str], load_song: Callable[[str], np.ndarray | None],
                         window_segments: int = PASSAGE_SEGMENTS, max_windows: int = PASSAGE_MAX_WINDOWS,
                         min_score: float = PASSAGE_SCORE, min_correlation: float = PASSAGE_CORRELATION,
                         min_windows: int = PASSAGE_WINDOWS, slack_s: float = 1.0,
                         same_audio: float = SAME_AUDIO_CORRELATION) -> pd.DataFrame:
    """Pairs (song, another song sharing passages of the same audio with it), table ``COLUMNS``: in at least
    ``min_windows`` of the song's 5 s windows the other song is the best answer at ``min_score`` and the audio
    there, found by the search, correlates with the window's at ``min_correlation`` (within ``slack_s``).

    One window at ``same_audio`` is enough (a passage that only one window covers).

    ``load_song``: song id -> its 8 kHz audio, or None when it cannot be had (that pair is then not checked). The
    audio decides because the fingerprint cannot: a game track that reuses another's rendered passages and a
    track whose sustained chords sound like another's both score 0.9-0.95 in 5 s windows, but only the first
    correlates (0.7-0.99 against 0.04-0.09 in the dev + extra corpus)."""
    from functools import lru_cache

    song = lru_cache(maxsize=8)(load_song)  # a song and its partners, not the whole collection, in memory
    out = [row for sid in (str(s) for s in song_ids)
           for row in shared_passages_of(db, sid, song, window_segments, max_windows, min_score, min_correlation,
                                         min_windows, slack_s, same_audio)]
    table = pd.DataFrame(out, columns=COLUMNS)
    log.info("shared passages: %d songs share audio with another song of the database", table.song_id.nunique())
    return table


def shared_passages_of(db, sid: str, song: Callable[[str], np.ndarray | None],
                       window_segments: int = PASSAGE_SEGMENTS, max_windows: int = PASSAGE_MAX_WINDOWS,
                       min_score: float = PASSAGE_SCORE, min_correlation: float = PASSAGE_CORRELATION,
                       min_windows: int = PASSAGE_WINDOWS, slack_s: float = 1.0,
                       same_audio: float = SAME_AUDIO_CORRELATION) -> list[dict]:
    """``find_shared_passages``' rows for one song; ``song``: song id -> its audio (cached by the caller)."""
    from workflow_lib import HOP_SAMPLES, SAMPLE_RATE

    n, answers = window_answers(db, sid, max_windows, window_segments)
    held: dict[str, list[tuple[float, float]]] = defaultdict(list)  # other song -> (score, correlation)
    for start_s, other, score, offset_s in answers:
        if score < min_score:
            continue
        mine, theirs = song(sid), song(other)
        if mine is None or theirs is None:
            continue
        a = int(start_s * SAMPLE_RATE)
        window = mine[a:a + window_segments * HOP_SAMPLES]
        lo = max(0, int((offset_s - slack_s) * SAMPLE_RATE))
        hi = int((offset_s + slack_s) * SAMPLE_RATE) + len(window)
        correlation = audio_correlation(window, theirs[lo:hi])
        if correlation >= min_correlation:
            held[other].append((score, correlation))
    return [{"song_id": sid, "duplicate_id": other, "windows": len(found), "windows_searched": n,
             "mean_score": round(float(np.mean([score for score, _ in found])), 4)}
            for other, found in held.items()
            if len(found) >= min_windows or max(c for _, c in found) >= same_audio]


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


def twins_of(index_dir, song_ids: Iterable[str], paths: Mapping[str, str] | None = None
             ) -> dict[str, frozenset[str]]:
    """The twins of ``song_ids`` in the database of ``index_dir`` (``find_duplicates``, then ``duplicate_groups``);
    with ``paths`` (song id -> audio file), songs sharing passages with them too (``find_shared_passages``)."""
    from workflow_lib.database.index import FingerprintDB

    ids = list(song_ids)
    if not ids:
        return {}
    db = FingerprintDB.load(index_dir)
    return duplicate_groups(find_twins(db, ids, paths))


def find_twins(db, song_ids: Iterable[str], paths: Mapping[str, str] | None = None, workers: int = 1
               ) -> pd.DataFrame:
    """``find_duplicates`` and, with ``paths`` (song id -> audio file), ``find_shared_passages``: every song a
    song searched as unknown must skip. ``workers`` threads take a song each (each song's search is its own, so
    the table is the same for any number; FAISS and the correlations' FFTs release the GIL): the calibration of a
    big collection searches every song."""
    from functools import lru_cache

    from workflow_lib.common.background import ordered_map

    ids = [str(s) for s in song_ids]
    # each worker's song and its partners
    song = lru_cache(maxsize=8 * max(1, workers))(_path_loader(paths)) if paths else None

    def one(sid: str) -> list[dict]:
        return duplicates_of(db, sid) + (shared_passages_of(db, sid, song) if song else [])

    rows = [row for found in ordered_map(one, ids, workers) for row in found]
    table = pd.DataFrame(rows, columns=COLUMNS).drop_duplicates(["song_id", "duplicate_id"]).reset_index(drop=True)
    log.info("twins: %d of %d songs share music or passages with another song of the database",
             table.song_id.nunique(), len(ids))
    return table


def _path_loader(paths: Mapping[str, str]) -> Callable[[str], np.ndarray | None]:
    from workflow_lib.audio.files import load_audio

    def load(song_id: str) -> np.ndarray | None:
        path = paths.get(song_id)
        if path is None:
            return None
        try:
            return load_audio(path)
        except Exception as err:  # a file that cannot be read is not checked; the fingerprint rules still hold
            log.warning("shared passages: %s not checked (%s)", path, err)
            return None

    return load
