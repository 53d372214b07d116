"""incremental by a sync token, end to end against a local server that behaves as Google
Calendar's `events.list` documents: `nextPageToken` pages, `nextSyncToken` on the last page,
a later request with `syncToken` lists only what changed, and an expired `syncToken` is
answered 410 "a full sync is required". Then the validation of the token form's keys."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from runner.config import load_pipeline, load_schema
from runner.engine import run
from runner.errors import ConfigError, EtlError, FetchError
from runner.load.watermark import SyncToken, _error_body
from runner.model import IncrementalToken, StateConfig
from runner.state import open_store
from runner.dev.localserver import Handler, LocalServer

from conftest import whole, write_pipeline_file

EVENTS_PATH = "/calendar/v3/calendars/primary/events"
EXPIRED_BODY = {"error": {"code": 410, "message": "Sync token is no longer valid, a full sync is required."}}


class _Handler(Handler):
    do_GET = Handler.dispatch


class CalendarEvents(LocalServer):
    """A calendar whose every change bumps a version; a sync token names the version it was
    issued at. `maxResults` events a page; `fail_page` answers 500 to that page."""

    handler_class = _Handler
    thread_name = "calendar"

    def __init__(self, events: int = 5) -> None:
        super().__init__()
        self.version = 0
        self.events: dict[str, dict[str, Any]] = {}
        self.changed_at: dict[str, int] = {}
        self.expired: set[str] = set()
        self.expired_body: dict[str, Any] = EXPIRED_BODY
        self.fail_page: int | None = None
        self.queries: list[dict[str, str]] = []
        for n in range(1, events + 1):
            self.change(f"ev{n}", summary=f"event {n}")

    def change(self, event_id: str, *, summary: str = "", status: str = "confirmed") -> None:
        self.version += 1
        self.events[event_id] = {"kind": "calendar#event", "id": event_id, "status": status, "summary": summary}
        self.changed_at[event_id] = self.version

    def handle(self, handler: Handler) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.queries.append(query)
        if parts.path != EVENTS_PATH:
            handler.send_reply(404, b'{"error": {"code": 404, "message": "Not Found"}}')
            return
        token = query.get("syncToken")
        if token is not None and (token in self.expired or not token.startswith("sync-")):
            handler.send_reply(410, json.dumps(self.expired_body).encode())
            return
        since = int(token.removeprefix("sync-")) if token else 0
        # a full sync lists live events; an incremental one lists every change, cancelled too
        ids = [
            i for i in self.events
            if self.changed_at[i] > since and (token or self.events[i]["status"] != "cancelled")
        ]
        start, size = int(query.get("pageToken", "0")), int(query.get("maxResults", "250"))
        if self.fail_page is not None and start // size + 1 == self.fail_page:
            handler.send_reply(500, b'{"error": {"code": 500, "message": "Backend Error"}}')
            return
        body: dict[str, Any] = {"kind": "calendar#events", "items": [self.events[i] for i in ids[start : start + size]]}
        if start + size < len(ids):
            body["nextPageToken"] = str(start + size)
        else:
            body["nextSyncToken"] = f"sync-{self.version}"
        handler.send_reply(200, json.dumps(body).encode())


GOOGLE = {
    "name": "calendar",
    "source": {
        "url": "{base_url}" + EVENTS_PATH,
        "params": {"maxResults": 2},
        "records": "items",
        "pagination": whole({"type": "cursor", "path": "nextPageToken", "param": "pageToken"}),
        "retry": {"max_attempts": 1},
        "incremental": {"token": "nextSyncToken", "param": "syncToken"},
    },
    "mapping": {"external_id": "id", "fields": {"summary": "summary", "status": "status"}},
}


@pytest.fixture
def calendar() -> Any:
    with CalendarEvents() as server:
        yield server


def _file(tmp_path: Path, server: CalendarEvents, **overrides: Any) -> Path:
    return write_pipeline_file(tmp_path, server.base_url, defaults=GOOGLE, **overrides)


def _saved_token(tmp_path: Path) -> Any:
    store = open_store(StateConfig(path=tmp_path / "state.db"), read_only=True)
    try:
        return store.watermark("calendar")
    finally:
        store.close()


def test_first_run_reads_everything_and_saves_the_sync_token(tmp_path: Path, calendar: CalendarEvents) -> None:
    """A run with no saved token sends none, reads every page, and saves the last page's nextSyncToken."""
    result = run(_file(tmp_path, calendar))
    assert (result.status, result.counts.processed, result.counts.created, result.pages) == ("success", 5, 5, 3)
    assert all("syncToken" not in q for q in calendar.queries)
    assert _saved_token(tmp_path) == "sync-5"


def test_second_run_sends_the_token_beside_params_and_reads_only_changes(
    tmp_path: Path, calendar: CalendarEvents
) -> None:
    """The next run sends syncToken with params on its requests and gets only the changes,
    a cancelled event among them; the newer token is saved."""
    path = _file(tmp_path, calendar)
    run(path)
    calendar.queries.clear()
    calendar.change("ev2", summary="event 2, moved")
    calendar.change("ev6", summary="event 6")
    calendar.change("ev3", status="cancelled")
    result = run(path)
    assert calendar.queries[0] == {"maxResults": "2", "syncToken": "sync-5"}
    assert calendar.queries[1] == {"maxResults": "2", "syncToken": "sync-5", "pageToken": "2"}
    assert (result.counts.processed, result.counts.created, result.counts.updated) == (3, 1, 2)
    assert _saved_token(tmp_path) == "sync-8"


def test_an_expired_token_is_reset_and_the_run_reads_everything(
    tmp_path: Path, calendar: CalendarEvents, caplog: pytest.LogCaptureFixture
) -> None:
    """A 410 to the first request logs incremental.token_reset, and the same run reads every
    event from the start without the token (exit 0), then saves a fresh one."""
    path = _file(tmp_path, calendar)
    run(path)
    calendar.expired.add("sync-5")
    calendar.change("ev1", summary="event 1, renamed")
    calendar.queries.clear()
    with caplog.at_level(logging.WARNING, logger="runner"):
        result = run(path)
    resets = [r for r in caplog.records if r.getMessage() == "incremental.token_reset"]
    assert len(resets) == 1 and resets[0].levelno == logging.WARNING
    assert resets[0].fields["status"] == 410  # type: ignore[attr-defined]
    assert (result.status, result.exit_code, result.counts.processed, result.counts.updated) == ("success", 0, 5, 1)
    assert calendar.queries[0]["syncToken"] == "sync-5"
    assert all("syncToken" not in q for q in calendar.queries[1:])
    assert _saved_token(tmp_path) == "sync-6"


def test_a_failed_run_saves_no_token(tmp_path: Path, calendar: CalendarEvents) -> None:
    """A run that fails on its second page keeps the saved token; the next run sends it again."""
    path = _file(tmp_path, calendar)
    run(path)
    for n in (6, 7, 8):
        calendar.change(f"ev{n}", summary=f"event {n}")
    calendar.fail_page = 2
    with pytest.raises(FetchError) as caught:
        run(path)
    assert caught.value.result is not None and caught.value.result.status == "failed"
    assert _saved_token(tmp_path) == "sync-5"
    calendar.fail_page, calendar.queries[:] = None, []
    run(path, restart=True)
    assert calendar.queries[0]["syncToken"] == "sync-5"
    assert _saved_token(tmp_path) == "sync-8"


def test_a_run_stopped_by_a_limit_saves_no_token(tmp_path: Path, calendar: CalendarEvents) -> None:
    """max_pages ends the run early: the token waits for the run that reaches the end (the resume)."""
    path = _file(tmp_path, calendar, source={"limits": {"max_pages": 1}})
    result = run(path)
    assert (result.stopped_by, _saved_token(tmp_path)) == ("max_pages", None)


def test_a_failed_record_keeps_the_token(tmp_path: Path, calendar: CalendarEvents) -> None:
    """A record that fails (exit 3) holds the token: the next run reads the same changes again."""
    path = _file(tmp_path, calendar, mapping={"external_id": "summary != 'event 3' && id || missing"})
    result = run(path)
    assert result.exit_code == 3 and _saved_token(tmp_path) is None


def test_a_410_outside_reset_when_fails_the_run_and_keeps_the_token(
    tmp_path: Path, calendar: CalendarEvents
) -> None:
    """`reset_when` narrows `reset_on`: a 410 whose body does not match is a failure, not a reset."""
    path = _file(tmp_path, calendar, source={"incremental": {"reset_when": "error.code == 'syncStateNotFound'"}})
    run(path)
    calendar.expired.add("sync-5")
    with pytest.raises(FetchError) as caught:
        run(path)
    assert caught.value.status == 410 and caught.value.exit_code == 1
    assert _saved_token(tmp_path) == "sync-5"


def test_a_410_on_a_later_page_is_not_a_reset(tmp_path: Path, calendar: CalendarEvents) -> None:
    """Only the first request may reset the token: a 410 on page 2 fails the run."""
    path = _file(tmp_path, calendar)
    run(path)
    for n in (6, 7, 8):
        calendar.change(f"ev{n}", summary=f"event {n}")
    original = calendar.handle

    def expire_after_first(handler: Handler) -> None:
        if calendar.queries:
            calendar.expired.add("sync-5")
        original(handler)

    calendar.queries.clear()
    calendar.handle = expire_after_first  # type: ignore[method-assign]
    with pytest.raises(EtlError) as caught:
        run(path)
    assert "410" in str(caught.value)
    assert _saved_token(tmp_path) == "sync-5"


# --- expiry judged on the error body --------------------------------------------------


def _token(**options: Any) -> SyncToken:
    from runner.model import Expr
    import jmespath

    when = options.pop("reset_when", None)
    expr = Expr(when, jmespath.compile(when)) if when else None
    spec = IncrementalToken(Expr("t", jmespath.compile("t")), "syncToken", reset_when=expr, **options)
    return SyncToken(spec, saved="old")


@pytest.mark.parametrize(
    ("status", "detail", "options", "expired"),
    [
        (410, "", {}, True),
        (404, "", {}, False),
        (404, "", {"reset_on": frozenset({404, 410})}, True),
        (410, '{"error": {"code": "syncStateNotFound"}}', {"reset_when": "error.code == 'syncStateNotFound'"}, True),
        (410, '{"error": {"code": "gone"}}', {"reset_when": "error.code == 'syncStateNotFound'"}, False),
        (410, "<html>Gone</html>", {"reset_when": "error.code == 'syncStateNotFound'"}, False),
    ],
)
def test_expired_is_the_status_narrowed_by_reset_when(
    status: int, detail: str, options: dict[str, Any], expired: bool
) -> None:
    """A status in reset_on means expired, unless reset_when is given and does not match the body."""
    error = FetchError("HTTP", status=status, detail=detail)
    assert _token(**options).expired(error) is expired


def test_reset_when_reads_an_error_body_cut_short() -> None:
    """The FetchError keeps 200 characters of the body: the members before the cut still count."""
    body = json.dumps({"error": {"code": "syncStateNotFound", "message": "The sync state generation is not found.",
                                 "innerError": {"date": "2024-05-01T12:00:00", "request-id": "x" * 80}}})
    assert len(body) > 200
    assert _error_body(body[:200])["error"]["code"] == "syncStateNotFound"


def test_reset_on_default_is_documented() -> None:
    """The schema's default reset_on is the model's."""
    documented = load_schema()["properties"]["source"]["properties"]["incremental"]["properties"]["reset_on"]
    assert set(documented["default"]) == IncrementalToken(None).reset_on  # type: ignore[arg-type]


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incremental", "message"),
    [
        ({"token": "nextSyncToken"},
         "source.incremental: missing required key 'param' in source.incremental for 'token'"),
        ({"token": "d", "param": "p", "as_url": True},
         "source.incremental.as_url: 'as_url: true' requests the saved URL"),
        ({"token": "d", "cursor_field": "updated_at", "param": "p"},
         "source.incremental: use either 'cursor_field' (a record field: a watermark) or 'token'"),
        ({"param": "p"}, "source.incremental: missing required key 'cursor_field' in source.incremental"),
        ({"token": "d", "param": "p", "lookback": 5},
         "source.incremental.lookback: 'lookback' belongs to the record-field form"),
        ({"cursor_field": "u", "param": "p", "reset_on": [410]},
         "source.incremental.reset_on: 'reset_on' belongs to the sync-token form"),
        ({"token": "d", "param": "p", "reset_on": [200]},
         "source.incremental.reset_on[0]: must be at least 400, got 200"),
        ({"token": "d[", "param": "p"}, "source.incremental.token: invalid JMESPath 'd['"),
        ({"token": "d", "param": "p", "reset_when": "a ==="}, "source.incremental.reset_when: invalid JMESPath"),
        ({"cursor_field": "updated_at"}, "source.incremental: missing required key 'param' in source.incremental"),
    ],
)
def test_invalid_token_forms_are_refused_at_their_key(
    tmp_path: Path, incremental: dict[str, Any], message: str
) -> None:
    """Each wrong combination of the two forms' keys is one error at its key, saying what to do."""
    path = write_pipeline_file(tmp_path, source={"incremental": incremental})
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "incremental",
    [{"token": "nextSyncToken", "param": "syncToken"}, {"token": '"@odata.deltaLink"', "as_url": True}],
)
def test_both_vendor_examples_load(tmp_path: Path, incremental: dict[str, Any]) -> None:
    """Google's and Graph's forms load into an IncrementalToken with reset_on 410."""
    pipeline = load_pipeline(write_pipeline_file(tmp_path, source={"incremental": incremental}))
    spec = pipeline.source.incremental
    assert isinstance(spec, IncrementalToken) and spec.reset_on == frozenset({410})
    assert spec.as_url is bool(incremental.get("as_url"))


def _google_410(reason: str) -> dict[str, Any]:
    """Google's error shape with a long first member, so that `reason` sits past 200 characters."""
    return {"error": {"message": "Sync token is no longer valid, a full sync is required. " + "." * 250,
                      "code": 410, "errors": [{"domain": "calendar", "reason": reason}]}}


@pytest.mark.parametrize(("reason", "reset"), [("fullSyncRequired", True), ("somethingElse", False)])
def test_reset_when_sees_the_whole_error_body(
    tmp_path: Path, calendar: CalendarEvents, reason: str, reset: bool
) -> None:
    """`reset_when` is judged on the whole parsed body, not on the 200-character excerpt:
    a marker past the excerpt resets the token, and a different one there does not."""
    path = _file(tmp_path, calendar, source={"incremental": {
        "reset_when": "error.errors[?reason=='fullSyncRequired'] | length(@) > `0`"}})
    run(path)
    calendar.expired.add("sync-5")
    calendar.expired_body = _google_410(reason)
    assert len(json.dumps(calendar.expired_body).split('"errors"')[0]) > 200
    if not reset:
        with pytest.raises(FetchError) as caught:
            run(path)
        assert caught.value.status == 410 and len(caught.value.detail) <= 200
        assert _saved_token(tmp_path) == "sync-5"
        return
    result = run(path)
    assert (result.status, result.counts.processed) == ("success", 5)
    assert "syncToken" not in calendar.queries[-1] and _saved_token(tmp_path) == "sync-5"


def test_error_body_parses_the_whole_body_within_the_cap() -> None:
    """The client reads an error body up to max_response_bytes: JSON past the excerpt is parsed;
    a body over the cap, or no JSON, gives None and the excerpt alone."""
    from runner.http.errors import error_body

    long = json.dumps(_google_410("fullSyncRequired")).encode()
    excerpt, body = error_body(httpx.Response(410, content=long), max_bytes=10_000)
    assert body["error"]["errors"][0]["reason"] == "fullSyncRequired" and len(excerpt) == 200
    assert error_body(httpx.Response(410, content=long), max_bytes=100)[1] is None
    html = b"<html>Gone</html>"
    assert error_body(httpx.Response(410, content=html), max_bytes=10_000) == ("<html>Gone</html>", None)
