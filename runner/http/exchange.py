"""One attempt on the wire: send, follow redirects, read the body within its bounds.

The client (`runner.http.client`) decides whether, when and how often to try;
`Wire.exchange` makes one try and says what happened as an `Outcome`.

* Redirects are followed here rather than by httpx, so that the credentials
  are decided anew for every hop (`Credentials.redo`): httpx drops only
  `Authorization` when the origin changes, and would forward an api-key
  header, or the key in a query, to another host. At most 20 hops, as httpx.
* The body is streamed with two bounds: `max_response_bytes` (reading stops
  past it) and `timeout.read` for the whole body, not only between two bytes,
  since a body that trickles a byte a second never trips a per-read timeout.
  Passing that deadline is a `ReadTimeout`, retried like any other. The run's
  deadline (`limits.max_seconds`), when earlier, bounds the body instead.
  The check runs as each chunk arrives, so a body ends at most one gap
  (itself at most `timeout.read`) after its deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from runner import log
from runner.errors import FetchError, ResponseError
from runner.http.errors import error_body, fetch_error, retry_after
from runner.http.origins import Credentials

__all__ = ["MAX_REDIRECTS", "Outcome", "Wire", "log_headers"]

MAX_REDIRECTS = 20  # httpx's own default


@dataclass(slots=True)
class Outcome:
    """One attempt: a usable response, or a status / transport error to judge."""

    status: int | None = None
    response: httpx.Response | None = None
    error: httpx.TransportError | None = None
    failure: FetchError | None = None  # final whatever the policy says (body too large)
    detail: str = ""
    body: Any = None  # an error response's parsed JSON body (see `error_body`)
    retry_after: float | None = None
    elapsed: float = 0.0


class Wire:
    """Makes single attempts through one httpx client; holds no state between them."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        max_response_bytes: int,
        read_timeout: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        logger: logging.Logger,
    ) -> None:
        self._http = http
        self._max_bytes = max_response_bytes
        self._read_timeout = read_timeout
        self._clock, self._wall_clock = clock, wall_clock
        self._logger = logger

    def exchange(
        self, request: httpx.Request, *, credentials: Credentials | None, deadline: float | None
    ) -> Outcome:
        """Send `request` and read its answer; httpx errors propagate for the caller to judge."""
        response = self._follow(request, credentials)
        try:
            until, why = self._body_deadline(deadline)
            status = response.status_code
            if status >= 400:
                wait = retry_after(response, self._wall_clock)
                detail, body = error_body(response, max_bytes=self._max_bytes, until=until, clock=self._clock)
                return Outcome(status=status, detail=detail, body=body, retry_after=wait)
            if not self._read_bounded(response, until, why):
                message = f"response body over {self._max_bytes} bytes"
                failure = fetch_error(request, message, status=status, cls=ResponseError)
                return Outcome(status=status, failure=failure)
            return Outcome(status=status, response=response)
        finally:
            response.close()

    def _follow(self, request: httpx.Request, credentials: Credentials | None) -> httpx.Response:
        response = self._http.send(request, stream=True)
        hops = 0
        while (hop := response.next_request) is not None:
            response.close()
            hops += 1
            if hops > MAX_REDIRECTS:
                raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=hop)
            if credentials is not None:
                credentials.redo(hop)
            log_headers(self._logger, "http.request.headers", hop, hop.headers)
            response = self._http.send(hop, stream=True)
        log_headers(self._logger, "http.response.headers", request, response.headers)
        return response

    def _body_deadline(self, deadline: float | None) -> tuple[float, str]:
        """When the body must be complete, and what to say if it is not."""
        until = self._clock() + self._read_timeout
        if deadline is not None and deadline < until:
            return deadline, "the run's limits.max_seconds ran out while the response body was read"
        return until, f"the response body took longer than timeout.read={self._read_timeout:g} s in all"

    def _read_bounded(self, response: httpx.Response, until: float, why: str) -> bool:
        """Read the body unless it passes the cap (then stop early and return False)."""
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                return False
            chunks.append(chunk)
            if self._clock() > until:
                raise httpx.ReadTimeout(why, request=response.request)
        response._content = b"".join(chunks)  # what Response.read() does, minus the bounds
        return True


def log_headers(logger: logging.Logger, name: str, request: httpx.Request, headers: httpx.Headers) -> None:
    """The headers of one request or response at DEBUG, credentials masked."""
    if logger.isEnabledFor(logging.DEBUG):
        log.event(
            logger,
            name,
            level=logging.DEBUG,
            method=request.method,
            path=log.redact_url(request.url),
            headers=log.redact_headers(headers.multi_items()),
        )
