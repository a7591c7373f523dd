"""The neural system on the evaluation's query files: one row per query and search mode (``RESULT_COLUMNS``)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

from workflow_lib.common.atomic import file_digest
from workflow_lib.audio.files import load_audio
from workflow_lib.evaluation.chunks import finish, partial_dir, run_in_chunks
from workflow_lib.evaluation.songs import require_held_out_unknowns
from workflow_lib.search.duplicates import parse_exclusion

log = logging.getLogger(__name__)

NEURAL = "neural"
RESULT_COLUMNS = ["query_id", "system", "mode", "top_songs", "top_offsets_s", "top_scores", "top_votes",
                  "top_support", "score", "is_match",
                  "confidence", "views", "whitened", "embed_ms", "search_ms", "total_ms"]


def run_neural(searcher, queries: pd.DataFrame, base_dir: str | Path, modes: Sequence[str] = ("sequence",),
               folder: Path | None = None, chunk: int = 500) -> pd.DataFrame:
    """Answer every query file with the neural searcher.

    Each query is embedded once and searched in every mode; where a mode searches it whitened too and its answer
    is not already settled (``Searcher.answer_views``, as ``nafp query`` answers), the whitened view is made once
    and shared by the modes (``views`` and ``whitened`` say what answered). ``embed_ms`` is the fingerprinting time
    (whitening included), ``search_ms`` the neighbour search plus re-scoring of that mode, ``total_ms`` their sum
    (file decoding is not timed: it is the same for both systems and depends on the format, not on the method).
    Unknown-song queries are searched with their own song (and its twins, ``search.duplicates``) excluded
    (``exclude_song``: leave-one-song-out).
    """
    base = Path(base_dir)
    searcher.warm_up()  # first-call allocations and imports are not latency

    def one(q) -> list[dict]:
        audio = load_audio(base / q.file)
        exclude = parse_exclusion(getattr(q, "exclude_song", None))
        timings: dict[str, float] = {}
        plain = searcher.embed_views(audio, False, timings)[0]
        # made once, when the first mode that needs it asks (``Searcher.answer_views``)
        whitened_emb = functools.cache(lambda: searcher.embed_whitened(audio, timings))

        out = []
        for mode in modes:
            before = dict(timings)

            def whitened_result(mode=mode):
                return searcher.search_view(whitened_emb(), mode, exclude, True, timings)

            res = searcher.answer_views(searcher.search_view(plain, mode, exclude, False, timings),
                                        whitened_result if searcher.two_views(len(audio), mode) else None)
            # this mode's searches (fingerprinting, the whitened view's included, is counted in embed_ms)
            search_ms = timings.get("search_ms", 0.0) - before.get("search_ms", 0.0)
            m = searcher.decide(res)
            out.append({"query_id": q.query_id, "system": NEURAL, "mode": mode,
                        "top_songs": [c.song_id for c in res.candidates],
                        "top_offsets_s": [c.offset_s for c in res.candidates],
                        "top_scores": [c.score for c in res.candidates],
                        "top_votes": [c.votes for c in res.candidates],
                        "top_support": [c.support for c in res.candidates],
                        "score": m.score if res.candidates else float("nan"), "is_match": m.is_match,
                        "confidence": m.confidence, "views": res.views, "whitened": res.whitened,
                        "embed_ms": 0.0, "search_ms": search_ms, "total_ms": 0.0})
        embed_ms = timings.get("embed_ms", 0.0) + timings.get("whiten_ms", 0.0)
        for row in out:
            row["embed_ms"], row["total_ms"] = embed_ms, embed_ms + row["search_ms"]
        return out

    def process(chunk_items) -> list[dict]:
        return [row for q in chunk_items for row in one(q)]

    return run_in_chunks(list(queries.itertuples()), process, folder, chunk, "neural queries")


def evaluate_neural(queries_path: str | Path, out_path: str | Path, model_path: str | Path,
                    index_dir: str | Path, threshold_path: str | Path, search_cfg: dict, modes: Sequence[str],
                    threads: int = 1) -> pd.DataFrame:
    """Snakemake entry for ``eval_neural``: resumable per chunk of queries."""
    import torch

    from workflow_lib.search.searcher import Searcher, searcher_kwargs

    require_held_out_unknowns(search_cfg)
    torch.set_num_threads(max(1, threads))
    queries = pd.read_parquet(queries_path)
    searcher = Searcher.from_paths(model_path, index_dir, None, threshold_path, **searcher_kwargs(search_cfg))
    # Finished chunks are reused only for the same queries, model, threshold and result-changing search settings.
    same = {k: v for k, v in search_cfg.items() if k not in ("device", "batch_size")}
    folder = partial_dir(out_path, [file_digest(queries_path), file_digest(model_path),
                                    file_digest(threshold_path) if Path(threshold_path).exists() else None,
                                    same, list(modes)])
    res = run_neural(searcher, queries, Path(queries_path).parent, modes, folder)
    finish(out_path, res, folder)
    log.info("neural: %d queries x %d modes answered on %s", len(queries), len(modes), searcher.device)
    return res
