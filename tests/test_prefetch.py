"""Tests of runner.extract.prefetch: order, errors, bounded read-ahead, and early close."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from runner.extract.prefetch import prefetch


def test_items_arrive_in_order() -> None:
    """Every item comes through once, in the order the source produced it."""
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_error_is_raised_after_the_items_before_it() -> None:
    """An error in the source reaches the consumer after the items that preceded it."""

    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("page 3 broke")

    seen = []
    with pytest.raises(ValueError, match="page 3 broke"):
        for item in prefetch(source()):
            seen.append(item)
    assert seen == [1, 2]


def test_read_ahead_is_bounded_by_depth() -> None:
    """The producer never runs more than depth (+1 in hand) items ahead of the consumer."""
    produced = []

    def source() -> Iterator[int]:
        for i in range(50):
            produced.append(i)
            yield i

    stream = prefetch(source(), depth=2)
    assert next(stream) == 0
    time.sleep(0.2)
    assert len(produced) <= 1 + 2 + 1
    stream.close()


def test_closing_the_consumer_stops_and_closes_the_source() -> None:
    """Closing the consumer early stops the producer thread and closes the source generator."""
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(10_000)
        finally:
            closed.set()

    stream = prefetch(source(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert closed.wait(2)
    assert not any(t.name == "etl-prefetch" for t in threading.enumerate())
