"""The evaluation's outputs for people: ``summary.md`` (+ an HTML copy for the Snakemake report) and hit-rate plots.

Unseen songs (never trained on) come first: they are what the figures claim; trained-on songs and the no-match rule
(false-positive rate per condition on unknown songs) follow in their own sections.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from workflow_lib.common.atomic import atomic_path, write_csv_atomic, write_parquet_atomic, write_text_atomic
from workflow_lib.evaluation.metrics import (compute_metrics, pooled_fpr, score_with_audio, target_checks,
                                             wilson_interval)
from workflow_lib.evaluation.neural import NEURAL
from workflow_lib.evaluation.repeats import SAME_AUDIO_CORRELATION

log = logging.getLogger(__name__)

HIT_TABLES = (("song_top1", "Song-level top-1 hit rate (%)"),
              ("seg_top1_exact", "Segment-level top-1 exact (offset within 0.25 s, %)"),
              ("seg_top1_same_audio", "Segment-level top-1 exact or on a repeat of the query's audio in the song (%)"),
              ("seg_top1_near", "Segment-level top-1 near (offset within 0.5 s, %)"),
              ("song_top10", "Song-level top-10 (%)"),
              ("song_top1_accepted", "Song-level top-1 and accepted by the no-match rule (%)"),
              ("accept_right", "Share of right best guesses the no-match rule accepts (%)"))


def _label(system: str, mode: str) -> str:
    return f"{system} ({mode})"


def _share(x: float) -> str:
    """A share as a percentage for a table cell; '-' when there is nothing to share out."""
    return "-" if not np.isfinite(x) else f"{100 * x:.0f} %"


def _room(monitoring: pd.DataFrame) -> str:
    """What the programmes played through and how nafp scan heard them (``evaluate.monitoring.room_pool`` and
    ``whitened``; tables written before those settings existed: a held-out room, one view)."""
    pool = str(monitoring["room_pool"].iloc[0]) if "room_pool" in monitoring else "room"
    room = {"none": "no room", "room": "a held-out room", "resonant": "a held-out resonant space"}.get(
        pool, f"a held-out response ({pool})")
    views = int(monitoring["views"].max()) if "views" in monitoring else 1
    return room + ("; nafp scan in two views, the recording as it is and whitened (`--whitened`)" if views == 2 else "")


def _shortest_play(monitoring: pd.DataFrame) -> str:
    """The sentence saying which plays were left out (``evaluate.monitoring.min_duration_s``), or nothing."""
    if "min_duration_s" not in monitoring or not (monitoring["min_duration_s"] > 0).any():
        return ""  # every occurrence scored (tables written before the setting existed have no such column)
    return (f" Plays shorter than {monitoring['min_duration_s'].max():g} s are not reported by either system "
            "(`evaluate.monitoring.min_duration_s`, `nafp scan --min-duration`).")


def _pivot_md(df: pd.DataFrame, index: list[str], value: str, scale: float = 100.0, fmt: str = "{:.1f}") -> str:
    lengths = sorted(df["length_s"].unique())
    head = "| " + " | ".join(index) + " | " + " | ".join(f"{x:g} s" for x in lengths) + " |"
    sep = "|" + "---|" * (len(index) + len(lengths))
    lines = [head, sep]
    for key, g in df.groupby(index, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        vals = g.set_index("length_s")[value]
        cells = [fmt.format(vals[x] * scale) if x in vals.index and pd.notna(vals[x]) else "–" for x in lengths]
        lines.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(path: str | Path, queries: pd.DataFrame, metrics: pd.DataFrame, fpr: pd.DataFrame,
                  info: dict[str, Any] | None = None, monitoring: pd.DataFrame | None = None) -> str:
    """``summary.md``: the run, the targets, and hit-rate / false-positive / latency tables."""
    info = info or {}
    m = metrics.copy()
    m["system"] = [_label(s, mo) for s, mo in zip(m["system"], m["mode"])]
    groups = queries["group"] if "group" in queries else np.where(queries["in_db"], "unseen", "unknown")
    counts = pd.Series(groups).value_counts()
    songs = queries.groupby(groups)["source_song_id"].nunique()
    lines = ["# Evaluation summary", ""]
    lines.append("Queries: " + ", ".join(f"{counts.get(g, 0)} from {songs.get(g, 0)} {label}" for g, label in
                                         (("unseen", "database songs never trained on"),
                                          ("trained", "database songs the model trained on"),
                                          ("unknown", "songs searched as unknown (their own fingerprints "
                                                      "skipped)")) if counts.get(g, 0)) + ".")
    lines.append("Conditions: " + ", ".join(queries["condition"].drop_duplicates()) + ". Noise and impulse "
                 "responses come from the held-out (test) banks; simulated rooms and resonant spaces are held-out "
                 "draws of the generators that training also used, 'real' rooms are measured ones training never "
                 "heard. Hit rates ignore the no-match rule unless marked 'accepted'; segment 'exact' = offset "
                 "within 0.25 s, 'near' = within 0.5 s; 'repeat of the query's audio' also counts an offset where the "
                 "song plays the query's own audio again (a loop: correlation >= "
                 f"{SAME_AUDIO_CORRELATION:g}), which no fingerprint can tell apart.")
    for k, v in info.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Targets (unseen songs)", "", "| target | measured | met |", "|---|---|---|"]
    for name, val, ok in target_checks(metrics, fpr):
        lines.append(f"| {name} | {val} | {'yes' if ok else ('no' if ok is not None else 'n/a')} |")
    for group, title in (("unseen", "Unseen songs"), ("trained", "Trained-on songs")):
        g = m[m["group"] == group]
        if g.empty:
            continue
        tables = HIT_TABLES if group == "unseen" else HIT_TABLES[:2]
        for metric, name in tables:
            if metric in g and g[metric].notna().any():  # the same-audio check needs the songs' audio
                lines += ["", f"## {title}: {name}", "", _pivot_md(g, ["condition", "system"], metric)]
    unk = m[m["group"] == "unknown"]
    if len(unk):
        lines += ["", "## No-match rule: false-positive rate on unknown songs per condition (%)", "",
                  _pivot_md(unk, ["condition", "system"], "fpr", fmt="{:.2f}")]
        if "shared_audio" in unk and unk["shared_audio"].notna().any():
            shared = (unk["shared_audio"] * unk["n_queries"]).groupby(unk["system"], sort=False).sum()
            lines += ["", "Not counted as false positives: accepted answers naming a database song that holds the "
                          f"query's own audio (correlation >= {SAME_AUDIO_CORRELATION:g} at the named offset: a "
                          "passage the two songs share, which any fingerprint names): "
                      + ", ".join(f"{s} {int(round(n))}" for s, n in shared.items()) + "."]
    if len(fpr):
        f = fpr.copy()
        f["system"] = [_label(s, mo) for s, mo in zip(f["system"], f["mode"])]
        lines += ["", "## False-positive rate on unknown songs, all conditions (%)", "",
                  _pivot_md(f, ["system"], "fpr", fmt="{:.2f}")]
    if monitoring is not None and len(monitoring):
        from workflow_lib.evaluation.monitoring import summarise_monitoring

        mon = summarise_monitoring(monitoring)
        lines += ["", "## Monitoring benchmark (nafp scan on synthetic programmes)", "",
                  f"{monitoring['programme'].nunique()} programmes, "
                  f"{monitoring.groupby('system')['minutes'].sum().max():.0f} "
                  "minutes per system: database songs never trained on and unknown songs, talk, crossfades, a noise "
                  f"bed and {_room(monitoring)}. Per-second song labels; boundary and offset errors are medians over "
                  "matched occurrences; false alarms per hour of audio without a database song, and the share of "
                  "them at the edge of a true occurrence of the same song (within 6 s of its start or end). "
                  "Targets: F1 >= "
                  "0.95 at 10 dB and >= 0.85 at 0 dB, boundary error <= 1.5 s, <= 1 false-alarm minute per hour, "
                  ">= 200x realtime." + _shortest_play(monitoring), "",
                  "| system | SNR | precision | recall | F1 | boundary error (s) | offset error (s) | "
                  "false-alarm min/h | of them at an edge | realtime |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in mon.itertuples():
            lines.append(f"| {r.system} | {r.snr_db:g} dB | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} | "
                         f"{r.boundary_error_s:.2f} | {r.offset_error_s:.2f} | {r.false_alarm_min_per_hour:.2f} | "
                         f"{_share(r.edge_alarm_share)} | {r.realtime:.0f}x |")
    first = m[(m["group"] == "unseen") & (m["condition"] == m["condition"].iloc[0])] if len(m) else m
    if len(first):
        lines += ["", f"## Latency per query, condition '{first['condition'].iloc[0]}' (ms)", "",
                  "Fingerprinting + search (decoding not included); search alone below.", "", "p50:", "",
                  _pivot_md(first, ["system"], "latency_p50_ms", 1.0), "", "p95:", "",
                  _pivot_md(first, ["system"], "latency_p95_ms", 1.0), "",
                  "Search only (p50):", "", _pivot_md(first, ["system"], "search_p50_ms", 1.0, "{:.2f}")]
    text = "\n".join(lines) + "\n"
    write_text_atomic(path, text)
    return text


def plot_hit_rates(metrics: pd.DataFrame, path: str | Path, metric: str = "song_top1",
                   ylabel: str = "song-level top-1 (%)", title: str = "") -> None:
    """Hit rate vs query length on unseen songs, one panel per condition, one line per system and mode, with 95 %
    binomial (Wilson) intervals; each panel's axis is zoomed to its data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = metrics[(metrics["group"] == "unseen") & metrics[metric].notna()] if "group" in metrics else metrics
    conds = list(dict.fromkeys(data["condition"]))
    ncol = min(4, max(1, len(conds)))
    nrow = int(np.ceil(len(conds) / ncol)) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow + 0.6), squeeze=False)
    markers = "os^Dv<>"
    lines = list(data.groupby(["system", "mode"], sort=False).groups)
    for ax, cond in zip(axes.flat, conds):
        g = data[data["condition"] == cond]
        lows = []
        for i, (system, mode) in enumerate(lines):
            s = g[(g["system"] == system) & (g["mode"] == mode)].sort_values("length_s")
            if s.empty:
                continue
            lo_hi = np.array([wilson_interval(r * n, n) for r, n in zip(s[metric], s["n_queries"])])
            y = s[metric].to_numpy() * 100
            # Lines that coincide stay visible: each is nudged sideways a little and keeps its own marker.
            x = s["length_s"].to_numpy() * (1 + 0.03 * (i - (len(lines) - 1) / 2))
            # Clipped at 0: at a rate of exactly 0 or 100 % the interval's edge can land a rounding error inside.
            yerr = np.maximum(0.0, [y - lo_hi[:, 0] * 100, lo_hi[:, 1] * 100 - y])
            ax.errorbar(x, y, yerr=yerr, marker=markers[i % len(markers)],
                        capsize=2, label=_label(system, mode), linestyle="--" if system != NEURAL else "-",
                        markersize=4)
            lows.append(float(np.nanmin(lo_hi[:, 0])) * 100)
        ax.set_title(cond, fontsize=9)
        ax.set_xlabel("query length (s)")
        bottom = max(0.0, min(lows) - 3) if lows else 0.0
        ax.set_ylim(bottom, 100.5 + (100 - bottom) * 0.02)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(conds):]:
        ax.axis("off")
    if conds:
        axes.flat[0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def markdown_to_html(md: str, title: str = "Evaluation summary") -> str:
    """HTML for the subset of Markdown ``write_summary`` produces (headings, paragraphs, bullets, pipe tables), so
    the Snakemake report can show the summary inline."""
    import html

    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
           "body{font-family:sans-serif;margin:1.5em;max-width:70em}table{border-collapse:collapse;margin:.5em 0}"
           "td,th{border:1px solid #bbb;padding:.2em .6em;text-align:right}td:first-child,th:first-child,"
           "td:nth-child(2){text-align:left}</style></head><body>"]
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) + "</tr>")
            for r in table[1:]:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
            out.append("</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    out.append("</body></html>")
    return "\n".join(out)


def calibration_info(threshold_path: str | Path | None) -> dict[str, Any]:
    """Lines for the summary header describing the no-match rule in use."""
    if not threshold_path or not Path(threshold_path).exists():
        return {"no-match rule": "not calibrated (fallback threshold)"}
    from workflow_lib.search.threshold import Calibration

    cal = Calibration.load(threshold_path)
    thr = ", ".join(f"{n}: {t:.3f}" for n, t in zip(cal.n_segments, cal.thresholds))
    return {"no-match rule": f"{cal.statistic} >= threshold for a {cal.target_fpr:g} false-positive rate, fitted on "
                             f"{sum(len(s) for s in cal.null_scores)} unknown-song queries from "
                             f"{cal.meta.get('n_songs', '?')} songs (thresholds by query segments: {thr})",
            "model": cal.meta.get("model_checksum", "?")}


def summarize(queries_path: str | Path, result_paths: Sequence[str | Path], metrics_path: str | Path,
              summary_path: str | Path, html_path: str | Path | None, plot_paths: dict[str, str | Path],
              threshold_path: str | Path | None = None, index_json: str | Path | None = None,
              monitoring_path: str | Path | None = None, metrics_csv: str | Path | None = None,
              songs_path: str | Path | None = None) -> pd.DataFrame:
    """Snakemake entry for ``evaluate``: metrics.parquet (+ .csv), summary.md (+ .html) and the plots from all
    systems. ``songs_path``: the song table (ids and audio paths) for the same-audio check of offsets."""
    if isinstance(result_paths, (str, Path)):
        result_paths = [result_paths]
    queries = pd.read_parquet(queries_path)
    results = pd.concat([pd.read_parquet(p) for p in result_paths], ignore_index=True)
    scored = score_with_audio(queries, results, pd.read_parquet(songs_path) if songs_path else None)
    metrics = compute_metrics(queries, results, scored=scored)
    fpr = pooled_fpr(queries, results, scored=scored)
    write_parquet_atomic(metrics, metrics_path)
    if metrics_csv:
        write_csv_atomic(metrics.round(4), metrics_csv)
    info = calibration_info(threshold_path)
    title = ""
    if index_json and Path(index_json).exists():
        import json

        idx = json.loads(Path(index_json).read_text())
        info["database"] = (f"{idx.get('n_songs', '?')} songs, {idx.get('ntotal', '?')} fingerprints "
                            f"({idx.get('factory', '?')})")
        # No model checksum in the figure: it covers the model file's timestamps, and the summary names it.
        title = f"unseen songs; database {idx.get('n_songs', '?')} songs"
    monitoring = pd.read_parquet(monitoring_path) if monitoring_path else None
    text = write_summary(summary_path, queries, metrics, fpr, info, monitoring)
    if html_path:
        write_text_atomic(html_path, markdown_to_html(text))
    for metric, path in plot_paths.items():
        plot_hit_rates(metrics, path, metric, {"song_top1": "song-level top-1 (%)",
                                               "seg_top1_exact": "segment top-1 exact (%)"}.get(metric, metric),
                       title)
    log.info("evaluation: %d metric rows from %d result rows", len(metrics), len(results))
    return metrics
