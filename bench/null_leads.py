"""Which collection songs other music lands on, and a per-song threshold built on it: measured, not adopted.

    .venv/bin/python bench/null_leads.py RESULTS --clips DIR ... [--known DIR] [--snr 0]

A per-song threshold (stricter for a song that other music often resembles) would pay only if the songs that draw
the false positives are a property of the collection, the same whatever other music plays. This counts, per song of
a `nafp index` folder, how many null queries it leads (is the best guess of) and how many of those the no-match
rule accepts (false positives): for the model's bundled other music (``null_bank``: the queries the calibration
itself searches, each without its own song's copy in the index) and for each ``--clips`` folder of clips of music
the database does not hold (`collection_fpr.py make`'s ``unknown/``), as they are and with white noise at each
``--snr``. It prints the songs by leads and, for each clip set, the rank correlations (Spearman, ties at their mean
rank) of its per-song leads and false positives with the bank's.

It then measures the rule such counts would allow. The bank's lead shares are steady where its false positives are
too few to count per song (a handful a song), so the per-song rule holds each song to the same share of the false
positives: song s, leading a share L_s of the bank's queries that collection songs lead, gets the threshold that
only ``target x f_s`` of the calibration's null values reach, f_s = (1 / songs) / L_s clipped to ``--clip`` (a
song that leads twice its share is held to half the rate). Printed per clip set: false positives under the rule as
it is and under the per-song rule; for ``--known`` clips (`make`'s ``known/``, named ``SONG__...``) the right best
guesses accepted.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# an answer: (collection song led, or None; decision statistic; segments; views; source title for a known clip)
Answer = tuple


def answer(searcher, views, source: str | None = None) -> Answer:
    """What a query's searched views answer (``Searcher.answer_views``' pick: the better view, its own thresholds)."""
    result = searcher.pick_view(views)
    if result.best is None or result.other_music_leads:
        return None, float("-inf"), result.n_segments, result.views, source
    return result.best.song_id, searcher.decision(result), result.n_segments, result.views, source


def tally(name: str, answers: list[Answer], accept, titles: dict[str, str], top: int) -> tuple[Counter, Counter]:
    nulls = [a for a in answers if a[4] is None]
    leads = Counter(a[0] for a in nulls if a[0] is not None)
    accepted = Counter(a[0] for a in nulls if a[0] is not None and accept(a))
    print(f"== {name}: {len(nulls)} null queries, {sum(leads.values())} led by a collection song, "
          f"{sum(accepted.values())} accepted")
    for song, n in leads.most_common(top):
        print(f"  {titles.get(song, song)[:40]:40s} leads {n:5d}  accepted {accepted[song]:3d}")
    return leads, accepted


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def per_song_rule(calibration, leads: Counter, songs: list[str], clip: tuple[float, float]):
    """The per-song rule's acceptance test (module docstring), from the bank's ``leads``."""
    total = sum(leads.values())

    def accept(a: Answer) -> bool:
        share = (leads[a[0]] + 1) / (total + len(songs))  # one pseudo-lead each: a song the bank never found
        f = float(np.clip(1.0 / len(songs) / share, *clip))
        c = calibration.for_views(a[3])
        return a[1] >= c.upper_point(a[2], c.target_fpr * f)
    return accept


def clip_answers(searcher, folder: Path, snr: float | None) -> list[Answer]:
    from collection_fpr import with_white_noise  # bench/ beside this script: the noise measure adds

    from workflow_lib.audio.files import load_audio

    rng = np.random.default_rng(0)
    out = []
    for clip in sorted(folder.glob("*.wav")):
        x = with_white_noise(load_audio(clip), snr, rng)
        out.append(answer(searcher, searcher.search_views(searcher.embed_views(x), "sequence"),
                          clip.stem.rpartition("__")[0] or None))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a `nafp index` folder (the bundled model and its other music)")
    ap.add_argument("--clips", type=Path, nargs="*", default=[], help="folders of clips of music not in it")
    ap.add_argument("--known", type=Path, nargs="*", default=[], help="folders of clips of its songs (SONG__*.wav)")
    ap.add_argument("--snr", type=float, nargs="*", default=[0.0], help="white noise, dB, besides clean")
    ap.add_argument("--clip", type=float, nargs=2, action="append", default=None, metavar=("LO", "HI"),
                    help="bounds of the per-song rate factor (repeatable; default 0.5 2 and 0.25 4)")
    ap.add_argument("--top", type=int, default=10, help="songs listed per set")
    args = ap.parse_args()
    from workflow_lib.api import Database
    from workflow_lib.common.layout import ResultsLayout
    from workflow_lib.database.other_music import other_music_id
    from workflow_lib.evaluation.null_bank import usable_bank

    db = Database.open(args.results)
    searcher, calibration = db.searcher, db.searcher.calibration
    titles = {str(s): str(t) for s, t in db.songs["title"].items()}
    songs = list(titles)  # the collection (other music is never listed)
    model = ResultsLayout.of(db.results, db.config).model
    bank = usable_bank(model, searcher, (1.0, 3.0, 5.0, 10.0))
    if bank is None:
        sys.exit(f"{model}: no bundled other music for this model")
    own = [other_music_id(s["title"]) for s in bank.meta["songs"]]
    sets = {"bundled other music": [
        answer(searcher, searcher.search_views(bank.views(i), "sequence", own[int(bank.queries["song"].iat[i])]))
        for i in range(len(bank.queries))]}
    for folder in args.clips + args.known:
        for snr in [None, *args.snr]:
            sets[f"{folder} {'clean' if snr is None else f'{snr:g} dB white noise'}"] = \
                clip_answers(searcher, folder, snr)

    def as_is(a: Answer) -> bool:
        return a[0] is not None and a[1] >= searcher.threshold(a[2], a[3])

    counts = {name: tally(name, found, as_is, titles, args.top) for name, found in sets.items()
              if any(a[4] is None for a in found)}
    base = counts.pop("bundled other music")
    print(f"per song, against the bundled other music ({len(songs)} songs), Spearman of leads; of false positives:")
    for name, pair in counts.items():
        rho = [spearman([b[s] for s in songs], [c[s] for s in songs]) for b, c in zip(base, pair)]
        print(f"  {name}: {rho[0]:+.2f}; {rho[1]:+.2f}")
    rules = {"the rule as it is": as_is}
    for lo, hi in args.clip or [(0.5, 2.0), (0.25, 4.0)]:
        rules[f"per-song, f in [{lo:g}, {hi:g}]"] = per_song_rule(calibration, base[0], songs, (lo, hi))
    print("false positives (null clips) / right best guesses accepted (known clips):")
    for name, found in list(sets.items())[1:]:
        nulls = [a for a in found if a[4] is None]
        right = [a for a in found if a[4] is not None and a[0] is not None and titles.get(a[0]) == a[4]]
        cells = [f"{sum(rule(a) for a in nulls)} of {len(nulls)}" if nulls else
                 f"{sum(rule(a) for a in right)} of {len(right)}" for rule in rules.values()]
        print(f"  {name}: " + "; ".join(f"{r} {c}" for r, c in zip(rules, cells)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
