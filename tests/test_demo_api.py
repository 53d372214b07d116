"""The local demo API: deterministic records, every paging style, filters, admin calls and faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.dev.demo_api import DemoApi, Faults
from runner.dev.demo_data import make_record
from runner.timestamps import parse_timestamp
from runner.extract.pagination import parse_link_header

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def api(demo_api: Any) -> DemoApi:
    return demo_api(250)


@pytest.fixture
def http(api: DemoApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url) as client:
        yield client


# --- the records -----------------------------------------------------------------------


def test_records_are_deterministic_for_a_seed() -> None:
    """The same seed gives the same records; another seed gives others; ids run from 1 in order."""
    one, two, other = DemoApi(50), DemoApi(50), DemoApi(50, seed=1)
    assert one.records == two.records != other.records
    assert [r["id"] for r in one.records] == list(range(1, 51))
    assert make_record(0, 7) == one.records[6]


def test_records_have_the_documented_shape() -> None:
    """Each record has typed fields, a zip with a leading zero, and updated_at in mixed offsets."""
    records = DemoApi(30).records
    for record in records:
        assert set(record) == {"id", "name", "email", "status", "tags", "address", "amount", "active", "updated_at"}
        assert isinstance(record["tags"], list) and isinstance(record["amount"], float)
        assert record["address"]["zip"].startswith("0") and len(record["address"]["zip"]) == 5
        assert record["active"] is (record["status"] == "active")
        parse_timestamp(record["updated_at"])
    endings = {r["updated_at"][-6:] if not r["updated_at"].endswith("Z") else "Z" for r in records}
    assert endings == {"Z", "+02:00", "-05:00"}


# --- the endpoints -------------------------------------------------------------------------


def test_none_returns_everything(http: httpx.Client, api: DemoApi) -> None:
    """`/items/none` answers every record under `data`."""
    body = http.get("/items/none").json()
    assert body == {"data": api.records}


def test_next_url_gives_a_relative_link_until_the_end(http: httpx.Client) -> None:
    """`/items/next_url` pages by `after`, its `next` is a relative URL, and null at the end."""
    body = http.get("/items/next_url", params={"limit": 100}).json()
    assert [r["id"] for r in body["data"]] == list(range(1, 101))
    assert body["next"] == "/items/next_url?after=100&limit=100"
    last = http.get("/items/next_url", params={"after": 200, "limit": 100}).json()
    assert len(last["data"]) == 50 and last["next"] is None


def test_link_header_has_next_last_and_first(http: httpx.Client, api: DemoApi) -> None:
    """`/items/link_header` answers a bare list with absolute `Link` targets for next, last and first."""
    response = http.get("/items/link_header", params={"page": 2, "per_page": 100})
    links = parse_link_header(response.headers["link"])
    assert [r["id"] for r in response.json()] == list(range(101, 201))
    assert links["next"] == f"{api.base_url}/items/link_header?page=3&per_page=100"
    assert links["last"].endswith("page=3&per_page=100") and links["first"].endswith("page=1&per_page=100")
    assert links["prev"].endswith("page=1&per_page=100")
    final = http.get("/items/link_header", params={"page": 3, "per_page": 100})
    assert "next" not in parse_link_header(final.headers["link"])


def test_cursor_tokens_are_opaque_and_end_with_null(http: httpx.Client) -> None:
    """`/items/cursor` hands out opaque strings; the last page's `next_cursor` is null; junk is a 400."""
    body = http.get("/items/cursor", params={"limit": 200}).json()
    token = body["next_cursor"]
    assert isinstance(token, str) and "200" not in token
    rest = http.get("/items/cursor", params={"limit": 200, "cursor": token}).json()
    assert [r["id"] for r in rest["data"]] == list(range(201, 251)) and rest["next_cursor"] is None
    assert http.get("/items/cursor", params={"cursor": "junk"}).status_code == 400


def test_stripe_list_shape(http: httpx.Client) -> None:
    """`/items/stripe` answers a Stripe list object with `has_more`, paged by `starting_after`."""
    body = http.get("/items/stripe", params={"limit": 3, "starting_after": 247}).json()
    assert body["object"] == "list" and body["has_more"] is False
    assert [r["id"] for r in body["data"]] == [248, 249, 250]
    assert http.get("/items/stripe", params={"limit": 3}).json()["has_more"] is True


def test_page_and_offset_report_their_totals(http: httpx.Client) -> None:
    """`/items/page` tells page, per_page, total_pages and total; `/items/offset` tells offset, limit, total."""
    page = http.get("/items/page", params={"page": 3, "per_page": 100}).json()
    assert {k: page[k] for k in ("page", "per_page", "total_pages", "total")} == {
        "page": 3, "per_page": 100, "total_pages": 3, "total": 250}
    assert len(page["data"]) == 50
    assert http.get("/items/page", params={"page": 4, "per_page": 100}).json()["data"] == []
    offset = http.get("/items/offset", params={"offset": 240, "limit": 100}).json()
    assert [r["id"] for r in offset["data"]] == list(range(241, 251)) and offset["total"] == 250


def test_bad_parameters_and_unknown_paths_are_client_errors(http: httpx.Client) -> None:
    """A non-integer parameter is a 400 naming it; an unknown path is a 404."""
    response = http.get("/items/page", params={"page": "x"})
    assert response.status_code == 400 and "page" in response.json()["error"]
    assert http.get("/items/unknown").status_code == 404


@pytest.mark.parametrize("style", ["none", "next_url", "cursor", "stripe", "page", "offset"])
def test_updated_since_filters_by_instant_on_every_endpoint(http: httpx.Client, api: DemoApi, style: str) -> None:
    """`updated_since` (with an offset) keeps exactly the records whose instant is at or after it."""
    since = "2024-03-15T12:00:00+02:00"
    expected = [r["id"] for r in api.records if parse_timestamp(r["updated_at"]) >= parse_timestamp(since)]
    body = http.get(f"/items/{style}", params={"updated_since": since, "limit": 1000, "per_page": 1000}).json()
    assert [r["id"] for r in body["data"]] == expected and 0 < len(expected) < 250


# --- changing the data -------------------------------------------------------------------------


def test_update_record_bumps_updated_at_past_every_other(http: httpx.Client, api: DemoApi) -> None:
    """`update_record` changes fields and makes the record the newest, so `updated_since` finds it alone."""
    newest = max(parse_timestamp(r["updated_at"]) for r in api.records)
    updated = api.update_record(7, name="Changed")
    assert updated["name"] == "Changed" and parse_timestamp(updated["updated_at"]) > newest
    body = http.get("/items/none", params={"updated_since": updated["updated_at"]}).json()
    assert body["data"] == [updated]


def test_admin_update_endpoint_changes_a_record(http: httpx.Client, api: DemoApi) -> None:
    """`POST /_admin/update/{id}` applies its JSON body; an unknown id is a 404."""
    response = http.post("/_admin/update/3", json={"status": "inactive", "active": False})
    assert response.status_code == 200 and response.json()["status"] == "inactive"
    assert api.records[2]["status"] == "inactive"
    assert http.post("/_admin/update/9999", json={}).status_code == 404


def test_add_records_appends_the_next_ids(http: httpx.Client, api: DemoApi) -> None:
    """`add_records` (and `POST /_admin/add?n=`) append records with the next ids and newest timestamps."""
    api.add_records(2)
    http.post("/_admin/add", params={"n": 3})
    assert [r["id"] for r in api.records][-5:] == [251, 252, 253, 254, 255]
    assert http.get("/items/page", params={"per_page": 1}).json()["total"] == 255


def test_request_log_is_bounded(demo_api: Any) -> None:
    """The request log keeps the method and target of the last `log_size` requests only."""
    api = demo_api(10, log_size=3)
    with httpx.Client(base_url=api.base_url) as client:
        for n in range(5):
            client.get("/items/offset", params={"offset": n})
    assert list(api.request_log) == [("GET", f"/items/offset?offset={n}") for n in (2, 3, 4)]


# --- faults ---------------------------------------------------------------------------------------


def _statuses(api: DemoApi, count: int) -> list[int]:
    with httpx.Client(base_url=api.base_url) as client:
        return [client.get("/items/page", params={"page": n % 5 + 1}).status_code for n in range(count)]


def test_faults_are_deterministic_for_a_seed(demo_api: Any) -> None:
    """Two servers with the same seed and fault rates fail the same requests, including retries."""
    faults = Faults(error_rate=0.3, rate_limit_rate=0.2)
    first = _statuses(demo_api(20, faults=faults), 40)
    second = _statuses(demo_api(20, faults=faults), 40)
    assert first == second
    assert {200, 429} <= set(first) and set(first) & {500, 502, 503}


def test_rate_limit_fault_sends_retry_after(demo_api: Any) -> None:
    """A 429 carries `Retry-After` of 0 or 1 seconds."""
    api = demo_api(10, faults=Faults(rate_limit_rate=1.0))
    with httpx.Client(base_url=api.base_url) as client:
        response = client.get("/items/none")
    assert response.status_code == 429 and response.headers["retry-after"] in {"0", "1"}


def test_drop_fault_closes_the_connection_without_an_answer(demo_api: Any) -> None:
    """A dropped request ends in a protocol error on the client, not a response."""
    api = demo_api(10, faults=Faults(drop_rate=1.0))
    with httpx.Client(base_url=api.base_url) as client, pytest.raises(httpx.TransportError):
        client.get("/items/none")


def test_slow_fault_delays_the_answer(demo_api: Any) -> None:
    """A slow request answers after `slow_ms`."""
    api = demo_api(10, faults=Faults(slow_rate=1.0, slow_ms=120))
    with httpx.Client(base_url=api.base_url) as client:
        started = time.perf_counter()
        assert client.get("/items/none").status_code == 200
    assert time.perf_counter() - started >= 0.1


def test_html_on_pages_answers_html_with_status_200(demo_api: Any) -> None:
    """Pages listed in `html_on_pages` answer an HTML page with status 200; others answer JSON."""
    api = demo_api(300, faults=Faults(html_on_pages=frozenset({2})))
    with httpx.Client(base_url=api.base_url) as client:
        html = client.get("/items/page", params={"page": 2})
        json_page = client.get("/items/page", params={"page": 3})
        offset_html = client.get("/items/offset", params={"offset": 100})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert html.text.startswith("<!DOCTYPE html>") and offset_html.text.startswith("<!DOCTYPE html>")
    assert json_page.json()["page"] == 3


def test_loop_cursor_repeats_the_cursor_it_was_given(demo_api: Any) -> None:
    """With `loop_cursor=2`, page 2 hands back the very cursor it was asked with."""
    api = demo_api(500, faults=Faults(loop_cursor=2))
    with httpx.Client(base_url=api.base_url) as client:
        token = client.get("/items/cursor").json()["next_cursor"]
        again = client.get("/items/cursor", params={"cursor": token}).json()["next_cursor"]
    assert again == token


# --- serving -----------------------------------------------------------------------------------------


def test_serves_a_thousand_pages_quickly(demo_api: Any) -> None:
    """1,000 pages of 100 records over one keep-alive connection take well under a few seconds."""
    api = demo_api(20_000)
    with httpx.Client(base_url=api.base_url) as client:
        started = time.perf_counter()
        total = sum(
            len(client.get("/items/page", params={"page": n % 200 + 1, "per_page": 100}).content)
            for n in range(1000)
        )
        elapsed = time.perf_counter() - started
    assert total > 1000 * 100 * 150 and elapsed < 5.0


def test_stop_closes_open_keep_alive_connections() -> None:
    """`stop()` returns promptly even while a client still holds a keep-alive connection."""
    api = DemoApi(10)
    with httpx.Client(base_url=api.start()) as client:
        assert client.get("/items/none").status_code == 200
        started = time.perf_counter()
        api.stop()
        assert time.perf_counter() - started < 2
        with pytest.raises(httpx.TransportError):
            client.get("/items/none")


def test_command_line_prints_the_base_url_and_stops_on_sigterm() -> None:
    """`python -m runner.dev.demo_api --port 0` prints its base URL, serves, and exits 0 on SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-m", "runner.dev.demo_api", "--port", "0", "--records", "20", "--error-rate", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        try:
            with httpx.Client(base_url=base_url) as client:
                assert len(client.get("/items/none").json()["data"]) == 20
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
    assert base_url.startswith("http://127.0.0.1:") and code == 0
