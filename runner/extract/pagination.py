"""Pagination: one small stateless class per style, picked from a registry.

A paginator does no I/O and keeps no state between pages. `first()` builds
the first request; `next()` reads the current request, its response, the
decoded body and the selected records, and returns the next request or None.
Because the next request is derived from the current one alone, a
`PageRequest` is a complete resume point: the engine saves it as the
checkpoint (`to_json()`) and hands it back (`from_json()`).

`page` and `offset` are *predictable*: `request_at(base, index)` names any
later page without reading the ones before it, so the reader may fetch
several at once.

`cursor`, `page` and `offset` put their values where `in` says: the query,
the JSON body (a dotted path, set on a copy of the source's `json`) or a
header. A `PageRequest` carries all three, so a checkpoint resumes a POST
body cursor (GraphQL's `variables.after`) exactly.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode

import httpx

from runner.errors import ResponseError
from runner.model import Expr, Pagination
from runner.transform.expressions import json_kind, truthy

__all__ = [
    "PAGINATORS",
    "CursorPaginator",
    "LinkHeaderPaginator",
    "NextUrlPaginator",
    "NonePaginator",
    "OffsetPaginator",
    "PageNumberPaginator",
    "PageRequest",
    "Paginator",
    "PredictablePaginator",
    "paginator_for",
    "parse_link_header",
    "parse_links",
]


Location = Literal["query", "body", "header"]


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One page to request: the URL, the query params merged into it (None: the URL as given),
    the values set in the JSON body (dotted path -> value) and the paging headers."""

    url: str
    params: Mapping[str, Any] | None = None
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        for name in ("params", "body", "headers"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    @property
    def full_url(self) -> httpx.URL:
        """The URL that goes on the wire, params merged into its query."""
        url = httpx.URL(self.url)
        return url.copy_merge_params(dict(self.params)) if self.params else url

    def key(self) -> str:
        """A canonical form (query sorted) that is equal for two requests of the same page.

        Built with urllib rather than httpx.URL: it runs once per page, and parsing
        an httpx.URL three times over cost as much as the request itself.
        """
        base, _, query = self.url.partition("#")[0].partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        if self.params:
            pairs = [pair for pair in pairs if pair[0] not in self.params]
            for name, value in self.params.items():
                for item in value if isinstance(value, (list, tuple)) else (value,):
                    pairs.append((str(name), _query_value(item)))
        key = f"{base}?{urlencode(sorted(pairs))}"
        if self.body or self.headers:  # a body or header cursor names the page as much as the query
            extra = {"body": dict(self.body or {}), "headers": dict(self.headers or {})}
            key += "#" + json.dumps(extra, sort_keys=True, default=str)
        return key

    def target(self) -> str:
        """The path and query of the request, for messages (`/items?after=3`)."""
        url = self.full_url
        query = url.query.decode("ascii")
        return f"{url.path}?{query}" if query else url.path

    def paging(self, location: Location, changes: Mapping[str, Any], *, params: bool = True) -> PageRequest:
        """This request with paging values set where `location` says; `params=False` drops the
        query params that are not among `changes` (`params_first_page_only`)."""
        query = dict(self.params or {}) if params else {}
        body, headers = dict(self.body or {}), dict(self.headers or {})
        if location == "query":
            query.update(changes)
        elif location == "body":
            body.update(changes)
        else:
            headers.update({name: _query_value(value) for name, value in changes.items()})
        return PageRequest(
            self.url, query if query or (params and self.params is not None) else None, body or None, headers or None
        )

    def value(self, location: Location, name: str) -> Any:
        """A paging value this request carries (KeyError when it has none)."""
        where = {"query": self.params, "body": self.body, "header": self.headers}[location]
        return (where or {})[name]

    def json_body(self, written: Any) -> Any:
        """The JSON body to send: `written` (the source's `json`) with this request's body values
        set at their dotted paths, each created when missing and replaced when present."""
        if not self.body:
            return written
        body = copy.deepcopy(written) if isinstance(written, dict) else {}
        for dotted, value in self.body.items():
            node = body
            *parents, last = dotted.split(".")
            for name in parents:
                child = node.get(name)
                if not isinstance(child, dict):
                    child = node[name] = {}
                node = child
            node[last] = value
        return body

    def to_json(self) -> dict[str, Any]:
        params = None if self.params is None else dict(self.params)
        data: dict[str, Any] = {"url": self.url, "params": params}
        if self.body is not None:
            data["body"] = dict(self.body)
        if self.headers is not None:
            data["headers"] = dict(self.headers)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PageRequest:
        """A saved request; one saved before `body` and `headers` existed has neither."""
        return cls(str(data["url"]), data.get("params"), data.get("body"), data.get("headers"))


def _query_value(value: Any) -> str:
    """A param value as httpx puts it in a query: true, false, empty for None."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return "" if value is None else str(value)


@runtime_checkable
class Paginator(Protocol):
    """Derives each request from the one before it; no I/O, no state."""

    predictable: bool

    def first(self, url: str, params: Mapping[str, Any]) -> PageRequest: ...

    def next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None: ...

    def describe(self, request: PageRequest) -> str: ...


@runtime_checkable
class PredictablePaginator(Paginator, Protocol):
    """A paginator that can name page `index` (0 = `base`) without reading the pages before it."""

    def request_at(self, base: PageRequest, index: int) -> PageRequest: ...

    def remaining(self, request: PageRequest, body: Any) -> int | None: ...


@dataclass(frozen=True)
class _Base:
    """Shared behaviour: built from its config, first request = URL + params, sequential,
    and `stop_when` (a truthy JMESPath on the body ends paging after this page)."""

    predictable: ClassVar[bool] = False
    stop_when: Expr | None = field(default=None, kw_only=True)
    params_first_page_only: bool = field(default=False, kw_only=True)

    @classmethod
    def from_config(cls, config: Pagination) -> Any:
        names = {f.name for f in fields(cls)}
        return cls(**{n: getattr(config, n) for n in names})

    def first(self, url: str, params: Mapping[str, Any]) -> PageRequest:
        return PageRequest(url, params or None)

    def next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        if self.stop_when is not None and truthy(self.stop_when.search(body)):
            return None
        return self._next(request, response, body, records)

    def _next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        return None

    def describe(self, request: PageRequest) -> str:
        return f"next URL {request.target()}"


@dataclass(frozen=True)
class NonePaginator(_Base):
    """One request, no more."""


def _follow(request: PageRequest, link: Any, where: str) -> PageRequest | None:
    """The request for a next link, resolved against the current URL; None when empty."""
    if link is None or link == "":
        return None
    if not isinstance(link, str):
        raise _unusable(request, f"next URL at {where} is {json_kind(link)}, not a string")
    return PageRequest(str(request.full_url.join(link)))


def _unusable(request: PageRequest, message: str) -> ResponseError:
    return ResponseError(message, path=request.full_url.path)


@dataclass(frozen=True)
class NextUrlPaginator(_Base):
    """The body names the next URL (absolute or relative); null or empty stops."""

    path: Expr

    def _next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        return _follow(request, self.path.search(body), repr(self.path.text))


@dataclass(frozen=True)
class LinkHeaderPaginator(_Base):
    """RFC 8288 `Link: <...>; rel="next"`; no next link, or one with `results="false"`
    (Sentry says so on a next link that would be empty), stops."""

    def _next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        links = parse_links(", ".join(response.headers.get_list("link")))
        target, params = links.get("next", (None, {}))
        if params.get("results", "").lower() == "false":
            return None
        return _follow(request, target, "the Link header")


@dataclass(frozen=True)
class CursorPaginator(_Base):
    """The body (`path`) or a response header (`header`) names a token that goes out as
    `param`, where `location` says; null/empty or `stop_when` stops."""

    param: str
    path: Expr | None = None
    header: str | None = None
    location: Location = "query"

    def _next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        if self.path is None:
            token: Any = response.headers.get(self.header or "")
            where = f"header {self.header!r}"
        else:
            token, where = self.path.search(body), repr(self.path.text)
        if token is None or token == "":
            return None
        if isinstance(token, dict) or (isinstance(token, list) and self.location != "body"):
            raise _unusable(request, f"cursor at {where} is {json_kind(token)}, not a string or number")
        return request.paging(self.location, {self.param: token}, params=not self.params_first_page_only)

    def describe(self, request: PageRequest) -> str:
        try:
            token = request.value(self.location, self.param)
        except KeyError:
            return super().describe(request)
        shown = json.dumps(token) if isinstance(token, list) else str(token)
        return f"cursor {shown!r}"


@dataclass(frozen=True)
class _Counted(_Base):
    """Shared by `page` and `offset`: a number that grows by a fixed step.

    Paging stops on an empty page, a page shorter than the size, or at the
    end the body announces (`_end`: the first position that does not exist).
    """

    predictable: ClassVar[bool] = True
    param: str = ""
    location: Location = "query"

    def first(self, url: str, params: Mapping[str, Any]) -> PageRequest:
        return PageRequest(url, params or None).paging(self.location, self._values(self._first()))

    def _next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        size = self._size()
        if not records or (size is not None and len(records) < size):
            return None
        return None if self.remaining(request, body) == 0 else self.request_at(request, 1)

    def request_at(self, base: PageRequest, index: int) -> PageRequest:
        if index == 0:
            return base
        values = self._values(self._position(base) + index * self._step())
        return base.paging(self.location, values, params=not self.params_first_page_only)

    def remaining(self, request: PageRequest, body: Any) -> int | None:
        """How many pages come after `request`, if the body tells the total; else None."""
        end = self._end(body)
        if end is None:
            return None
        return max(0, -(-(end - self._position(request) - self._step()) // self._step()))

    def describe(self, request: PageRequest) -> str:
        return f"{self.param} {self._position(request)}"

    def _position(self, request: PageRequest) -> int:
        return int(request.value(self.location, self.param))

    def _first(self) -> int:
        return 0

    def _values(self, position: int) -> dict[str, Any]:
        """The paging values of the page at `position`: the number and the size."""
        return {self.param: position}

    def _step(self) -> int:
        return 1

    def _size(self) -> int | None:
        return None

    def _end(self, body: Any) -> int | None:
        return None


@dataclass(frozen=True)
class PageNumberPaginator(_Counted):
    """`param` counts pages from `start`; an empty or short page, or `total_pages`, stops."""

    param: str = "page"
    start: int = 1
    size_param: str | None = None
    size: int | None = None
    total_pages: Expr | None = None

    def _first(self) -> int:
        return self.start

    def _values(self, position: int) -> dict[str, Any]:
        values: dict[str, Any] = {self.param: position}
        if self.size_param and self.size is not None:
            values[self.size_param] = self.size
        return values

    def _size(self) -> int | None:
        return self.size

    def _end(self, body: Any) -> int | None:
        total = _number(self.total_pages, body)
        return None if total is None else self.start + total


@dataclass(frozen=True)
class OffsetPaginator(_Counted):
    """`param` counts records, `limit_param` sets the page size; empty, short or `total` stops."""

    limit: int = 0
    param: str = "offset"
    limit_param: str = "limit"
    total: Expr | None = None

    def _values(self, position: int) -> dict[str, Any]:
        return {self.param: position, self.limit_param: self.limit}

    def _step(self) -> int:
        return self.limit

    def _size(self) -> int | None:
        return self.limit

    def _end(self, body: Any) -> int | None:
        return _number(self.total, body)


def _number(expr: Expr | None, body: Any) -> int | None:
    """An optional count read from the body; absent or not a number means unknown."""
    if expr is None:
        return None
    value = expr.search(body)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


PAGINATORS: Mapping[str, type[Any]] = MappingProxyType(
    {
        "none": NonePaginator,
        "next_url": NextUrlPaginator,
        "link_header": LinkHeaderPaginator,
        "cursor": CursorPaginator,
        "page": PageNumberPaginator,
        "offset": OffsetPaginator,
    }
)


def paginator_for(config: Pagination) -> Paginator:
    """The paginator for a pagination config, by its `type`."""
    paginator: Paginator = PAGINATORS[config.type].from_config(config)
    return paginator


# --- RFC 8288 Link header ---------------------------------------------------------

_LINK = re.compile(r'<([^>]*)>((?:[^,"<]|"(?:[^"\\]|\\.)*")*)')
_PARAM = re.compile(r';\s*([^\s;=]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;\s]*))?')


def parse_link_header(value: str) -> dict[str, str]:
    """Map each relation type (lower case) to its target; the first link of a relation wins.

    Handles several links in one header, quoted and unquoted parameters,
    commas inside quoted strings, and `rel` with several space-separated values.
    """
    return {rel: target for rel, (target, _) in parse_links(value).items()}


def parse_links(value: str) -> dict[str, tuple[str, dict[str, str]]]:
    """`parse_link_header` with each link's parameters (names lower case, values unquoted)."""
    links: dict[str, tuple[str, dict[str, str]]] = {}
    for match in _LINK.finditer(value):
        params = _params(match.group(2))
        for rel in params.get("rel", "").lower().split():
            links.setdefault(rel, (match.group(1).strip(), params))
    return links


def _params(text: str) -> dict[str, str]:
    """A link's parameters; the first of a name wins (RFC 8288: later `rel`s are ignored)."""
    found: dict[str, str] = {}
    name: str
    raw: str  # "" when the parameter has no value: findall gives a tuple of the two groups
    for name, raw in _PARAM.findall(text):
        found.setdefault(name.lower(), raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw)
    return found
