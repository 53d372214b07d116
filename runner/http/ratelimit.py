"""A client-side request rate cap shared by every thread of one HTTP client.

`RateLimiter` hands out send slots spaced `1 / requests_per_second` apart
(a token bucket of capacity 1: no bursts). Each caller reserves its slot under
a lock and sleeps outside it, so concurrent threads queue up fairly without
holding the lock while they wait. A caller with a deadline (the run's
`limits.max_seconds`) is refused a slot that lies past it instead of sleeping
until then. Clock and sleep are injected so tests run on fake time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Spaces calls to `acquire()` at least `1 / requests_per_second` apart."""

    def __init__(
        self,
        requests_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests_per_second <= 0:
            raise ValueError(f"requests_per_second must be > 0, got {requests_per_second}")
        self.interval = 1.0 / requests_per_second
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot: float | None = None

    def reserve(self, *, deadline: float | None = None) -> float | None:
        """Book the next free slot and return how long to wait for it (seconds).

        None when the slot lies past `deadline` (a `clock()` time): nothing is booked.
        """
        with self._lock:
            now = self._clock()
            slot = now if self._next_slot is None else max(now, self._next_slot)
            if deadline is not None and slot > deadline:
                return None
            self._next_slot = slot + self.interval
            return slot - now

    def acquire(self, *, deadline: float | None = None) -> bool:
        """Block until this caller may send; False, at once, when that is past `deadline`."""
        wait = self.reserve(deadline=deadline)
        if wait is None:
            return False
        if wait > 0:
            self._sleep(wait)
        return True
