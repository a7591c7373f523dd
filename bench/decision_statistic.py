"""Which decision statistic makes the no-match rule hold its false-positive rate across listening conditions
(issue 12)? Reads an evaluation run's queries and neural answers (every candidate's score is stored), and for each
statistic (``calibrate.STATISTICS``):

1. fits per-length thresholds for the target rate on the unknown-song queries of one half of the unknown songs
   (pooled over every condition, as the calibrate rule does), and
2. measures, on the other half, the false-positive rate per condition, and on the database songs never trained on,
   the share of right best guesses that pass (per condition).

Usage: .venv/bin/python bench/decision_statistic.py runs/devx_eval_old/results [--fpr 0.01] [--calibration]
The halves swap and both results are averaged, so every unknown song is used once for fitting and once for testing.
Two logistic combinations of the candidates' features (margin, scores, votes, support, length) are fitted the same
way, on one half of the unknown songs' queries against the right best guesses of one half of the unseen database
songs, and measured on the other halves.

``--calibration`` measures transfer instead: each rule is fitted the way the calibrate rule fits it, on the run's
own calibration null queries (its unknown songs searched leave-one-song-out, degraded with the *training* noise and
rooms; collected again with the calibrate rule's code and settings and cached as
``index/calibration_nulls.parquet``), and measured on all of the evaluation's unknown-song queries (test noise,
held-out rooms). Rules that need votes are left out (the calibration keeps candidate scores only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_lib.search.threshold import fit_calibration
from workflow_lib.data.split import unit_hash
from workflow_lib.evaluation.metrics import snr_of

SEG_PER_S = 2  # 0.5 s hop


def n_segments(length_s: float) -> int:
    return int(round((length_s - 1) * SEG_PER_S)) + 1


def _pad(v, n=2, fill=0.0):
    v = list(v)
    return v + [fill] * (n - len(v))


# Candidate statistics from a search's ranked candidates: scores s (best first), votes v, query segments J.
def _margin(s, v, j):
    s = _pad(s)
    return s[0] - s[1]


def _z(s, v, j):
    if not len(s):
        return -np.inf
    rest = np.asarray(s[1:], dtype=float)
    spread = rest.std() if len(rest) >= 3 else 0.05
    return (s[0] - (rest.mean() if len(rest) else 0.0)) / max(spread, 1e-3)


STATS = {
    "score": lambda s, v, j: _pad(s, fill=-1.0)[0],
    "margin": _margin,
    "z": _z,
    "votes": lambda s, v, j: _pad(v)[0],
    "vote share": lambda s, v, j: _pad(v)[0] / j,
    "vote lead": lambda s, v, j: (_pad(v)[0] - _pad(v)[1]) / j,
    "margin x vote share": lambda s, v, j: _margin(s, v, j) * (0.5 + _pad(v)[0] / j),
    "margin / spread": lambda s, v, j: _margin(s, v, j) / max(np.std(s[1:]) if len(s) > 3 else 0.05, 0.01),
    "relative margin": lambda s, v, j: _margin(s, v, j) / max(1.0 - _pad(s)[1], 0.05),
    "z vs top 3": lambda s, v, j: (_pad(s)[0] - np.mean(_pad(s, 4)[1:4])) / max(np.std(s[1:]) if len(s) > 3
                                                                                else 0.05, 0.01),
}

# Conditional rules: the margin's threshold depends on the query's level, a feature every query has whether its
# best guess is right or not: the runner-up song's score (a wrong song's score, so it tracks how high wrong songs
# score in the query's condition) or the best score. Per length, the null queries are cut into BINS equal-count
# bins of the feature, each with its own threshold.
CONDITIONED = {"margin | runner-up score": lambda s: _pad(s, fill=-1.0)[1],
               "margin | best score": lambda s: _pad(s, fill=-1.0)[0]}
BINS = (2, 4)


def _binned_thresholds(v: np.ndarray, f: np.ndarray, fpr: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Inner bin edges of the feature ``f`` (equal-count bins of the null queries) and each bin's threshold on
    ``v`` for the rate ``fpr``."""
    edges = np.quantile(f, np.linspace(0, 1, bins + 1)[1:-1])
    which = np.searchsorted(edges, f, side="right")
    thr = np.array([fit_calibration({1: v[which == b].tolist()}, fpr, {}).threshold(1) for b in range(bins)])
    return edges, thr


def _cross_validated_rows(name: str, unknown: pd.DataFrame, unseen: pd.DataFrame, conds: list[str],
                          fit_rule, nulls: pd.DataFrame | None = None) -> list[dict]:
    """Rows (``name``, condition, fpr, accept_right) of a rule on the statistic ``v``: ``fit_rule(null queries)``
    returns ``passes(frame) -> bool array``; it is fitted on one half of the unknown songs and measured on the other
    half (false positives) and on the unseen database songs' right best guesses at 3-10 s, then the halves swap.
    With ``nulls`` (the calibration's null queries) it is fitted on those once and measured on every unknown-song
    query."""
    fp = {c: [] for c in conds}
    acc = {c: [] for c in conds}
    right = (unseen["right"] & unseen["length_s"].between(3, 10)).to_numpy()
    if nulls is not None:
        splits = [(nulls, unknown)]
    else:
        splits = [(unknown[unknown["half"] == h], unknown[unknown["half"] != h]) for h in (True, False)]
    for fit_on, test in splits:
        passes = fit_rule(fit_on)
        pu, ps = passes(test), passes(unseen)
        for c in conds:
            m = (test["condition"] == c).to_numpy()
            fp[c].append(float(pu[m].mean()) if m.any() else np.nan)
            m = (unseen["condition"] == c).to_numpy() & right
            acc[c].append(float(ps[m].mean()) if m.any() else np.nan)
    return [{"statistic": name, "condition": c, "fpr": np.nanmean(fp[c]), "accept_right": np.nanmean(acc[c])}
            for c in conds]


def _per_length_rule(fpr: float):
    """The calibrate rule's shape: one threshold per query length, pooled over conditions."""
    def fit(null: pd.DataFrame):
        cal = fit_calibration({n: g["v"].tolist() for n, g in null.groupby("n_seg")}, fpr, {})
        return lambda frame: (frame["v"] >= frame["n_seg"].map(cal.threshold)).to_numpy()
    return fit


def _binned_rule(fpr: float, bins: int):
    """One threshold per query length and per equal-count bin of the feature ``f``."""
    def fit(null: pd.DataFrame):
        rules = {n: _binned_thresholds(g["v"].to_numpy(), g["f"].to_numpy(), fpr, bins)
                 for n, g in null.groupby("n_seg")}

        def passes(frame):
            out = np.zeros(len(frame), bool)
            for i, (n, v, f) in enumerate(zip(frame["n_seg"], frame["v"], frame["f"])):
                edges, thr = rules[min(rules, key=lambda k: abs(k - n))]
                out[i] = v >= thr[np.searchsorted(edges, f, side="right")]
            return out
        return passes
    return fit


def _conditional_rows(unknown, unseen, conds, fpr, nulls=None) -> list[dict]:
    frames = [f for f in (unknown, unseen, nulls) if f is not None]
    for frame in frames:
        frame["v"] = [_margin(list(t), None, None) for t in frame["top_scores"]]
    rows = []
    for name, feature in CONDITIONED.items():
        for frame in frames:
            frame["f"] = [feature(list(t)) for t in frame["top_scores"]]
        for bins in BINS:
            rows += _cross_validated_rows(f"{name} ({bins} bins)", unknown, unseen, conds, _binned_rule(fpr, bins),
                                          nulls)
    return rows


def _combination_features(frame: pd.DataFrame) -> np.ndarray:
    """Per query: margin, best score, runner-up score, lead over the next three, spread of the others, the best
    song's vote share and vote lead, its support share and support lead, log length."""
    out = []
    for s, v, sup, j in zip(frame["top_scores"], frame["top_votes"], frame["top_support"], frame["J"]):
        s, v, sup = _pad(s, 4), _pad(v), _pad(sup)
        out.append([s[0] - s[1], s[0], s[1], s[0] - np.mean(s[1:4]), np.std(s[1:]), v[0] / j, (v[0] - v[1]) / j,
                    sup[0] / j, (sup[0] - sup[1]) / j, np.log(j)])
    return np.asarray(out, dtype=np.float64)


COMBINATIONS = {"logistic combination (all 10 features)": list(range(10)),
                "logistic combination (margin, votes, length)": [0, 5, 6, 9]}


def _logistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights (last: bias) of a class-balanced, lightly L2-regularised logistic regression."""
    from scipy.optimize import minimize

    xb = np.c_[x, np.ones(len(x))]
    w = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))

    def loss(b):
        z = xb @ b
        p = 1 / (1 + np.exp(-z))
        return float(np.sum(w * (np.logaddexp(0, z) - y * z)) + 1e-4 * b @ b), xb.T @ (w * (p - y)) + 2e-4 * b

    return minimize(loss, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B").x


def _combination_rows(unknown: pd.DataFrame, unseen: pd.DataFrame, conds: list[str], fpr: float) -> list[dict]:
    """The issue's "small calibrated combination": a logistic regression of the candidates' features, fitted to
    tell the right best guesses of one half of the unseen database songs from one half of the unknown songs' queries,
    its output thresholded per length for ``fpr`` on those unknown songs (as the margin is), measured on the other
    halves; then the halves swap."""
    feats_u, feats_s = _combination_features(unknown), _combination_features(unseen)
    centre, scale = feats_u.mean(axis=0), feats_u.std(axis=0) + 1e-9
    feats_u, feats_s = (feats_u - centre) / scale, (feats_s - centre) / scale
    half_s = np.array([unit_hash(f"stat/{s}", 0) < 0.5 for s in unseen["song_id"]])
    right = unseen["right"].to_numpy()
    rows = []
    for name, cols in COMBINATIONS.items():
        fp = {c: [] for c in conds}
        acc = {c: [] for c in conds}
        for h in (True, False):
            fit_u, fit_s = (unknown["half"] == h).to_numpy(), (half_s == h) & right
            b = _logistic(np.r_[feats_u[fit_u][:, cols], feats_s[fit_s][:, cols]],
                          np.r_[np.zeros(fit_u.sum()), np.ones(fit_s.sum())])
            unknown["v"] = np.c_[feats_u[:, cols], np.ones(len(feats_u))] @ b
            unseen["v"] = np.c_[feats_s[:, cols], np.ones(len(feats_s))] @ b
            passes = _per_length_rule(fpr)(unknown[fit_u])
            test_u, test_s = unknown[~fit_u], unseen[half_s != h]
            pu, ps = passes(test_u), passes(test_s)
            ok = (test_s["right"] & test_s["length_s"].between(3, 10)).to_numpy()
            for c in conds:
                m = (test_u["condition"] == c).to_numpy()
                fp[c].append(float(pu[m].mean()) if m.any() else np.nan)
                m = (test_s["condition"] == c).to_numpy() & ok
                acc[c].append(float(ps[m].mean()) if m.any() else np.nan)
        rows += [{"statistic": name, "condition": c, "fpr": np.nanmean(fp[c]), "accept_right": np.nanmean(acc[c])}
                 for c in conds]
    return rows


def calibration_nulls(results: Path) -> pd.DataFrame:
    """The calibrate rule's null queries of the run in ``results`` (``n_seg``, ``top_scores``), collected with its
    code and settings (same seed: the same queries) and cached beside the threshold."""
    cache = results / "index" / "calibration_nulls.parquet"
    if not cache.exists():
        from workflow_lib.common.atomic import atomic_path
        from workflow_lib.common.config import run_config
        from workflow_lib.common.layout import model_source_path
        from workflow_lib.evaluation.calibration import null_candidates

        cfg, _ = run_config(results)
        cands, _ = null_candidates(model_source_path(cfg["model"]["source"], results.parent), results / "index",
                                   results / "manifest" / "songs.parquet", results / "split" / "splits.parquet",
                                   results / "noise" / "train", results / "irs" / "train",
                                   {k: v for k, v in cfg["search"].items() if k != "mode"}, cfg["evaluate"])
        with atomic_path(cache) as tmp:
            # the queries as they are (the first view): the rules compared here decide on one view
            pd.DataFrame([{"n_seg": n, "top_scores": views[0]} for n, qs in cands.items() for views in qs]
                         ).to_parquet(tmp)
    return pd.read_parquet(cache)


def _oracle_rows(unknown, unseen, conds, fpr) -> list[dict]:
    """The margin with thresholds fitted on the very songs it is tested on, per condition: no rule can do better
    with this statistic, so its acceptance is the ceiling the model leaves to any threshold."""
    for frame in (unknown, unseen):
        frame["v"] = [_margin(list(t), None, None) for t in frame["top_scores"]]
    rows = []
    for c in conds:
        nul = unknown[unknown["condition"] == c]
        cal = fit_calibration({n: g["v"].tolist() for n, g in nul.groupby("n_seg")}, fpr, {})
        pos = unseen[(unseen["condition"] == c) & unseen["right"] & unseen["length_s"].between(3, 10)]
        rows.append({"statistic": "margin, fitted per condition on the test songs (ceiling)", "condition": c,
                     "fpr": float((nul["v"] >= nul["n_seg"].map(cal.threshold)).mean()),
                     "accept_right": float((pos["v"] >= pos["n_seg"].map(cal.threshold)).mean())})
    return rows


def evaluation_queries(results: Path, mode: str, queries: pd.DataFrame | None = None):
    """The run's neural answers joined to its ``queries`` (default: queries.parquet): (unknown-song queries with
    their fitting ``half``, unseen database songs' queries with ``right``, the conditions in order)."""
    q = pd.read_parquet(results / "eval" / "queries" / "queries.parquet") if queries is None else queries
    res = pd.read_parquet(results / "eval" / "results_neural.parquet")
    res = res[res["mode"] == mode].merge(q, on="query_id")
    res["n_seg"] = res["length_s"].map(n_segments)
    unknown = res[res["group"] == "unknown"].copy()
    unseen = res[res["group"] == "unseen"].copy()
    unseen["right"] = [len(t) > 0 and t[0] == s for t, s in zip(unseen["top_songs"], unseen["song_id"])]
    for frame in (unknown, unseen):
        frame["J"] = [max(1, n) for n in frame["n_seg"]]
    unknown["half"] = [unit_hash(f"stat/{s}", 0) < 0.5 for s in unknown["source_song_id"]]
    return unknown, unseen, list(dict.fromkeys(q["condition"]))


def print_tables(rows: list[dict], conds: list[str]) -> None:
    """Each rule's false-positive rate and acceptance per condition, then its summary."""
    t = pd.DataFrame(rows)
    for col, title in (("fpr", "false-positive rate (%) per condition"),
                       ("accept_right", "right best guesses accepted, 3-10 s queries (%)")):
        piv = t.pivot(index="condition", columns="statistic", values=col).reindex(conds) * 100
        print(f"## {title}\n")
        print(piv.round(2).to_string())
        print()
    summary = t.groupby("statistic").agg(fpr_min=("fpr", "min"), fpr_max=("fpr", "max"), fpr_mean=("fpr", "mean"),
                                         accept_mean=("accept_right", "mean"), accept_min=("accept_right", "min"))
    # the acceptance target is over the 0-10 dB conditions only
    noisy = t[t["condition"].map(lambda c: (snr_of(c) is not None) and snr_of(c) <= 10)]
    summary["accept_0_10dB"] = noisy.groupby("statistic")["accept_right"].mean()
    print("## summary (%)\n")
    print((summary * 100).round(2).to_string())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results/ folder of an evaluation run")
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--mode", default="sequence")
    ap.add_argument("--calibration", action="store_true",
                    help="fit on the run's calibration null queries, measure on all unknown-song queries")
    args = ap.parse_args(argv)
    r = Path(args.results)
    unknown, unseen, conds = evaluation_queries(r, args.mode)
    print(f"{len(unknown)} unknown-song queries ({unknown.source_song_id.nunique()} songs), {len(unseen)} unseen "
          f"database queries; target false-positive rate {args.fpr:g}; mode {args.mode}\n")
    nulls = calibration_nulls(r) if args.calibration else None
    if nulls is not None:
        print(f"fitted on the calibration's {len(nulls)} null queries, measured on every unknown-song query\n")
        nulls["J"] = [max(1, n) for n in nulls["n_seg"]]
        nulls["top_votes"] = [None] * len(nulls)
    rows = []
    for stat, fn in STATS.items():
        if nulls is not None and "vote" in stat:
            continue
        for frame in [f for f in (unknown, unseen, nulls) if f is not None]:
            frame["v"] = [fn(list(t), None if v is None else list(v), j)
                          for t, v, j in zip(frame["top_scores"], frame["top_votes"], frame["J"])]
        rows += _cross_validated_rows(stat, unknown, unseen, conds, _per_length_rule(args.fpr), nulls)
    rows += _conditional_rows(unknown, unseen, conds, args.fpr, nulls) + _oracle_rows(unknown, unseen, conds, args.fpr)
    if nulls is None:  # the combinations learn from right answers too, which the calibration's queries do not hold
        rows += _combination_rows(unknown, unseen, conds, args.fpr)
    print_tables(rows, conds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
