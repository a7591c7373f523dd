"""Train/test hold-out of augmentation files (noise, speech, impulse responses), disjoint by file and stable.

A file's side depends only on a seeded hash of its key (never on which other files exist), so adding files never
moves existing ones. Each side is made non-empty when there are at least two keys.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from workflow_lib.data.split import unit_hash

log = logging.getLogger(__name__)


def holdout_split(keys: Sequence[str], test_fraction: float, seed: int, what: str = "files") -> np.ndarray:
    """Boolean array, True where ``keys[i]`` goes to the test side. Equal keys always land on the same side.

    With two or more distinct keys, a side the hash left empty receives the key closest to the threshold (logged).
    With a single distinct key everything is train; the caller splits that file's clips instead.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction}")
    unique = sorted(set(keys))
    u = {k: unit_hash(k, seed) for k in unique}
    test = {k for k in unique if u[k] < test_fraction}
    if len(unique) >= 2:
        if not test:
            moved = min(unique, key=lambda k: (u[k], k))
            test.add(moved)
            log.info("%s: test side was empty with %d keys and test fraction %.2f: moved %s to test",
                     what, len(unique), test_fraction, moved)
        elif len(test) == len(unique):
            moved = max(unique, key=lambda k: (u[k], k))
            test.discard(moved)
            log.info("%s: train side was empty with %d keys and test fraction %.2f: moved %s to train",
                     what, len(unique), test_fraction, moved)
    return np.array([k in test for k in keys], dtype=bool)


def split_items(n: int, test_fraction: float) -> np.ndarray:
    """Test mask for ``n`` ordered items of one source (the last ones are held out; both sides non-empty if n >= 2)."""
    n_test = int(round(n * test_fraction))
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    mask = np.zeros(n, dtype=bool)
    if n_test:
        mask[n - n_test:] = True
    return mask
