"""Resumable runs over many queries: results are kept per finished chunk, so a killed run resumes at the first
unfinished chunk and only the complete table is written to the final output (atomically)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from workflow_lib.common.atomic import atomic_path, write_parquet_atomic
from workflow_lib.common.progress import progress


def partial_dir(out_path: str | Path, key: Any) -> Path:
    """``.partial-<stem>-<hash of key>`` beside ``out_path``; partial folders of other keys (another query set,
    model or setting) are removed, so stale chunks are never mixed in."""
    out_path = Path(out_path)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = out_path.parent / f".partial-{out_path.stem}-{digest}"
    for old in out_path.parent.glob(f".partial-{out_path.stem}-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def run_in_chunks(items: Sequence, process: Callable[[Sequence], list[dict]], folder: Path | None, chunk: int,
                  desc: str, unit: str = "query") -> pd.DataFrame:
    """Rows of ``process(items[i:i + chunk])`` for every chunk; finished chunks are kept in ``folder``."""
    frames: list[pd.DataFrame] = []
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    with progress(total=len(items), desc=desc, unit=unit, mininterval=10) as bar:
        for c0 in range(0, len(items), chunk):
            part = folder / f"chunk-{c0 // chunk:06d}.parquet" if folder is not None else None
            todo = items[c0:c0 + chunk]
            if part is not None and part.exists():
                frames.append(pd.read_parquet(part))
                bar.update(len(todo))
                continue
            frame = pd.DataFrame(process(todo))
            if part is not None:
                with atomic_path(part) as tmp:
                    frame.to_parquet(tmp, index=False)
            frames.append(frame)
            bar.update(len(todo))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def finish(out_path: str | Path, table: pd.DataFrame, folder: Path | None) -> None:
    """Write the complete table, then drop the chunks."""
    write_parquet_atomic(table, out_path)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
