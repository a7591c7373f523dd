"""Work in background threads, handed over in order and in bounded memory."""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
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


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 2) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in the order of ``items``. Items are taken only as workers
    free up (at most ``workers`` + 1 in flight), so a long stream stays in bounded memory; ``Executor.map`` would
    take them all at once. An error in ``fn`` re-raises here, when its item's turn comes."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="ordered-map") as pool:
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
