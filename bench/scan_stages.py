"""Where a scan's time goes: each stage of ``nafp scan`` run alone and timed, then the scan itself.

    .venv/bin/python bench/scan_stages.py RECORDING --results DB [--runs 2] [--threads 2]

The stages are those of ``listener.scan.scan_chunks``, one after another on the whole recording: decoding
(``audio.files.iter_audio``), fingerprinting (``model.embed.iter_embed_chunks``), the index search and the runner-up
search of every segment, the window searches of every hop made a chunk at once (``search.sliding``), the
listener's decisions (``ListenerCore.push_segments``) and the following of each declared song (``scan._refine``).
Their sum (fingerprints on ``--threads`` torch threads) is what the scan would cost without its background
thread; the last figure is ``scan_chunks`` itself, as ``nafp scan --threads`` runs it: its background thread
decodes and hands the chunks to one worker per thread (fingerprints and searches, one torch thread each) beside the
decisions (bench/README.md, "Deciding a chunk of hops at once").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_lib import SAMPLE_RATE  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recording", help="an audio file (the scan's input)")
    ap.add_argument("--results", required=True, help="a database folder (nafp index or the workflow's results)")
    ap.add_argument("--runs", type=int, default=2, help="how many times to time everything (default: 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, as nafp scan --threads (default: 2)")
    args = ap.parse_args()

    import torch

    from workflow_lib.audio.decoded import AudioDecodeError
    from workflow_lib.audio.files import iter_audio
    from workflow_lib.cli.listen import load_settings
    from workflow_lib.api import SetupError
    from workflow_lib.cli.query import load_searcher
    from workflow_lib.listener import scan
    from workflow_lib.listener.core import ListenerCore
    from workflow_lib.model.embed import iter_embed_chunks
    from workflow_lib.search.ranking import Neighbours, find_neighbours, runner_up_neighbours
    from workflow_lib.search.sliding import SlidingWindowSearch

    if args.runs < 1 or args.threads < 1:
        sys.exit("scan_stages: --runs and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    try:
        settings = load_settings(args.results)
        searcher, _ = load_searcher(argparse.Namespace(results=args.results, config=None))
    except (SetupError, ValueError) as exc:
        sys.exit(f"scan_stages: {exc}")
    listen = settings.listen
    print(f"{args.recording}, database {args.results} ({searcher.db.ntotal} segments, {searcher.db.dim}-d), "
          f"{args.threads} torch threads")
    for run in range(args.runs):
        times: dict[str, float] = {}

        def timed(name, fn):
            t0 = time.perf_counter()
            out = fn()
            times[name] = time.perf_counter() - t0
            return out

        try:
            chunks = timed("decode", lambda: list(iter_audio(args.recording)))
        except AudioDecodeError as exc:
            sys.exit(f"scan_stages: {exc}")
        seconds = sum(len(c) for c in chunks) / SAMPLE_RATE
        if seconds < 1:
            sys.exit(f"scan_stages: {args.recording} holds less than a second of audio")
        blocks = timed("fingerprints", lambda: list(iter_embed_chunks(
            searcher.fingerprinter, chunks, searcher.batch_size, searcher.device, with_levels=True,
            silence_dbfs=listen.silence_dbfs)))
        neighbours = timed("search", lambda: [find_neighbours(searcher.db, e, searcher.top_k) for _, e, _ in blocks])
        runner_up = timed("runner-up search", lambda: [runner_up_neighbours(searcher.db, e, nb, searcher.top_k)
                                                       for (_, e, _), nb in zip(blocks, neighbours)])
        core = ListenerCore(searcher, listen, cut_ends=False)  # as the scan's core: it refines edges itself
        windows = SlidingWindowSearch(searcher.db, core.n_window, core.n_tail, searcher.max_candidates,
                                      searcher.n_results)
        ranked = timed("window searches", lambda: [
            windows.add(first, e, core.heard_segments(e, lev), nb)
            for (first, e, lev), nb in zip(blocks, neighbours)])

        def decide():
            for (first, e, lev), nb, ru, r in zip(blocks, neighbours, runner_up, ranked):
                core.push_segments(first, e, lev, nb, runner_up=ru, ranked=r)
            core.finish()

        timed("decisions", decide)
        emb = np.concatenate([e for _, e, _ in blocks]).astype(np.float16)
        occurrences = timed("following", lambda: scan._refine(searcher, core.heard, emb, listen,
                                                              neighbours=Neighbours.concat(neighbours)))
        in_a_row = sum(times.values())
        workers = scan.fingerprint_workers(args.threads, searcher.device)  # as nafp scan --threads does
        result = scan.scan_chunks(searcher, iter_audio(args.recording), listen, workers=workers)
        torch.set_num_threads(args.threads)  # the stages alone run as before
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
        print(f"run {run + 1}: {seconds / 60:.1f} min of audio; {stages}; in a row {in_a_row:.1f} s "
              f"({seconds / in_a_row:.0f}x realtime, {len(occurrences)} occurrences); scan_chunks "
              f"{result.compute_s:.1f} s ({seconds / result.compute_s:.0f}x, {len(result.occurrences)} occurrences)",
              flush=True)


if __name__ == "__main__":
    main()
