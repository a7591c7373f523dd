"""Offsets finer than the database's hop: the peak of the aligned score between grid alignments.

The database holds one fingerprint every 0.5 s, so a search names the song position on that grid. A query that
starts a quarter hop or more off the grid is matched by two neighbouring alignments almost equally, and reverb
tips the choice towards the earlier one (the query holds the tail of earlier audio): on the evaluation's room
queries whose song was right, 8.5 % of 3 s answers were a whole hop early. The aligned score is a smooth, peaked
function of the shift, so the parabola through the best alignment and its two neighbours places the peak between
grid points (the standard sub-sample peak interpolation of cross-correlation); measured in bench/README.md
("Offsets between the hops").
"""

from __future__ import annotations

import numpy as np


def peak_shift(left: np.ndarray, centre: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Where the parabola through ``(-1, left)``, ``(0, centre)``, ``(1, right)`` peaks, in hops, within +-0.5.

    0 where a neighbour is missing (NaN: its alignment runs off the song) or where the three points do not bend
    down (no peak to place). Beyond +-0.5 the neighbour itself would be the better alignment; the shift stops at
    the midpoint."""
    left, centre, right = (np.asarray(v, dtype=np.float64) for v in (left, centre, right))
    curve = left - 2.0 * centre + right
    ok = np.isfinite(left) & np.isfinite(right) & np.isfinite(centre) & (curve < 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(ok, 0.5 * (left - right) / np.where(ok, curve, -1.0), 0.0)
    return np.clip(shift, -0.5, 0.5)
