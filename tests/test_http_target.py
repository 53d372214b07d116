"""Tests of the `http` target against the fake CRM on 127.0.0.1 (respx where simpler), then end to end."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jmespath
import pytest
import respx

from runner.errors import FetchError, TargetError
from runner.dev.fake_crm import FakeCrm
from runner.state.sqlite import SqliteStateStore
from runner import engine
from runner.dev.demo_api import DemoApi
from runner.model import BearerAuth, Expr, HttpOperation, HttpTargetConfig, Retry, Secret
from runner.targets import Write, open_target
from runner.targets.http import HttpTarget, idempotency_key

NO_WAIT = {"sleep": lambda seconds: None}
CREATE = HttpOperation("POST", "/contacts", Expr("id", jmespath.compile("id"), "target.create.id_path"))
UPDATE = HttpOperation("PATCH", "/contacts/{target_id}")
UPSERT = HttpOperation("PUT", "/contacts/by-key/{external_id}")
FAST_RETRY = Retry(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
WRITE_METHODS = ("POST", "PATCH", "PUT")


@pytest.fixture
def crm() -> Iterator[FakeCrm]:
    server = FakeCrm()
    server.start()
    yield server
    server.stop()


def target_config(base_url: str, **changes: Any) -> HttpTargetConfig:
    options: dict[str, Any] = {"create": CREATE, "update": UPDATE, "retry": FAST_RETRY, **changes}
    return HttpTargetConfig(base_url, **options)


def writer(base_url: str, **changes: Any) -> HttpTarget:
    return HttpTarget(target_config(base_url, **changes), pipeline="crm-test", **NO_WAIT)


def person(n: int, **changes: Any) -> dict[str, Any]:
    return {"email": f"user{n}@example.com", "name": f"User {n}", **changes}


def creates(count: int) -> list[Write]:
    return [Write("create", str(n), person(n)) for n in range(1, count + 1)]


# --- the writer against the fake CRM ---------------------------------------------


def test_creates_return_the_new_ids_and_every_post_carries_an_idempotency_key(crm: FakeCrm) -> None:
    """Each create is one POST with an Idempotency-Key; the ids read by id_path come back per key."""
    target = writer(crm.base_url)
    try:
        result = target.write(creates(3))
    finally:
        target.close()
    assert result.errors == {}
    assert sorted(result.target_ids) == ["1", "2", "3"] and len(set(result.target_ids.values())) == 3
    for key, object_id in result.target_ids.items():  # sent concurrently: any id, but the key's own object
        assert crm.objects[object_id] == {**person(int(key)), "id": object_id}
    posts = crm.writes()
    assert [r.method for r in posts] == ["POST"] * 3
    assert all(len(r.headers["idempotency-key"]) == 64 for r in posts)
    assert posts[0].headers["content-type"] == "application/json"


def test_an_update_patches_the_target_id_and_a_keyless_update_creates(crm: FakeCrm) -> None:
    """An update with a target id PATCHes /contacts/{target_id}; one without an id is created instead."""
    target = writer(crm.base_url)
    try:
        target.write(creates(1))
        result = target.write([
            Write("update", "1", person(1, name="Renamed"), "c_1"),
            Write("update", "2", person(2)),
        ])
    finally:
        target.close()
    assert result.errors == {} and result.target_ids == {"2": "c_2"}
    sent = {r.method: r for r in crm.writes()[1:]}  # two keys: sent concurrently, in either order
    assert len(crm.writes()) == 3 and sent["PATCH"].path == "/contacts/c_1" and sent["POST"].path == "/contacts"
    assert "idempotency-key" not in sent["PATCH"].headers
    assert crm.objects["c_1"]["name"] == "Renamed"


def test_upsert_mode_sends_every_write_to_the_quoted_key_path(crm: FakeCrm) -> None:
    """Upsert mode PUTs each write to its path with `{external_id}` URL-quoted, and keeps no ids."""
    target = writer(crm.base_url, create=None, update=None, upsert=UPSERT)
    try:
        result = target.write([Write("create", "a/b c", person(1)), Write("update", "a/b c", person(1, name="X"))])
    finally:
        target.close()
    assert result.target_ids == {} and result.errors == {}
    assert [(r.method, r.path) for r in crm.writes()] == [("PUT", "/contacts/by-key/a%2Fb%20c")] * 2
    assert [o["name"] for o in crm.objects.values()] == ["X"]


def test_a_422_fails_that_record_alone_with_the_status_and_error_text() -> None:
    """A 4xx about one record puts its status and the API's error text in errors; the rest succeed."""
    with FakeCrm(fail_status_for={"email": {"bad@example.com": 422}}) as crm:
        target = writer(crm.base_url)
        try:
            page = creates(3)
            page[1] = Write("create", "2", person(2, email="bad@example.com"))
            result = target.write(page)
        finally:
            target.close()
    assert set(result.target_ids) == {"1", "3"}
    assert list(result.errors) == ["2"]
    assert "422" in result.errors["2"] and result.errors["2"].endswith(": invalid email")
    assert "POST /contacts" in result.errors["2"]


def test_a_503_is_retried_and_the_create_lands_once(crm: FakeCrm) -> None:
    """Two 503 answers are retried (the POST carries its key) and one object is created."""
    crm.fail_next(2, 503)
    target = writer(crm.base_url)
    try:
        result = target.write(creates(1))
        assert target.retries == 2
    finally:
        target.close()
    assert result.target_ids == {"1": "c_1"} and len(crm.objects) == 1
    assert len({r.headers["idempotency-key"] for r in crm.writes()}) == 1


def test_a_lost_create_response_is_retried_without_a_duplicate(crm: FakeCrm) -> None:
    """The server commits a create and drops the connection; the retry with the same key returns that object."""
    crm.drop_after_commit_next(1)
    target = writer(crm.base_url)
    try:
        result = target.write(creates(1))
    finally:
        target.close()
    assert result.target_ids == {"1": "c_1"}
    assert list(crm.objects) == ["c_1"]
    assert len(crm.writes()) == 2


def test_without_idempotency_keys_a_lost_create_fails_the_page(crm: FakeCrm) -> None:
    """With idempotency_key off no header is sent, so a dropped POST is not retried: the page fails."""
    crm.drop_after_commit_next(1)
    target = writer(crm.base_url, idempotency_key=False)
    try:
        with pytest.raises(FetchError) as caught:
            target.write(creates(1))
    finally:
        target.close()
    assert caught.value.status is None
    assert len(crm.writes()) == 1 and "idempotency-key" not in crm.writes()[0].headers


def test_a_5xx_after_the_retries_fails_the_page(crm: FakeCrm) -> None:
    """A 503 that outlasts max_attempts raises FetchError for the page instead of failing one record,
    and the writes after it are not sent."""
    crm.fail_next(3, 503)
    target = writer(crm.base_url, concurrency=1)
    try:
        with pytest.raises(FetchError) as caught:
            target.write(creates(2))
    finally:
        target.close()
    assert caught.value.status == 503 and len(crm.request_log) == 3


def test_a_401_fails_the_page_not_each_record() -> None:
    """A wrong token is about the credentials, not the record: the page fails with status 401."""
    with FakeCrm(token="right-token") as crm:
        target = writer(crm.base_url, auth=BearerAuth(Secret("wrong-token")), concurrency=1)
        try:
            with pytest.raises(FetchError) as caught:
                target.write(creates(2))
        finally:
            target.close()
    assert caught.value.status == 401 and len(crm.request_log) == 1


def test_bearer_auth_and_target_headers_reach_the_crm() -> None:
    """The target's own auth and headers go with each write."""
    with FakeCrm(token="s3cret-token") as crm:
        target = writer(crm.base_url, auth=BearerAuth(Secret("s3cret-token")), headers={"X-Source": "etl"})
        try:
            result = target.write(creates(1))
        finally:
            target.close()
    assert result.target_ids == {"1": "c_1"}
    assert crm.writes()[0].headers["x-source"] == "etl"


def test_a_create_response_without_an_id_fails_that_record() -> None:
    """A 201 whose body has nothing at id_path fails the record with a message naming id_path."""
    with respx.mock(base_url="https://crm.test", assert_all_called=True) as router:
        router.post("/contacts").mock(return_value=httpx.Response(201, json={"ok": True}))
        target = writer("https://crm.test")
        try:
            result = target.write(creates(1))
        finally:
            target.close()
    assert result.target_ids == {}
    assert "create.id_path `id` found nothing" in result.errors["1"]


def test_numeric_ids_are_kept_as_strings() -> None:
    """An integer id read by id_path is returned as its string."""
    with respx.mock(base_url="https://crm.test") as router:
        router.post("/contacts").mock(return_value=httpx.Response(201, json={"id": 42}))
        target = writer("https://crm.test")
        try:
            result = target.write(creates(1))
        finally:
            target.close()
    assert result.target_ids == {"1": "42"}


def test_base_url_path_prefix_is_kept() -> None:
    """`https://x/api/` + `/contacts/{target_id}` is `https://x/api/contacts/<quoted id>`."""
    with respx.mock(assert_all_called=True) as router:
        route = router.patch("https://crm.test/api/contacts/id%2F7").mock(return_value=httpx.Response(200, json={}))
        target = writer("https://crm.test/api/")
        try:
            result = target.write([Write("update", "7", person(7), "id/7")])
        finally:
            target.close()
    assert result.errors == {} and route.call_count == 1
    assert json.loads(route.calls[0].request.content) == person(7)


def test_idempotency_key_is_stable_for_the_same_content_and_differs_otherwise() -> None:
    """The key depends on pipeline, operation, external_id and body content, not on key order."""
    key = idempotency_key("p", "create", "1", {"a": 1, "b": [1, 2]})
    assert key == idempotency_key("p", "create", "1", {"b": [1, 2], "a": 1})
    assert len(key) == 64 and int(key, 16) >= 0
    others = [
        idempotency_key("q", "create", "1", {"a": 1, "b": [1, 2]}),
        idempotency_key("p", "create", "2", {"a": 1, "b": [1, 2]}),
        idempotency_key("p", "create", "1", {"a": 2, "b": [1, 2]}),
        idempotency_key("p", "upsert", "1", {"a": 1, "b": [1, 2]}),
    ]
    assert key not in others and len(set(others)) == 4


def test_the_header_repeats_for_the_same_content_and_changes_with_it(crm: FakeCrm) -> None:
    """Sending the same create twice reuses the header (one object); changed content gets a new header."""
    target = writer(crm.base_url)
    try:
        first = target.write(creates(1))
        again = target.write(creates(1))
        changed = target.write([Write("create", "1", person(1, name="Other"))])
    finally:
        target.close()
    keys = [r.headers["idempotency-key"] for r in crm.writes()]
    assert keys[0] == keys[1] != keys[2]
    assert first.target_ids == again.target_ids == {"1": "c_1"} and changed.target_ids == {"1": "c_2"}


def test_open_target_builds_the_http_writer(crm: FakeCrm) -> None:
    """open_target hands pipeline, transport and sleep to HttpTarget."""
    target = open_target(target_config(crm.base_url), fields=["email"], pipeline="p", transport=None, **NO_WAIT)
    try:
        assert isinstance(target, HttpTarget)
        assert target.write(creates(1)).target_ids == {"1": "c_1"}
    finally:
        target.close()


def test_a_target_with_neither_upsert_nor_create_and_update_is_refused() -> None:
    """A config without upsert and without both create and update raises TargetError."""
    with pytest.raises(TargetError, match="upsert"):
        HttpTarget(HttpTargetConfig("https://crm.test", create=CREATE), pipeline="p")


def test_the_fake_crm_lists_contacts_and_honours_upsert_by_key(crm: FakeCrm) -> None:
    """GET /contacts lists every object; PUT by key creates once, then replaces."""
    with httpx.Client(base_url=crm.base_url) as http:
        assert http.put("/contacts/by-key/k1", json={"n": 1}).status_code == 201
        assert http.put("/contacts/by-key/k1", json={"n": 2}).status_code == 200
        assert http.patch("/contacts/nope", json={}).status_code == 404
        assert http.get("/contacts").json() == {"data": [{"n": 2, "id": "c_1"}]}


# --- end to end, through the engine ------------------------------------------------


@pytest.fixture
def demo(demo_api: Any) -> DemoApi:
    return demo_api(250)


def sync_pipeline(tmp_path: Path, demo_url: str, crm_url: str) -> Path:
    """The demo-sync pipeline, pointed at the test's servers and a state file in tmp_path."""
    text = (
        "version: 1\nname: crm-sync\n"
        f"source:\n  url: {demo_url}/items/page\n  records: data\n"
        "  pagination: {type: page, size_param: per_page, size: 100, total_pages: total_pages}\n"
        "mapping:\n  external_id: to_string(id)\n"
        "  fields:\n    email: email\n    name: name\n    status: status\n    external_ref: to_string(id)\n"
        f"target:\n  type: http\n  base_url: {crm_url}\n"
        "  retry: {max_attempts: 3, backoff_initial: 0, backoff_max: 0}\n"
        "  create: {method: POST, path: /contacts, id_path: id}\n"
        "  update: {method: PATCH, path: \"/contacts/{target_id}\"}\n"
        f"state:\n  path: {tmp_path / 'state.db'}\n"
    )
    path = tmp_path / "crm-sync.yaml"
    path.write_text(text)
    return path


def counts(result: Any) -> tuple[int, int, int, int, int]:
    c = result.counts
    return c.processed, c.created, c.updated, c.skipped, c.failed


def show(tmp_path: Path) -> dict[str, Any]:
    store = SqliteStateStore(tmp_path / "state.db")
    try:
        return store.show("crm-sync")
    finally:
        store.close()


def test_first_run_creates_every_record_and_a_rerun_writes_nothing(tmp_path: Path, demo: DemoApi, crm: FakeCrm) -> None:
    """The first run POSTs each of 250 records once (with keys); the second run sends no write."""
    path = sync_pipeline(tmp_path, demo.base_url, crm.base_url)
    first = engine.run(path, **NO_WAIT)
    assert (first.status, counts(first)) == ("success", (250, 250, 0, 0, 0))
    assert len(crm.objects) == 250
    posts = crm.writes()
    assert len(posts) == 250 and all("idempotency-key" in r.headers for r in posts)
    first_object = next(o for o in crm.objects.values() if o["external_ref"] == "1")
    assert first_object["email"] == "user1@example.com"
    second = engine.run(path, **NO_WAIT)
    assert counts(second) == (250, 0, 0, 250, 0)
    assert len(crm.writes()) == 250


def test_three_upstream_changes_send_three_patches_to_their_ids(tmp_path: Path, demo: DemoApi, crm: FakeCrm) -> None:
    """After three source records change, the next run PATCHes exactly their target objects."""
    path = sync_pipeline(tmp_path, demo.base_url, crm.base_url)
    engine.run(path, **NO_WAIT)
    ids = {obj["external_ref"]: obj_id for obj_id, obj in crm.objects.items()}
    for record_id in (5, 120, 249):
        demo.update_record(record_id, name=f"Changed {record_id}")
    before = len(crm.request_log)
    result = engine.run(path, **NO_WAIT)
    assert counts(result) == (250, 0, 3, 247, 0)
    sent = [(r.method, r.path) for r in crm.request_log[before:]]
    assert sent == [("PATCH", f"/contacts/{ids[str(n)]}") for n in (5, 120, 249)]
    assert crm.objects[ids["120"]]["name"] == "Changed 120"
    assert len(crm.objects) == 250


def test_a_422_fails_one_record_keeps_its_error_and_the_run_goes_on(tmp_path: Path, demo: DemoApi) -> None:
    """One rejected record makes the run partial; its error text is in the state store; the next run retries it."""
    with FakeCrm(fail_status_for={"email": {"user7@example.com": 422}}) as crm:
        path = sync_pipeline(tmp_path, demo.base_url, crm.base_url)
        result = engine.run(path, **NO_WAIT)
        assert (result.status, counts(result)) == ("partial", (250, 249, 0, 0, 1))
        state = show(tmp_path)
        assert state["failed_total"] == 1
        failure = state["failed"][0]
        assert failure["external_id"] == "7" and "422" in failure["error"] and "invalid email" in failure["error"]
        crm.fail_status_for = None
        again = engine.run(path, **NO_WAIT)
    assert counts(again) == (250, 1, 0, 249, 0)
    assert len(crm.objects) == 250 and show(tmp_path)["failed_total"] == 0


def test_a_503_during_a_run_is_retried(tmp_path: Path, demo: DemoApi, crm: FakeCrm) -> None:
    """Two 503 answers from the CRM are retried and the run succeeds with every record once."""
    crm.fail_next(2, 503)
    result = engine.run(sync_pipeline(tmp_path, demo.base_url, crm.base_url), **NO_WAIT)
    assert (result.status, counts(result)) == ("success", (250, 250, 0, 0, 0))
    assert len(crm.objects) == 250


def test_a_lost_create_response_during_a_run_leaves_one_object(tmp_path: Path, demo: DemoApi, crm: FakeCrm) -> None:
    """A create committed by the CRM whose answer is lost is retried with its key: one object, its id stored."""
    crm.drop_after_commit_next(1)
    path = sync_pipeline(tmp_path, demo.base_url, crm.base_url)
    result = engine.run(path, **NO_WAIT)
    assert (result.status, counts(result)) == ("success", (250, 250, 0, 0, 0))
    assert len(crm.objects) == 250 and len(crm.writes()) == 251
    demo.update_record(1, name="Changed")
    engine.run(path, **NO_WAIT)
    first_id = next(i for i, o in crm.objects.items() if o["external_ref"] == "1")
    assert [(r.method, r.path) for r in crm.writes()[251:]] == [("PATCH", f"/contacts/{first_id}")]


def test_dry_run_sends_no_write(tmp_path: Path, demo: DemoApi, crm: FakeCrm) -> None:
    """--dry-run prints the intended writes and sends no POST, PATCH or PUT to the CRM."""
    out = io.StringIO()
    result = engine.run(sync_pipeline(tmp_path, demo.base_url, crm.base_url), dry_run=True, stdout=out, **NO_WAIT)
    assert result.dry_run and counts(result) == (250, 250, 0, 0, 0)
    assert [r for r in crm.request_log if r.method in WRITE_METHODS] == []
    assert len(out.getvalue().splitlines()) == 250
    assert not (tmp_path / "state.db").exists()


def test_state_reset_keeps_target_ids_so_the_next_run_patches(tmp_path: Path, demo: DemoApi, crm: FakeCrm) -> None:
    """After `state reset` every record is sent again as a PATCH to its stored id: no duplicate."""
    path = sync_pipeline(tmp_path, demo.base_url, crm.base_url)
    engine.run(path, **NO_WAIT)
    store = SqliteStateStore(tmp_path / "state.db")
    try:
        store.reset("crm-sync")
    finally:
        store.close()
    before = len(crm.request_log)
    result = engine.run(path, **NO_WAIT)
    assert counts(result) == (250, 0, 250, 0, 0)
    sent = crm.request_log[before:]
    assert {r.method for r in sent if r.method in WRITE_METHODS} == {"PATCH"}
    assert len(crm.objects) == 250


def test_writes_answered_before_a_page_fails_are_kept_so_the_next_run_never_resends_them(
    tmp_path: Path, demo: DemoApi, crm: FakeCrm
) -> None:
    """When a page fails part-way, the creates answered before are kept (hash and id): the next
    run neither re-creates nor re-sends them, and sends only the rest."""
    path = sync_pipeline(tmp_path, demo.base_url, crm.base_url)
    path.write_text(path.read_text().replace("  create: {", "  idempotency_key: false\n  create: {"))
    crm_posts_before_failure = 40
    original = crm._handle

    def fail_after_forty(method: str, route: str, headers: Any, body: Any) -> Any:
        if method == "POST" and len(crm.objects) >= crm_posts_before_failure:
            return 503, {"error": "down"}, False
        return original(method, route, headers, body)

    crm._handle = fail_after_forty  # type: ignore[method-assign]
    with pytest.raises(FetchError):
        engine.run(path, sleep=lambda s: None)
    made = len(crm.objects)  # 40, and up to 3 more whose POSTs were in flight beside the 40th (concurrency 4)
    assert 40 <= made < 44
    crm._handle = original  # type: ignore[method-assign]
    before = len(crm.writes())
    result = engine.run(path, sleep=lambda s: None)
    assert len(crm.objects) == 250
    assert [e for e in crm.request_log if e.method == "PATCH"] == []
    assert len(crm.writes()) - before == 250 - made
    assert (result.counts.created, result.counts.updated, result.counts.skipped) == (250 - made, 0, made)
