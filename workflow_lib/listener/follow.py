"""Following a song at a known alignment: where, segment by segment, a recording still holds the song.

Once the listener has named a song and its alignment with the stream, whether each segment still belongs to it is a
much easier question than naming it: its aligned similarity with the song's matching segment, against what the same
song scores there at other alignments. ``alignment_runs`` answers it for the scan (``listener.scan``), which follows
each declared match outward as far as the song goes, and for the live listener (``listener.core``), which cuts a
listening's end back to where the song last held (a song is held until the listener's window has let go of it,
seconds after it ended).
"""

from __future__ import annotations

import numpy as np

# Following a declared song at its alignment (``listener.scan._refine``): a segment belongs to the occurrence while its
# aligned similarity with the song, smoothed over SMOOTH_SEGMENTS (2.5 s), reaches EDGE_SHARE of the occurrence's
# typical (median) similarity and at least TRACK_FLOOR, dips of up to BRIDGE_SEGMENTS (6 s) bridged. TRACK_FLOOR sits at
# the 96th percentile of the smoothed similarity at a wrong song or alignment, where a right alignment's is above 0.40
# for 95 % of its segments (bundled model, monitoring programmes; bench/README.md, "Scanning: following the song").
# Following never starts a match: it follows one the listener declared. EDGE_SHARE was 0.5 until the edges
# were looked at: a song's similarity a few seconds before it starts (or after it ends) can sit at 0.35-0.45 against
# talk and noise, so half of a typical 0.65 let occurrences start up to 4 s early; 0.6 cuts the false alarms by a third
# (by two thirds at 10 dB) on programmes never looked at before (seeds 3-5) at equal F1.
EDGE_SHARE = 0.6
TRACK_FLOOR = 0.35
SMOOTH_SEGMENTS = 5
BRIDGE_SEGMENTS = 12
# ... and while the song scores above what it scores against this very audio at other alignments (the median over
# SELF_NULL_SHIFTS, smoothed alike) by SELF_NULL_GAP. A fixed level is no test for a song that scores about as high
# against anything noisy (a hub song, 0.5 against talk or noise): such songs were followed up to a minute past
# their end at 0 dB. Once the song has ended, its aligned similarity falls to its level at any alignment; while it
# plays, the alignment lifts it above. The shifts (5-18 s, none a multiple of another) keep a repeated bar or
# chorus from lifting the median. Chosen on programme seeds 0-2 and 12-17 (gaps 0.02-0.05 and other shift sets all
# within 0.01 of F1; bench/README.md, "Following a song only while its alignment counts").
SELF_NULL_GAP = 0.03
SELF_NULL_SHIFTS = (-37, -23, -11, 11, 23, 37)


def alignment_runs(db, code: int, anchor: int, emb: np.ndarray, lo: int, hi: int,
                   cores: list[tuple[int, int]], island: int = 0, trim: int = 0) -> list[tuple[int, int]]:
    """Where one alignment of a song holds within segments ``lo..hi``: the stretches (relative to ``lo``) around
    its declared ``cores`` where the aligned similarity, smoothed over SMOOTH_SEGMENTS, stays at the level
    (EDGE_SHARE of its typical similarity in the cores, at least TRACK_FLOOR) and SELF_NULL_GAP above the song's
    similarity at other alignments (``unaligned_similarity``, smoothed alike), bridging dips of up to
    BRIDGE_SEGMENTS (talk over the song, a noise burst) towards ``island`` or more in a row at the levels, once
    each core's end where it does not hold is cut back by up to ``trim`` segments (``trim_end``); each edge then
    snaps to the first (last) two unsmoothed segments in a row at both levels."""
    q = emb[lo:hi + 1].astype(np.float32)  # cast once for the aligned and the shifted look-ups
    raw = np.nan_to_num(similarity_at(db, code, lo + anchor, q), nan=0.0, posinf=0.0, neginf=0.0)
    inner = np.concatenate([raw[a:b + 1] for a, b in cores])
    typical = float(np.median(inner[inner > 0])) if np.any(inner > 0) else 0.0
    level = max(EDGE_SHARE * typical, TRACK_FLOOR)
    kernel = np.ones(SMOOTH_SEGMENTS) / SMOOTH_SEGMENTS
    smooth = np.convolve(raw, kernel, "same")
    above = smooth >= level
    at_level = raw >= level
    if np.isfinite(SELF_NULL_GAP):
        null = unaligned_similarity(db, code, lo + anchor, q)
        above &= smooth >= np.convolve(null, kernel, "same") + SELF_NULL_GAP
        at_level &= raw >= null + SELF_NULL_GAP
    raw_pairs = at_level[:-1] & at_level[1:]
    runs: list[tuple[int, int]] = []
    for a, b in sorted(cores):
        if runs and b <= runs[-1][1]:
            continue  # already inside the run of an earlier declaration
        b = trim_end(above, a, b, trim)
        a, b = extend(above, a, -1, island), extend(above, b, +1, island)
        near = np.flatnonzero(raw_pairs[max(0, a - SMOOTH_SEGMENTS):a + SMOOTH_SEGMENTS + 1])
        if len(near):
            a = max(0, a - SMOOTH_SEGMENTS) + int(near[0])
        near = np.flatnonzero(raw_pairs[max(0, b - SMOOTH_SEGMENTS):b + SMOOTH_SEGMENTS])
        if len(near):
            b = max(0, b - SMOOTH_SEGMENTS) + int(near[-1]) + 1
        runs.append((a, b))
    return runs


def similarity_at(db, code: int, start: int, q: np.ndarray) -> np.ndarray:
    """Per row i of the float32 fingerprints ``q``: its similarity with the song's segment ``start`` + i (NaN where
    the song has no such segment)."""
    rows = db.rows_for(np.full(len(q), code), start + np.arange(len(q)))
    out = np.full(len(q), np.nan, np.float32)
    ok = rows >= 0
    if ok.any():
        out[ok] = db.scores(q[ok], rows[ok][:, None])[:, 0]
    return out


def unaligned_similarity(db, code: int, start: int, q: np.ndarray) -> np.ndarray:
    """Per row of ``q`` (aligned with the song from segment ``start``): what the song scores against it away from
    the alignment (the median similarity with the song's segments shifted by SELF_NULL_SHIFTS; 0 where the song has
    none of them)."""
    shifted = np.stack([similarity_at(db, code, start + k, q) for k in SELF_NULL_SHIFTS])
    shifted[~np.isfinite(shifted)] = np.nan
    counted = ~np.isnan(shifted).all(axis=0)
    null = np.zeros(shifted.shape[1], np.float32)
    null[counted] = np.nanmedian(shifted[:, counted], axis=0)
    return null


def trim_end(above: np.ndarray, a: int, b: int, most: int) -> int:
    """The end of a declared stretch ``a..b`` cut back, by at most ``most`` segments, to its last segment
    ``above``: the listener holds a song until its window has let go of it, seconds after the song ended (its start
    needs no cut: the first window that names a song mostly holds it). Only where the alignment holds for at least
    half of the stretch: under less (heavy noise, a whitened view whose aligned similarity hovers at the level) the
    end says nothing the declaration did not, and it stands."""
    inside = np.flatnonzero(above[a:b + 1])
    if 2 * len(inside) < b - a + 1:
        return b
    return max(a + int(inside[-1]), b - most)


def extend(above: np.ndarray, j: int, step: int, island: int = 0) -> int:
    """The farthest segment from ``j`` (in direction ``step``) that is ``above``, crossing gaps of at most
    BRIDGE_SEGMENTS, and each only towards at least ``island`` segments ``above`` in a row."""
    best, miss, k = j, 0, j + step
    while 0 <= k < len(above):
        if above[k]:
            if miss and not holds_for(above, k, step, island):
                break
            best, miss = k, 0
        else:
            miss += 1
            if miss > BRIDGE_SEGMENTS:
                break
        k += step
    return best


def holds_for(above: np.ndarray, k: int, step: int, n: int) -> bool:
    """Whether the ``n`` segments from ``k`` (in direction ``step``) are all ``above``."""
    if n <= 0:
        return True
    end = k + step * (n - 1)
    return 0 <= end < len(above) and bool(above[min(k, end):max(k, end) + 1].all())
