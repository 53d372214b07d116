"""A child resource's pages: for each parent its work names, the parent's child pages in order.

The work is what the state store recorded with each parent's page (`pending`):
the parent's key and source record. `ChildReader.batches` runs the children
of `concurrency` parents at once, each in a thread of its own that reads its
parent's pages in order into a small queue; the batches are yielded parent
after parent, in the order the work was recorded, so memory holds a few
pages per parent in flight and never the whole list of parents.

A parent whose child requests fail with a 4xx (the parent was deleted
between the two requests: 404), or whose request template cannot be
filled, ends with `error` set: that parent's children fail, the run goes on.
Anything else (a 5xx or network failure past its retries, a bug) ends the
run: it is raised from `batches`.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from runner.config.templates import TemplateValueError
from runner.errors import EtlError, FetchError
from runner.extract.reader import Page
import contextlib

WORK_CHUNK = 200  # pending rows read from the store at a time
QUEUED_PAGES = 2  # pages a parent's thread reads ahead of the writer
_POLL_S = 0.05

Work = tuple[int, str, str]  # (sequence, parent key, parent record as JSON)


@dataclass(slots=True)
class ChildBatch:
    """One page of one parent's children (`page`), and whether it is that parent's last.

    `page` is None for a parent with no child page (an empty list, or a failure);
    `error` says why that parent's children failed; `parent` is its source record.
    """

    key: str
    parent: Any
    page: Page | None
    last: bool
    error: str | None = None


class _Failed:
    """The end of a parent's thread that the run cannot go on from."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ChildReader:
    """Reads a child resource's pages for each parent of its recorded work."""

    def __init__(
        self, *, work: Callable[[int, int], list[Work]], fetch: Callable[[Any], Iterator[Page]],
        concurrency: int, halt: threading.Event,
    ) -> None:
        self._work, self._fetch = work, fetch
        self._concurrency = max(1, concurrency)
        self._halt = halt
        self._cancel = threading.Event()
        self.parents = 0  # parents whose children were read

    def batches(self) -> Generator[ChildBatch, None, None]:
        """Every parent's child pages, parent after parent in recorded order."""
        pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="etl-child")
        active: deque[tuple[str, Any, queue.Queue[ChildBatch | _Failed]]] = deque()
        pending = self._pending()
        try:
            while True:
                while len(active) < self._concurrency:
                    work = next(pending, None)
                    if work is None:
                        break
                    _, key, text = work
                    parent = json.loads(text)
                    out: queue.Queue[ChildBatch | _Failed] = queue.Queue(QUEUED_PAGES)
                    pool.submit(self._read, key, parent, out)
                    active.append((key, parent, out))
                if not active:
                    return
                key, parent, out = active[0]
                while True:
                    item = self._take(out)
                    if isinstance(item, _Failed):
                        raise item.error
                    yield item
                    if item.last:
                        break
                active.popleft()
                self.parents += 1
        finally:
            self._cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _pending(self) -> Iterator[Work]:
        """The recorded work in chunks, read on the consuming thread (the store's)."""
        after = 0
        while True:
            chunk = self._work(after, WORK_CHUNK)
            if not chunk:
                return
            yield from chunk
            after = chunk[-1][0]

    def _take(self, out: queue.Queue[ChildBatch | _Failed]) -> ChildBatch | _Failed:
        while True:
            try:
                return out.get(timeout=_POLL_S)
            except queue.Empty:
                if self._halt.is_set():
                    return _Failed(_Ended("the run is ending"))

    def _read(self, key: str, parent: Any, out: queue.Queue[ChildBatch | _Failed]) -> None:
        """One parent's child pages, in order, with one page of lookahead to mark the last."""
        try:
            held: Page | None = None
            for page in self._fetch(parent):
                if held is not None:
                    self._put(out, ChildBatch(key, parent, held, last=False))
                held = page
            self._put(out, ChildBatch(key, parent, held, last=True))
        except _Cancelled:
            return
        except TemplateValueError as exc:
            self._put_quietly(out, ChildBatch(key, parent, None, last=True, error=str(exc)))
        except FetchError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                self._put_quietly(out, ChildBatch(key, parent, None, last=True, error=str(exc)))
            else:
                self._put_quietly(out, _Failed(exc))
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which raises it
            self._put_quietly(out, _Failed(exc))

    def _put(self, out: queue.Queue[ChildBatch | _Failed], item: ChildBatch | _Failed) -> None:
        while True:
            if self._cancel.is_set() or self._halt.is_set():
                raise _Cancelled
            try:
                out.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _put_quietly(self, out: queue.Queue[ChildBatch | _Failed], item: ChildBatch | _Failed) -> None:
        with contextlib.suppress(_Cancelled):
            self._put(out, item)


class _Cancelled(Exception):
    """The consumer is gone: a parent's thread stops where it is."""


class _Ended(EtlError):
    """Raised where the consumer waits when another part of the run failed first."""


def with_parent(records: list[Any], parent: Any) -> list[Any]:
    """Each child record with `_parent`, the parent's source record, before it is mapped."""
    return [{**record, "_parent": parent} if isinstance(record, dict) else record for record in records]
