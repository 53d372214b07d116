"""Reading the source: request each page, select its records, stop where the file says.

`SourceReader.pages()` streams one `Page` at a time (never the whole data
set): it sends each request through the client's `send`, decodes the JSON
body, applies `records`, and asks the paginator for the next request. The
hard stops (`max_pages`, `max_items`, `max_seconds`) end paging with a
warning and set `stopped_by`; a next URL or cursor already requested in
this run is a `PaginationLoopError`, raised before it is requested again.

A 2xx body can still be an error: `retry_when` is handed to the client's
retry loop as its `retry_if` (so a rate limit inside a 200 is retried like a
503, in the one place that retries), and `error_when`, checked after it, turns
a matching body into a FetchError naming the expression and what it matched.

For predictable paginators (`page`, `offset`) and `concurrency > 1`, up to
`concurrency` pages are fetched at once; they are still yielded in order,
and paging stops at the first page that says so.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections import deque
from itertools import chain, compress
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from jmespath.exceptions import JMESPathError

from runner import log
from runner.errors import FetchError, PaginationLoopError, ResponseError
from runner.http.errors import DeadlineReached, one_line
from runner.model import Expr, Source
from runner.transform.expressions import json_kind, truthy
from runner.transform.types import parse_float
from runner.transform.values import parse_huge
from runner.extract.pagination import PageRequest, Paginator, PredictablePaginator, paginator_for

__all__ = ["Page", "SourceReader", "select_records"]

logger = logging.getLogger(__name__)

EXCERPT_CHARS = 80
MATCHED_CHARS = 200  # of the value `error_when` or `retry_when` matched, in their messages


@dataclass(frozen=True, slots=True)
class Page:
    """One page read: its records and `next`, the checkpoint to save once it is committed."""

    number: int
    request: PageRequest
    records: list[Any]
    next: PageRequest | None
    # the body may hold NaN, Infinity or a number of more than 4,300 digits (see transform/values)
    special_numbers: bool = False
    token: Any = None  # `incremental.token` on the body, for a sync-token source


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A page as fetched, before the paginator and the limits looked at it."""

    request: PageRequest
    response: httpx.Response
    body: Any
    records: list[Any]
    special_numbers: bool = False


class SourceReader:
    """Reads one source page by page; `stopped_by` names the limit that ended paging, if any."""

    def __init__(
        self,
        *,
        source: Source,
        send: Callable[..., httpx.Response],
        params: Mapping[str, Any],
        start: PageRequest | None = None,
        clock: Callable[[], float] = time.monotonic,
        restart: Callable[[FetchError], Mapping[str, Any] | None] | None = None,
        exact_numbers: bool = False,
    ) -> None:
        self.source = source
        # a decimal field is mapped: decode numbers without losing digits (transform/types)
        self._exact = exact_numbers
        # asked when the first request fails: new params to read from the start, or None
        self._restart = restart
        self.paginator: Paginator = paginator_for(source.pagination)
        self._send = send
        self._params = dict(params)
        self._start = start
        self._clock = clock
        self._seen: set[str] = set()
        self._started = 0.0
        self.pages_read = 0
        self.items_read = 0
        self.stopped_by: str | None = None

    def pages(self) -> Iterator[Page]:
        """Yield each page in order until the paginator, a limit or an error ends paging."""
        self._started = self._clock()
        first = self._start or self.paginator.first(self.source.url, self._params)
        if self._restart is None:
            return self._pages_from(first)
        return self._restartable(first, self._restart)

    def _pages_from(self, first: PageRequest) -> Iterator[Page]:
        paginator = self.paginator
        if isinstance(paginator, PredictablePaginator) and paginator.predictable and self.source.concurrency > 1:
            return self._concurrent(first, paginator)
        return self._sequential(first)

    def _restartable(
        self, first: PageRequest, restart: Callable[[FetchError], Mapping[str, Any] | None]
    ) -> Iterator[Page]:
        """Paging from `first`; when its first request fails and `restart` gives params for
        that error (an expired sync token), paging starts again from the source's first
        request with them. Only the first request: a later failure fails the run."""
        pages = self._pages_from(first)
        try:
            page = next(pages, None)  # both loops fetch the first page alone
        except FetchError as exc:
            params = restart(exc)
            if params is None:
                raise
            self._seen.clear()
            yield from self._pages_from(self.paginator.first(self.source.url, params))
            return
        if page is not None:
            yield page
            yield from pages

    # --- the two loops --------------------------------------------------------

    def _sequential(self, request: PageRequest | None) -> Iterator[Page]:
        while request is not None:
            if self._hit_limit(self.pages_read):
                return
            self._check_loop(request, self.pages_read + 1)
            try:
                fetched = self._fetch(request)
            except DeadlineReached as exc:
                self._stop("max_seconds", self.source.limits.max_seconds, reason=str(exc))
                return
            page = self._accept(fetched)
            yield page
            request = page.next if self.stopped_by is None else None

    def _concurrent(self, first: PageRequest, paginator: PredictablePaginator) -> Iterator[Page]:
        """Keep up to `concurrency` pages in flight; the first page alone, as it may tell the total."""
        workers = self.source.concurrency
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="etl-page")
        window: deque[Future[_Fetched]] = deque()
        submitted, blocked, end = 0, False, None
        try:
            while True:
                room = workers if self.pages_read else 1
                while not blocked and len(window) < room and (end is None or submitted < end):
                    blocked = self._blocking_limit(submitted) is not None
                    if not blocked:
                        window.append(self._submit(pool, paginator.request_at(first, submitted), submitted))
                        submitted += 1
                if not window:
                    self._hit_limit(submitted)  # the last page said go on, a limit says no
                    return
                try:
                    fetched = window.popleft().result()
                except DeadlineReached as exc:  # inside a request or a wait: the limit, not a failure
                    self._stop("max_seconds", self.source.limits.max_seconds, reason=str(exc))
                    return
                page = self._accept(fetched)
                left = paginator.remaining(fetched.request, fetched.body)
                end = end if left is None else page.number + left
                yield page
                if page.next is None or self.stopped_by is not None:
                    return
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, pool: ThreadPoolExecutor, request: PageRequest, index: int) -> Future[_Fetched]:
        """Fetch in a worker that sees this thread's context (the run's log fields)."""
        self._check_loop(request, index + 1)
        return pool.submit(contextvars.copy_context().run, self._fetch, request)

    # --- one page -----------------------------------------------------------------

    def _fetch(self, request: PageRequest) -> _Fetched:
        source = self.source
        extra: dict[str, Any] = {}
        payload = request.json_body(source.json)
        if payload is not None:
            extra["json"] = payload
        if request.headers:
            extra["headers"] = request.headers
        judge = None if source.retry_when is None else _RetryWhen(source.retry_when, source.method, self._exact)
        if judge is not None:  # only then: a plain `send` seam need not know the keyword
            extra["retry_if"] = judge
        # a source request is a read whatever its method: a POST (GraphQL, a search) is
        # retried on 5xx, 429 and transport errors exactly like a GET
        response = self._send(source.method, request.url, params=request.params, idempotent=True, **extra)
        if judge is not None:
            body, huge = judge.decoded(response)
        else:
            body, huge = _decode(response, method=source.method, exact=self._exact)
        if source.error_when is not None:
            _check_error_when(source.error_when, body, response, method=source.method)
        records = select_records(self.source, body, method=source.method, path=_path(response))
        special = huge or b"NaN" in response.content or b"Infinity" in response.content
        return _Fetched(request, response, body, records, special)

    def _accept(self, fetched: _Fetched) -> Page:
        """Count the page, ask the paginator for the next request, apply `max_items`."""
        request, records = fetched.request, fetched.records
        following = self.paginator.next(request, fetched.response, fetched.body, records)
        self.pages_read += 1
        room = self.source.limits.max_items - self.items_read
        if len(records) > room:
            records, following = records[:room], request  # resume re-reads the cut page
            self._stop("max_items", self.source.limits.max_items)
        elif len(records) == room and following is not None:
            self._stop("max_items", self.source.limits.max_items)
        self.items_read += len(records)
        if logger.isEnabledFor(logging.DEBUG):  # target() parses the URL: only when it is shown
            log.event(
                logger, "source.page", level=logging.DEBUG, page=self.pages_read,
                records=len(records), request=request.target(),
            )
        token = self._token(fetched.body)
        return Page(self.pages_read, request, records, following, fetched.special_numbers, token)

    def _token(self, body: Any) -> Any:
        """`incremental.token` on a page's body (a sync-token source), else None."""
        token = getattr(self.source.incremental, "token", None)
        if token is None:
            return None
        try:
            return token.search(body)
        except JMESPathError as exc:  # a function given the wrong type
            raise ResponseError(f"incremental token {token.text!r}: {exc}", method=self.source.method) from exc

    # --- limits and loops -----------------------------------------------------------

    def _blocking_limit(self, pages: int) -> tuple[str, float] | None:
        """The limit that forbids requesting one more page after `pages`, if any."""
        limits = self.source.limits
        if pages >= limits.max_pages:
            return "max_pages", limits.max_pages
        if self._clock() - self._started >= limits.max_seconds:
            return "max_seconds", limits.max_seconds
        return None

    def _hit_limit(self, pages: int) -> bool:
        """Stop (warning, `stopped_by`) if a limit forbids another request."""
        blocked = self._blocking_limit(pages)
        if blocked is not None:
            self._stop(*blocked)
        return blocked is not None

    def _stop(self, limit: str, value: float, *, reason: str | None = None) -> None:
        self.stopped_by = limit
        extra = {} if reason is None else {"reason": reason}
        log.event(
            logger, "source.limit_reached", level=logging.WARNING, stopped_by=limit, limit=value,
            pages=self.pages_read, items=self.items_read, **extra,
        )

    def _check_loop(self, request: PageRequest, number: int) -> None:
        """Refuse a request this run already sent: the API is handing back old pages."""
        key = request.key()
        if key in self._seen:
            raise PaginationLoopError(
                f"pagination loop: {self.paginator.describe(request)} repeated at page {number}; "
                "the API handed back a page this run already requested",
                method=self.source.method,
                path=httpx.URL(request.url).path,
            )
        self._seen.add(key)


# --- errors inside a 2xx body --------------------------------------------------------


class _RetryWhen:
    """`retry_when` as the client's `retry_if` for one request: it decodes the body it judges
    and keeps it, so that the reader does not decode the accepted page a second time."""

    __slots__ = ("_decoded", "_exact", "_expr", "_method", "_response")

    def __init__(self, expr: Expr, method: str, exact: bool = False) -> None:
        self._expr, self._method, self._exact = expr, method, exact
        self._response: httpx.Response | None = None
        self._decoded: tuple[Any, bool] = (None, False)

    def __call__(self, response: httpx.Response) -> str | None:
        self._decoded, self._response = _decode(response, method=self._method, exact=self._exact), response
        value = self._expr.search(self._decoded[0])
        return matched("retry_when", self._expr, value) if truthy(value) else None

    def decoded(self, response: httpx.Response) -> tuple[Any, bool]:
        if response is self._response:
            return self._decoded
        return _decode(response, method=self._method, exact=self._exact)  # a `send` seam that ignored retry_if


def _check_error_when(expr: Expr, body: Any, response: httpx.Response, *, method: str) -> None:
    """Raise FetchError when `error_when` is truthy on the body: the API said error with a 2xx."""
    value = expr.search(body)
    if truthy(value):
        status = response.status_code
        raise FetchError(matched("error_when", expr, value), method=method, path=_path(response), status=status)


def matched(key: str, expr: Expr, value: Any) -> str:
    """`<key> '<expr>' matched: <value>`, the value as compact JSON, redacted, cut to 200 characters."""
    shown = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"{key} '{expr.text}' matched: {one_line(log.redact(shown), MATCHED_CHARS)}"


# --- decoding and record selection ---------------------------------------------------


def decode(response: httpx.Response, *, method: str = "GET") -> Any:
    """The JSON body of a response; an empty body is null; anything else is a ResponseError.

    A status of 400 or more is a FetchError: HttpClient.send raises those itself, but the
    reader's `send` is a seam that any callable (a plain httpx client in tests) fills."""
    return _decode(response, method=method)[0]


def _decode(response: httpx.Response, *, method: str, exact: bool = False) -> tuple[Any, bool]:
    """`decode`, and whether the body held a number of more than 4,300 digits; `exact` keeps
    the literal of a number that a float does not hold (`ExactFloat`, for decimal fields)."""
    if response.status_code >= 400:
        raise FetchError(
            f"HTTP {response.status_code}", method=method, path=_path(response),
            status=response.status_code, detail=one_line(response.text, EXCERPT_CHARS),
        )
    if not response.content or response.content.isspace():  # no stripped copy of the body
        return None, False
    try:
        body, huge = _json(response, exact)
        content = response.content  # fewer openers than the limit cannot nest deeper than it
        openers = content.count(b"{") + content.count(b"[")
        too_deep = openers > MAX_RESPONSE_DEPTH and _nested_deeper_than(body, MAX_RESPONSE_DEPTH)
    except RecursionError:  # json's own limit, far past MAX_RESPONSE_DEPTH
        too_deep = True
    except ValueError as exc:
        kind = response.headers.get("content-type", "no content-type").split(";")[0]
        excerpt = one_line(response.text, EXCERPT_CHARS)
        raise ResponseError(
            f"response is not JSON ({kind}), starts with {excerpt!r}; "
            "check the URL and that the API answers with JSON",
            method=method, path=_path(response), status=response.status_code, detail=excerpt,
        ) from exc
    if too_deep:  # what reads records later (JMESPath, hashing, targets) recurses per level
        raise ResponseError(
            f"response nested deeper than {MAX_RESPONSE_DEPTH} levels",
            method=method, path=_path(response), status=response.status_code,
        )
    return body, huge


MAX_RESPONSE_DEPTH = 200
_CONTAINER = frozenset((dict, list)).__contains__


def _json(response: httpx.Response, exact: bool = False) -> tuple[Any, bool]:
    """The decoded body, and whether it held a number of more than 4,300 digits (which Python
    will not make an int): it is kept as HugeNumber text, so that its record fails alone."""
    floats = parse_float if exact else None
    try:
        return response.json(parse_float=floats), False
    except ValueError as exc:
        if "digits" not in str(exc):
            raise
        return json.loads(response.content, parse_int=parse_huge, parse_float=floats), True


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` deep: one level at a time (no recursion),
    keeping only the containers of each level (at C speed: compress over their types)."""
    level = [value] if _CONTAINER(type(value)) else []
    for _ in range(limit):
        if not level:
            return False
        children = list(chain.from_iterable([x.values() if type(x) is dict else x for x in level]))
        level = list(compress(children, map(_CONTAINER, map(type, children))))
    return bool(level)


def select_records(source: Source, body: Any, *, method: str = "GET", path: str = "") -> list[Any]:
    """Apply `records` (None means '@'); null is no records, any other non-list an error."""
    expr = source.records
    found = body if expr is None else expr.search(body)
    if found is None:
        return []
    if isinstance(found, list):
        return found
    text = "@" if expr is None else expr.text
    raise ResponseError(
        f"records expression {text!r} gave {json_kind(found)}, not a list; "
        "point `records` at the list of records in the response",
        method=method, path=path,
    )


def _path(response: httpx.Response) -> str:
    try:
        return response.request.url.path
    except RuntimeError:  # a Response built without a request (tests)
        return ""


