"""Credentials go only to the home origin and `auth.hosts`; a query key extends a URL's query.

Two real servers on 127.0.0.1 with different ports are two origins: the
first ("home") hands out next URLs, Link headers and redirects that point at
the second ("other"), which must receive no credential of any kind unless
`auth.hosts` names it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from fakes import expr
from runner import config, log
from runner.dev.localserver import Handler, LocalServer
from runner.extract.reader import SourceReader
from runner.http.client import HttpClient
from runner.http.origins import origin_of, show, with_query, without_params
from runner.targets.base import Write
from runner.targets.http import HttpTarget
from runner.errors import FetchError
from runner.model import (
    ApiKeyAuth,
    Auth,
    BasicAuth,
    BearerAuth,
    HttpOperation,
    HttpTargetConfig,
    LinkHeaderPagination,
    NextUrlPagination,
    OAuth2ClientCredentials,
    Retry,
    Secret,
    Source,
    Timeout,
)

TOKEN = "sekr1t-bearer-XYZ"
PASSWORD = "sekr1t-basic-pw"
KEY = "sekr1t-apikey-XYZ"
CLIENT_SECRET = "sekr1t-client-secret"
ACCESS_TOKEN = "sekr1t-access-token"


@dataclass(frozen=True)
class Seen:
    method: str
    target: str  # path and raw query, as it came on the wire
    headers: dict[str, str]

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    @property
    def raw(self) -> str:
        return self.target + "\n" + "\n".join(f"{k}: {v}" for k, v in self.headers.items())


Reply = tuple[int, dict[str, Any] | None, list[tuple[str, str]]]


class _Handler(Handler):
    do_GET = do_POST = do_PUT = Handler.dispatch


class Api(LocalServer):
    """Answers from a table of path -> reply, and records every request as it arrived."""

    handler_class = _Handler
    thread_name = "origins-api"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []
        self.routes: dict[str, Callable[[], Reply]] = {}

    def handle(self, handler: Handler) -> None:
        handler.read_body()
        self.seen.append(Seen(handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}))
        route = self.routes.get(urlsplit(handler.path).path)
        status, body, headers = route() if route else (404, {"error": "no route"}, [])
        handler.send_reply(status, json.dumps(body).encode(), headers=headers)


@pytest.fixture
def servers() -> Iterator[tuple[Api, Api]]:
    """`home` links to `other` in every way; `other` serves two pages of its own."""
    home, other = Api(), Api()
    with home, other:
        first_next = f"{other.base_url}/b/1"
        home.routes["/start"] = lambda: (
            200, {"data": [{"id": 1}], "next": first_next}, [("Link", f'<{first_next}>; rel="next"')]
        )
        home.routes["/redirect"] = lambda: (302, None, [("Location", f"{other.base_url}/b/2")])
        home.routes["/token"] = lambda: (200, {"access_token": ACCESS_TOKEN, "expires_in": 3600}, [])
        other.routes["/b/1"] = lambda: (
            200, {"data": [{"id": 2}], "next": "/b/2"}, [("Link", '</b/2>; rel="next"')]
        )
        other.routes["/b/2"] = lambda: (200, {"data": [{"id": 3}], "next": None}, [])
        yield home, other


def auths(home: str, hosts: tuple[str, ...] = ()) -> dict[str, Auth]:
    return {
        "bearer": BearerAuth(Secret(TOKEN), hosts=hosts),
        "basic": BasicAuth("ann", Secret(PASSWORD), hosts=hosts),
        "api_key_header": ApiKeyAuth("X-Api-Key", Secret(KEY), hosts=hosts),
        "api_key_query": ApiKeyAuth("api_key", Secret(KEY), location="query", hosts=hosts),
        "oauth2": OAuth2ClientCredentials(f"{home}/token", "cid", Secret(CLIENT_SECRET), hosts=hosts),
    }


KINDS = ["bearer", "basic", "api_key_header", "api_key_query", "oauth2"]
WAYS = ["next_url", "link_header", "redirect"]


def client(auth: Auth | None, **options: Any) -> HttpClient:
    return HttpClient(timeout=Timeout(connect=2, read=5), retry=Retry(max_attempts=1), auth=auth, **options)


def read_all(home: Api, auth: Auth, way: str) -> list[Any]:
    """Read the source the way the engine does: SourceReader over the client's send."""
    if way == "redirect":
        source = Source(url=f"{home.base_url}/redirect", records=expr("data"))
    else:
        pagination = NextUrlPagination(expr("next")) if way == "next_url" else LinkHeaderPagination()
        source = Source(url=f"{home.base_url}/start", records=expr("data"), pagination=pagination)
    with client(auth) as http:
        reader = SourceReader(source=source, send=http.send, params={})
        return [r["id"] for page in reader.pages() for r in page.records]


def credentials_in(seen: Seen) -> list[str]:
    """Every credential of any kind this request carried."""
    found = [name for name in ("authorization", "x-api-key") if name in seen.headers]
    found += [f"query {name}" for name in seen.query if name == "api_key"]
    secrets = (TOKEN, PASSWORD, KEY, CLIENT_SECRET, ACCESS_TOKEN, "YW5uOnNla3Ix")  # base64 'ann:sekr1'
    found += [f"value {s[:6]}..." for s in secrets if s in seen.raw]
    return found


# --- credentials stay home ---------------------------------------------------------


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("kind", KINDS)
def test_another_origin_gets_no_credential(servers: tuple[Api, Api], kind: str, way: str) -> None:
    """A next URL, a Link header or a 302 to another origin is requested with no credential at all."""
    home, other = servers
    ids = read_all(home, auths(home.base_url)[kind], way)
    assert ids == ([3] if way == "redirect" else [1, 2, 3])
    assert other.seen and all(credentials_in(seen) == [] for seen in other.seen)
    first = next(s for s in home.seen if s.target != "/token")
    assert credentials_in(first), "the home origin gets its credentials"


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("kind", KINDS)
def test_an_origin_in_auth_hosts_gets_the_credentials(servers: tuple[Api, Api], kind: str, way: str) -> None:
    """Listing the other origin in auth.hosts sends it the same credentials as home."""
    home, other = servers
    auth = auths(home.base_url, hosts=(other.base_url,))[kind]
    read_all(home, auth, way)
    assert other.seen and all(credentials_in(seen) for seen in other.seen)
    if kind == "api_key_query":
        assert all(seen.query["api_key"] == KEY for seen in other.seen)


def test_the_withheld_origin_is_logged_once_as_a_warning(
    servers: tuple[Api, Api], caplog: pytest.LogCaptureFixture
) -> None:
    """Two requests to the other origin give one `auth.withheld` warning naming that origin."""
    home, other = servers
    with caplog.at_level(logging.WARNING, logger="runner"):
        read_all(home, auths(home.base_url)["bearer"], "next_url")
    withheld = [r for r in caplog.records if getattr(r, "event", "") == "auth.withheld"]
    assert len(other.seen) == 2 and len(withheld) == 1
    assert withheld[0].levelno == logging.WARNING
    assert withheld[0].fields["origin"] == other.base_url  # type: ignore[attr-defined]
    assert withheld[0].fields["home"] == home.base_url  # type: ignore[attr-defined]


def test_a_key_echoed_into_a_foreign_link_is_removed(servers: tuple[Api, Api]) -> None:
    """A query key the API copied into a link to another origin is taken out of that URL."""
    home, other = servers
    with client(auths(home.base_url)["api_key_query"]) as http:
        http.send("GET", f"{home.base_url}/start")
        http.send("GET", f"{other.base_url}/b/2?page=2&api_key={KEY}")
    assert other.seen[-1].target == "/b/2?page=2"


def test_a_redirect_home_keeps_the_credentials(servers: tuple[Api, Api]) -> None:
    """A same-origin redirect is a request home: it carries the api-key header and the query key."""
    home, _ = servers
    home.routes["/moved"] = lambda: (301, None, [("Location", "/start?page=1")])
    for kind in ("api_key_header", "api_key_query"):
        with client(auths(home.base_url)[kind]) as http:
            http.send("GET", f"{home.base_url}/moved")
        assert credentials_in(home.seen[-1]) and home.seen[-1].target.startswith("/start?page=1")


def test_the_http_target_client_counts_base_url_as_home(servers: tuple[Api, Api]) -> None:
    """With `origin` given, even the first request elsewhere goes without credentials."""
    home, other = servers
    with client(auths(home.base_url)["bearer"], origin=f"{home.base_url}/api/") as http:
        http.send("GET", f"{other.base_url}/b/2")
        http.send("GET", f"{home.base_url}/start")
    assert credentials_in(other.seen[-1]) == [] and credentials_in(home.seen[-1])


def test_too_many_redirects_is_a_fetch_error(servers: tuple[Api, Api]) -> None:
    """A redirect loop followed by hand still ends after 20 hops with a FetchError."""
    home, _ = servers
    home.routes["/loop"] = lambda: (302, None, [("Location", "/loop")])
    with client(None) as http, pytest.raises(FetchError, match="TooManyRedirects"):
        http.send("GET", f"{home.base_url}/loop")
    assert len(home.seen) == 21


def test_a_307_keeps_the_method_and_body_and_a_303_becomes_a_get(servers: tuple[Api, Api]) -> None:
    """Redirect semantics stay httpx's: 307 repeats the POST, 303 turns it into a GET."""
    home, _ = servers
    home.routes["/keep"] = lambda: (307, None, [("Location", "/start")])
    home.routes["/see"] = lambda: (303, None, [("Location", "/start")])
    with client(None) as http:
        http.send("POST", f"{home.base_url}/keep", json={"a": 1}, idempotent=True)
        http.send("POST", f"{home.base_url}/see", json={"a": 1}, idempotent=True)
    assert [(s.method, s.target) for s in home.seen] == [
        ("POST", "/keep"), ("POST", "/start"), ("POST", "/see"), ("GET", "/start"),
    ]


# --- the query API key extends the query ----------------------------------------------


def test_query_key_is_added_to_the_urls_own_query(servers: tuple[Api, Api]) -> None:
    """`/start?page=1` goes out as `/start?page=1&api_key=...`, never as `/start?api_key=...`."""
    home, _ = servers
    with client(auths(home.base_url)["api_key_query"]) as http:
        http.send("GET", f"{home.base_url}/start?page=1")
        http.send("GET", f"{home.base_url}/start?page=2&x=%2C+y&x=2")
        http.send("GET", f"{home.base_url}/start?state=all", params={"page": 3})
    assert [s.target for s in home.seen] == [
        f"/start?page=1&api_key={KEY}",
        f"/start?page=2&x=%2C+y&x=2&api_key={KEY}",
        f"/start?state=all&page=3&api_key={KEY}",
    ]


def test_a_next_url_keeps_its_page_with_a_query_key(servers: tuple[Api, Api]) -> None:
    """Paging by next URL with `in: query` requests each next URL exactly as given, key added."""
    home, _ = servers
    home.routes["/p"] = lambda: (200, {"data": [{"id": 1}], "next": "/p2?page=2&cursor=a%2Fb"}, [])
    home.routes["/p2"] = lambda: (200, {"data": [{"id": 2}], "next": None}, [])
    source = Source(url=f"{home.base_url}/p?page=1", records=expr("data"), pagination=NextUrlPagination(expr("next")))
    with client(auths(home.base_url)["api_key_query"]) as http:
        pages = list(SourceReader(source=source, send=http.send, params={}).pages())
    assert len(pages) == 2
    assert [s.target for s in home.seen] == [f"/p?page=1&api_key={KEY}", f"/p2?page=2&cursor=a%2Fb&api_key={KEY}"]


def test_query_key_stays_masked_in_logs(servers: tuple[Api, Api], caplog: pytest.LogCaptureFixture) -> None:
    """The request log shows the URL's own parameters and `api_key=***`."""
    home, _ = servers
    with caplog.at_level(logging.INFO, logger="runner"), client(auths(home.base_url)["api_key_query"]) as http:
        http.send("GET", f"{home.base_url}/start?page=1")
    paths = [r.fields["path"] for r in caplog.records if getattr(r, "event", "") == "http.request"]  # type: ignore[attr-defined]
    assert paths == ["/start?page=1&api_key=***"]
    assert KEY not in log.redact(caplog.text)


# --- the helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://API.example.com/x?y=1", ("https", "api.example.com", 443)),
        ("https://api.example.com:443/", ("https", "api.example.com", 443)),
        ("http://127.0.0.1:8080", ("http", "127.0.0.1", 8080)),
        ("http://[::1]:81/a", ("http", "::1", 81)),
    ],
)
def test_origin_is_scheme_host_and_port(url: str, origin: tuple[str, str, int]) -> None:
    """Origins compare case-insensitively with the default port filled in."""
    assert origin_of(url) == origin


def test_origin_is_shown_as_written_in_auth_hosts() -> None:
    """Default ports are left out, others kept, IPv6 bracketed."""
    assert show(("https", "api.example.com", 443)) == "https://api.example.com"
    assert show(("http", "127.0.0.1", 8080)) == "http://127.0.0.1:8080"
    assert show(("http", "::1", 81)) == "http://[::1]:81"


def test_query_helpers_edit_only_the_named_parameters() -> None:
    """with_query replaces same-named parameters, without_params drops them; the rest is untouched."""
    url = httpx.URL("http://a/b?page=2&x=%2C+y&key=old")
    assert str(with_query(url, {"key": "new"})) == "http://a/b?page=2&x=%2C+y&key=new"
    assert str(without_params(url, {"key"})) == "http://a/b?page=2&x=%2C+y"
    assert str(without_params(httpx.URL("http://a/b?key=1"), {"key"})) == "http://a/b"
    assert with_query(url, {}) is url and without_params(url, {"nope"}) is url


def test_auth_hosts_from_a_pipeline_file_reach_the_client(servers: tuple[Api, Api], tmp_path: Path) -> None:
    """`auth.hosts` written in the file lets that origin have the credentials; others still go without."""
    home, other = servers
    text = (
        "version: 1\nname: hosts\n"
        f"source:\n  url: {home.base_url}/start\n  records: data\n  pagination: {{type: next_url, path: next}}\n"
        f"  auth: {{type: bearer, token: '{TOKEN}', hosts: ['{other.base_url}']}}\n"
        "mapping:\n  external_id: to_string(id)\n  fields: {id: id}\n"
        "target: {type: jsonl, path: out.jsonl}\n"
    )
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    source = config.load_pipeline(path, env={}).source
    with client(source.auth) as http:
        pages = list(SourceReader(source=source, send=http.send, params={}).pages())
    assert len(pages) == 3
    assert all(seen.headers.get("authorization") == f"Bearer {TOKEN}" for seen in [*home.seen, *other.seen])


@pytest.mark.parametrize("kind", ["bearer", "api_key_header", "api_key_query"])
def test_the_http_target_withholds_credentials_from_a_redirect_elsewhere(servers: tuple[Api, Api], kind: str) -> None:
    """A write that the target API redirects to another origin arrives there without credentials."""
    home, other = servers
    home.routes["/api/contacts/1"] = lambda: (307, None, [("Location", f"{other.base_url}/b/2")])
    config = HttpTargetConfig(
        base_url=f"{home.base_url}/api", upsert=HttpOperation("PUT", "/contacts/{external_id}"),
        auth=auths(home.base_url)[kind], retry=Retry(max_attempts=1),
    )
    writer = HttpTarget(config, pipeline="p")
    try:
        writer.write([Write("create", "1", {"name": "a"})])
    finally:
        writer.close()
    assert credentials_in(home.seen[-1]) and other.seen[-1].method == "PUT"
    assert credentials_in(other.seen[-1]) == []
