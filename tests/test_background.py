"""The background producer and the ordered map (threads or worker processes) shared by the stages."""

import os
import threading
import time

import pytest

from workflow_lib.common.background import ordered_map, prefetch


def test_prefetch_keeps_order_and_raises():
    assert list(prefetch(iter(range(20)), depth=2)) == list(range(20))

    def broken():
        yield 1
        raise OSError("disk gone")

    out = []
    with pytest.raises(OSError, match="disk gone"):
        for x in prefetch(broken()):
            out.append(x)
    assert out == [1]


def test_prefetch_stops_its_producer_when_the_consumer_stops():
    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    stream = prefetch(endless(), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer gives up (an error in the scan's decisions, say)
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
    n = len(made)
    time.sleep(0.1)
    assert len(made) == n  # nothing is produced after the close
    assert n <= 4  # bounded: the queue's depth ahead, not the whole stream


def test_ordered_map_keeps_the_order_of_its_items_takes_them_as_workers_free_up_and_raises():
    taken = []
    side_by_side = threading.Barrier(3, timeout=10)  # broken (an error) unless three items run at once

    def items():
        for i in range(12):
            taken.append(i)
            yield i

    def slow_square(i):
        if i < 3:
            side_by_side.wait()
        time.sleep(0.01 * (3 - i % 3))  # later items often finish first
        return i * i

    out = []
    for x in ordered_map(slow_square, items(), workers=3):
        out.append(x)
        assert len(taken) <= len(out) + 3 + 1  # never more than workers + 1 taken ahead of what was handed out
    assert out == [i * i for i in range(12)]
    assert list(ordered_map(lambda i: i * i, range(5), workers=1)) == [0, 1, 4, 9, 16]

    def fails_at_3(i):
        if i == 3:
            raise ValueError("bad chunk")
        return i

    got = []
    with pytest.raises(ValueError, match="bad chunk"):
        for x in ordered_map(fails_at_3, range(10), workers=2):
            got.append(x)
    assert got == [0, 1, 2]  # everything before the failing item, in order
    with pytest.raises(ValueError, match="workers"):
        list(ordered_map(abs, range(3), workers=0))


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def test_ordered_map_in_worker_processes_keeps_the_order_and_raises():
    out = list(ordered_map(_square_and_pid, range(20), workers=3, processes=True))
    assert [v for v, _ in out] == [x * x for x in range(20)]
    assert os.getpid() not in {pid for _, pid in out}
    assert {pid for _, pid in ordered_map(_square_and_pid, range(5), workers=1, processes=True)} == {os.getpid()}
    with pytest.raises(ValueError, match="three"):
        list(ordered_map(_fails_on_three, range(6), workers=2, processes=True))


def test_ordered_map_in_processes_leaves_no_worker_behind_when_the_consumer_stops_early():
    import multiprocessing

    answers = ordered_map(_square_and_pid, range(200), workers=2, processes=True)
    assert next(answers)[0] == 0
    answers.close()  # the pool shuts down, the items not started are dropped
    assert multiprocessing.active_children() == []
