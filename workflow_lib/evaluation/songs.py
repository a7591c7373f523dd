"""Which songs queries are cut from, where in them, and decoding them once.

Three groups of songs (``query_groups``):

* ``unseen``: database songs of the query splits (``test`` by default), which the model never trained on; the
  headline figures.
* ``trained``: database songs the model trained on (users query those too), reported apart.
* ``unknown``: songs the model never trained on, searched *as if they were not in the database* (leave-one-song-
  out: the search skips the song's own fingerprints), for the no-match rule. So every song of a collection can be in
  the database and still stand for music nobody indexed; a song that is not in the database at all (held out with
  ``extract.splits``) is simply searched as it is. The pool is cut in two halves by a seeded hash of the song id:
  the calibration fits the threshold on one half and the evaluation measures its false-positive rate on the other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from workflow_lib import HOP_SAMPLES
from workflow_lib.audio.decoded import AudioDecodeError
from workflow_lib.audio.files import load_audio
from workflow_lib.evaluation.degrade import MIN_SIGNAL_RMS, rms
from workflow_lib.data.holdout import holdout_split

log = logging.getLogger(__name__)

ROLES = ("calibration", "evaluation", "all")


def database_song_ids(index_meta_path: str | Path) -> set[str]:
    return set(pd.read_parquet(index_meta_path, columns=["song_id"])["song_id"].astype(str).unique())


def _with_splits(songs: pd.DataFrame, splits: pd.DataFrame | None) -> pd.DataFrame:
    if splits is None:  # a collection indexed without a train/test split: nothing was trained on
        return songs.assign(split="test")
    return songs.merge(splits[["song_id", "split"]], on="song_id", how="left")


def query_songs(songs: pd.DataFrame, splits: pd.DataFrame | None, db_ids: set[str],
                query_splits: Sequence[str]) -> pd.DataFrame:
    """Database songs of the query splits (the songs whose queries must be found)."""
    s = _with_splits(songs, splits)
    out = s[s["song_id"].isin(db_ids) & s["split"].isin(list(query_splits))]
    if out.empty:
        raise ValueError(f"no database song belongs to the query splits {list(query_splits)} "
                         f"({len(db_ids)} songs in the database): check evaluate.query_splits and extract.splits")
    return out.reset_index(drop=True)


def trained_songs(songs: pd.DataFrame, splits: pd.DataFrame | None, db_ids: set[str]) -> pd.DataFrame:
    """Database songs the model was trained on."""
    s = _with_splits(songs, splits)
    return s[s["song_id"].isin(db_ids) & (s["split"] == "train")].reset_index(drop=True)


def unknown_songs(songs: pd.DataFrame, splits: pd.DataFrame | None, seed: int, role: str) -> pd.DataFrame:
    """Songs that stand for unknown music (searched leave-one-song-out): ``role`` 'calibration' or 'evaluation'
    (a half each), or 'all' (a calibration that no evaluation follows: ``search.calibration.songs``).

    The pool is every song the model did not train on; only when fewer than 4 exist are training songs used too
    (logged). It is cut in two halves by a seeded hash of the song id, so the false-positive rate is never measured
    on the songs the threshold was fitted to.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    s = _with_splits(songs, splits)
    pool = s[s["split"] != "train"]
    if len(pool) < 4:
        log.info("unknown-song queries: only %d songs not used in training; training songs are used too", len(pool))
        pool = s
    pool = pool.sort_values("song_id").reset_index(drop=True)
    if role == "all":
        return pool
    if len(pool) < 2:
        log.warning("only %d song(s) for unknown-song queries: the no-match rule cannot be calibrated and evaluated "
                    "on separate songs", len(pool))
        return pool if role == "calibration" or len(pool) == 0 else pool.iloc[0:0]
    # Salted keys: the split stage hashes the bare song ids with its own seed (often the same number), and reusing
    # that hash here would correlate the halves with the splits (e.g. all of 'train' lies below 0.6).
    evaluation = holdout_split([f"no-match/{s}" for s in pool["song_id"]], 0.5, seed, what="unknown-song pool")
    return pool[evaluation if role == "evaluation" else ~evaluation].reset_index(drop=True)


def require_held_out_unknowns(search_cfg: dict) -> None:
    """The evaluation measures the no-match rule's false-positive rate on the unknown songs the calibration left out;
    a calibration on all of them (``search.calibration.songs: all``, as ``nafp index`` runs it) leaves none."""
    if search_cfg.get("calibration", {}).get("songs") == "all":
        raise ValueError("search.calibration.songs is 'all': the no-match rule was fitted on every unknown song, so "
                         "its false-positive rate cannot be measured on songs it was not fitted to; set it to 'half' "
                         "to evaluate")


def draw_songs(durations: np.ndarray, n: int, min_len_s: float, rng: np.random.Generator) -> np.ndarray:
    """Song index for each of ``n`` starts, uniform over all start positions (weights = usable duration)."""
    usable = np.clip(np.asarray(durations, dtype=np.float64) - min_len_s, 0.0, None)
    if usable.sum() <= 0:
        raise ValueError(f"no song is longer than {min_len_s:g} s, the longest query length")
    return rng.choice(len(usable), size=n, p=usable / usable.sum())


def pick_start(audio: np.ndarray, length: int, rng: np.random.Generator, grid: bool, shortest: int | None = None,
               tries: int = 20) -> int | None:
    """A random start whose excerpt of ``length`` samples, and its first ``shortest`` samples (the shortest query
    cut from this start), are not silent: an SNR relative to silence is undefined. None if every try fails."""
    room = len(audio) - length
    if room < 0:
        return None
    for _ in range(tries):
        start = int(rng.integers(room + 1))
        if grid:
            start -= start % HOP_SAMPLES
        if all(rms(audio[start:start + n]) > 10 * MIN_SIGNAL_RMS for n in {length, shortest or length}):
            return start
    return None


def iter_song_audio(songs: pd.DataFrame, order: np.ndarray) -> Iterator[tuple[int, np.ndarray | None]]:
    """Decode each needed song once (in ``order``'s sorted unique order); unreadable ones yield None (logged)."""
    for i in np.unique(order):
        row = songs.iloc[int(i)]
        try:
            yield int(i), load_audio(row["path"])
        except AudioDecodeError as exc:
            log.warning("skipping song %s for queries: %s", row["song_id"], exc)
            yield int(i), None
