"""The one send path: every HTTP request of a run goes through `HttpClient.send`.

It owns explicit timeouts (from config, never httpx's defaults), retries,
`Retry-After`, the client-side rate limit, applying auth on every attempt (the
styles and the token cache live in `runner.http.auth`), the response size cap, one
`http.request` log event per attempt, and the mapping of every httpx failure to
`FetchError` (with the method and a redacted path, never a raw query secret).

The client is synchronous and thread-safe: the engine shares one client, and
so one rate limit, between the threads that fetch pages concurrently.

Retry policy (stamina-style: narrow, named, bounded):

* Retried: transport failures a retry can fix (timeouts, connect errors,
  resets, `RemoteProtocolError`, proxy errors), 429 and 5xx; 408 and 409 only
  when listed in `retry.also_on`. Never another 4xx: 401 (check credentials),
  403, 404, 422 ... fail at once.
* Every request is bounded by `retry.max_attempts` and `retry.max_elapsed`.
  The wait is `Retry-After` (seconds or an HTTP date) when the response has
  one, else exponential backoff with full jitter:
  `uniform(0, min(backoff_max, backoff_initial * 2 ** (attempt - 1)))`.
  A wait that would pass `max_elapsed` is not slept: the request gives up at
  once and says so.
* Non-idempotent requests (POST/PATCH without an `Idempotency-Key` header,
  unless the caller passes `idempotent=`) are retried only when the request
  surely did not reach the server or was refused before being processed:
  `ConnectError`, `ConnectTimeout`, `PoolTimeout`, and status 429. A 5xx, a
  read timeout or a dropped connection may have happened after the server
  acted, so they fail at once.
* OAuth2: the token is fetched through this same path (its log line shows
  only the token URL's path), cached until 30 s before `expires_in`, and on a
  401 fetched again once and the request repeated (an extra attempt, beyond
  `max_attempts`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from runner import log
from runner.http.auth import Authenticator, TokenRequest, make_auth
from runner.errors import FetchError, ResponseError
from runner.http.errors import (
    STATUS_HINTS, TLS_HINT, describe, excerpt, fetch_error, is_tls_failure, retry_after, safe_path,
)
from runner.model import Auth, RateLimit, Retry, Timeout
from runner.http.ratelimit import RateLimiter
from runner.http.transport import LazyTlsTransport

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# failures that a new attempt can fix; UnsupportedProtocol and LocalProtocolError cannot
RETRYABLE_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)
# the request never left: safe to repeat even when it is not idempotent
UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
DEFAULT_MAX_RESPONSE_BYTES = 50 * 1024 * 1024


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


@dataclass(frozen=True, slots=True)
class _RequestSpec:
    """What the caller asked for; auth is applied anew on every attempt."""

    method: str
    url: str
    params: Mapping[str, Any] = field(default_factory=dict)
    json: Any = UNSET
    data: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Outcome:
    """One attempt: a usable response, or a status / transport error to judge."""

    status: int | None = None
    response: httpx.Response | None = None
    error: httpx.TransportError | None = None
    failure: FetchError | None = None  # final whatever the policy says (body too large)
    detail: str = ""
    retry_after: float | None = None
    elapsed: float = 0.0


# --- the client ------------------------------------------------------------------


class HttpClient:
    """The one send path; share one instance between threads (and so one rate limit)."""

    def __init__(
        self,
        *,
        timeout: Timeout,
        retry: Retry,
        rate_limit: RateLimit | None = None,
        auth: Auth | None = None,
        headers: Mapping[str, str] | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        logger_name: str = "runner.http",
    ) -> None:
        self.retry = retry
        self.max_response_bytes = max_response_bytes
        self._sleep, self._clock, self._wall_clock = sleep, clock, wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._logger = logging.getLogger(logger_name)
        self._limiter = _limiter(rate_limit, clock=clock, sleep=sleep)
        self._counter_lock = threading.Lock()
        self._requests = 0
        self._retries = 0
        self._auth = make_auth(auth, post=self._post_token, clock=clock)
        self._http = httpx.Client(
            transport=transport if transport is not None else LazyTlsTransport(),
            timeout=_httpx_timeout(timeout),
            headers=dict(headers or {}),
            follow_redirects=True,  # httpx drops Authorization when the origin changes
        )

    @property
    def requests(self) -> int:
        """HTTP attempts sent so far (token requests and retries included)."""
        return self._requests

    @property
    def retries(self) -> int:
        """Attempts that were repeats of a failed one."""
        return self._retries

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = UNSET,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send until a response < 400 arrives (body read) or raise FetchError."""
        spec = _RequestSpec(
            method.upper(), str(url), dict(params or {}), json, data, dict(headers or {})
        )
        return self._send(spec, idempotent=idempotent, auth=self._auth)

    def _post_token(self, token: TokenRequest) -> httpx.Response:
        spec = _RequestSpec("POST", token.url, data=token.form, headers=token.headers)
        return self._send(spec, idempotent=True, auth=None)  # a token grant changes nothing

    # --- the retry loop ---------------------------------------------------------

    def _send(
        self, spec: _RequestSpec, *, idempotent: bool | None, auth: Authenticator | None
    ) -> httpx.Response:
        start = self._clock()
        attempt, budget, refreshed = 0, self.retry.max_attempts, False
        while True:
            attempt += 1
            request = self._build(spec, auth)
            outcome = self._attempt(request)
            if outcome.response is not None:
                self._log_attempt(request, outcome, attempt)
                return outcome.response
            if not refreshed and _may_refresh(outcome, auth, request):
                refreshed, budget = True, budget + 1
                self._log_attempt(request, outcome, attempt, retry_in=0.0)
                continue
            verdict = self._decide(request, outcome, attempt, budget, start, idempotent)
            self._log_attempt(request, outcome, attempt, retry_in=_wait_or_none(verdict))
            if isinstance(verdict, FetchError):
                raise verdict from outcome.error
            self._count(retry=True)
            self._sleep(verdict)

    def _decide(
        self,
        request: httpx.Request,
        outcome: _Outcome,
        attempt: int,
        budget: int,
        start: float,
        idempotent: bool | None,
    ) -> float | FetchError:
        """The wait before the next attempt, or the error to raise now."""
        if outcome.failure is not None:
            return outcome.failure
        safe = _is_idempotent(request) if idempotent is None else idempotent
        if not self._retryable(outcome, safe):
            return self._finalfetch_error(request, outcome, safe)
        if attempt >= budget:
            return self._give_up(request, outcome, attempt, "")
        wait = outcome.retry_after if outcome.retry_after is not None else self._backoff(attempt)
        left = self.retry.max_elapsed - (self._clock() - start)
        if wait > left:
            return self._give_up(request, outcome, attempt, self._too_long(outcome, wait, left))
        return wait

    def _too_long(self, outcome: _Outcome, wait: float, left: float) -> str:
        asker = "Retry-After" if outcome.retry_after is not None else "the backoff"
        return (
            f"; {asker} asks to wait {wait:g} s, more than the {max(left, 0):g} s left"
            f" of retry.max_elapsed={self.retry.max_elapsed:g} s"
        )

    def _retryable(self, outcome: _Outcome, idempotent: bool) -> bool:
        if outcome.error is not None:
            allowed = RETRYABLE_ERRORS if idempotent else UNSENT_ERRORS
            return isinstance(outcome.error, allowed) and not is_tls_failure(outcome.error)
        status = outcome.status or 0
        if not idempotent:
            return status == 429
        return status == 429 or 500 <= status <= 599 or status in self.retry.also_on

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform over [0, the capped exponential step]."""
        cap = min(self.retry.backoff_max, self.retry.backoff_initial * 2 ** min(attempt - 1, 60))
        return self._rng.uniform(0, cap)

    # --- one attempt ------------------------------------------------------------

    def _build(self, spec: _RequestSpec, auth: Authenticator | None) -> httpx.Request:
        headers, params = dict(spec.headers), dict(spec.params)
        if auth is not None:
            auth.apply(headers, params)
        body = {} if spec.json is UNSET else {"json": spec.json}
        try:
            return self._http.build_request(
                spec.method, spec.url, params=params or None, headers=headers, data=spec.data,
                **body,
            )
        except httpx.InvalidURL as exc:
            message = f"invalid URL: {log.redact(str(exc))}"
            raise FetchError(message, method=spec.method, path=safe_path(spec.url)) from exc

    def _attempt(self, request: httpx.Request) -> _Outcome:
        if self._limiter is not None:
            self._limiter.acquire()
        self._count(retry=False)
        self._log_headers("http.request.headers", request, request.headers)
        started = self._clock()
        try:
            outcome = self._exchange(request)
        except httpx.TransportError as exc:
            outcome = _Outcome(error=exc)
        except httpx.HTTPError as exc:  # too many redirects, undecodable body: no retry fixes them
            message = f"request failed: {type(exc).__name__}: {log.redact(str(exc))}"
            raise fetch_error(request, message) from exc
        outcome.elapsed = self._clock() - started
        return outcome

    def _exchange(self, request: httpx.Request) -> _Outcome:
        response = self._http.send(request, stream=True)
        try:
            self._log_headers("http.response.headers", request, response.headers)
            status = response.status_code
            if status >= 400:
                wait = retry_after(response, self._wall_clock)
                return _Outcome(status=status, detail=excerpt(response), retry_after=wait)
            if not self._read_capped(response):
                message = f"response body over {self.max_response_bytes} bytes"
                failure = fetch_error(request, message, status=status, cls=ResponseError)
                return _Outcome(status=status, failure=failure)
            return _Outcome(status=status, response=response)
        finally:
            response.close()

    def _read_capped(self, response: httpx.Response) -> bool:
        """Read the body unless it passes the cap (then stop early and return False)."""
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                return False
            chunks.append(chunk)
        response._content = b"".join(chunks)  # what Response.read() does, minus the cap
        return True

    # --- errors, logs, counters ---------------------------------------------------

    def _finalfetch_error(
        self, request: httpx.Request, outcome: _Outcome, idempotent: bool
    ) -> FetchError:
        if outcome.error is not None:
            message = f"request failed: {describe(outcome.error)}"
            if is_tls_failure(outcome.error):
                message += f"; {TLS_HINT}"
        else:
            status = outcome.status or 0
            hint = STATUS_HINTS.get(status)
            message = f"HTTP {status} {httpx.codes.get_reason_phrase(status)}".rstrip()
            message += f": {hint}" if hint else ""
        if not idempotent and self._retryable(outcome, True):
            message += (
                f" (not retried: a {request.method} without an Idempotency-Key header is retried"
                " only when it surely did not reach the server)"
            )
        return fetch_error(request, message, status=outcome.status, detail=outcome.detail)

    def _give_up(
        self, request: httpx.Request, outcome: _Outcome, attempt: int, why: str
    ) -> FetchError:
        last = f"error {describe(outcome.error)}" if outcome.error else f"status {outcome.status}"
        plural = "attempt" if attempt == 1 else "attempts"
        message = f"gave up after {attempt} {plural}: last {last}{why}"
        return fetch_error(request, message, status=outcome.status, detail=outcome.detail)

    def _log_attempt(
        self, request: httpx.Request, outcome: _Outcome, attempt: int, retry_in: float | None = None
    ) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {"method": request.method, "path": log.redact_url(request.url)}
        if outcome.error is not None:
            fields["error"] = type(outcome.error).__name__
        else:
            fields["status"] = outcome.status
        fields["elapsed_ms"] = round(outcome.elapsed * 1000)
        fields["attempt"] = attempt
        if retry_in is not None:
            fields["retry_in_ms"] = round(retry_in * 1000)
        log.event(self._logger, "http.request", **fields)

    def _log_headers(self, name: str, request: httpx.Request, headers: httpx.Headers) -> None:
        if self._logger.isEnabledFor(logging.DEBUG):
            log.event(
                self._logger,
                name,
                level=logging.DEBUG,
                method=request.method,
                path=log.redact_url(request.url),
                headers=log.redact_headers(headers.multi_items()),
            )

    def _count(self, *, retry: bool) -> None:
        with self._counter_lock:
            if retry:
                self._retries += 1
            else:
                self._requests += 1


# --- helpers -----------------------------------------------------------------------


def _httpx_timeout(timeout: Timeout) -> httpx.Timeout:
    return httpx.Timeout(
        connect=timeout.connect, read=timeout.read, write=timeout.write, pool=timeout.pool
    )


def _limiter(
    rate_limit: RateLimit | None, *, clock: Callable[[], float], sleep: Callable[[float], None]
) -> RateLimiter | None:
    if rate_limit is None:
        return None
    return RateLimiter(rate_limit.requests_per_second, clock=clock, sleep=sleep)


def _is_idempotent(request: httpx.Request) -> bool:
    return request.method in IDEMPOTENT_METHODS or "Idempotency-Key" in request.headers


def _may_refresh(
    outcome: _Outcome, auth: Authenticator | None, request: httpx.Request
) -> bool:
    """A 401 with a refreshable credential: drop it so that the next attempt fetches anew."""
    return outcome.status == 401 and auth is not None and auth.refresh(request)


def _wait_or_none(verdict: float | FetchError) -> float | None:
    return None if isinstance(verdict, FetchError) else verdict
