"""Run configuration for the command line: the defaults (``config/config.yaml``), a user file merged on top (as
Snakemake's ``--configfile`` does), validation against ``config/schema.yaml``, and the *effective* config that a
workflow run writes into its results folder (``results/config.yaml``), so that every command reads the settings
its database was built with.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Iterable

from workflow_lib.common.atomic import write_text_atomic

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "config" / "config.yaml"
SCHEMA = REPO / "config" / "schema.yaml"
EFFECTIVE_CONFIG = "config.yaml"  # inside a results folder


class ConfigError(ValueError):
    """A config file is missing, unreadable or invalid; the message names the file and the key."""


def merge(base: dict, over: dict | None) -> dict:
    """``over`` merged into a copy of ``base``, nested sections key by key."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml when PyYAML has it: the same documents, 6-10 times faster (every command
    reads the defaults and the schema: 56 ms in pure Python, 8 ms through libyaml)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    try:
        data = parse_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds sections (a mapping), not {type(data).__name__}")
    return data or {}


def validate(cfg: dict, sources: Iterable[str]) -> None:
    """Check ``cfg`` against config/schema.yaml; the error names the offending key (one line, not a schema dump)."""
    import jsonschema

    if not SCHEMA.is_file():
        return
    schema = parse_yaml(SCHEMA.read_text())
    # jsonschema.validate without its check of the schema itself (46 of its 49 ms, in every command): the schema is
    # the project's, checked by the tests.
    exc = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(cfg))
    if exc is not None:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ConfigError(f"config {' + '.join(sources)}: key {where}: {exc.message}")


def load_config(config_path: str | Path | None = None) -> tuple[dict, list[str]]:
    """The defaults with ``config_path`` merged on top, validated. Returns (config, the files it came from)."""
    sources = [str(DEFAULT_CONFIG)] if DEFAULT_CONFIG.is_file() else []
    cfg = read_yaml(DEFAULT_CONFIG) if sources else {}
    if config_path is not None and Path(config_path).resolve() != DEFAULT_CONFIG.resolve():
        cfg = merge(cfg, read_yaml(config_path))
        sources.append(str(config_path))
    validate(cfg, sources)
    return cfg, sources


def run_config(results: str | Path, config_path: str | Path | None = None) -> tuple[dict, list[str]]:
    """The settings a results folder was built with (its ``config.yaml``, written by the workflow), with
    ``config_path`` merged on top when given. A folder without one (made before the file existed, or by hand) gets
    the defaults, with a warning."""
    effective = Path(results) / EFFECTIVE_CONFIG
    recorded: dict = {}
    if effective.is_file():  # laid over the defaults, so a hand-written partial file works too
        defaults = read_yaml(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else {}
        recorded = read_yaml(effective) or {}
        cfg, sources = merge(defaults, recorded), [str(effective)]
    else:
        log.warning("%s not found: using the default settings (config/config.yaml); rerun the workflow to record "
                    "the settings this database was built with", effective)
        cfg, sources = load_config(None)
    if "source" not in (recorded.get("model") or {}) and (Path(results) / "model" / "model.pt").is_file():
        # A folder that records no model.source (made before the key, or by hand) but holds its own trained model
        # was built with that model, not with whatever the default source is now.
        cfg["model"]["source"] = "train"
    if config_path is not None:
        cfg = merge(cfg, read_yaml(config_path))
        sources.append(str(config_path))
    validate(cfg, sources)
    return cfg, sources


def write_effective_config(cfg: dict, path: str | Path) -> None:
    """The validated config of a run, as one YAML file (what ``run_config`` reads back)."""
    import yaml

    text = "# The effective configuration of this run (defaults + --configfile + --config), written by the\n" \
           "# workflow: the nafp commands read it, so a query is searched the way this database was built.\n"
    write_text_atomic(path, text + yaml.safe_dump(_plain(cfg), sort_keys=False))


def _plain(v: Any) -> Any:
    """Snakemake's config holds its own mapping types; YAML wants plain dicts and lists."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def check_keys(given: Iterable[str], known: Iterable[str], section: str) -> None:
    """Refuse keys a settings section does not know, naming them (the one unknown-key check of every
    ``from_dict``)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"unknown {section} keys: {unknown} (known: {sorted(known)})")
