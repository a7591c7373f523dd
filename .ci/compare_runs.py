"""Compare the results of two workflow runs file by file, by content (used by the cluster test).

Two runs of the same workflow in different working directories never produce byte-identical trees: absolute paths
(the manifest's `path` column, for one) name the working directory, and a few fields record wall-clock time. This
module compares what must be equal: every file by its content, with the working directory's path replaced by a
placeholder and with only the fields listed in VOLATILE_KEYS (timings) ignored.

    python .ci/compare_runs.py RUN_A RUN_B [--files LIST]     # exit 1 and a list of differences when they differ
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

PLACEHOLDER = "<WORKDIR>"
# Keys (JSON fields, table columns) whose values are wall-clock measurements or the moment of the run, so they
# differ between any two runs: *_seconds, *_ms, *_at, latency*, per-second rates, epoch_s, elapsed_min, ...
# mtime_ns: a file's modification moment (the manifest's), and the demo songs are written anew by each run.
VOLATILE_KEYS = re.compile(r"(^|_)(seconds|secs|minutes|elapsed(_\w+)?|time|timestamp|created|date|at|ms|"
                           r"epoch_s|wall_s|cpu_s|per_s|sec_per_step|mtime_ns)$|latency", re.I)
# Report sections (Markdown '## ' or HTML <h2>) with timings: their figures differ between any two runs.
VOLATILE_SECTION = re.compile(r"latency|speed|timing", re.I)
# Markers that Snakemake leaves next to directory outputs.
IGNORED_NAMES = {".snakemake_timestamp"}
# Logs (e.g. the training's history log beside its checkpoint) record this run's moments and speed, not results.
IGNORED_SUFFIXES = {".log"}


class Difference(Exception):
    """Raised with a short reason when two files differ in content."""


def normalise(value: Any, roots: Iterable[tuple[str, str]]) -> Any:
    """Apply the (text, placeholder) substitutions to every string, recursively; drop volatile keys from mappings."""
    if isinstance(value, str):
        for text, placeholder in roots:
            value = value.replace(text, placeholder)
        return value
    if isinstance(value, dict):
        return {k: normalise(v, roots) for k, v in value.items()
                if not (isinstance(k, str) and VOLATILE_KEYS.search(k))}
    if isinstance(value, (list, tuple)):
        return [normalise(v, roots) for v in value]
    return value


def _short(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _equal_json(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            raise Difference(f"{where or 'top level'}: keys differ: {sorted(set(a) ^ set(b))}")
        for k in a:
            _equal_json(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            raise Difference(f"{where}: lengths {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _equal_json(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    elif a != b:
        raise Difference(f"{where}: {_short(a)} != {_short(b)}")


def _compare_parquet(a: Path, b: Path, roots_a: list[tuple[str, str]], roots_b: list[tuple[str, str]]) -> None:
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.schema.remove_metadata() != tb.schema.remove_metadata():
        raise Difference(f"schema differs: {ta.schema} vs {tb.schema}")
    meta = [{k.decode(): v.decode(errors="replace") for k, v in (t.schema.metadata or {}).items()} for t in (ta, tb)]
    meta[0].pop("pandas", None), meta[1].pop("pandas", None)  # pandas' own bookkeeping, compared via the data
    _equal_json(normalise(meta[0], roots_a), normalise(meta[1], roots_b), "schema metadata")
    da, db = ta.to_pylist(), tb.to_pylist()
    if len(da) != len(db):
        raise Difference(f"{len(da)} rows vs {len(db)}")
    for i, (ra, rb) in enumerate(zip(da, db)):
        try:
            _equal_json(normalise(ra, roots_a), normalise(rb, roots_b), f"row {i}")
        except Difference as e:
            raise Difference(str(e)) from None


def drop_volatile_sections(text: str, ext: str) -> str:
    """Remove report sections whose heading names timings (they are measurements of this run's speed)."""
    pattern = {".md": r"(?m)^(?=#{1,6} )", ".html": r"(?=<h[1-6][ >])"}.get(ext)
    if pattern is None:
        return text
    parts = re.split(pattern, text)
    return "".join(p for p in parts if not VOLATILE_SECTION.search(p.split("\n", 1)[0]))


def _compare_table(a: Path, b: Path, roots_a: list[tuple[str, str]], roots_b: list[tuple[str, str]]) -> None:
    import pandas as pd

    sep = "\t" if a.suffix.lower() == ".tsv" else ","
    da, db = pd.read_csv(a, sep=sep), pd.read_csv(b, sep=sep)
    if list(da.columns) != list(db.columns):
        raise Difference(f"columns differ: {list(da.columns)} vs {list(db.columns)}")
    keep = [c for c in da.columns if not VOLATILE_KEYS.search(str(c))]
    ra = normalise(da[keep].to_dict("records"), roots_a)
    rb = normalise(db[keep].to_dict("records"), roots_b)
    _equal_json(ra, rb, "table")


def _compare_npy(a: Path, b: Path) -> None:
    xa, xb = np.load(a, mmap_mode="r", allow_pickle=False), np.load(b, mmap_mode="r", allow_pickle=False)
    if xa.dtype != xb.dtype or xa.shape != xb.shape:
        raise Difference(f"{xa.dtype}{xa.shape} vs {xb.dtype}{xb.shape}")
    if not np.array_equal(xa, xb, equal_nan=xa.dtype.kind in "fc"):
        n = int(np.sum(np.asarray(xa) != np.asarray(xb)))
        raise Difference(f"{n} of {xa.size} values differ")


def _compare_torch(a: Path, b: Path, roots_a: list[tuple[str, str]], roots_b: list[tuple[str, str]]) -> None:
    import torch

    def plain(obj: Any) -> Any:  # tensors -> (dtype, shape, bytes) so that _equal_json can walk them
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            return [str(t.dtype), list(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes().hex()]
        if isinstance(obj, dict):
            return {str(k): plain(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        return obj

    oa = plain(torch.load(a, map_location="cpu", weights_only=True))
    ob = plain(torch.load(b, map_location="cpu", weights_only=True))
    _equal_json(normalise(oa, roots_a), normalise(ob, roots_b))


def _compare_audio(a: Path, b: Path) -> None:
    import soundfile as sf

    xa, ra = sf.read(a, dtype="int32")
    xb, rb = sf.read(b, dtype="int32")
    if ra != rb or xa.shape != xb.shape or not np.array_equal(xa, xb):
        raise Difference(f"audio differs ({ra} Hz {xa.shape} vs {rb} Hz {xb.shape})")


def compare_file(a: Path, b: Path, roots_a: list[tuple[str, str]], roots_b: list[tuple[str, str]]) -> str:
    """'identical' or 'same content'; raises Difference otherwise."""
    if a.read_bytes() == b.read_bytes():
        return "identical"
    ext = a.suffix.lower()
    if ext == ".parquet":
        _compare_parquet(a, b, roots_a, roots_b)
    elif ext == ".npy":
        _compare_npy(a, b)
    elif ext in (".pt", ".pth"):
        _compare_torch(a, b, roots_a, roots_b)
    elif ext in (".flac", ".wav", ".ogg"):
        _compare_audio(a, b)
    elif ext == ".json":
        _equal_json(normalise(json.loads(a.read_text()), roots_a), normalise(json.loads(b.read_text()), roots_b))
    elif ext in (".csv", ".tsv"):
        _compare_table(a, b, roots_a, roots_b)
    elif ext in (".txt", ".md", ".html", ".yaml", ".yml"):
        ta, tb = (drop_volatile_sections(normalise(p.read_text(), r), ext) for p, r in ((a, roots_a), (b, roots_b)))
        if ta != tb:
            line = next(i for i, (x, y) in enumerate(zip(ta.splitlines() + [""], tb.splitlines() + [""])) if x != y)
            raise Difference(f"text differs from line {line + 1}: {ta.splitlines()[line:line + 1]} vs "
                             f"{tb.splitlines()[line:line + 1]}")
    else:
        raise Difference(f"bytes differ ({a.stat().st_size} vs {b.stat().st_size} bytes)")
    return "same content"


def result_files(run: Path, sub: str = "results", hidden: bool = False) -> set[str]:
    """Files under `sub`, as paths relative to the run. Hidden ones (a path part starting with '.': caches that a
    stage keeps for its next run, temporary files) are results of no stage and only listed with hidden=True."""
    base = run / sub
    files = {p.relative_to(run) for p in base.rglob("*")
             if p.is_file() and p.name not in IGNORED_NAMES and p.suffix not in IGNORED_SUFFIXES}
    return {str(p) for p in files if hidden or not any(part.startswith(".") for part in p.parts)}


def roots(run: Path, model: str | None = "results/model/model.pt") -> list[tuple[str, str]]:
    """Run-specific strings that end up inside outputs, with their placeholders: the working directory (resolved
    and as given) and the model's checksum. The checksum covers the whole model file, training timestamps
    included, so two equal trainings stamp different checksums into every shard, index and report; whether the
    two models themselves are equal is checked on the model file."""
    subs = [(d, PLACEHOLDER) for d in sorted({str(run.resolve()), str(run.absolute())}, key=len, reverse=True)]
    if model and (run / model).is_file():
        subs.append((hashlib.sha256((run / model).read_bytes()).hexdigest()[:16], "<MODEL_CHECKSUM>"))
    return subs


def compare_runs(a: Path, b: Path, files: Iterable[str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Compare `files` (default: every file under results/ of either run). Returns (verdicts, differences)."""
    names = sorted(files) if files is not None else sorted(result_files(a) | result_files(b))
    ra, rb = roots(a), roots(b)
    verdicts: dict[str, str] = {}
    differences: dict[str, str] = {}
    for name in names:
        fa, fb = a / name, b / name
        if not fa.is_file() or not fb.is_file():
            differences[name] = f"only in {a if fa.is_file() else b}"
            continue
        try:
            verdicts[name] = compare_file(fa, fb, ra, rb)
        except Difference as e:
            differences[name] = str(e)
    return verdicts, differences


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--files", nargs="*", help="paths relative to the runs (default: all of results/)")
    args = ap.parse_args(argv)
    verdicts, differences = compare_runs(args.run_a, args.run_b, args.files)
    for name, verdict in verdicts.items():
        print(f"  {verdict:13s} {name}")
    for name, why in differences.items():
        print(f"  DIFFERS       {name}: {why}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
