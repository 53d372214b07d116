"""The http target's answer to a 429: every write waits, not only the one that got it.

The client retries a 429 itself, after `Retry-After`; but with `concurrency`
writes in flight the others would go on sending into the limit. So the
target's requests pass through `ThrottledTransport`: a 429 holds the
`Throttle` for its `Retry-After` (else a backoff that doubles per 429 in a
row, from `retry.backoff_initial` to `retry.backoff_max`), and every request
of every worker waits for the hold to end before it goes out. Any other
answer ends the run of 429s.

A write whose client gave up on 429s is sent again by the target
(`HttpTarget`), as long as `may_resend` says so: the hold ends less than
`retry.max_elapsed` after the write was first sent. A storm longer than
that (or a Retry-After past it) fails the page, as any other failed request
does; never a loop without an end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx

from runner import log
from runner.http.errors import retry_after

logger = logging.getLogger("runner.targets.http")


class Throttle:
    """A hold shared by every worker of one target; clock and sleep injected for tests."""

    def __init__(
        self,
        *,
        backoff_initial: float,
        backoff_max: float,
        max_elapsed: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._initial, self._max, self._max_elapsed = backoff_initial, backoff_max, max_elapsed
        self._clock, self._wall_clock, self._sleep = clock, wall_clock, sleep
        self._lock = threading.Lock()
        self._until = 0.0  # clock() time the hold ends
        self._streak = 0  # 429s in a row
        self.throttled = 0  # 429 answers seen

    def now(self) -> float:
        return self._clock()

    def wait(self) -> None:
        """Sleep until the hold ends (at once when there is none)."""
        with self._lock:
            delay = self._until - self._clock()
        if delay > 0:
            self._sleep(delay)

    def hold(self, request: httpx.Request, response: httpx.Response) -> None:
        """A 429: hold every request for its Retry-After, else the next backoff step."""
        asked = retry_after(response, self._wall_clock)
        with self._lock:
            now = self._clock()
            self._streak += 1
            self.throttled += 1
            step = min(self._max, self._initial * 2 ** min(self._streak - 1, 30))
            wait = min(asked if asked is not None else step, self._max_elapsed)
            first = self._until <= now
            self._until = max(self._until, now + wait)
        if first:
            log.event(
                logger, "target.throttled", level=logging.WARNING,
                path=log.redact_url(request.url), wait_ms=round(wait * 1000),
                retry_after=asked is not None,
            )

    def relax(self) -> None:
        """An answer other than 429: the streak is over."""
        with self._lock:
            self._streak = 0

    def may_resend(self, first_sent: float) -> bool:
        """Whether a write the client gave up on (429s) is sent again: the hold ends less than
        `retry.max_elapsed` after it was first sent (a `now()` time). A Retry-After past that
        fails it now rather than after the wait."""
        with self._lock:
            resume = max(self._clock(), self._until)
        return resume - first_sent < self._max_elapsed


class ThrottledTransport(httpx.BaseTransport):
    """Waits for the throttle before each request; tells it of each answer."""

    def __init__(self, inner: httpx.BaseTransport, throttle: Throttle) -> None:
        self._inner, self._throttle = inner, throttle

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._throttle.wait()
        response = self._inner.handle_request(request)
        if response.status_code == 429:
            self._throttle.hold(request, response)
        else:
            self._throttle.relax()
        return response

    def close(self) -> None:
        self._inner.close()
