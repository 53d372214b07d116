"""The one send path: every HTTP request of a run goes through `HttpClient.send`.

It owns explicit timeouts (from config, never httpx's defaults), retries,
`Retry-After`, the client-side rate limit, applying auth on every attempt (the
styles and the token cache live in `runner.http.auth`; which origins get the
credentials, `runner.http.origins`), one `http.request` log event per attempt,
the run's deadline, and the mapping of every httpx failure to `FetchError`
(with the method and a redacted path, never a raw query secret). One attempt
on the wire (redirects, the body's size cap and read deadline) is
`runner.http.exchange`.

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
* A response < 400 is retried too when the caller's `retry_if` (the reader's
  `retry_when`) gives a reason for it: an API that reports a rate limit inside
  a 200. It counts like a 429 (retried whatever the method, since the server
  refused it; `Retry-After` honoured), so one loop holds every retry.
* OAuth2: the token is fetched through this same path (its log line shows
  only the token URL's path), cached until 30 s before `expires_in`, and on a
  401 fetched again once and the request repeated (an extra attempt, beyond
  `max_attempts`).

The run's deadline (`deadline`, a `clock()` time: the end of `limits.max_seconds`)
bounds everything a request does: no attempt starts after it, no rate-limit or
retry wait is slept past it, and each attempt's timeouts and body deadline are
cut to what is left. Running out is a `DeadlineReached` (a FetchError naming
`limits.max_seconds`), never a sleep of an hour, or of 10^9 s.

A request's own query parameters and the auth query parameter are added to
the URL's query, never in place of it: a next URL goes out as the API gave it.
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
from runner.errors import FetchError
from runner.http.errors import (
    STATUS_HINTS, TLS_HINT, DeadlineReached, describe_error, fetch_error, is_tls_failure, retry_after,
    safe_path,
)
from runner.http.exchange import Outcome, Wire, log_headers
from runner.http.origins import Credentials, Trust, with_query
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
MAX_SECONDS = "the run's limits.max_seconds"
# judges a response < 400 (its body read): a reason to retry it, or None to accept it
RetryIf = Callable[[httpx.Response], str | None]


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


# --- the client ------------------------------------------------------------------


class HttpClient:
    """The one send path; share one instance between threads (and so one rate limit).

    `origin` is the home origin that gets the credentials (the http target's
    `base_url`); without it, the first request sent names it. `deadline` is a
    `clock()` time (the end of the run's `limits.max_seconds`) past which no
    request goes on; the caller may set it after construction too.
    """

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
        origin: str | None = None,
        deadline: float | None = None,
    ) -> None:
        self.retry = retry
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.deadline = deadline
        self._sleep, self._clock, self._wall_clock = sleep, clock, wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._logger = logging.getLogger(logger_name)
        self._limiter = _limiter(rate_limit, clock=clock, sleep=sleep)
        self._counter_lock = threading.Lock()
        self._requests = 0
        self._retries = 0
        authenticator = make_auth(auth, post=self._post_token, clock=clock)
        self._credentials: Credentials | None = None
        if auth is not None and authenticator is not None:
            trust = Trust(auth.hosts, home=origin, logger=self._logger)
            self._credentials = Credentials(authenticator, trust)
        try:
            self._http = httpx.Client(
                transport=transport if transport is not None else LazyTlsTransport(),
                timeout=_httpx_timeout(timeout),
                headers=dict(headers or {}),
                follow_redirects=False,  # the Wire follows them, deciding credentials for each hop
            )
        except UnicodeEncodeError:
            raise FetchError(_unsendable(dict(headers or {}))) from None  # not the value: a secret?
        self._wire = Wire(
            self._http, max_response_bytes=max_response_bytes, read_timeout=timeout.read,
            clock=clock, wall_clock=wall_clock, logger=self._logger,
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
        retry_if: RetryIf | None = None,
    ) -> httpx.Response:
        """Send until a response < 400 arrives (body read) or raise FetchError.

        `retry_if` judges each such response: a reason it returns makes the response
        retryable like a 429 (backoff, `max_attempts`, `max_elapsed`); what it raises
        propagates."""
        spec = _RequestSpec(
            method.upper(), str(url), dict(params or {}), json, data, dict(headers or {})
        )
        return self._send(spec, idempotent=idempotent, credentials=self._credentials, retry_if=retry_if)

    def _post_token(self, token: TokenRequest) -> httpx.Response:
        spec = _RequestSpec("POST", token.url, data=token.form, headers=token.headers)
        return self._send(spec, idempotent=True, credentials=None)  # a token grant changes nothing

    # --- the retry loop ---------------------------------------------------------

    def _send(
        self, spec: _RequestSpec, *, idempotent: bool | None, credentials: Credentials | None,
        retry_if: RetryIf | None = None,
    ) -> httpx.Response:
        start = self._clock()
        attempt, budget, refreshed = 0, self.retry.max_attempts, False
        while True:
            attempt += 1
            request = self._build(spec, credentials)
            outcome = self._attempt(request, credentials)
            asked = self._judge(request, outcome, attempt, retry_if)
            if outcome.response is not None and asked is None:
                self._log_attempt(request, outcome, attempt)
                return outcome.response
            if asked is not None:
                outcome = self._asked(outcome, asked)
            if not refreshed and credentials is not None and _may_refresh(outcome, credentials.auth, request):
                refreshed, budget = True, budget + 1
                self._log_attempt(request, outcome, attempt, retry_in=0.0)
                continue
            verdict = self._decide(request, outcome, attempt, budget, start, idempotent, asked)
            self._log_attempt(request, outcome, attempt, retry_in=_wait_or_none(verdict))
            if isinstance(verdict, FetchError):
                raise verdict from outcome.error
            self._count(retry=True)
            self._sleep(verdict)

    def _decide(
        self,
        request: httpx.Request,
        outcome: Outcome,
        attempt: int,
        budget: int,
        start: float,
        idempotent: bool | None,
        asked: str | None = None,
    ) -> float | FetchError:
        """The wait before the next attempt, or the error to raise now (`asked`: retry_if's reason)."""
        if outcome.failure is not None:
            return outcome.failure
        safe = _is_idempotent(request) if idempotent is None else idempotent
        if asked is None and not self._retryable(outcome, safe):
            return self._finalfetch_error(request, outcome, safe)
        note = "" if asked is None else f" ({asked})"
        run_left = self._run_left()
        if run_left is not None and run_left <= 0:
            why = f"{note}; {MAX_SECONDS} ran out"
            return self._give_up(request, outcome, attempt, why, cls=DeadlineReached)
        if attempt >= budget:
            return self._give_up(request, outcome, attempt, note)
        wait = outcome.retry_after if outcome.retry_after is not None else self._backoff(attempt)
        left = self.retry.max_elapsed - (self._clock() - start)
        if wait > left:
            why = self._too_long(outcome, wait, left, f"retry.max_elapsed={self.retry.max_elapsed:g} s")
            return self._give_up(request, outcome, attempt, note + why)
        if run_left is not None and wait >= run_left:  # sleeping to the deadline would only fail there
            why = self._too_long(outcome, wait, run_left, MAX_SECONDS)
            return self._give_up(request, outcome, attempt, note + why, cls=DeadlineReached)
        return wait

    def _judge(
        self, request: httpx.Request, outcome: Outcome, attempt: int, retry_if: RetryIf | None
    ) -> str | None:
        """`retry_if`'s reason to retry a usable response, if any; its attempt is logged even if it raises."""
        if retry_if is None or outcome.response is None:
            return None
        try:
            return retry_if(outcome.response) or None
        except BaseException:
            self._log_attempt(request, outcome, attempt)
            raise

    def _asked(self, outcome: Outcome, reason: str) -> Outcome:
        """A response that `retry_if` refused, as an outcome to retry (its Retry-After honoured)."""
        assert outcome.response is not None
        wait = retry_after(outcome.response, self._wall_clock)
        return Outcome(status=outcome.status, detail=reason, retry_after=wait, elapsed=outcome.elapsed)

    def _too_long(self, outcome: Outcome, wait: float, left: float, budget: str) -> str:
        asker = "Retry-After" if outcome.retry_after is not None else "the backoff"
        return f"; {asker} asks to wait {wait:g} s, more than the {max(left, 0):g} s left of {budget}"

    def _retryable(self, outcome: Outcome, idempotent: bool) -> bool:
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

    def _build(self, spec: _RequestSpec, credentials: Credentials | None) -> httpx.Request:
        headers = dict(spec.headers)
        body = {} if spec.json is UNSET else {"json": spec.json}
        try:
            url = with_query(httpx.URL(spec.url), spec.params)
            if credentials is not None:
                url = credentials.add(url, headers)
            return self._http.build_request(
                spec.method, url, headers=headers, data=spec.data, timeout=self._timeouts(), **body,
            )
        except httpx.InvalidURL as exc:
            message = f"invalid URL: {log.redact(str(exc))}"
            raise FetchError(message, method=spec.method, path=safe_path(spec.url)) from exc
        except UnicodeEncodeError:
            # from None: the encode error holds the whole header value, which may be a secret
            raise FetchError(
                _unsendable(headers), method=spec.method, path=safe_path(spec.url)
            ) from None

    def _timeouts(self) -> httpx.Timeout | Any:
        """The configured timeouts, each cut to what is left of the run (httpx's default: the client's)."""
        left = self._run_left()
        if left is None:
            return httpx.USE_CLIENT_DEFAULT
        left = max(left, 0.001)
        t = self.timeout
        return httpx.Timeout(
            connect=min(t.connect, left), read=min(t.read, left),
            write=min(t.write, left), pool=min(t.pool, left),
        )

    def _attempt(self, request: httpx.Request, credentials: Credentials | None) -> Outcome:
        self._wait_for_slot(request)
        self._count(retry=False)
        log_headers(self._logger, "http.request.headers", request, request.headers)
        started = self._clock()
        try:
            outcome = self._wire.exchange(request, credentials=credentials, deadline=self.deadline)
        except httpx.TransportError as exc:
            outcome = Outcome(error=exc)
        except httpx.HTTPError as exc:  # too many redirects, undecodable body: no retry fixes them
            message = f"request failed: {type(exc).__name__}: {log.redact(str(exc))}"
            raise fetch_error(request, message) from exc
        outcome.elapsed = self._clock() - started
        return outcome

    def _wait_for_slot(self, request: httpx.Request) -> None:
        """Wait for the rate limit's slot; refuse at once what the run's deadline rules out."""
        left = self._run_left()
        if left is not None and left <= 0:
            message = f"{MAX_SECONDS} ran out before this request was sent"
            raise fetch_error(request, message, cls=DeadlineReached)
        if self._limiter is not None and not self._limiter.acquire(deadline=self.deadline):
            message = (
                f"rate_limit allows one request every {self._limiter.interval:g} s and the next"
                f" slot lies past the end of {MAX_SECONDS} ({left:g} s left); not waiting for it"
            )
            raise fetch_error(request, message, cls=DeadlineReached)

    def _run_left(self) -> float | None:
        """Seconds left before the run's deadline; None without one."""
        return None if self.deadline is None else self.deadline - self._clock()

    # --- errors, logs, counters ---------------------------------------------------

    def _finalfetch_error(
        self, request: httpx.Request, outcome: Outcome, idempotent: bool
    ) -> FetchError:
        if outcome.error is not None:
            message = f"request failed: {describe_error(outcome.error)}"
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
        return fetch_error(request, message, status=outcome.status, detail=outcome.detail, body=outcome.body)

    def _give_up(
        self, request: httpx.Request, outcome: Outcome, attempt: int, why: str,
        cls: type[FetchError] = FetchError,
    ) -> FetchError:
        last = f"error {describe_error(outcome.error)}" if outcome.error else f"status {outcome.status}"
        plural = "attempt" if attempt == 1 else "attempts"
        message = f"gave up after {attempt} {plural}: last {last}{why}"
        return fetch_error(
            request, message, status=outcome.status, detail=outcome.detail, body=outcome.body, cls=cls
        )

    def _log_attempt(
        self, request: httpx.Request, outcome: Outcome, attempt: int, retry_in: float | None = None
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
    outcome: Outcome, auth: Authenticator | None, request: httpx.Request
) -> bool:
    """A 401 with a refreshable credential: drop it so that the next attempt fetches anew."""
    return outcome.status == 401 and auth is not None and auth.refresh(request)


def _wait_or_none(verdict: float | FetchError) -> float | None:
    return None if isinstance(verdict, FetchError) else verdict


def _unsendable(headers: Mapping[str, str]) -> str:
    """Which header httpx could not encode, by name: its value may be a secret."""
    names = [name for name, value in headers.items() if not (str(name) + str(value)).isascii()]
    which = f"the header {names[0]!r}" if names else "a header"
    return f"{which} contains characters that cannot go in an HTTP header (HTTP headers carry ASCII only)"
