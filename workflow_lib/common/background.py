"""Work in background threads or worker processes, handed over in order and in bounded memory.

Decoding files (the manifest's scan, ``nafp db add``'s check, audfprint's analysis) takes processes: it runs in C
(libsndfile, libmpg123, soxr) or an ffmpeg child, but ``audio.decoder_messages`` serialises every decoder call on a
process-wide lock (its stderr redirect), so threads would decode one file at a time. The processes are forked: a
Snakemake ``script:`` has no ``if __name__ == "__main__"`` guard, and the spawn and forkserver methods import the
main module again in every worker, which would run the whole stage once per worker; a forked worker also keeps the
parent's logging (the stage's log file). Where fork does not exist (Windows) the work runs in the calling process.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Produce ``items`` in a background thread, ``depth`` ahead, so producing overlaps consuming (batch assembly
    and the training step; decoding and embedding a recording and the scan's decisions).

    The order is unchanged (one producer), so runs stay deterministic. Errors in the producer re-raise here. When
    the consumer stops early (an error, a closed generator), the producer stops at its next item.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # hand every failure to the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 2, processes: bool = False) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in the order of ``items``. Items are taken only as workers
    free up (at most ``workers`` + 1 in flight), so a long stream stays in bounded memory; ``Executor.map`` would
    take them all at once. An error in ``fn`` re-raises here, when its item's turn comes.

    ``processes``: forked worker processes instead of threads (module docstring), for work that holds the GIL or a
    process-wide lock; ``fn`` must then be a module-level function, and its items and answers picklable."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or (processes and not can_fork()):
        yield from map(fn, items)
        return
    pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) if processes
            else ThreadPoolExecutor(workers, thread_name_prefix="ordered-map"))
    with pool:
        pending: deque[Future] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:  # the consumer stopped early: what has not started is not started
                f.cancel()
