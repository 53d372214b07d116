"""Paging parameters in the JSON body or a header, `stop_when` on every style, header cursors,
Sentry's `results="false"`, `params_first_page_only`, and the checkpoint that carries all of it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from fakes import expr
from runner.extract.pagination import PageRequest, Paginator, paginator_for, parse_links
from runner.extract.reader import SourceReader
from runner.load.plan import Checkpoint
from runner.model import (
    CursorPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    NoPagination,
    OffsetPagination,
    PagePagination,
    Pagination,
    Source,
)

URL = "https://api.example.com/graphql"


def step(paginator: Paginator, request: PageRequest, body: Any = None, records: list[Any] | None = None,
         headers: Any = None) -> PageRequest | None:
    return paginator.next(request, httpx.Response(200, headers=headers or {}), body, records or [])


# --- stop_when on every style ------------------------------------------------------------


STOP = expr("!has_more")
STYLES: dict[str, tuple[Pagination, dict[str, Any], dict[str, str]]] = {
    "next_url": (NextUrlPagination(path=expr("next"), stop_when=STOP), {"next": "/p2"}, {}),
    "link_header": (LinkHeaderPagination(stop_when=STOP), {}, {"link": '</p2>; rel="next"'}),
    "cursor": (CursorPagination(param="c", path=expr("next"), stop_when=STOP), {"next": "x"}, {}),
    "page": (PagePagination(stop_when=STOP), {}, {}),
    "offset": (OffsetPagination(limit=1, stop_when=STOP), {}, {}),
    "none": (NoPagination(stop_when=STOP), {}, {}),
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_stop_when_ends_paging_on_every_style(style: str) -> None:
    """Every style stops after a page whose body makes `stop_when` truthy, and goes on otherwise."""
    config, body, headers = STYLES[style]
    paginator = paginator_for(config)
    first = paginator.first(URL, {})
    assert step(paginator, first, {**body, "has_more": False}, [1], headers) is None
    going_on = step(paginator, first, {**body, "has_more": True}, [1], headers)
    assert (going_on is None) == (style == "none")


# --- in: body ----------------------------------------------------------------------------------


def test_body_cursor_first_request_is_the_body_as_written_then_the_cursor_is_set() -> None:
    """The first request sends `json` unchanged; the next one sets `variables.after`, keeping the rest."""
    paginator = paginator_for(CursorPagination(param="variables.after", path=expr("end"), location="body"))
    written = {"query": "q", "variables": {"after": None, "first": 2}}
    first = paginator.first(URL, {})
    assert first.json_body(written) is written and first.params is None
    second = step(paginator, first, {"end": "c1"})
    assert second is not None and second.params is None
    assert second.json_body(written) == {"query": "q", "variables": {"after": "c1", "first": 2}}
    assert written["variables"]["after"] is None  # the source's json is never changed
    third = step(paginator, second, {"end": "c2"})
    assert third is not None and third.json_body(written)["variables"]["after"] == "c2"


def test_body_path_is_created_when_missing_and_a_list_cursor_is_allowed() -> None:
    """A dotted path that the body lacks is created; a list (Elasticsearch `search_after`) is a cursor."""
    paginator = paginator_for(CursorPagination(param="search_after", path=expr("hits[-1].sort"), location="body"))
    second = step(paginator, paginator.first(URL, {}), {"hits": [{"sort": [5, "a"]}]})
    assert second is not None and second.json_body({"size": 2}) == {"size": 2, "search_after": [5, "a"]}
    assert second.json_body(None) == {"search_after": [5, "a"]}
    assert paginator.describe(second) == "cursor '[5, \"a\"]'"
    deep = PageRequest(URL, body={"a.b.c": 1})
    assert deep.json_body({"a": "scalar"}) == {"a": {"b": {"c": 1}}}


def test_a_list_cursor_outside_the_body_is_an_error() -> None:
    """A list cannot go into a query parameter: the cursor is refused with its expression."""
    from runner.errors import ResponseError

    paginator = paginator_for(CursorPagination(param="c", path=expr("next")))
    with pytest.raises(ResponseError, match="'next' is a list"):
        step(paginator, PageRequest(URL), {"next": [1]})


def test_page_and_offset_in_the_body_count_there() -> None:
    """`page` and `offset` with `in: body` set their number (and size) in the body, never the query."""
    page = paginator_for(PagePagination(param="page.number", size_param="page.size", size=2, location="body"))
    first = page.first(URL, {"q": 1})
    assert first.params == {"q": 1} and first.body == {"page.number": 1, "page.size": 2}
    second = step(page, first, {}, [1, 2])
    assert second is not None and second.json_body({"filter": "x"}) == {"filter": "x", "page": {"number": 2, "size": 2}}
    assert page.describe(second) == "page.number 2"
    offset = paginator_for(OffsetPagination(limit=3, location="body"))
    assert offset.request_at(offset.first(URL, {}), 2).body == {"offset": 6, "limit": 3}  # type: ignore[attr-defined]


# --- in: header and header cursors ------------------------------------------------------------------


def test_header_location_sends_the_cursor_as_a_request_header() -> None:
    """`in: header` carries the token in a request header, as text."""
    paginator = paginator_for(CursorPagination(param="X-Cursor", path=expr("next"), location="header"))
    second = step(paginator, paginator.first(URL, {"q": 1}), {"next": 42})
    assert second == PageRequest(URL, {"q": 1}, headers={"X-Cursor": "42"})


def test_cursor_read_from_a_response_header() -> None:
    """`header: NAME` reads the next token from that response header; no header stops."""
    paginator = paginator_for(CursorPagination(param="after", header="X-Next-Cursor"))
    first = paginator.first(URL, {})
    assert step(paginator, first, {}, [1], {"x-next-cursor": "abc"}) == PageRequest(URL, {"after": "abc"})
    assert step(paginator, first, {}, [1]) is None
    assert step(paginator, first, {}, [1], {"X-Next-Cursor": ""}) is None


# --- link_header results="false" -----------------------------------------------------------------


def test_link_header_stops_on_sentry_results_false() -> None:
    """Sentry's next link with `results="false"` means no more results: paging stops."""
    paginator = paginator_for(LinkHeaderPagination())
    sentry = ('<https://sentry.io/api/0/x/?cursor=0:0:1>; rel="previous"; results="false"; cursor="0:0:1", '
              '<https://sentry.io/api/0/x/?cursor=0:100:0>; rel="next"; results="{}"; cursor="0:100:0"')
    assert step(paginator, PageRequest(URL), [], [1], {"link": sentry.format("false")}) is None
    following = step(paginator, PageRequest(URL), [], [1], {"link": sentry.format("true")})
    assert following == PageRequest("https://sentry.io/api/0/x/?cursor=0:100:0")


def test_parse_links_keeps_each_links_parameters() -> None:
    """`parse_links` gives each relation its target and unquoted, lower-cased parameters."""
    links = parse_links('<https://x/2>; rel="next"; Results="false"; cursor=abc')
    assert links == {"next": ("https://x/2", {"rel": "next", "results": "false", "cursor": "abc"})}


# --- params_first_page_only --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config,expected",
    [
        (CursorPagination(param="cursor", path=expr("next"), params_first_page_only=True), {"cursor": "n"}),
        (PagePagination(size_param="per_page", size=1, params_first_page_only=True), {"page": 2, "per_page": 1}),
        (OffsetPagination(limit=1, params_first_page_only=True), {"offset": 1, "limit": 1}),
    ],
    ids=["cursor", "page", "offset"],
)
def test_params_first_page_only_sends_params_with_the_first_request_alone(
    config: Pagination, expected: dict[str, Any]
) -> None:
    """With `params_first_page_only`, later requests carry the paging parameters but not `params`."""
    paginator = paginator_for(config)
    first = paginator.first(URL, {"start_time": 5})
    assert first.params is not None and first.params["start_time"] == 5
    following = step(paginator, first, {"next": "n"}, [1])
    assert following is not None and following.params == expected


def test_params_first_page_only_with_a_body_cursor_leaves_the_url_as_given() -> None:
    """A body cursor with `params_first_page_only` sends later requests with no query at all."""
    paginator = paginator_for(
        CursorPagination(param="after", path=expr("n"), location="body", params_first_page_only=True)
    )
    second = step(paginator, paginator.first(URL, {"q": 1}), {"n": "c"})
    assert second == PageRequest(URL, None, body={"after": "c"})


# --- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_carries_the_body_cursor_and_headers_and_old_ones_still_load() -> None:
    """A body or header cursor round-trips through the checkpoint; a checkpoint saved before them loads."""
    request = PageRequest(URL, {"q": 1}, body={"variables.after": "c9", "search_after": [1, "a"]},
                          headers={"X-Cursor": "7"})
    again = Checkpoint.loads(Checkpoint(request, 3).dumps())
    assert again.next == request and again.next.key() == request.key()
    old = Checkpoint.loads(json.dumps({"next": {"url": URL, "params": {"page": 4}}, "pages": 3}))
    assert old.next == PageRequest(URL, {"page": 4}) and old.next.body is None
    assert "body" not in PageRequest(URL, {"a": 1}).to_json()  # a query-only checkpoint is written as before


def test_two_body_cursors_are_two_pages_for_loop_detection() -> None:
    """The loop key includes the body values: a repeated body cursor is a loop, a new one is not."""
    a, b = PageRequest(URL, body={"after": "1"}), PageRequest(URL, body={"after": "2"})
    assert a.key() != b.key() and a.key() == PageRequest(URL, body={"after": "1"}).key()


# --- the reader -------------------------------------------------------------------------------------


@respx.mock
def test_reader_sends_the_body_cursor_and_says_each_request_is_a_read() -> None:
    """The reader sends each page's body and headers, and `idempotent=True` (a POST source is a read)."""
    route = respx.post(URL).mock(side_effect=[
        httpx.Response(200, json={"data": [1], "end": "c1"}),
        httpx.Response(200, json={"data": [2], "end": None}),
    ])
    seen: list[bool | None] = []

    def send(method: str, url: str, *, idempotent: bool | None = None, **kw: Any) -> httpx.Response:
        seen.append(idempotent)
        with httpx.Client() as client:
            return client.request(method, url, **kw)

    source = Source(url=URL, method="POST", json={"query": "q", "variables": {"after": None}}, records=expr("data"),
                    pagination=CursorPagination(param="variables.after", path=expr("end"), location="body"))
    pages = list(SourceReader(source=source, send=send, params={}).pages())
    assert [p.records for p in pages] == [[1], [2]] and seen == [True, True]
    bodies = [call.request.content for call in route.calls]
    assert bodies == [b'{"query":"q","variables":{"after":null}}', b'{"query":"q","variables":{"after":"c1"}}']
