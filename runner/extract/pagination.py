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
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, runtime_checkable
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
]


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One page to request: the URL and the query params merged into it (None: the URL as given)."""

    url: str
    params: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.params is not None:
            object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

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
        return f"{base}?{urlencode(sorted(pairs))}"

    def target(self) -> str:
        """The path and query of the request, for messages (`/items?after=3`)."""
        url = self.full_url
        query = url.query.decode("ascii")
        return f"{url.path}?{query}" if query else url.path

    def with_params(self, **changes: Any) -> PageRequest:
        return PageRequest(self.url, {**(self.params or {}), **changes})

    def to_json(self) -> dict[str, Any]:
        params = None if self.params is None else dict(self.params)
        return {"url": self.url, "params": params}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PageRequest:
        return cls(str(data["url"]), data.get("params"))


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


class _Base:
    """Shared behaviour: built from its config, first request = URL + params, sequential."""

    predictable: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: Pagination) -> Any:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{n: getattr(config, n) for n in names})

    def first(self, url: str, params: Mapping[str, Any]) -> PageRequest:
        return PageRequest(url, params or None)

    def describe(self, request: PageRequest) -> str:
        return f"next URL {request.target()}"


@dataclass(frozen=True)
class NonePaginator(_Base):
    """One request, no more."""

    def next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        return None


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

    def next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        return _follow(request, self.path.search(body), repr(self.path.text))


@dataclass(frozen=True)
class LinkHeaderPaginator(_Base):
    """RFC 8288 `Link: <...>; rel="next"`; no next link stops."""

    def next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        links = parse_link_header(", ".join(response.headers.get_list("link")))
        return _follow(request, links.get("next"), 'the Link header')


@dataclass(frozen=True)
class CursorPaginator(_Base):
    """The body names a token that goes out as `param`; null/empty or `stop_when` stops."""

    path: Expr
    param: str
    stop_when: Expr | None = None

    def next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        if self.stop_when is not None and truthy(self.stop_when.search(body)):
            return None
        token = self.path.search(body)
        if token is None or token == "":
            return None
        if isinstance(token, (dict, list)):
            raise _unusable(request, f"cursor at {self.path.text!r} is {json_kind(token)}, not a string or number")
        return request.with_params(**{self.param: token})

    def describe(self, request: PageRequest) -> str:
        token = (request.params or {}).get(self.param)
        return f"cursor {str(token)!r}" if token is not None else super().describe(request)


class _Counted(_Base):
    """Shared by `page` and `offset`: a number in the query that grows by a fixed step.

    Paging stops on an empty page, a page shorter than the size, or at the
    end the body announces (`_end`: the first position that does not exist).
    """

    predictable: ClassVar[bool] = True
    param: str

    def next(
        self, request: PageRequest, response: httpx.Response, body: Any, records: list[Any]
    ) -> PageRequest | None:
        size = self._size()
        if not records or (size is not None and len(records) < size):
            return None
        return None if self.remaining(request, body) == 0 else self.request_at(request, 1)

    def request_at(self, base: PageRequest, index: int) -> PageRequest:
        return base.with_params(**{self.param: self._position(base) + index * self._step()})

    def remaining(self, request: PageRequest, body: Any) -> int | None:
        """How many pages come after `request`, if the body tells the total; else None."""
        end = self._end(body)
        if end is None:
            return None
        return max(0, -(-(end - self._position(request) - self._step()) // self._step()))

    def describe(self, request: PageRequest) -> str:
        return f"{self.param} {self._position(request)}"

    def _position(self, request: PageRequest) -> int:
        return int((request.params or {})[self.param])

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

    def first(self, url: str, params: Mapping[str, Any]) -> PageRequest:
        extra: dict[str, Any] = {self.param: self.start}
        if self.size_param and self.size is not None:
            extra[self.size_param] = self.size
        return PageRequest(url, {**params, **extra})

    def _size(self) -> int | None:
        return self.size

    def _end(self, body: Any) -> int | None:
        total = _number(self.total_pages, body)
        return None if total is None else self.start + total


@dataclass(frozen=True)
class OffsetPaginator(_Counted):
    """`param` counts records, `limit_param` sets the page size; empty, short or `total` stops."""

    limit: int
    param: str = "offset"
    limit_param: str = "limit"
    total: Expr | None = None

    def first(self, url: str, params: Mapping[str, Any]) -> PageRequest:
        return PageRequest(url, {**params, self.param: 0, self.limit_param: self.limit})

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
    links: dict[str, str] = {}
    for match in _LINK.finditer(value):
        for rel in _relations(match.group(2)):
            links.setdefault(rel, match.group(1).strip())
    return links


def _relations(params: str) -> list[str]:
    name: str
    raw: str  # "" when the parameter has no value: findall gives a tuple of the two groups
    for name, raw in _PARAM.findall(params):
        if name.lower() == "rel":
            text = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
            return text.lower().split()
    return []

