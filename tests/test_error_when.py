"""`source.error_when` and `source.retry_when`: APIs that say "error" or "slow down" inside a 200.

The runs go against a real server on 127.0.0.1 that plays a script of answers;
`retry_when` is the client's `retry_if` (one retry loop), `error_when` the reader's check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import whole, write_pipeline_file
from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.errors import ConfigError, FetchError
from runner.http.client import HttpClient
from runner.model import Retry, Timeout
from runner.state import open_store

Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]

GRAPHQL_ERROR = {"data": None, "errors": [{"message": "Field 'nmae' doesn't exist on type 'Issue'",
                                           "type": "GRAPHQL_VALIDATION_FAILED"}]}
RATE_LIMITED = {"data": None, "errors": [{"type": "RATE_LIMITED", "message": "API rate limit exceeded"}]}
ITEMS = {"data": {"items": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}}
SLACK_RATELIMITED = {"ok": False, "error": "ratelimited"}


class _Handler(Handler):
    do_GET = Handler.dispatch
    do_POST = Handler.dispatch


class Scripted(LocalServer):
    """Answers the n-th request with the n-th reply of its script (the last one from then on)."""

    handler_class = _Handler
    thread_name = "scripted"

    def __init__(self, *script: Reply) -> None:
        super().__init__()
        self.script = list(script)
        self.requests: list[str] = []

    def handle(self, handler: Handler) -> None:
        handler.read_body()
        self.requests.append(handler.path)
        status, body, *more = self.script[min(len(self.requests), len(self.script)) - 1]
        headers = more[0] if more else {}
        handler.send_reply(status, json.dumps(body).encode(), headers=headers.items())


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Scripted] = []

    def start(*script: Reply) -> Scripted:
        server = Scripted(*script)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def pipeline(tmp_path: Path, server: Scripted, **source: Any) -> Path:
    """A POST source at the scripted server (GraphQL-like: records at data.items, no paging)."""
    block = {"url": "{base_url}/graphql", "method": "POST", "json": {"query": "{ items { id name } }"},
             "records": "data.items", "retry": {"max_attempts": 3, "backoff_initial": 0.5}, **source}
    return write_pipeline_file(
        tmp_path, server.base_url, source=whole(block),
        mapping={"external_id": "to_string(id)", "fields": whole({"name": "name"})},
    )


class Waits:
    """The `sleep` seam: records each wait instead of sleeping."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


# --- error_when ----------------------------------------------------------------------------------


def test_a_graphql_error_in_a_200_fails_the_run_naming_the_expression_and_the_errors(
    tmp_path: Path, serve: Any
) -> None:
    """error_when `errors` turns a 200 carrying GraphQL errors into a FetchError (exit 1)."""
    server = serve((200, GRAPHQL_ERROR))
    with pytest.raises(FetchError) as caught:
        run(pipeline(tmp_path, server, error_when="errors"), sleep=Waits())
    message = str(caught.value)
    assert message.startswith("POST /graphql: error_when 'errors' matched: [{\"message\":\"Field 'nmae'")
    assert "GRAPHQL_VALIDATION_FAILED" in message
    assert caught.value.exit_code == 1 and caught.value.status == 200
    assert caught.value.result is not None and caught.value.result.status == "failed"
    assert len(server.requests) == 1  # an error is not retried


def test_error_when_on_a_body_it_does_not_match_changes_nothing(tmp_path: Path, serve: Any) -> None:
    """A body without `errors` is data as before: every record lands, one request."""
    server = serve((200, ITEMS))
    result = run(pipeline(tmp_path, server, error_when="errors"), sleep=Waits())
    assert (result.status, result.counts.created, result.requests) == ("success", 2, 1)


def test_an_empty_errors_list_is_not_an_error(tmp_path: Path, serve: Any) -> None:
    """JMESPath truthiness: `errors: []` is falsy, so the page is data."""
    server = serve((200, {**ITEMS, "errors": []}))
    result = run(pipeline(tmp_path, server, error_when="errors"), sleep=Waits())
    assert (result.status, result.counts.created) == ("success", 2)


def test_the_matched_value_is_cut_at_200_characters_and_redacted(tmp_path: Path, serve: Any) -> None:
    """The message shows a short excerpt of what matched, never a secret the API echoes back."""
    token = "sk-live-0123456789abcdef"
    echoed = {"errors": [{"message": f"bad token {token} " + "x" * 500}]}
    server = serve((200, echoed))
    path = pipeline(tmp_path, server, error_when="errors", auth={"type": "bearer", "token": token})
    with pytest.raises(FetchError) as caught:
        run(path, sleep=Waits())
    shown = str(caught.value).split(" matched: ", 1)[1]
    assert token not in str(caught.value) and "bad token ***" in shown
    assert len(shown) == 200 and shown.endswith("...")


def test_an_error_on_a_later_page_keeps_the_watermark(tmp_path: Path, serve: Any) -> None:
    """Page 1 is data, page 2 says error: the run fails and no watermark is saved."""
    page1 = {"ok": True, "items": [{"id": 1, "name": "a", "updated_at": "2024-05-01T00:00:00Z"}], "next": "p2"}
    server = serve((200, page1), (200, {"ok": False, "error": "internal_error"}))
    path = write_pipeline_file(
        tmp_path, server.base_url,
        source=whole({
            "url": "{base_url}/list", "records": "items", "error_when": "!ok && error",
            "pagination": {"type": "cursor", "path": "next", "param": "cursor"},
            "incremental": {"cursor_field": "updated_at", "param": "since"},
        }),
        mapping={"external_id": "to_string(id)", "fields": whole({"name": "name", "updated_at": "updated_at"})},
    )
    with pytest.raises(FetchError, match="error_when '!ok && error' matched: \"internal_error\""):
        run(path, sleep=Waits())
    store = open_store(load_pipeline(path).state)
    try:
        assert store.watermark("test") is None
    finally:
        store.close()


# --- retry_when -----------------------------------------------------------------------------------


def test_a_rate_limit_inside_a_200_is_retried_then_the_page_lands(tmp_path: Path, serve: Any) -> None:
    """retry_when matches twice, the third answer is data: backoff waits, no real sleep, success."""
    server = serve((200, RATE_LIMITED), (200, RATE_LIMITED), (200, ITEMS))
    waits = Waits()
    path = pipeline(tmp_path, server, retry_when="errors[?type=='RATE_LIMITED']", error_when="errors")
    result = run(path, sleep=waits)
    assert (result.status, result.counts.created, result.requests, result.retries) == ("success", 2, 3, 2)
    assert len(waits.seconds) == 2 and all(0 <= s <= 1.0 for s in waits.seconds)


def test_retry_when_is_checked_before_error_when(tmp_path: Path, serve: Any) -> None:
    """A Slack-style `{"ok": false, "error": "ratelimited"}` matches both: it is retried, not failed."""
    server = serve((200, SLACK_RATELIMITED), (200, {"ok": True, **ITEMS["data"]}))
    path = pipeline(tmp_path, server, records="items", retry_when="error == 'ratelimited'",
                    error_when="!ok && error")
    result = run(path, sleep=Waits())
    assert (result.status, result.counts.created, result.requests) == ("success", 2, 2)


def test_retry_when_honours_retry_after(tmp_path: Path, serve: Any) -> None:
    """A Retry-After header on the rate-limited 200 is the wait, as it is on a 429."""
    server = serve((200, RATE_LIMITED, {"Retry-After": "7"}), (200, ITEMS))
    waits = Waits()
    run(pipeline(tmp_path, server, retry_when="errors[?type=='RATE_LIMITED']"), sleep=waits)
    assert waits.seconds == [7.0]


def test_retry_when_gives_up_after_max_attempts_naming_what_matched(tmp_path: Path, serve: Any) -> None:
    """A rate limit that never lifts ends in a FetchError after `max_attempts`, saying why."""
    server = serve((200, RATE_LIMITED))
    with pytest.raises(FetchError) as caught:
        run(pipeline(tmp_path, server, retry_when="errors[?type=='RATE_LIMITED']"), sleep=Waits())
    assert len(server.requests) == 3
    assert str(caught.value).startswith(
        "POST /graphql: gave up after 3 attempts: last status 200 "
        "(retry_when 'errors[?type=='RATE_LIMITED']' matched: [{\"type\":\"RATE_LIMITED\""
    )
    assert caught.value.exit_code == 1


def test_retry_when_stops_at_max_elapsed(tmp_path: Path, serve: Any) -> None:
    """A Retry-After beyond `retry.max_elapsed` is not slept: the request gives up at once."""
    server = serve((200, RATE_LIMITED, {"Retry-After": "600"}))
    waits = Waits()
    path = pipeline(tmp_path, server, retry_when="errors[?type=='RATE_LIMITED']",
                    retry={"max_attempts": 5, "max_elapsed": 60})
    with pytest.raises(FetchError, match="Retry-After asks to wait 600 s, more than the"):
        run(path, sleep=waits)
    assert waits.seconds == [] and len(server.requests) == 1


def test_without_retry_when_a_200_is_never_retried(tmp_path: Path, serve: Any) -> None:
    """error_when alone fails a rate-limited 200 at once: retrying is what retry_when asks for."""
    server = serve((200, RATE_LIMITED), (200, ITEMS))
    with pytest.raises(FetchError, match="error_when 'errors' matched"):
        run(pipeline(tmp_path, server, error_when="errors"), sleep=Waits())
    assert len(server.requests) == 1


# --- the client's retry_if -----------------------------------------------------------------------


def client(handler: Any, **retry: Any) -> HttpClient:
    return HttpClient(
        timeout=Timeout(), retry=Retry(**{"max_attempts": 3, **retry}),
        transport=httpx.MockTransport(handler), sleep=lambda s: None,
    )


def test_retry_if_retries_even_a_post_since_the_server_refused_it() -> None:
    """A reason from `retry_if` makes the answer retryable like a 429, whatever the method."""
    answers = iter([httpx.Response(200, json={"busy": True}), httpx.Response(200, json={"busy": False})])
    with client(lambda request: next(answers)) as http:
        response = http.send("POST", "https://api.example.com/q", json={},
                             retry_if=lambda r: "busy" if r.json()["busy"] else None)
    assert response.json() == {"busy": False} and http.retries == 1


def test_what_retry_if_raises_propagates_unretried() -> None:
    """The predicate's own error (a body that is not JSON) ends the request; no retry hides it."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, text="<html>")

    with client(handler) as http, pytest.raises(ValueError):
        http.send("GET", "https://api.example.com/q", retry_if=lambda r: r.json())
    assert calls == [1]


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["error_when", "retry_when"])
def test_an_invalid_expression_is_a_config_error_at_its_key(tmp_path: Path, key: str) -> None:
    """Both keys are compiled at load, so `etl validate` reports a typo before any request."""
    path = write_pipeline_file(tmp_path, source={key: "errors[?type=="})
    with pytest.raises(ConfigError, match=rf"source\.{key}: invalid JMESPath 'errors\[\?type==': "):
        load_pipeline(path)


@pytest.mark.parametrize("key", ["error_when", "retry_when"])
def test_the_lint_runs_on_both_keys(tmp_path: Path, key: str) -> None:
    """`!meta.error` (always null) is warned at the key, with its fix."""
    from runner.config import check_file

    path = write_pipeline_file(tmp_path, source={key: "!meta.error"})
    found = [p for p in check_file(path) if p.path == f"source.{key}"]
    assert [p.severity for p in found] == ["warning"] and "did you mean `!(meta.error)`?" in found[0].message


def test_both_keys_load_as_compiled_expressions(tmp_path: Path) -> None:
    """The typed Source holds both, compiled; without them both are None."""
    source = load_pipeline(write_pipeline_file(tmp_path, source={"error_when": "errors", "retry_when": "busy"})).source
    assert (source.error_when and source.error_when.text, source.retry_when and source.retry_when.text) == (
        "errors", "busy"
    )
    plain = load_pipeline(write_pipeline_file(tmp_path, file="plain.yaml")).source
    assert (plain.error_when, plain.retry_when) == (None, None)
