"""Run an iterator ahead in a worker thread, through a bounded queue.

The engine reads pages this way so that fetching page n+1 overlaps with
mapping and committing page n. The queue bounds memory (at most `depth`
pages wait); errors travel through the queue and are raised in the
consumer, in order; closing the consumer stops the producer.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


# after a stop, how long closing waits for a producer that is inside a blocking call (an
# HTTP read): it is a daemon thread, and what it holds (the run's client) is closed after this
JOIN_SECONDS = 1.0


def prefetch(
    source: Iterator[T], *, depth: int = 2, stop: threading.Event | None = None
) -> Generator[T, None, None]:
    """Yield what `source` yields, produced up to `depth` items ahead in a thread.

    When `stop` is set, iteration ends at once, even while the producer is blocked
    (a slow page): the consumer never waits on work it no longer wants.
    """
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    closed = threading.Event()
    context = contextvars.copy_context()
    worker = threading.Thread(
        target=context.run, args=(_produce, source, items, closed), name="etl-prefetch", daemon=True
    )
    worker.start()
    try:
        while True:
            item = _get(items, stop)
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        closed.set()
        _drain(items)
        worker.join(JOIN_SECONDS if stop is not None and stop.is_set() else None)


def _get(items: queue.Queue[object], stop: threading.Event | None) -> object:
    """The next item; _DONE as soon as `stop` is set."""
    if stop is None:
        return items.get()
    while not stop.is_set():
        try:
            return items.get(timeout=0.05)
        except queue.Empty:
            continue
    return _DONE


def _produce(source: Iterator[T], items: queue.Queue[object], closed: threading.Event) -> None:
    try:
        for item in source:
            if not _put(items, item, closed):
                return
        _put(items, _DONE, closed)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        _put(items, _Failure(exc), closed)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _put(items: queue.Queue[object], item: object, closed: threading.Event) -> bool:
    """Put unless the consumer has gone; poll so a full queue never blocks a closed run."""
    while not closed.is_set():
        try:
            items.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _drain(items: queue.Queue[object]) -> None:
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return
