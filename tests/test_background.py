"""The background producer shared by training and the scan."""

import threading
import time

import pytest

from workflow_lib.common.background import prefetch


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
