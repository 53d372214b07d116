"""SourceReader: requests, record selection, hard stops, loop detection and concurrent pages."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import respx

from fakes import expr
from runner.errors import FetchError, PaginationLoopError, ResponseError
from runner.model import (
    CursorPagination,
    Limits,
    LinkHeaderPagination,
    NextUrlPagination,
    NoPagination,
    OffsetPagination,
    PagePagination,
    Source,
)
from runner.extract.pagination import PageRequest
from runner.extract.reader import Page, SourceReader

URL = "https://api.example.com/items"


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c


def sender(client: httpx.Client) -> Callable[..., httpx.Response]:
    def send(method: str, url: str, *, idempotent: bool | None = None, **kw: Any) -> httpx.Response:
        return client.request(method, url, **kw)  # `idempotent` is HttpClient's retry switch

    return send


def read(client: httpx.Client, source: Source, params: dict[str, Any] | None = None, **kw: Any) -> SourceReader:
    return SourceReader(source=source, send=sender(client), params=params or dict(source.params), **kw)


def ids(pages: list[Page]) -> list[Any]:
    return [record["id"] for page in pages for record in page.records]


def items(start: int, count: int) -> list[dict[str, int]]:
    return [{"id": i} for i in range(start, start + count)]


# --- requests and record selection --------------------------------------------------


@respx.mock
def test_post_source_sends_its_json_body_and_params(client: httpx.Client) -> None:
    """A POST source sends `json` as the body and the params in the query."""
    route = respx.post(URL, params={"q": "1"}).mock(return_value=httpx.Response(200, json={"data": [1, 2]}))
    source = Source(url=URL, method="POST", json={"filter": "x"}, params={"q": 1}, records=expr("data"))
    pages = list(read(client, source).pages())
    assert [p.records for p in pages] == [[1, 2]]
    assert route.calls.last.request.content == b'{"filter":"x"}'


@respx.mock
def test_null_records_are_no_records(client: httpx.Client) -> None:
    """A `records` expression that finds null gives an empty page, not an error."""
    respx.get(URL).mock(return_value=httpx.Response(200, json={"meta": {}}))
    pages = list(read(client, Source(url=URL, records=expr("data"))).pages())
    assert [p.records for p in pages] == [[]]


@pytest.mark.parametrize(
    ("body", "records", "kind"),
    [
        ({"data": {"id": 1}}, "data", "an object"),
        ({"data": "oops"}, "data", "a string"),
        ({"data": 5}, "data", "a number"),
        ({"id": 1}, None, "an object"),
    ],
)
@respx.mock
def test_records_that_are_not_a_list_name_the_path_expression_and_type(
    client: httpx.Client, body: Any, records: str | None, kind: str
) -> None:
    """A non-list result is a ResponseError naming the URL path, the expression and the type found."""
    respx.get(URL).mock(return_value=httpx.Response(200, json=body))
    source = Source(url=URL, records=expr(records) if records else None)
    with pytest.raises(ResponseError) as caught:
        list(read(client, source).pages())
    message = str(caught.value)
    assert "/items" in message and repr(records or "@") in message and kind in message


@respx.mock
def test_html_page_two_of_three_fails_after_page_one(client: httpx.Client) -> None:
    """An HTML page with status 200 is a ResponseError naming the path; page 1 was yielded, page 3 never asked."""
    html = "<!DOCTYPE html><html><body><h1>Maintenance</h1>" + "x" * 500 + "</body></html>"
    route = respx.get(URL).mock(
        side_effect=[
            httpx.Response(200, json={"data": items(1, 2)}),
            httpx.Response(200, text=html, headers={"Content-Type": "text/html"}),
            httpx.Response(200, json={"data": items(5, 2)}),
        ]
    )
    source = Source(url=URL, records=expr("data"), pagination=PagePagination(size_param="n", size=2),
                    concurrency=1)
    seen: list[Page] = []
    with pytest.raises(ResponseError) as caught:
        for page in read(client, source).pages():
            seen.append(page)
    assert ids(seen) == [1, 2]
    assert route.call_count == 2
    message = str(caught.value)
    assert "GET /items" in message and "not JSON" in message and "text/html" in message
    assert "<!DOCTYPE html>" in message and len(message) < 300


# --- the styles over respx ---------------------------------------------------------------


@respx.mock
def test_github_style_link_headers_across_five_pages(client: httpx.Client) -> None:
    """Link headers with next/last/first/prev lead through five pages, each record once, then stop."""
    base = "https://api.github.com/repositories/1/issues"

    def answer(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", 1))
        rels = [f'<{base}?per_page=2&page={page + 1}>; rel="next"'] if page < 5 else []
        rels += [f'<{base}?per_page=2&page=5>; rel="last"', f'<{base}?per_page=2&page=1>; rel="first"']
        if page > 1:
            rels.insert(0, f'<{base}?per_page=2&page={page - 1}>; rel="prev"')
        return httpx.Response(200, json=items(page * 2 - 1, 2), headers={"Link": ", ".join(rels)})

    route = respx.get(base).mock(side_effect=answer)
    source = Source(url=base, params={"per_page": 2}, pagination=LinkHeaderPagination())
    pages = list(read(client, source).pages())
    assert ids(pages) == list(range(1, 11))
    assert [p.number for p in pages] == [1, 2, 3, 4, 5]
    assert route.call_count == 5 and pages[-1].next is None


@respx.mock
@pytest.mark.parametrize("with_total", [True, False])
def test_offset_with_and_without_total(client: httpx.Client, with_total: bool) -> None:
    """Offset paging reads 7 records in pages of 3: it stops on `total` (no request past it),
    or else on the short page."""
    def answer(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        return httpx.Response(200, json={"data": items(offset + 1, max(0, min(3, 7 - offset))), "total": 7})

    route = respx.get(URL).mock(side_effect=answer)
    pagination = OffsetPagination(limit=3, total=expr("total") if with_total else None)
    pages = list(read(client, Source(url=URL, records=expr("data"), pagination=pagination)).pages())
    assert ids(pages) == list(range(1, 8))
    assert route.call_count == 3 if with_total else 3 <= route.call_count <= 6  # read-ahead of concurrency 4


@respx.mock
def test_offset_with_total_stops_on_an_exact_multiple(client: httpx.Client) -> None:
    """With `total` = 6 and limit 3, offset 6 is never requested."""
    route = respx.get(URL).mock(side_effect=lambda r: httpx.Response(
        200, json={"data": items(int(r.url.params["offset"]) + 1, 3), "total": 6}))
    source = Source(url=URL, records=expr("data"), pagination=OffsetPagination(limit=3, total=expr("total")),
                    concurrency=1)
    assert ids(list(read(client, source).pages())) == [1, 2, 3, 4, 5, 6]
    assert route.call_count == 2


@respx.mock
@pytest.mark.parametrize("concurrency", [1, 4])
def test_page_with_an_empty_last_page(client: httpx.Client, concurrency: int) -> None:
    """Without size or total, page paging goes on until a page comes back empty."""
    pages_data = {1: items(1, 2), 2: items(3, 2), 3: []}
    respx.get(URL).mock(side_effect=lambda r: httpx.Response(
        200, json={"data": pages_data.get(int(r.url.params["page"]), [])}))
    source = Source(url=URL, records=expr("data"), pagination=PagePagination(), concurrency=concurrency)
    pages = list(read(client, source).pages())
    assert ids(pages) == [1, 2, 3, 4] and len(pages) == 3


@respx.mock
def test_page_with_total_pages(client: httpx.Client) -> None:
    """With `total_pages` = 3, pages 1 to 3 are read and page 4 never requested."""
    route = respx.get(URL).mock(side_effect=lambda r: httpx.Response(
        200, json={"data": items(int(r.url.params["page"]) * 10, 1), "pages": 3}))
    source = Source(url=URL, records=expr("data"), pagination=PagePagination(total_pages=expr("pages")),
                    concurrency=1)
    assert ids(list(read(client, source).pages())) == [10, 20, 30]
    assert route.call_count == 3


# --- hard stops -------------------------------------------------------------------------


def endless(request: httpx.Request) -> httpx.Response:
    page = int(request.url.params.get("page", 1))
    return httpx.Response(200, json={"data": items(page * 10, 10)})


@respx.mock
@pytest.mark.parametrize("concurrency", [1, 3])
def test_max_pages_stops_with_a_warning(client: httpx.Client, caplog: pytest.LogCaptureFixture,
                                        concurrency: int) -> None:
    """`max_pages` ends paging after that many pages, sets stopped_by and logs a warning."""
    route = respx.get(URL).mock(side_effect=endless)
    source = Source(url=URL, records=expr("data"), pagination=PagePagination(),
                    limits=Limits(max_pages=4), concurrency=concurrency)
    reader = read(client, source)
    with caplog.at_level(logging.WARNING, logger="runner.extract.reader"):
        pages = list(reader.pages())
    assert len(pages) == 4 and reader.pages_read == 4 and route.call_count == 4
    assert reader.stopped_by == "max_pages"
    assert any(getattr(r, "event", "") == "source.limit_reached" and r.levelno == logging.WARNING
               for r in caplog.records)


@respx.mock
def test_a_source_that_ends_exactly_at_max_pages_is_not_stopped(client: httpx.Client) -> None:
    """A source whose last page is page `max_pages` finished on its own: stopped_by stays None."""
    respx.get(URL).mock(side_effect=[httpx.Response(200, json={"data": [1]}), httpx.Response(200, json={"data": []})])
    source = Source(url=URL, records=expr("data"), pagination=PagePagination(), limits=Limits(max_pages=2),
                    concurrency=1)
    reader = read(client, source)
    assert len(list(reader.pages())) == 2 and reader.stopped_by is None


@respx.mock
@pytest.mark.parametrize("concurrency", [1, 4])
def test_max_items_truncates_the_page_to_exactly_max_items(client: httpx.Client, concurrency: int) -> None:
    """`max_items` = 25 with pages of 10 yields 10, 10 and the first 5 of page 3, then stops."""
    respx.get(URL).mock(side_effect=endless)
    source = Source(url=URL, records=expr("data"), pagination=PagePagination(),
                    limits=Limits(max_items=25), concurrency=concurrency)
    reader = read(client, source)
    pages = list(reader.pages())
    assert [len(p.records) for p in pages] == [10, 10, 5]
    assert reader.items_read == 25 and reader.stopped_by == "max_items"
    assert pages[-1].next == pages[-1].request  # a resume re-reads the cut page


@respx.mock
def test_max_seconds_stops_on_a_fake_clock(client: httpx.Client) -> None:
    """With a clock that advances 10 s a read, `max_seconds` = 25 allows two requests, then stops."""
    respx.get(URL).mock(side_effect=endless)
    ticks = itertools.count(0, 10)
    source = Source(url=URL, records=expr("data"), pagination=PagePagination(),
                    limits=Limits(max_seconds=25), concurrency=1)
    reader = read(client, source, clock=lambda: float(next(ticks)))
    pages = list(reader.pages())
    assert len(pages) == 2 and reader.stopped_by == "max_seconds"


# --- loops ---------------------------------------------------------------------------------


@respx.mock
def test_cursor_loop_is_an_error_and_the_repeated_request_is_never_sent(client: httpx.Client) -> None:
    """A cursor handed back twice raises PaginationLoopError naming it and the page, before asking again."""
    tokens = {None: "a", "a": "b", "b": "c", "c": "b"}
    route = respx.get(URL).mock(side_effect=lambda r: httpx.Response(
        200, json={"data": [1], "next": tokens[r.url.params.get("cursor")]}))
    source = Source(url=URL, records=expr("data"), pagination=CursorPagination(path=expr("next"), param="cursor"))
    seen = []
    with pytest.raises(PaginationLoopError) as caught:
        for page in read(client, source).pages():
            seen.append(page)
    assert len(seen) == 4 and route.call_count == 4
    assert "pagination loop: cursor 'b' repeated at page 5" in str(caught.value)
    assert caught.value.path == "/items"


@respx.mock
def test_next_url_loop_is_an_error_naming_the_url(client: httpx.Client) -> None:
    """A next URL already requested (params in another order) raises before it is requested again."""
    links = {"1": "/items?after=2&limit=2", "2": "/items?after=3&limit=2", "3": "/items?limit=2&after=2"}
    route = respx.get(URL).mock(side_effect=lambda r: httpx.Response(
        200, json={"data": [1], "next": links[r.url.params.get("after", "1")]}))
    source = Source(url=URL, records=expr("data"), pagination=NextUrlPagination(path=expr("next")))
    with pytest.raises(PaginationLoopError) as caught:
        list(read(client, source, params={"after": 1, "limit": 2}).pages())
    assert route.call_count == 3
    assert "pagination loop: next URL /items?limit=2&after=2 repeated at page 4" in str(caught.value)


# --- resume ---------------------------------------------------------------------------------


@respx.mock
def test_a_checkpoint_resumes_where_the_run_stopped(client: httpx.Client) -> None:
    """A reader started from page 2's `next` (through JSON) reads pages 3 and 4 only."""
    data = {None: ([1], "a"), "a": ([2], "b"), "b": ([3], "c"), "c": ([4], None)}
    respx.get(URL).mock(side_effect=lambda r: httpx.Response(
        200, json=dict(zip(("data", "next"), data[r.url.params.get("cursor")], strict=True))))
    source = Source(url=URL, records=expr("data"), params={"limit": 1},
                    pagination=CursorPagination(path=expr("next"), param="cursor"))
    first_run = read(client, source).pages()
    next(first_run)
    checkpoint = next(first_run).next
    first_run.close()  # type: ignore[attr-defined]
    assert checkpoint is not None
    start = PageRequest.from_json(checkpoint.to_json())
    assert [p.records for p in read(client, source, start=start).pages()] == [[3], [4]]


# --- concurrency -----------------------------------------------------------------------------


@respx.mock
def test_concurrent_pages_come_in_order_with_at_most_concurrency_in_flight(client: httpx.Client) -> None:
    """With concurrency 4, pages are yielded in order, never more than 4 requests run at once."""
    lock, active, peak = threading.Lock(), [0], [0]
    gate = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        page = int(request.url.params["page"])
        gate.wait(0.02 if page % 2 else 0.001)  # odd pages slower: they finish out of order
        with lock:
            active[0] -= 1
        return httpx.Response(200, json={"data": items(page * 10, 10 if page < 12 else 3), "pages": 12})

    respx.get(URL).mock(side_effect=answer)
    source = Source(url=URL, records=expr("data"), pagination=PagePagination(size_param="n", size=10),
                    concurrency=4)
    pages = list(read(client, source).pages())
    assert [p.number for p in pages] == list(range(1, 13))
    assert ids(pages) == [i for page in range(1, 13) for i in range(page * 10, page * 10 + (10 if page < 12 else 3))]
    assert peak[0] <= 4


@respx.mock
def test_concurrent_fetch_error_propagates_after_earlier_pages(client: httpx.Client) -> None:
    """A failing page 3 among concurrent fetches raises after pages 1 and 2 were yielded."""
    def answer(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        return httpx.Response(500) if page == 3 else httpx.Response(200, json={"data": [page]})

    respx.get(URL).mock(side_effect=answer)
    source = Source(url=URL, records=expr("data"), pagination=PagePagination(), concurrency=4)
    seen: list[Page] = []
    with pytest.raises(FetchError) as caught:
        for page in read(client, source).pages():
            seen.append(page)
    assert [p.records for p in seen] == [[1], [2]] and caught.value.status == 500


@respx.mock
def test_concurrent_paging_stops_at_the_first_page_that_says_stop(client: httpx.Client) -> None:
    """Pages fetched ahead past the end (even failing ones) are discarded, not yielded or raised."""
    def answer(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        if page > 3:
            return httpx.Response(404)
        return httpx.Response(200, json={"data": [page], "pages": 3})

    respx.get(URL).mock(side_effect=answer)
    source = Source(url=URL, records=expr("data"), pagination=PagePagination(total_pages=expr("pages")),
                    concurrency=4)
    assert [p.records for p in read(client, source).pages()] == [[1], [2], [3]]


# --- the demo API over real HTTP ----------------------------------------------------------------

STYLES: dict[str, tuple[str, dict[str, Any], Any]] = {
    "none": ("data", {}, NoPagination()),
    "next_url": ("data", {"limit": 100}, NextUrlPagination(path=expr("next"))),
    "link_header": ("@", {"per_page": 100}, LinkHeaderPagination()),
    "cursor": ("data", {"limit": 100}, CursorPagination(path=expr("next_cursor"), param="cursor")),
    "stripe": ("data", {"limit": 100}, CursorPagination(
        path=expr("data[-1].id"), param="starting_after", stop_when=expr("!has_more"))),
    "page": ("data", {"per_page": 100}, PagePagination(size_param="per_page", size=100)),
    "page_total": ("data", {}, PagePagination(size_param="per_page", size=100, total_pages=expr("total_pages"))),
    "offset": ("data", {}, OffsetPagination(limit=100, total=expr("total"))),
    "offset_short": ("data", {}, OffsetPagination(limit=100)),
}


@pytest.mark.parametrize("style", list(STYLES))
def test_every_style_reads_every_demo_record_exactly_once(demo_api: Any, style: str) -> None:
    """Against the demo API over HTTP, each pagination style sees each of 1,050 records exactly once."""
    api = demo_api(1050)
    records, params, pagination = STYLES[style]
    endpoint = style.split("_")[0] if style.startswith(("page", "offset")) else style
    source = Source(url=f"{api.base_url}/items/{endpoint}", params=params, records=expr(records),
                    pagination=pagination)
    with httpx.Client() as client:
        pages = list(read(client, source).pages())
    assert ids(pages) == list(range(1, 1051))


def test_concurrent_pages_in_order_against_the_demo_api_with_latency(demo_api: Any) -> None:
    """With 20 ms latency and concurrency 4, 1,000 records in pages of 50 arrive in order, faster than serially."""
    api = demo_api(1000, latency_ms=20)
    source = Source(url=f"{api.base_url}/items/offset", records=expr("data"),
                    pagination=OffsetPagination(limit=50, total=expr("total")), concurrency=4)
    with httpx.Client() as client:
        started = time.perf_counter()
        pages = list(read(client, source).pages())
        elapsed = time.perf_counter() - started
    assert [p.number for p in pages] == list(range(1, 21))
    assert elapsed < 20 * 0.02  # less than the 20 requests' latency one after another
    assert ids(pages) == list(range(1, 1001))
    offsets = sorted(int(target.split("offset=")[1].split("&")[0]) for _, target in api.request_log)
    assert offsets == list(range(0, 1000, 50))  # nothing fetched past `total`


def test_loop_cursor_fault_of_the_demo_api_is_caught(demo_api: Any) -> None:
    """The demo API's looping cursor ends the run with a PaginationLoopError, the repeat never requested."""
    from runner.dev.demo_api import Faults

    api = demo_api(1000, faults=Faults(loop_cursor=3))
    source = Source(url=f"{api.base_url}/items/cursor", params={"limit": 100}, records=expr("data"),
                    pagination=CursorPagination(path=expr("next_cursor"), param="cursor"))
    with httpx.Client() as client, pytest.raises(PaginationLoopError, match="repeated at page 4"):
        list(read(client, source).pages())
    assert len(api.request_log) == 3
