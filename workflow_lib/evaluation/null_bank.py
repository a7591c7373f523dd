"""Other music shipped with a model: the fingerprints of null queries cut from songs no database of a user holds.

A small collection is too little music to calibrate its no-match rule on: ten songs cannot show how close other
music comes to them, and the rule then answers 3-13 % of clean clips of other music instead of 1 % (bench/README.md,
"A small collection's no-match rule"). Other music given with ``nafp index --unknown-music`` mends most of it, but
a user with one album seldom has it to hand. The bundled model therefore ships with a bank of null queries: songs
it never trained on, cut and degraded as the ``calibrate`` rule cuts its own (``null_queries.null_queries``), and
fingerprinted in both of the searcher's views. The audio is not shipped, only the fingerprints, so the bank holds
for that model file alone (its checksum) and for the whitened view it was made with.

``bank_candidates`` searches the bank's queries in a database as the calibration searches its own. A bank song that
the database holds (a user may own it) would make its queries right answers, not null ones: a song whose queries
keep finding one database song at one alignment, or at places where that song repeats itself, is left out
(``held_songs``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from workflow_lib import HOP_SAMPLES, SAMPLE_RATE
from workflow_lib.common.background import ordered_map
from workflow_lib.common.layout import null_bank_path
from workflow_lib.database.other_music import other_music_id
from workflow_lib.evaluation.null_queries import null_queries, record_null_views
from workflow_lib.search.copies import holds_same_music

log = logging.getLogger(__name__)

BANK_FORMAT = "nafp-null-bank/1"
# A bank song counts as held by the database when this share of its queries (and at least HELD_MIN_QUERIES) name
# one database song at one alignment (within HELD_ALIGN_S), or at a place where that song holds the same music (a
# loop answers at any of its repeats): other music scatters over songs and offsets. Measured (bench/README.md,
# "Other music shipped with the model" and "A bank song that repeats itself"): all 40 bank songs in a collection,
# 61-100 % of their queries so aligned (39-100 % at one alignment alone); of the others, in four collections, at most
# 27 % (3 overlapping queries of a 38 s loop).
HELD_SHARE = 0.4
HELD_MIN_QUERIES = 3
HELD_ALIGN_S = 1.0
# The most a bank query may count for (``weigh_bank``): a library of short jingles has a few minutes of its own.
MAX_WEIGHT = 10


@dataclass
class NullBank:
    """Null queries' fingerprints: ``queries`` has one row per query (``song``: row of ``meta['songs']``,
    ``start_s``, ``n_nominal``: samples asked for, ``row``: its first row in ``embeddings``, ``rows0`` / ``rows1``:
    rows of the query as it is and whitened, 0 when not searched whitened), the views' rows one after the other."""

    embeddings: np.ndarray  # float16, (rows, dim)
    queries: pd.DataFrame
    meta: dict = field(default_factory=dict)

    def views(self, i: int) -> list[np.ndarray]:
        q = self.queries.iloc[i]
        first, n0, n1 = int(q["row"]), int(q["rows0"]), int(q["rows1"])
        out = [self.embeddings[first:first + n0].astype(np.float32)]
        if n1:
            out.append(self.embeddings[first + n0:first + n0 + n1].astype(np.float32))
        return out

    @property
    def minutes(self) -> float:
        return float(sum(s["duration_s"] for s in self.meta.get("songs", []))) / 60.0

    def save(self, path: str | Path) -> None:
        from workflow_lib.common.atomic import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, embeddings=self.embeddings.astype(np.float16),
                         queries=self.queries[list(_COLUMNS)].to_numpy(np.float64),
                         meta=np.frombuffer(json.dumps({"format": BANK_FORMAT, **self.meta}).encode(), np.uint8))

    @classmethod
    def load(cls, path: str | Path) -> "NullBank":
        """The bank in ``path``; ValueError when it is not one, or damaged (OSError when it cannot be read)."""
        import zipfile

        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a null-query bank (not an .npz archive)")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                if meta.get("format") != BANK_FORMAT:
                    raise ValueError(f"not of format {BANK_FORMAT}")
                queries = pd.DataFrame(z["queries"], columns=list(_COLUMNS)).astype(_COLUMNS)
                return cls(z["embeddings"], queries, meta)
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable null-query bank ({exc})") from exc


_COLUMNS = {"song": np.int64, "start_s": np.float64, "n_nominal": np.int64, "row": np.int64, "rows0": np.int64,
            "rows1": np.int64}


def make_null_bank(searcher, songs: pd.DataFrame, noise_bank, ir_bank, plan, n_per_length: int, seed: int,
                   model_checksum: str, workers: int = 1) -> NullBank:
    """Cut ``n_per_length`` null queries per length from ``songs`` (``song_id, path, duration_s``, optionally
    ``title``) as the ``calibrate`` rule does (no background-noise-only ones: the user's calibration has its own),
    and keep their fingerprints in both views (``Searcher.embed_views``)."""
    def embed(x: np.ndarray, n_nominal: int, exclude, origin):
        return searcher.embed_views(x), n_nominal, origin

    rows, chunks, n_rows = [], [], 0
    for found in null_queries(songs, noise_bank, ir_bank, plan, n_per_length, 0.0, seed, embed, None, workers,
                              desc="null-query bank"):
        if found is None:
            continue
        embs, n_nominal, (pos, start_s) = found
        if not len(embs[0]):
            continue
        sizes = [len(e) for e in embs] + [0]
        rows.append({"song": pos, "start_s": start_s, "n_nominal": n_nominal, "row": n_rows, "rows0": sizes[0],
                     "rows1": sizes[1]})
        chunks.extend(e.astype(np.float16) for e in embs)
        n_rows += sum(sizes)
    titles = songs["title"] if "title" in songs.columns else songs["song_id"]
    meta = {"model_checksum": model_checksum, "whitened_view": searcher.whitened_view.to_dict(),
            "lengths_s": [float(x) for x in plan.lengths_s], "conditions": [c.name for c in plan.conditions],
            "seed": seed,
            "songs": [{"title": str(t), "duration_s": round(float(d), 1)}
                      for t, d in zip(titles, songs["duration_s"])]}
    emb = np.concatenate(chunks) if chunks else np.zeros((0, searcher.db.dim), np.float16)
    return NullBank(emb, pd.DataFrame(rows, columns=list(_COLUMNS)).astype(_COLUMNS), meta)


def usable_bank(model_path: str | Path, searcher, lengths_s) -> NullBank | None:
    """The bank shipped beside ``model_path``, when there is one made for this model file and the searcher's
    whitened view, holding queries of ``lengths_s``; None otherwise (logged)."""
    from workflow_lib.common.atomic import file_digest

    path = null_bank_path(model_path)
    if not path.is_file():
        log.info("calibration: no bundled other music for %s (%s)", Path(model_path).name, path.name)
        return None
    try:
        bank = NullBank.load(path)
    except (OSError, ValueError) as exc:
        log.warning("calibration: the bundled other music cannot be read (%s); calibrating without it", exc)
        return None
    why = None
    if bank.meta.get("model_checksum") != file_digest(model_path):
        why = "it was made for another model file"
    elif bank.meta.get("whitened_view") != searcher.whitened_view.to_dict():
        why = "it was made with other search.whitened_view settings"
    if why:
        log.warning("calibration: the bundled other music %s is not used: %s", path, why)
        return None
    keep = np.isin(bank.queries["n_nominal"], [int(round(s * SAMPLE_RATE)) for s in lengths_s])
    if not keep.any():
        log.warning("calibration: the bundled other music %s holds no query of the calibrated lengths", path)
        return None
    bank.queries = bank.queries[keep].reset_index(drop=True)
    return bank


def held_songs(bank: NullBank, best: list[tuple[str, float, int, int] | None],
               same_music: Callable[[str, int, int, int], bool] | None = None) -> set[int]:
    """Bank songs the database holds: those whose queries' best candidates (``best[i]``: song id, offset in
    seconds, its segment and the query's length in segments, for query ``i``; None when nothing was found) name one
    database song at one alignment (offset minus the query's start, within ``HELD_ALIGN_S``) for ``HELD_SHARE`` of
    their queries, ``HELD_MIN_QUERIES`` or more. ``same_music(song, a, b, n)``: whether a database song holds the
    same music at segments ``a`` and ``b`` over ``n`` segments; a query answered at such a repeat of the alignment
    counts for it (a looped song's queries land on any of its repeats, too few of them at one place)."""
    held = set()
    for song, idx in bank.queries.groupby("song").indices.items():
        need = max(HELD_MIN_QUERIES, HELD_SHARE * len(idx))
        if song_support(bank_answers(bank, best, idx), same_music, need) >= need:
            held.add(int(song))
    return held


def bank_answers(bank: NullBank, best: list, idx) -> list[tuple[str, float, float, int, int]]:
    """The answers to the bank's queries ``idx`` (``best`` as ``held_songs`` takes it): song id, alignment (offset
    minus the query's start, s), the query's start (s), the answer's segment and the query's length in segments."""
    starts = bank.queries["start_s"].to_numpy(np.float64)
    return [(song, offset - starts[i], float(starts[i]), segment, n)
            for i in idx if best[i] is not None for song, offset, segment, n in [best[i]]]


def song_support(found: list[tuple], same_music=None, enough: float = np.inf) -> int:
    """The most of the ``found`` answers (``bank_answers``) that name one song at one alignment, or at a place of it
    that holds the music found there (``same_music``, as ``held_songs`` takes it); the count stops at ``enough``."""
    most = 0
    for sid, lag in {(f[0], f[1]) for f in found}:
        count = 0
        for s, d, start, segment, n in found:
            if s == sid and (abs(d - lag) <= HELD_ALIGN_S or (same_music is not None and same_music(
                    sid, segment, int(round((start + lag) * SAMPLE_RATE / HOP_SAMPLES)), n))):
                count += 1
                if count >= enough:
                    return count
        most = max(most, count)
    return most


def best_answers(searched: list[list]) -> list[tuple[str, float, int, int] | None]:
    """``held_songs``' ``best`` from the bank's queries searched in their views (the first view's best candidate)."""
    return [(r[0].best.song_id, r[0].best.offset_s, r[0].best.start_segment, r[0].n_segments)
            if r[0].best is not None else None for r in searched]


def same_music_in(db) -> Callable[[str, int, int, int], bool]:
    """``held_songs``' ``same_music`` for a database: a song's stored fingerprints at two places compared
    (``copies.holds_same_music`` of the song with itself)."""
    return lambda song, a, b, n: b >= 0 and holds_same_music(db, song, a, song, b, n)


def bank_candidates(searcher, bank: NullBank, workers: int = 1) -> tuple[dict[int, list[list[list[float]]]], dict]:
    """The bank's queries searched in ``searcher``'s database as the calibration searches its own null queries
    (``null_queries.record_null_views``; ``workers`` threads side by side), without the songs the database holds
    (``held_songs``); and what the threshold file records of them. A query is searched without its own song where
    the index holds it as other music (``database.other_music``): leave-one-song-out."""
    songs = bank.meta.get("songs", [])
    own = [other_music_id(s["title"]) for s in songs]
    searched = list(ordered_map(lambda i: searcher.search_views(bank.views(i), "sequence",
                                                                own[int(bank.queries["song"].iat[i])]),
                                range(len(bank.queries)), workers))
    held = held_songs(bank, best_answers(searched), same_music_in(searcher.db))
    scores: dict[int, list[list[list[float]]]] = {}
    for i, views in enumerate(searched):
        if int(bank.queries["song"].iat[i]) not in held:
            record_null_views(scores, views, int(bank.queries["n_nominal"].iat[i]))
    if held:
        log.warning("calibration: %d song(s) of the bundled other music are in this database (%s); their queries "
                    "are left out", len(held), ", ".join(songs[s]["title"] for s in sorted(held)))
    used = [s for i, s in enumerate(songs) if i not in held]
    record = {"songs": len(used), "minutes": round(sum(s["duration_s"] for s in used) / 60.0, 1),
              "queries": sum(len(v) for v in scores.values()),
              "held_by_database": [songs[s]["title"] for s in sorted(held)]}
    return scores, record


def weigh_bank(own: dict[int, list], bank: dict[int, list], own_minutes: float, bank_minutes: float,
               seed: int = 0) -> tuple[dict[int, list], dict[int, float]]:
    """``own`` null queries (by length, as ``collect_null_scores`` gives them) and the ``bank``'s together, the
    bank's counting as its songs' minutes would among the calibration's songs: as if they had been given with
    ``--unknown-music``, where each song gives queries in proportion to its length (measured: 400 bank queries a
    length beside 1,000 of a 10-song collection lowered its false positives about half as much as 40 such songs).
    Each bank query is repeated (at most ``MAX_WEIGHT`` times), or a seeded share of them kept, to that weight;
    the weights by length are returned too."""
    out, weights = {n: list(qs) for n, qs in own.items()}, {}
    rng = np.random.default_rng([seed, 17])
    for n, qs in bank.items():
        weight = MAX_WEIGHT if not own.get(n) or own_minutes <= 0 else min(
            MAX_WEIGHT, bank_minutes / own_minutes * len(own[n]) / len(qs))
        weights[n] = round(float(weight), 3)
        if weight >= 1:
            out.setdefault(n, []).extend(q for q in qs for _ in range(int(round(weight))))
        else:
            keep = np.sort(rng.choice(len(qs), int(round(weight * len(qs))), replace=False))
            out.setdefault(n, []).extend(qs[i] for i in keep)
    return out, weights
