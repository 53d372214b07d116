"""How a failed HTTP exchange is told: Retry-After, error-body excerpts, TLS failures, FetchError.

The client (`runner.http.client`) decides what to do about a failure; this module
only reads what the response says and words the error, every part of it
redacted (a secret in a URL query, a body or an exception's text becomes `***`).
`DeadlineReached` is the FetchError of a request that the run's
`limits.max_seconds` cut short, so that a caller can tell it from a failure.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx

from runner import log
from runner.errors import FetchError

STATUS_HINTS = {
    401: "check the credentials (auth) of this pipeline",
    403: "the credentials lack permission for this resource",
    404: "check the URL",
}
TLS_HINT = (
    "the TLS/SSL handshake failed (not retried); check that the URL's scheme matches the server"
    " (https to a plain-HTTP port fails so) and that its certificate is valid"
)
EXCERPT_BYTES = 4096
DETAIL_CHARS = 200


class DeadlineReached(FetchError):
    """The run's `limits.max_seconds` ran out inside a request, a retry wait or a rate-limit wait."""


def retry_after(response: httpx.Response, wall_clock: Callable[[], float]) -> float | None:
    """Seconds asked by a Retry-After header (delta-seconds or HTTP date), if any."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, when.timestamp() - wall_clock())


def excerpt(
    response: httpx.Response, *, until: float | None = None, clock: Callable[[], float] = time.monotonic
) -> str:
    """A short, redacted, one-line excerpt of an error body (read no further than needed).

    Reading stops at `until` (a `clock()` time) too: an error body that trickles
    must not hold the run; what arrived by then is the excerpt.
    """
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= EXCERPT_BYTES or (until is not None and clock() >= until):
            break
    return _excerpt_of(data)


def error_body(
    response: httpx.Response, *, max_bytes: int, until: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, Any]:
    """An error body's excerpt (as `excerpt`) and its whole parsed JSON, for `reset_when`.

    The body is read up to `max_bytes` (the source's max_response_bytes) and until `until`;
    the JSON is None when the body is none, or when either bound cut it short.
    """
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes or (until is not None and clock() >= until):
            return _excerpt_of(b"".join(chunks)), None
    data = b"".join(chunks)
    return _excerpt_of(data), _json_or_none(data)


def _excerpt_of(data: bytes) -> str:
    return log.redact(one_line(data[:EXCERPT_BYTES].decode("utf-8", errors="replace")))[:DETAIL_CHARS]


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        return None


def one_line(text: str, limit: int | None = None) -> str:
    """`text` on one line (each run of white space one space), cut to `limit` with '...'."""
    flat = " ".join(text.split())
    if limit is None or len(flat) <= limit:
        return flat
    return flat[: limit - 3] + "..."


def is_tls_failure(error: BaseException) -> bool:
    """A TLS handshake that failed (wrong protocol, bad certificate): a new attempt fails the same way."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe_error(error: BaseException) -> str:
    text = log.redact(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def fetch_error(
    request: httpx.Request,
    message: str,
    *,
    status: int | None = None,
    detail: str = "",
    body: Any = None,
    cls: type[FetchError] = FetchError,
) -> FetchError:
    path = log.redact_url(request.url)
    return cls(log.redact(message), method=request.method, path=path, status=status, detail=detail, body=body)


def safe_path(url: str) -> str:
    try:
        return log.redact_url(url)
    except ValueError:
        return "<invalid URL>"
