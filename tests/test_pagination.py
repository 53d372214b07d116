"""The paginators: pure functions from (request, response, body, records) to the next request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from fakes import expr
from runner import model
from runner.errors import ResponseError
from runner.model import (
    CursorPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    NoPagination,
    OffsetPagination,
    PagePagination,
)
from runner.extract.pagination import (
    PAGINATORS,
    CursorPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    PageRequest,
    Paginator,
    paginator_for,
    parse_link_header,
)

ROOT = Path(__file__).resolve().parent.parent
URL = "https://api.example.com/v1/items"


def response(headers: dict[str, str] | list[tuple[str, str]] | None = None) -> httpx.Response:
    return httpx.Response(200, headers=headers or {})


def step(paginator: Paginator, request: PageRequest, body: Any = None, records: list[Any] | None = None,
         headers: Any = None) -> PageRequest | None:
    return paginator.next(request, response(headers), body, records if records is not None else [])


# --- the registry ----------------------------------------------------------------


def _schema_types() -> set[str]:
    for path in (ROOT / "runner" / "config" / "pipeline.schema.json", ROOT / "schemas" / "pipeline.schema.json"):
        if path.exists():
            schema = json.loads(path.read_text())
            return set(schema["$defs"]["pagination"]["properties"]["type"]["enum"])
    pytest.skip("no pipeline.schema.json yet")


def test_registry_keys_equal_the_schema_pagination_types() -> None:
    """The registry and the schema's `pagination.type` enum are the same set."""
    assert set(PAGINATORS) == _schema_types()


def test_registry_keys_equal_the_model_pagination_types() -> None:
    """Every pagination class of the model has a paginator under its `type`, and no other key exists."""
    types = {cls.__dataclass_fields__["type"].default for cls in get_args(model.Pagination)}
    assert set(PAGINATORS) == types


@pytest.mark.parametrize(
    ("config", "predictable"),
    [
        (NoPagination(), False),
        (NextUrlPagination(path=expr("next")), False),
        (LinkHeaderPagination(), False),
        (CursorPagination(path=expr("c"), param="cursor"), False),
        (PagePagination(), True),
        (OffsetPagination(limit=10), True),
    ],
    ids=lambda v: getattr(v, "type", str(v)),
)
def test_paginator_for_builds_each_style_from_its_config(config: model.Pagination, predictable: bool) -> None:
    """`paginator_for` returns a stateless paginator of the config's type; only page and offset are predictable."""
    paginator = paginator_for(config)
    assert isinstance(paginator, PAGINATORS[config.type])
    assert isinstance(paginator, Paginator)
    assert paginator.predictable is predictable
    with pytest.raises(AttributeError):
        paginator.x = 1  # type: ignore[attr-defined]


# --- PageRequest ---------------------------------------------------------------------


def test_page_request_key_ignores_param_order_and_merges_the_url_query() -> None:
    """Two requests for the same page have one key, whatever the order or place of their params."""
    a = PageRequest(URL + "?b=2", {"a": 1})
    b = PageRequest(URL, {"a": "1", "b": "2"})
    c = PageRequest(URL + "?a=1&b=2")
    assert a.key() == b.key() == c.key()
    assert a.key() != PageRequest(URL, {"a": 2, "b": 2}).key()


def test_page_request_key_follows_how_httpx_merges_params() -> None:
    """A param replaces the URL's own value of that name, as on the wire; lists repeat; True is 'true'."""
    assert PageRequest(URL + "?a=1#frag", {"a": 2}).key() == PageRequest(URL + "?a=2").key()
    assert PageRequest(URL, {"d": [1, 2], "t": True, "n": None}).key() == PageRequest(URL + "?t=true&n=&d=1&d=2").key()
    assert PageRequest(URL, {"q": "x y"}).key() != PageRequest(URL, {"q": "x+y"}).key()


def test_page_request_round_trips_through_json() -> None:
    """A checkpoint written with `to_json` reads back as an equal request, params None kept as None."""
    for request in (PageRequest(URL, {"page": 3, "q": "x y"}), PageRequest(URL + "?after=3")):
        text = json.dumps(request.to_json())
        assert PageRequest.from_json(json.loads(text)) == request


def test_page_request_params_are_read_only_and_copied() -> None:
    """A PageRequest cannot be changed through the dict it was built from or through its params."""
    params = {"page": 1}
    request = PageRequest(URL, params)
    params["page"] = 2
    assert request.params == {"page": 1}
    with pytest.raises(TypeError):
        request.params["page"] = 3  # type: ignore[index]


def test_page_request_target_is_path_and_query() -> None:
    """`target()` is what messages show: the path and the merged query, never the host."""
    assert PageRequest(URL, {"after": 3}).target() == "/v1/items?after=3"
    assert PageRequest(URL).target() == "/v1/items"


# --- none, next_url ----------------------------------------------------------------------


def test_none_stops_after_the_first_page() -> None:
    """`none` requests the URL with the params once and never again."""
    paginator = paginator_for(NoPagination())
    first = paginator.first(URL, {"q": 1})
    assert first == PageRequest(URL, {"q": 1})
    assert step(paginator, first, {"data": [1]}, [1]) is None


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("https://other.example.com/x?after=3", "https://other.example.com/x?after=3"),
        ("/v1/items?after=3", "https://api.example.com/v1/items?after=3"),
        ("?after=3", "https://api.example.com/v1/items?after=3"),
        ("items?after=3", "https://api.example.com/v1/items?after=3"),
    ],
)
def test_next_url_follows_absolute_and_relative_links(link: str, expected: str) -> None:
    """A next URL is resolved against the current URL and requested exactly as given (no params added)."""
    paginator = paginator_for(NextUrlPagination(path=expr("links.next")))
    first = paginator.first(URL, {"limit": 10})
    following = step(paginator, first, {"links": {"next": link}})
    assert following == PageRequest(expected, None)


@pytest.mark.parametrize("body", [{"links": {"next": None}}, {"links": {"next": ""}}, {"links": {}}, None])
def test_next_url_stops_on_null_or_empty(body: Any) -> None:
    """A null, missing or empty next URL ends paging."""
    paginator = paginator_for(NextUrlPagination(path=expr("links.next")))
    assert step(paginator, paginator.first(URL, {}), body) is None


def test_a_next_url_or_cursor_that_is_an_object_is_an_error() -> None:
    """A next URL or cursor that is an object is a ResponseError naming the expression, not a request."""
    next_url = paginator_for(NextUrlPagination(path=expr("links")))
    cursor = paginator_for(CursorPagination(path=expr("meta"), param="c"))
    with pytest.raises(ResponseError, match="next URL at 'links' is an object"):
        step(next_url, PageRequest(URL), {"links": {"next": "x"}})
    with pytest.raises(ResponseError, match="cursor at 'meta' is an object"):
        step(cursor, PageRequest(URL), {"meta": {"c": 1}})


# --- link_header ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            '<https://api.github.com/repositories/1/issues?page=2>; rel="next", '
            '<https://api.github.com/repositories/1/issues?page=5>; rel="last"',
            {"next": "https://api.github.com/repositories/1/issues?page=2",
             "last": "https://api.github.com/repositories/1/issues?page=5"},
        ),
        ("</a?p=2>; rel=next", {"next": "/a?p=2"}),
        ('<https://x/a?p=2>; rel="prev next"', {"prev": "https://x/a?p=2", "next": "https://x/a?p=2"}),
        ('<https://x/b>; title="a, <c>; rel=next"; rel="last"', {"last": "https://x/b"}),
        ('<https://x/c,d>; REL="Next"; type="text/html"', {"next": "https://x/c,d"}),
        ('<https://x/1>; rel="next", <https://x/2>; rel="next"', {"next": "https://x/1"}),
        ("", {}),
        ("not a link", {}),
    ],
)
def test_parse_link_header_follows_rfc_8288(header: str, expected: dict[str, str]) -> None:
    """Several links per header, quoted params with commas, several rel values and case are handled."""
    assert parse_link_header(header) == expected


def test_link_header_resolves_a_relative_next_against_the_request_url() -> None:
    """A relative `rel="next"` target is resolved against the URL that was requested."""
    paginator = paginator_for(LinkHeaderPagination())
    first = paginator.first(URL, {"per_page": 100})
    following = step(paginator, first, [], [1], headers={"Link": '<?page=2&per_page=100>; rel="next"'})
    assert following == PageRequest("https://api.example.com/v1/items?page=2&per_page=100")


def test_link_header_reads_several_link_headers() -> None:
    """Links split over several `Link` header lines are all read."""
    paginator = paginator_for(LinkHeaderPagination())
    headers = [("Link", '<https://x/1>; rel="first"'), ("Link", '<https://x/3>; rel="next"')]
    assert step(paginator, PageRequest(URL), [], [1], headers=headers) == PageRequest("https://x/3")


def test_link_header_stops_without_a_next_link() -> None:
    """No `rel="next"` (only first/prev/last, or no header) ends paging."""
    paginator = paginator_for(LinkHeaderPagination())
    header = {"Link": '<https://x/1>; rel="first", <https://x/4>; rel="prev"'}
    assert step(paginator, PageRequest(URL), [], [1], headers=header) is None
    assert step(paginator, PageRequest(URL), [], [1]) is None


# --- cursor --------------------------------------------------------------------------


def test_cursor_sends_the_params_with_every_request() -> None:
    """The token goes out as `param` beside the source params, replacing the previous token."""
    paginator = paginator_for(CursorPagination(path=expr("meta.next"), param="cursor"))
    first = paginator.first(URL, {"limit": 50})
    second = step(paginator, first, {"meta": {"next": "abc"}})
    third = step(paginator, second, {"meta": {"next": "def"}})  # type: ignore[arg-type]
    assert second == PageRequest(URL, {"limit": 50, "cursor": "abc"})
    assert third == PageRequest(URL, {"limit": 50, "cursor": "def"})


@pytest.mark.parametrize("token", [None, ""])
def test_cursor_stops_on_a_null_or_empty_token(token: Any) -> None:
    """A null or empty token ends paging."""
    paginator = paginator_for(CursorPagination(path=expr("next"), param="cursor"))
    assert step(paginator, paginator.first(URL, {}), {"next": token}) is None


def test_cursor_stripe_style_uses_the_last_id_until_has_more_is_false() -> None:
    """Stripe lists: `data[-1].id` as `starting_after`, stopping when `!has_more` is truthy."""
    config = CursorPagination(path=expr("data[-1].id"), param="starting_after", stop_when=expr("!has_more"))
    paginator = paginator_for(config)
    first = paginator.first(URL, {"limit": 2})
    body = {"object": "list", "data": [{"id": "cus_1"}, {"id": "cus_2"}], "has_more": True}
    second = step(paginator, first, body, body["data"])
    assert second == PageRequest(URL, {"limit": 2, "starting_after": "cus_2"})
    last = {"object": "list", "data": [{"id": "cus_3"}], "has_more": False}
    assert step(paginator, second, last, last["data"]) is None  # type: ignore[arg-type]


def test_cursor_describes_its_token_for_loop_messages() -> None:
    """A cursor request is described by its token, so a loop error names it."""
    paginator = paginator_for(CursorPagination(path=expr("n"), param="cursor"))
    assert paginator.describe(PageRequest(URL, {"cursor": "abc"})) == "cursor 'abc'"
    assert paginator.describe(PageRequest(URL + "?x=1")) == "next URL /v1/items?x=1"


# --- page ---------------------------------------------------------------------------------


def test_page_counts_from_start_and_sends_the_size() -> None:
    """The first request carries params, `page=start` and `size_param=size`; the next adds one."""
    paginator = paginator_for(PagePagination(start=0, size_param="per_page", size=2))
    first = paginator.first(URL, {"q": "x"})
    assert first == PageRequest(URL, {"q": "x", "page": 0, "per_page": 2})
    assert step(paginator, first, {}, [1, 2]) == PageRequest(URL, {"q": "x", "page": 1, "per_page": 2})


def test_page_stops_on_an_empty_or_short_page() -> None:
    """An empty page always stops; a page shorter than `size` stops when a size is known."""
    sized = paginator_for(PagePagination(size_param="per_page", size=3))
    unsized = paginator_for(PagePagination())
    assert step(sized, sized.first(URL, {}), {}, [1, 2]) is None
    assert step(unsized, unsized.first(URL, {}), {}, []) is None
    assert step(unsized, unsized.first(URL, {}), {}, [1, 2]) is not None


@pytest.mark.parametrize(("start", "last_page"), [(1, 3), (0, 2)])
def test_page_stops_when_total_pages_is_reached(start: int, last_page: int) -> None:
    """With `total_pages` = 3 the last page is start + 3 - 1."""
    paginator = paginator_for(PagePagination(start=start, param="p", total_pages=expr("meta.pages")))
    request: PageRequest | None = paginator.first(URL, {})
    seen = []
    while request is not None:
        seen.append(request.params["p"])  # type: ignore[index]
        request = step(paginator, request, {"meta": {"pages": 3}}, [1])
    assert seen == list(range(start, last_page + 1))


def test_page_request_at_names_any_later_page() -> None:
    """`request_at(base, i)` is the request `next` would reach after i steps."""
    paginator = paginator_for(PagePagination(size_param="n", size=10))
    assert isinstance(paginator, PageNumberPaginator)
    base = paginator.first(URL, {"q": 1})
    walked = base
    for index in range(4):
        assert paginator.request_at(base, index) == walked
        walked = step(paginator, walked, {}, list(range(10)))  # type: ignore[assignment]


# --- offset ---------------------------------------------------------------------------


def test_offset_advances_by_limit() -> None:
    """Offsets go 0, limit, 2*limit with `limit_param` and the params on every request."""
    paginator = paginator_for(OffsetPagination(limit=2, param="startAt", limit_param="maxResults"))
    first = paginator.first(URL, {"q": 1})
    assert first == PageRequest(URL, {"q": 1, "startAt": 0, "maxResults": 2})
    assert step(paginator, first, {}, [1, 2]) == PageRequest(URL, {"q": 1, "startAt": 2, "maxResults": 2})


def test_offset_without_total_stops_on_a_short_or_empty_page() -> None:
    """Without `total`, a full page goes on and a short or empty page stops."""
    paginator = paginator_for(OffsetPagination(limit=2))
    first = paginator.first(URL, {})
    assert step(paginator, first, {}, [1, 2]) is not None
    assert step(paginator, first, {}, [1]) is None
    assert step(paginator, first, {}, []) is None


def test_offset_with_total_stops_once_offset_reaches_it() -> None:
    """With `total` = 4 and limit 2, offsets 0 and 2 are read and 4 is not requested."""
    paginator = paginator_for(OffsetPagination(limit=2, total=expr("total")))
    first = paginator.first(URL, {})
    second = step(paginator, first, {"total": 4}, [1, 2])
    assert second is not None and second.params["offset"] == 2  # type: ignore[index]
    assert step(paginator, second, {"total": 4}, [3, 4]) is None


def test_offset_request_at_steps_by_limit() -> None:
    """`request_at(base, i)` is offset base + i * limit."""
    paginator = paginator_for(OffsetPagination(limit=25))
    assert isinstance(paginator, OffsetPaginator)
    base = PageRequest(URL, {"offset": 50, "limit": 25})
    assert paginator.request_at(base, 2) == PageRequest(URL, {"offset": 100, "limit": 25})


def test_paginators_are_immutable_dataclasses_without_state() -> None:
    """A paginator has no mutable state: the same inputs give the same next request every time."""
    paginator = paginator_for(CursorPagination(path=expr("n"), param="c"))
    assert isinstance(paginator, CursorPaginator)
    request = paginator.first(URL, {})
    assert step(paginator, request, {"n": "x"}) == step(paginator, request, {"n": "x"})
