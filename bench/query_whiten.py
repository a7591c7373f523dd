"""Does whitening the query with a long linear predictor take out a resonant space's ringing? (issue 11)

A resonant space adds a few narrow resonances that ring for up to 2 s; they stand 20-35 dB above the rest of the
query's long-term spectrum, so a high-order linear predictor fitted on the query itself (autocorrelation method,
``scipy.linalg.solve_toeplitz``) puts its poles on them, and its inverse (FIR) filter cancels them: a minimum-phase
resonance's ringing goes with its peak. Music's own notes change within seconds and weigh less in that average.
The whitened query also loses what noise and diffuse rooms leave of the music's colouring, so it is searched
*beside* the query as it is, and the answer is the view whose best song leads its runner-up by more (the no-match
rule's own statistic, the margin). ``--second-view gate-whiten`` gates the query's steady noise out before
whitening it (``search.denoise``, the product's ``search.whitened_view.denoise``, off by default), ``gate`` only
gates; the ``--noise-percentile`` / ``--over-subtract`` / ``--gain-floor-db`` settings replace the gate's for a sweep
(bench/README.md, "Gating the noise before whitening").

For each query: song-level top-1 of the best guess and the margin, searched as it is, whitened, the better of
the two, the better of the two with the plain view preferred unless the whitened one leads by ``PLAIN_BONUS``, and
the two views fused (every alignment either found, scored in both and averaged); and the same query searched
leave-one-song-out (its song skipped) as a null query. Thresholds per length
are fitted for 1 % on the null queries pooled over conditions (as the calibrate rule pools them), for each rule on
its own null scores.
Songs: the test and val splits of the database's music (seeded hash, ``--fractions``), which no bundled model
trained on; generated conditions (held-out draws of the generators of ``data.acoustics``: resonant spaces, rooms
with RT60 0.2-1 s, long rooms 1.5-3 s) and real noise files. A null query skips its own song only, not songs that
hold the same music (``search.duplicates``): such a twin counts as a false positive for every rule alike.

    .venv/bin/python bench/query_whiten.py --results RESULTS --noise ../shared/corpus/dev/noise [--order 96]
        [--second-view gate-whiten|whiten|gate] [--noise-percentile P] [--over-subtract A] [--gain-floor-db F]
        [--ringing-only T60_S | --envelope-order K]
        [--songs 60] [--per-song 2] [--lengths 1 3 5 10] [--real-ir HALL.flac] [--conditions ...]
        [--out rows.parquet]
    .venv/bin/python bench/query_whiten.py --noise NOISE --compare LABEL=rows.parquet LABEL=rows.parquet ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.signal  # noqa: E402

from workflow_lib import SAMPLE_RATE as SR  # noqa: E402
from workflow_lib.audio.files import load_audio  # noqa: E402
from workflow_lib.cli.query import load_searcher  # noqa: E402
from workflow_lib.data import acoustics  # noqa: E402
from workflow_lib.data.split import assign_splits  # noqa: E402
from workflow_lib.evaluation.degrade import add_noise, reverberate  # noqa: E402
from workflow_lib.search.ranking import aligned_scores  # noqa: E402
from workflow_lib.search.threshold import decision_statistic  # noqa: E402
from workflow_lib.search import denoise  # noqa: E402
from workflow_lib.search.whiten import WhitenedView, inverse_filter  # noqa: E402

CONDITIONS = {  # name: (response kind, SNR dB or None)
    "clean": (None, None), "resonant": ("resonant", None), "5 dB + resonant": ("resonant", 5),
    "10 dB + room": ("room", 10), "0 dB + room": ("room", 0), "5 dB + long room": ("long", 5),
    "5 dB + real hall": ("real", 5)}  # a measured response (--real-ir), e.g. the great hall no training heard


PLAIN_BONUS = 0.02  # margin the whitened view must lead by in the "plain +" rule


def response(kind: str, rng: np.random.Generator, real: np.ndarray | None = None) -> np.ndarray:
    if kind == "real":
        return real
    if kind == "resonant":
        return acoustics.resonant_response(rng)[0]
    rt, lo, hi = ((rng.uniform(1.5, 3.0), [8, 6, 3.0], [30, 20, 12.0]) if kind == "long"
                  else (rng.uniform(0.2, 1.0), [3, 3, 2.5], [10, 8, 4.0]))
    dims, rt = acoustics.room_for(rt, np.array(lo), np.array(hi), rng)
    src, mic = acoustics.positions(dims, rng)
    return acoustics.hybrid_room(rt, dims, src, mic, rng, max_ir_s=3.0)


def ringing_whiten(x: np.ndarray, order: int, min_t60_s: float) -> np.ndarray:
    """``--ringing-only``: the inverse filter of only those poles of the query's predictor that ring for at least
    ``min_t60_s`` (|p| > 10^(-3 / (min_t60_s * SR))), at ``x``'s RMS: the resonances taken out, the rest of the
    colouring kept. Measured and not adopted (bench/README.md)."""
    b = inverse_filter(x, order)
    if b is None:
        return np.asarray(x, dtype=np.float32)
    poles = np.roots(b)
    ringing = poles[np.abs(poles) > 10 ** (-3 / (min_t60_s * SR))]
    if len(ringing) == 0:
        return np.asarray(x, dtype=np.float32)
    y = scipy.signal.lfilter(np.real(np.poly(ringing)), [1.0], np.asarray(x, dtype=np.float64))
    return denoise.at_rms_of(x, y)


def envelope_whiten(x: np.ndarray, order: int, envelope_order: int) -> np.ndarray:
    """``--envelope-order K``: the query through the order-``order`` inverse filter and then the order-``K`` all-pole
    filter of its own low-order predictor, at ``x``'s RMS: the fine structure of the long-term spectrum (a resonant
    space's narrow peaks) flattened, its broad envelope (the music's and the room's colouring) kept. Measured and
    not adopted (bench/README.md)."""
    b = inverse_filter(x, order)
    a = inverse_filter(x, envelope_order)
    if b is None or a is None:
        return np.asarray(x, dtype=np.float32)
    y = scipy.signal.lfilter(b / b[0], a / a[0], np.asarray(x, dtype=np.float64))
    return denoise.at_rms_of(x, y)


def second_view(q: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    if args.ringing_only is not None:
        return ringing_whiten(q, args.order, args.ringing_only)
    if args.envelope_order:
        return envelope_whiten(q, args.order, args.envelope_order)
    if args.second_view == "gate":
        return denoise.spectral_gate(q)
    return WhitenedView(args.order, denoise=args.second_view == "gate-whiten").make(q)


def make_query(song: np.ndarray, start: int, n: int, condition: str, noises: list[np.ndarray],
               rng: np.random.Generator, real: np.ndarray | None = None) -> np.ndarray:
    kind, snr = CONDITIONS[condition]
    if kind is None:
        q = song[start:start + n]
    else:
        q = reverberate(song, start, n, np.asarray(response(kind, rng, real), np.float32))
    if snr is not None:
        noise = noises[int(rng.integers(len(noises)))]
        at = int(rng.integers(0, max(1, len(noise) - n)))
        q = add_noise(q, np.resize(noise[at:at + n], n), snr)
    return np.ascontiguousarray(q, dtype=np.float32)


def fused_answer(searcher, embs: list[np.ndarray], results: list) -> tuple[str | None, float]:
    """Score fusion instead of a pick: every alignment either view found, scored in both views (mean aligned
    similarity, ``ranking.aligned_scores``) and averaged; (best song, its margin over the best other song)."""
    found = {(searcher.db.song_position(c.song_id), c.start_segment): c.song_id for r in results for c in r.candidates}
    if not found:
        return None, -np.inf
    codes, starts = (np.array(v) for v in zip(*found))
    per_view = [aligned_scores(e, searcher.db, codes, starts, active=np.einsum("ij,ij->i", e, e) > 0)
                for e in (np.ascontiguousarray(x, dtype=np.float32) for x in embs)]
    best: dict[str, float] = {}
    for song, score in zip(found.values(), np.mean(per_view, axis=0)):
        best[song] = max(best.get(song, -np.inf), float(score))
    ranked = sorted(best.items(), key=lambda t: -t[1])
    return ranked[0][0], decision_statistic([v for _, v in ranked], searcher.statistic)


def collect(args: argparse.Namespace) -> pd.DataFrame:
    searcher, _ = load_searcher(argparse.Namespace(results=args.results, config=None))
    songs = pd.read_parquet(args.results / "manifest" / "songs.parquet")
    songs = songs[songs["collection"] == "music"].reset_index(drop=True)
    train, val, test = args.fractions
    split = assign_splits(songs, {"train": train, "val": val, "test": test, "distractor": 0.0}, args.split_seed)
    chosen = songs[np.isin(split["split"].to_numpy(), ["test", "val"])].head(args.songs)
    noises = [load_audio(f, SR) for f in sorted(Path(args.noise).glob("*")) if f.is_file()]
    real = None
    if args.real_ir is not None:
        real = load_audio(args.real_ir, SR).astype(np.float64)
        real = real[int(np.argmax(np.abs(real))):][:3 * SR]  # from the direct sound, up to 3 s
        real /= np.linalg.norm(real)
    conditions = [c for c in args.conditions if CONDITIONS[c][0] != "real" or real is not None]
    rng = np.random.default_rng(args.seed)
    rows = []
    for i, s in enumerate(chosen.itertuples(), 1):
        song = load_audio(s.path, SR)
        for rep in range(args.per_song):
            for length in args.lengths:
                n = int(length * SR)
                if len(song) < n + 5 * SR:
                    continue
                start = int(rng.integers(SR, len(song) - n - 3 * SR))
                for condition in conditions:
                    q = make_query(song, start, n, condition, noises, rng, real)
                    white = second_view(q, args)
                    embs = [searcher.embed(q), searcher.embed(white)]
                    for kind, skip in (("in database", None), ("null", s.song_id)):
                        results = [searcher.search(e, exclude_song=skip) for e in embs]
                        answers = [(m.best_guess.song_id if m.best_guess else None, m.decision)
                                   for m in map(searcher.decide, results)]
                        answers.append(fused_answer(searcher, embs, results))
                        for view, (guess, margin) in zip(("as is", "whitened", "fused"), answers):
                            rows.append({"song_id": s.song_id, "rep": rep, "length_s": length,
                                         "condition": condition, "view": view, "kind": kind,
                                         "right": guess == s.song_id,
                                         # a silent query (no decision) is never accepted
                                         "margin": margin if np.isfinite(margin) else -np.inf})
        print(f"{i}/{len(chosen)} songs", file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def per_query(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with one line per query (song, rep, length, condition, kind) and one column per view and value."""
    key = ["song_id", "rep", "length_s", "condition", "kind"]
    return rows.pivot_table(index=key, columns="view", values=["margin", "right"], aggfunc="first")


def pick_rule(wide: pd.DataFrame, views: list[str]) -> pd.DataFrame:
    """The product's pick among ``views`` per query (rows with ``("margin", view)`` and ``("right", view)`` columns):
    the answer and margin of the view with the largest margin, the first of ``views`` on ties."""
    margins = np.stack([wide[("margin", v)].to_numpy() for v in views])
    right = np.stack([wide[("right", v)].to_numpy().astype(bool) for v in views])
    pick, cols = np.argmax(margins, axis=0), np.arange(margins.shape[1])
    return pd.DataFrame({"margin": margins[pick, cols], "right": right[pick, cols]}, index=wide.index)


def better_of_two_rule(wide: pd.DataFrame) -> pd.DataFrame:
    """The product's pick per query (``per_query`` rows): the view with the larger margin, its margin and answer."""
    return pick_rule(wide, ["as is", "whitened"])


def rule_table(rule: pd.DataFrame, fpr: float) -> pd.DataFrame:
    """Per length and condition: top-1, right and accepted, and FPR of one rule, with the threshold for ``fpr``
    fitted per length on that length's pooled null queries."""
    out = []
    for length, t in rule.reset_index().groupby("length_s"):
        threshold = float(np.quantile(t[t["kind"] == "null"]["margin"], 1 - fpr))
        for condition, g in t.groupby("condition", sort=False):
            found, unknown = g[g["kind"] == "in database"], g[g["kind"] == "null"]
            out.append({"length_s": length, "condition": condition, "queries": len(found),
                        "top-1 %": 100 * found["right"].mean(),
                        "right and accepted %": 100 * (found["right"] & (found["margin"] > threshold)).mean(),
                        "FPR %": 100 * (unknown["margin"] > threshold).mean()})
    return pd.DataFrame(out)


def compare(specs: list[str], fpr: float) -> None:
    """``--compare LABEL=rows.parquet ...``: the better-of-two rule of several saved runs side by side."""
    tables = []
    for spec in specs:
        label, _, path = spec.partition("=")
        tables.append(rule_table(better_of_two_rule(per_query(pd.read_parquet(path))), fpr).assign(run=label))
    t = pd.concat(tables)
    labels = [spec.partition("=")[0] for spec in specs]
    for column in ("top-1 %", "right and accepted %", "FPR %"):
        wide = t.pivot_table(index=["length_s", "condition"], columns="run", values=column)[labels]
        print(f"\n{column} (better of the two views)\n" + wide.round(1).to_string())


def report(rows: pd.DataFrame, fpr: float) -> None:
    wide = per_query(rows)
    rules = {view: pd.DataFrame({"margin": wide[("margin", view)], "right": wide[("right", view)].astype(bool)})
             for view in ("as is", "whitened")}
    rules["better of the two"] = better_of_two_rule(wide)
    # the plain view kept unless the whitened one leads by more (long reverb lost a little to the pick)
    ahead = wide[("margin", "whitened")] > wide[("margin", "as is")] + PLAIN_BONUS
    rules[f"better of the two, plain +{PLAIN_BONUS:g}"] = pd.DataFrame({
        "margin": np.where(ahead, wide[("margin", "whitened")], wide[("margin", "as is")]),
        "right": np.where(ahead, wide[("right", "whitened")], wide[("right", "as is")]).astype(bool)}, index=wide.index)
    if ("margin", "fused") in wide.columns:  # rows collected before the fused rule existed lack it
        rules["fused"] = pd.DataFrame({"margin": wide[("margin", "fused")],
                                       "right": wide[("right", "fused")].astype(bool)})
    tables = pd.concat([rule_table(rule, fpr).assign(rule=name) for name, rule in rules.items()])
    for length, table in tables.groupby("length_s"):
        print(f"\n## {length:g} s queries ({table['queries'].iloc[0]} per condition; thresholds for "
              f"{100 * fpr:g} % on the pooled null queries)")
        for column in ("top-1 %", "right and accepted %", "FPR %"):
            wide_t = table.pivot(index="condition", columns="rule", values=column)
            order = [c for c in CONDITIONS if c in wide_t.index]
            print(f"\n{column}\n" + wide_t.reindex(order)[list(rules)].round(1).to_string())


def saved_or_collected(out: Path | None, collect_rows) -> pd.DataFrame:
    """The per-query rows saved at ``out`` when it exists, else ``collect_rows()``, saved there when ``out`` is
    given (so a report can be printed again, or compared, without searching again)."""
    if out is not None and out.exists():
        return pd.read_parquet(out)
    rows = collect_rows()
    if out is not None:
        rows.to_parquet(out)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"), help="a results folder (`nafp index`)")
    ap.add_argument("--noise", required=True, help="a folder of background-noise recordings")
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS),
                    metavar="CONDITION", help=f"of {list(CONDITIONS)} (default: all)")
    ap.add_argument("--real-ir", type=Path, help="a measured response for '5 dB + real hall'")
    ap.add_argument("--order", type=int, default=96, help="linear-predictor order (8 kHz)")
    ap.add_argument("--ringing-only", type=float, metavar="T60_S",
                    help="take out only the predictor's poles that ring for at least T60_S seconds")
    ap.add_argument("--envelope-order", type=int, default=0, metavar="K",
                    help="keep the broad envelope of an order-K predictor (0: flatten it all, the product's view)")
    ap.add_argument("--second-view", choices=["whiten", "gate-whiten", "gate"], default="whiten",
                    help="the second view: whitened (the product's default), the noise gated out and then whitened "
                         "(search.whitened_view.denoise), or gated only")
    ap.add_argument("--noise-percentile", type=float, default=denoise.NOISE_PERCENTILE,
                    help="the gate's noise power per frequency: this percentile of the query's over time")
    ap.add_argument("--over-subtract", type=float, default=denoise.OVER_SUBTRACT,
                    help="the gate's multiplier of the noise estimate")
    ap.add_argument("--gain-floor-db", type=float, default=10 * np.log10(denoise.GAIN_FLOOR),
                    help="the gate's lowest power gain (dB)")
    ap.add_argument("--songs", type=int, default=60)
    ap.add_argument("--per-song", type=int, default=2)
    ap.add_argument("--lengths", type=float, nargs="+", default=[1.0, 3.0, 5.0, 10.0])
    ap.add_argument("--fractions", type=float, nargs=3, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                    help="the split the model was trained with (its val and test songs are used)")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--out", type=Path, help="save (or, when it exists, reuse) the per-query rows as Parquet")
    ap.add_argument("--compare", nargs="+", metavar="LABEL=ROWS",
                    help="print the better-of-two rule of saved runs (--out files) side by side, and nothing else")
    args = ap.parse_args()
    if args.compare:
        compare(args.compare, args.fpr)
        return 0
    denoise.NOISE_PERCENTILE, denoise.OVER_SUBTRACT = args.noise_percentile, args.over_subtract
    denoise.GAIN_FLOOR = 10 ** (args.gain_floor_db / 10)
    report(saved_or_collected(args.out, lambda: collect(args)), args.fpr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
