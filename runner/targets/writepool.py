"""Sending one page's writes concurrently, keeping each key's writes in order.

A target cuts its page into units: one request each (a single write, or a
batch of writes), each naming the keys it writes. `WritePool.run` sends them
on at most `concurrency` threads and returns when every unit sent has an
answer, so the caller commits the page only then.

Order per key: units are laid into waves, a unit one wave after the last
unit that holds one of its keys; a wave starts when the one before it has
every answer. Two writes of one key therefore never overlap and go out in
page order, while units of different keys run at once. (The engine hands a
page each key once; the waves make the rule hold whatever a caller sends,
a create then a delete of one key included.)

Failure: a unit that raises (a 401, a 5xx after retries) fails the page.
Units not yet started are not sent; those in flight are waited for, and
what they achieved (new target ids) goes on the error as `partial`, so the
engine keeps the ids of objects that exist now. Workers start on the first
page and live until `close`. `on_answered` hears of each unit as its answer
arrives, on the caller's thread (the state store's connection lives there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
import threading

from runner.errors import EtlError
from runner.targets.base import OnAnswered, WriteResult


@dataclass(frozen=True, slots=True)
class Unit:
    """One request's worth of writes: the keys it writes, and how to send it."""

    keys: tuple[str, ...]
    send: Callable[[], WriteResult]


class WritePool:
    """Runs units `concurrency` at a time, keys in order; one per target, closed with it."""

    def __init__(self, concurrency: int, *, name: str = "etl-target") -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self._name = name
        self._executor: ThreadPoolExecutor | None = None

    def run(self, units: Sequence[Unit], on_answered: OnAnswered | None = None) -> WriteResult:
        """Send every unit; merge their results; raise the first failure with `partial` set.

        `on_answered` is told each unit's keys and outcome as it arrives, on this thread."""
        result = WriteResult()
        failure: BaseException | None = None
        stop = threading.Event()
        for wave in waves(units):
            pending = {self._submit(unit, stop): unit for unit in wave}
            while pending:  # every one is waited for, also after a failure
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    unit = pending.pop(future)
                    try:
                        part = future.result()
                        if part is not None and on_answered is not None:
                            on_answered(unit.keys, part)
                    except BaseException as exc:  # noqa: BLE001 - raised below, after the others answered
                        stop.set()
                        failure = failure or exc
                        continue
                    if part is not None:
                        merge(result, part)
            if failure is not None:
                break
        if failure is not None:
            if isinstance(failure, EtlError):
                failure.partial = result
            raise failure
        return result

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _submit(self, unit: Unit, stop: threading.Event) -> Future[WriteResult | None]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix=self._name)
        return self._executor.submit(_guarded, unit, stop)


def _guarded(unit: Unit, stop: threading.Event) -> WriteResult | None:
    """Send the unit unless the page failed meanwhile (then it is not sent: None); a failure
    stops the units not yet started at once, not when the caller reads it."""
    if stop.is_set():
        return None
    try:
        return unit.send()
    except BaseException:
        stop.set()
        raise


def waves(units: Sequence[Unit]) -> list[list[Unit]]:
    """Units in waves: each one wave after the last earlier unit that shares a key with it."""
    last: dict[str, int] = {}
    found: list[list[Unit]] = []
    for unit in units:
        wave = max((last[key] + 1 for key in unit.keys if key in last), default=0)
        for key in unit.keys:
            last[key] = wave
        if wave == len(found):
            found.append([])
        found[wave].append(unit)
    return found


def merge(into: WriteResult, part: WriteResult) -> None:
    """Add one unit's outcomes; a later write of a key replaces an earlier one's outcome."""
    for key in part.target_ids:
        into.errors.pop(key, None)
    for key in part.errors:
        into.target_ids.pop(key, None)
    into.target_ids.update(part.target_ids)
    into.errors.update(part.errors)
