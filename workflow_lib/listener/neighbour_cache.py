"""The FAISS neighbours of the listener's recent query segments, kept so that each hop searches one new segment."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

import numpy as np

from workflow_lib.search.ranking import Neighbours, song_set


class NeighbourCache:
    """A ``search.ranking.Database`` wrapper that remembers the FAISS neighbours of recently seen query embeddings.

    The listener searches a sliding window: all but the newest segment were already searched on earlier hops, so
    only the new one goes to the index. Everything else (aligned exact re-scoring, row maps) goes to the database.
    ``exclude_songs`` are never found, by any search through the cache (the monitoring benchmark's unknown music).
    """

    def __init__(self, db: Any, capacity: int, exclude_songs: Iterable[str] = ()):
        self._db = db
        self._capacity = max(1, capacity)
        self._base = frozenset(exclude_songs)
        self._cache: OrderedDict[tuple[bytes, int, frozenset[str]], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.index_queries = 0  # segments actually sent to the index (for tests and statistics)

    def search(self, queries: np.ndarray, k: int, exclude_song: str | frozenset[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        # The search's runner-up look-up (without the song that filled every list) is cached too: while one song
        # plays, every hop asks for it again on a window that differs by one segment.
        q = np.ascontiguousarray(queries, dtype=np.float32)
        left_out = song_set(exclude_song)  # one key whichever way the same songs are named
        keys = [(row.tobytes(), k, left_out) for row in q]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            skip = self._base | left_out
            sims, rows = self._db.search(q[missing], k, exclude_song=skip) if skip else self._db.search(q[missing], k)
            self.index_queries += len(missing)
            for i, s, r in zip(missing, sims, rows):
                self._cache[keys[i]] = (s, r)
        for key in keys:
            self._cache.move_to_end(key)
        while len(self._cache) > max(self._capacity, len(keys)):
            self._cache.popitem(last=False)
        sims = np.stack([self._cache[key][0] for key in keys]) if keys else np.zeros((0, k), np.float32)
        rows = np.stack([self._cache[key][1] for key in keys]) if keys else np.zeros((0, k), np.int64)
        return sims, rows

    def prime(self, queries: np.ndarray, neighbours: Neighbours, k: int,
              exclude_song: str | frozenset[str] | None = None) -> None:
        """Remember neighbours found elsewhere (e.g. one batched search of a whole recording) for these rows, as
        the answer to ``search(queries, k, exclude_song)`` (they must have been found without the cache's own
        ``exclude_songs`` too)."""
        left_out = song_set(exclude_song)
        for q, s, r in zip(np.ascontiguousarray(queries, dtype=np.float32), neighbours.sims, neighbours.rows):
            key = (q.tobytes(), k, left_out)
            self._cache[key] = (s, r)
            self._cache.move_to_end(key)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def clear(self) -> None:
        self._cache.clear()

    def __getattr__(self, name: str) -> Any:  # song_ids, vectors, rows_for, scores, row_song_index...
        return getattr(self._db, name)
