"""The listener's command-line side: settings from the config files, and what the terminal shows.

``scripts/listen.py`` parses the arguments and calls these; the listening itself is ``listener.py``.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from workflow_lib.listener.core import Decision, ListenConfig, ListenSummary, MATCH, SILENCE

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "config" / "config.yaml"
SCHEMA = REPO / "config" / "schema.yaml"
# Keys of the ``listen:`` section that are not ListenConfig fields (they configure the command, not the core).
CLI_KEYS = ("device", "threads")


@dataclass
class ListenSettings:
    listen: ListenConfig
    search: dict[str, Any]  # Searcher keyword arguments
    device: str | int | None = None
    threads: int = 1
    sources: list[str] = field(default_factory=list)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(config_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ListenSettings:
    """The repository defaults (config/config.yaml), a user config merged on top (as Snakemake's ``--configfile``
    does), validated against config/schema.yaml, then command-line ``overrides`` of ``listen:`` keys."""
    import jsonschema
    import yaml

    from workflow_lib.search.searcher import searcher_kwargs as search_kwargs

    def read(p: Path) -> dict:
        try:
            return yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise ValueError(f"config file not found: {p}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{p}: not valid YAML ({exc})") from None

    sources = [str(DEFAULT_CONFIG)] if DEFAULT_CONFIG.is_file() else []
    cfg = read(DEFAULT_CONFIG) if sources else {}
    if config_path is not None and Path(config_path).resolve() != DEFAULT_CONFIG.resolve():
        cfg = _merge(cfg, read(Path(config_path)))
        sources.append(str(config_path))
    if SCHEMA.is_file():
        try:
            jsonschema.validate(cfg, yaml.safe_load(SCHEMA.read_text()))
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
            raise ValueError(f"config {' + '.join(sources)}: key {where}: {exc.message}") from None
    section = dict(cfg.get("listen") or {})
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    section.update(given)
    if "window_s" in given:  # a shorter --window brings the tail and the minimum match length down with it
        for key in ("tail_s", "min_match_s"):
            if key not in given and key in section and section[key] > given["window_s"]:
                section[key] = given["window_s"]
    cli = {k: section.pop(k) for k in CLI_KEYS if k in section}
    try:
        listen = ListenConfig.from_dict(section)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"listen settings: {exc}") from None
    threads = int(cli.get("threads") or 1)
    if threads < 1:
        raise ValueError(f"listen.threads must be at least 1, got {threads}")
    return ListenSettings(listen, search_kwargs(cfg.get("search") or {}), cli.get("device"), threads, sources)


# ------------------------------------------------------------------------------------------------ display

def fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    sign = "-" if s < 0 else ""
    m, sec = divmod(abs(s), 60)
    return f"{sign}{int(m)}:{sec:04.1f}"


def song_label(title: str | None, artist: str | None, song_id: str | None) -> str:
    if title and artist:
        return f'"{title}" - {artist}'
    return f'"{title}"' if title else (song_id or "?")


def decision_line(d: Decision) -> str:
    """One status line: stream time, state, song, position in the song, confidence, compute per decision."""
    head = f"[{fmt_time(d.stream_s):>7}]"
    tail = f"{d.compute_ms:5.0f} ms/decision"
    if d.overflows:
        tail += f", {d.overflows} overflows"
    if d.state == SILENCE:
        return f"{head} silence ({d.level_dbfs:.0f} dBFS), listening...  {tail}"
    if d.state == MATCH:
        return (f"{head} \u266a {song_label(d.title, d.artist, d.song_id)} at {fmt_time(d.song_pos_s)}  "
                f"confidence {d.confidence:.2f}  {tail}")
    if d.song_id is None:
        return f"{head} listening...  {tail}"
    return (f"{head} listening... best guess {song_label(d.title, d.artist, d.song_id)} score {d.score:.3f} "
            f"(needs {d.threshold:.3f}), {d.streak} in a row  {tail}")


def event_line(d: Decision) -> str | None:
    if d.event in ("match", "change"):
        return (f"[{fmt_time(d.stream_s):>7}] {'now playing' if d.event == 'match' else 'changed to'}: "
                f"{song_label(d.title, d.artist, d.song_id)} (song position {fmt_time(d.song_pos_s)}, "
                f"confidence {d.confidence:.2f})")
    if d.event == "resync":
        return f"[{fmt_time(d.stream_s):>7}] offset corrected: now at {fmt_time(d.song_pos_s)} of the song"
    if d.event == "lost":
        return f"[{fmt_time(d.stream_s):>7}] music stopped or changed: listening..."
    return None


def summary_text(s: ListenSummary) -> str:
    lines = [f"Heard {len(s.heard)} song{'s' if len(s.heard) != 1 else ''} in {fmt_time(s.stream_s)} of audio"
             f"{' from ' + s.device if s.device else ''}:"]
    for h in s.heard:
        lines.append(f"  {fmt_time(h.start_s)}-{fmt_time(h.end_s)}  {song_label(h.title, h.artist, h.song_id)}  "
                     f"(song {fmt_time(h.song_position(h.start_s))}-{fmt_time(h.song_position(h.end_s))}, "
                     f"confidence {h.max_confidence:.2f}, named after {h.declared_s - h.start_s:.1f} s)")
    if not s.heard:
        lines.append("  (nothing recognised)")
    lines.append(f"{s.decisions} decisions, compute per decision p50 {s.compute_ms_p50:.0f} ms, p95 "
                 f"{s.compute_ms_p95:.0f} ms, max {s.compute_ms_max:.0f} ms; input overflows {s.overflows}; "
                 f"audio skipped {s.dropped_s:.1f} s")
    return "\n".join(lines)


class Display:
    """Terminal output: a live line rewritten in place (a terminal), a line per decision (a pipe), or JSON lines."""

    def __init__(self, json_lines: bool = False, out: TextIO | None = None, live: bool | None = None):
        self.out = out or sys.stdout
        self.json = json_lines
        self.live = (self.out.isatty() if live is None else live) and not json_lines
        self._dirty = False

    def __call__(self, d: Decision) -> None:
        if self.json:
            self.out.write(json.dumps({"type": "decision", **d.to_dict()}) + "\n")
            self.out.flush()
            return
        ev = event_line(d)
        if self.live:
            if ev:
                self.out.write("\r\x1b[2K" + ev + "\n")
            self.out.write("\r\x1b[2K" + decision_line(d))
            self._dirty = True
        else:
            if ev:
                self.out.write(ev + "\n")
            self.out.write(decision_line(d) + "\n")
        self.out.flush()

    def message(self, text: str) -> None:
        if self.json:
            self.out.write(json.dumps({"type": "message", "text": text}) + "\n")
        else:
            self._end_line()
            self.out.write(text + "\n")
        self.out.flush()

    def summary(self, s: ListenSummary) -> None:
        if self.json:
            self.out.write(json.dumps({"type": "summary", **s.to_dict()}, default=_json_default) + "\n")
        else:
            self._end_line()
            self.out.write(summary_text(s) + "\n")
        self.out.flush()

    def _end_line(self) -> None:
        if self._dirty:
            self.out.write("\n")
            self._dirty = False


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)
