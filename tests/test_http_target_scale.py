"""The http target at scale (issue 19): `concurrency`, `batch`, the target's own `rate_limit`
and 429s, against the fake CRM on 127.0.0.1 (its latency, in-flight counter and batch
endpoints), a kill -9 mid-page, and the validation of the new keys."""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jmespath
import pytest
import respx

from runner import engine, load_pipeline
from runner.dev.demo_api import DemoApi
from runner.dev.fake_crm import FakeCrm
from runner.errors import ConfigError, FetchError
from runner.model import Expr, HttpBatch, HttpOperation, HttpTargetConfig, RateLimit, Retry
from runner.state.sqlite import SqliteStateStore
from runner.load.journal import Journal
from runner.state.base import PageCommit
from runner.targets import Write, WriteResult
from runner.targets.http import HttpTarget
from runner.targets.http_batch import batch_key
from runner.targets.throttle import Throttle, ThrottledTransport
from runner.targets.writepool import Unit, waves

NO_WAIT = {"sleep": lambda seconds: None}
FAST_RETRY = Retry(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
UPSERT = HttpOperation("PUT", "/contacts/by-key/{external_id}")
CREATE = HttpOperation("POST", "/contacts", Expr("id", jmespath.compile("id"), "target.create.id_path"))
UPDATE = HttpOperation("PATCH", "/contacts/{target_id}")


def expr(text: str) -> Expr:
    return Expr(text, jmespath.compile(text), "test")


def person(n: int, **changes: Any) -> dict[str, Any]:
    return {"key": str(n), "email": f"user{n}@example.com", "name": f"User {n}", **changes}


def writes(count: int, op: str = "create") -> list[Write]:
    return [Write(op, str(n), person(n)) for n in range(1, count + 1)]  # type: ignore[arg-type]


def target(base_url: str, *, real_sleep: bool = False, **changes: Any) -> HttpTarget:
    options: dict[str, Any] = {"upsert": UPSERT, "retry": FAST_RETRY, **changes}
    sleep = time.sleep if real_sleep else NO_WAIT["sleep"]
    return HttpTarget(HttpTargetConfig(base_url, **options), pipeline="scale", sleep=sleep)


def by_key(crm: FakeCrm) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for obj in crm.objects.values():
        found.setdefault(obj["key"], []).append(obj)
    return found


@pytest.fixture
def crm() -> Iterator[FakeCrm]:
    with FakeCrm() as server:
        yield server


# --- pipelines through the engine ----------------------------------------------------


def sync_file(tmp_path: Path, demo_url: str, target_yaml: str, *, per_page: int = 20, name: str = "scale") -> Path:
    """The demo API's items (`per_page` a page) into an http target given as YAML lines."""
    text = (
        f"version: 1\nname: {name}\n"
        f"source:\n  url: {demo_url}/items/page\n  records: data\n"
        f"  pagination: {{type: page, size_param: per_page, size: {per_page}, total_pages: total_pages}}\n"
        "mapping:\n  external_id: to_string(id)\n"
        "  fields:\n    key: to_string(id)\n    email: email\n    name: name\n"
        f"target:\n  type: http\n{target_yaml}"
        f"state:\n  path: {tmp_path / 'state.db'}\n"
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def create_update(crm_url: str, concurrency: int) -> str:
    return (
        f"  base_url: {crm_url}\n  concurrency: {concurrency}\n"
        "  retry: {max_attempts: 3, backoff_initial: 0, backoff_max: 0}\n"
        "  create: {method: POST, path: /contacts, id_path: id}\n"
        "  update: {method: PATCH, path: \"/contacts/{target_id}\"}\n"
    )


def failed_records(tmp_path: Path, name: str = "scale") -> list[dict[str, Any]]:
    store = SqliteStateStore(tmp_path / "state.db", read_only=True)
    try:
        failed: list[dict[str, Any]] = store.show(name, failed=1000)["failed"]
        return failed
    finally:
        store.close()


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_writes_in_flight_reach_the_concurrency_and_never_more(
    tmp_path: Path, demo_api: Any, concurrency: int
) -> None:
    """With 30 ms a write, the CRM's most writes in flight (GET /stats) is exactly `concurrency`;
    every key lands once, and a re-run writes nothing."""
    api: DemoApi = demo_api(40)
    with FakeCrm(latency=0.03) as crm:
        path = sync_file(tmp_path, api.base_url, create_update(crm.base_url, concurrency))
        result = engine.run(path, **NO_WAIT)
        stats = httpx.get(f"{crm.base_url}/stats").json()
        assert (result.status, result.counts.created) == ("success", 40)
        assert stats["max_in_flight"] == concurrency and stats["writes_started"] == 40
        assert {k: len(v) for k, v in by_key(crm).items()} == {str(n): 1 for n in range(1, 41)}
        again = engine.run(path, **NO_WAIT)
        assert (again.counts.created, again.counts.updated, again.counts.skipped) == (0, 0, 40)
        assert httpx.get(f"{crm.base_url}/stats").json()["writes_started"] == 40


def test_the_stats_endpoint_resets_and_is_not_a_logged_request(crm: FakeCrm) -> None:
    """POST /stats/reset starts the counters again; neither stats request is in the request log."""
    client = target(crm.base_url, concurrency=2)
    try:
        client.write(writes(4))
    finally:
        client.close()
    assert httpx.get(f"{crm.base_url}/stats").json()["writes_started"] == 4
    assert httpx.post(f"{crm.base_url}/stats/reset").json()["writes_started"] == 0
    assert len(crm.request_log) == 4


def test_two_writes_of_one_key_go_out_in_order_and_never_at_once() -> None:
    """Three writes of key 1 among others (concurrency 4, 20 ms a write) reach the CRM in page
    order, none while another of its key is in flight; other keys did run beside them."""
    page = [
        Write("create", "1", person(1, name="v1")), Write("create", "2", person(2)),
        Write("update", "1", person(1, name="v2")), Write("create", "3", person(3)),
        Write("update", "1", person(1, name="v3")), Write("update", "2", person(2, name="w2")),
    ]
    with FakeCrm(latency=0.02) as crm:
        client = target(crm.base_url, concurrency=4)
        try:
            result = client.write(page)
        finally:
            client.close()
        key_one = [r.body["name"] for r in crm.request_log if r.path == "/contacts/by-key/1"]
        assert key_one == ["v1", "v2", "v3"]
        assert crm.overlaps == 0 and crm.max_in_flight >= 2
        assert result.errors == {}
        names = {k: [o["name"] for o in v] for k, v in by_key(crm).items()}
        assert names == {"1": ["v3"], "2": ["w2"], "3": ["User 3"]}


def test_waves_put_a_keys_later_unit_after_its_earlier_one() -> None:
    """A unit waits one wave past the last unit holding any of its keys; others share wave 0."""
    def unit(*keys: str) -> Unit:
        return Unit(keys, lambda: None)  # type: ignore[arg-type,return-value]

    a, b, c, d = unit("1", "2"), unit("3"), unit("2"), unit("1", "4")
    assert waves([a, b, c, d]) == [[a, b], [c, d]]
    assert waves([]) == []


def test_a_page_failure_stops_the_writes_not_started_and_keeps_the_ids_answered() -> None:
    """A 403 (about the credentials, not the record) fails the page; the writes not yet started
    are not sent, and the ids of creates answered meanwhile come back on the error."""
    refuse = lambda body: (403, "forbidden") if body.get("key") == "4" else None  # noqa: E731
    with FakeCrm(latency=0.02, fail_status_for=refuse) as crm:
        client = target(crm.base_url, concurrency=2, upsert=None, create=CREATE, update=UPDATE)
        try:
            with pytest.raises(FetchError) as caught:
                client.write(writes(20))
        finally:
            client.close()
        assert caught.value.status == 403
        assert len(crm.request_log) < 20
        partial = caught.value.partial
        assert partial is not None and len(partial.target_ids) >= 3
        assert all(crm.objects[i]["key"] == k for k, i in partial.target_ids.items())


def test_the_targets_rate_limit_spaces_its_requests_even_when_concurrent() -> None:
    """rate_limit 40/s with concurrency 8: the CRM sees the writes about 25 ms apart, not at once."""
    with FakeCrm() as crm:
        client = target(crm.base_url, concurrency=8, rate_limit=RateLimit(40.0), real_sleep=True)
        try:
            client.write(writes(10))
        finally:
            client.close()
        times = sorted(r.at for r in crm.request_log)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # slots are 25 ms apart; arrival at the server jitters a little (threads, a first connection)
    assert len(times) == 10 and sorted(gaps)[4] > 0.02 and times[-1] - times[0] >= 0.2


# --- kill -9 mid-page -------------------------------------------------------------------


def test_a_kill_mid_page_then_a_rerun_leaves_one_object_per_key(tmp_path: Path, demo_api: Any) -> None:
    """`etl run` (concurrency 4, 20 ms a write) is SIGKILLed in the middle of its second page. The
    re-run never re-sends the committed first page, nor the second page's writes whose answers
    were kept before the kill (runner.load.journal); what it re-sends (the writes in flight, and
    those answered in the last tenth of a second) carries the same Idempotency-Key; the CRM ends
    with exactly one object per key."""
    api: DemoApi = demo_api(200)
    with FakeCrm(latency=0.02) as crm:
        path = sync_file(tmp_path, api.base_url, create_update(crm.base_url, 4), per_page=50)
        with open(tmp_path / "killed.log", "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "run", str(path)], cwd=tmp_path,
                stdout=subprocess.DEVNULL, stderr=log_file,
            )
        try:
            deadline = time.monotonic() + 30
            while len(crm.writes()) < 85 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
        finally:
            assert proc.wait(timeout=10) == -signal.SIGKILL
        time.sleep(0.1)  # the CRM logs a write after its 20 ms: the ones in flight at the kill too
        sent_before = {r.body["key"] for r in crm.writes() if isinstance(r.body, dict)}
        second_page = sent_before - {str(n) for n in range(1, 51)}
        assert len(sent_before) - len(second_page) == 50 and 35 <= len(second_page) < 50, len(second_page)
        rerun = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(path)], cwd=tmp_path, capture_output=True, text=True,
            timeout=60,
        )
        assert rerun.returncode == 0, rerun.stderr
        assert "event=run.resumed" in rerun.stderr
        assert {k: len(v) for k, v in by_key(crm).items()} == {str(n): 1 for n in range(1, 201)}
        posts: dict[str, list[str]] = {}
        for request in crm.writes():
            if isinstance(request.body, dict):  # not one the kill cut off mid-send (the CRM answered 400)
                posts.setdefault(request.body["key"], []).append(request.headers["idempotency-key"])
    assert all(len(posts[str(n)]) == 1 for n in range(1, 51))  # the committed page: never re-sent
    resent = {k for k, keys in posts.items() if len(keys) > 1}
    assert resent <= second_page and len(resent) < len(second_page) - 10  # most answered ones were kept
    assert all(len(set(posts[k])) == 1 for k in resent)  # same key, so no second object


# --- batch ----------------------------------------------------------------------------


UPSERT_BATCH = (
    "  batch: {path: /contacts/batch/upsert, size: 10, body: \"{inputs: @}\", results: results, id_path: id}\n"
)


def test_a_batch_entry_with_an_error_fails_that_record_alone(tmp_path: Path, demo_api: Any) -> None:
    """Batches of 10 through the CRM's per-entry upsert: one refused input fails its record alone
    (its error text kept), the other 59 land with their ids; the next run sends just that one."""
    api: DemoApi = demo_api(60)
    with FakeCrm(fail_status_for={"email": {"user7@example.com": 422}}) as crm:
        path = sync_file(tmp_path, api.base_url, f"  base_url: {crm.base_url}\n" + UPSERT_BATCH, per_page=30)
        result = engine.run(path, **NO_WAIT)
        assert (result.status, result.counts.created, result.counts.failed) == ("partial", 59, 1)
        batches = crm.writes()
        assert len(batches) == 6 and all(r.path == "/contacts/batch/upsert" for r in batches)
        assert all(len(r.body["inputs"]) == 10 and len(r.headers["idempotency-key"]) == 64 for r in batches)
        assert sorted(by_key(crm), key=int) == [str(n) for n in range(1, 61) if n != 7]
        (failure,) = failed_records(tmp_path)
        assert failure["external_id"] == "7"
        assert "entry 6 of the batch" in failure["error"] and "invalid email" in failure["error"]
        crm.fail_status_for = None
        again = engine.run(path, **NO_WAIT)
        assert (again.counts.created, again.counts.failed, again.counts.skipped) == (1, 0, 59)
        assert [r.body["inputs"][0]["key"] for r in crm.writes()[6:]] == ["7"]
        assert len(crm.objects) == 60


def test_a_batch_without_results_fails_as_a_whole_on_a_4xx(tmp_path: Path, demo_api: Any) -> None:
    """The all-or-nothing endpoint refuses a batch holding one bad record with a 422: without
    `results` every record of that batch fails with its text; the other batches land."""
    api: DemoApi = demo_api(60)
    batch = "  batch: {path: /contacts/batch/atomic, size: 10}\n"
    with FakeCrm(fail_status_for={"email": {"user7@example.com": 422}}) as crm:
        path = sync_file(tmp_path, api.base_url, f"  base_url: {crm.base_url}\n" + batch, per_page=30)
        result = engine.run(path, **NO_WAIT)
        assert (result.status, result.counts.created, result.counts.failed) == ("partial", 50, 10)
        assert isinstance(crm.writes()[0].body, list)  # the default body `@`: the list of records
        assert sorted(by_key(crm), key=int) == [str(n) for n in range(11, 61)]
        failures = failed_records(tmp_path)
        assert sorted(f["external_id"] for f in failures) == sorted(str(n) for n in range(1, 11))
        assert all("422" in f["error"] and "input 6: invalid email" in f["error"] for f in failures)
        crm.fail_status_for = None
        again = engine.run(path, **NO_WAIT)
        assert (again.counts.created, again.counts.failed) == (10, 0) and len(crm.objects) == 60


def batch_target(base_url: str, **batch: Any) -> HttpTarget:
    spec = HttpBatch(**{"path": "/contacts/batch/upsert", "body": expr("{inputs: @}"), "results": expr("results"),
                        "id_path": expr("id"), **batch})
    return target(base_url, upsert=None, batch=spec)


def test_a_lost_batch_answer_is_retried_with_its_key_and_writes_once(crm: FakeCrm) -> None:
    """The CRM applies a batch and drops the answer; the retry carries the same Idempotency-Key,
    gets the first answer back, and every record is there once with its id."""
    crm.drop_after_commit_next(1)
    client = batch_target(crm.base_url)
    try:
        result = client.write(writes(5))
    finally:
        client.close()
    keys = [r.headers["idempotency-key"] for r in crm.writes()]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert result.errors == {} and len(crm.objects) == 5
    assert all(crm.objects[i]["key"] == k for k, i in result.target_ids.items()) and len(result.target_ids) == 5


def test_the_batch_key_follows_keys_and_contents() -> None:
    """Same keys and records, same key; another record value or another order, another key."""
    page = writes(3)
    assert batch_key("p", page) == batch_key("p", list(page))
    changed = [*page[:2], Write("create", "3", person(3, name="Other"))]
    assert len({batch_key("p", page), batch_key("p", changed), batch_key("p", page[::-1]), batch_key("q", page)}) == 4


def test_a_delete_goes_one_by_one_after_the_batch_that_holds_its_key(crm: FakeCrm) -> None:
    """Batch writes and a delete of one of their keys: the batch holding the key is sent first,
    the delete after it (its own request); the other keys' batch is not held back."""
    spec = HttpBatch(path="/contacts/batch/upsert", body=expr("{inputs: @}"), size=10)
    delete = HttpOperation("DELETE", "/contacts/by-key/{external_id}")
    client = target(crm.base_url, upsert=None, batch=spec, delete=delete)
    page = [*writes(2), Write("delete", "1", {"_deleted_at": ""}), Write("create", "3", person(3))]
    try:
        result = client.write(page)
    finally:
        client.close()
    sent = [(r.method, r.path) for r in crm.request_log]
    assert result.errors == {} and sorted(by_key(crm)) == ["2", "3"]
    assert sent[-1] == ("DELETE", "/contacts/by-key/1") and sent.count(("POST", "/contacts/batch/upsert")) == 2
    assert [len(r.body["inputs"]) for r in crm.writes()] in ([2, 1], [1, 2])


def test_a_page_is_cut_into_batches_of_size_sent_concurrently() -> None:
    """25 writes, size 10, concurrency 3, 100 ms a request: three requests (10, 10, 5) at once."""
    with FakeCrm(latency=0.1) as crm:
        client = batch_target(crm.base_url, size=10)
        try:
            result = client.write(writes(25))
        finally:
            client.close()
        assert sorted(len(r.body["inputs"]) for r in crm.writes()) == [5, 10, 10]
        assert crm.max_in_flight == 3 and len(result.target_ids) == 25


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        (httpx.Response(200, json={"results": [{"id": "a"}]}), "results `results` found 1 entries for a batch of 3"),
        (httpx.Response(200, json={"results": None}), "found nothing for a batch of 3"),
        (httpx.Response(200, text="<html>ok</html>"), "the batch answer is not JSON"),
    ],
)
def test_an_answer_that_cannot_be_matched_to_the_records_fails_each(answer: httpx.Response, needle: str) -> None:
    """A results list of another length, none, or no JSON: every record of the batch fails,
    saying why; nothing is counted as written."""
    with respx.mock(base_url="https://crm.test") as router:
        router.post("/contacts/batch/upsert").mock(return_value=answer)
        client = batch_target("https://crm.test")
        try:
            result = client.write(writes(3))
        finally:
            client.close()
    assert result.target_ids == {} and sorted(result.errors) == ["1", "2", "3"]
    assert all(needle in error for error in result.errors.values())


def test_entry_errors_as_strings_lists_and_objects_and_an_entry_without_an_id() -> None:
    """`error` or `errors` as text, a list or an object each fail their record with its text; an
    empty `errors` list is a success; a created record whose entry has no id fails."""
    entries = [
        {"id": "a", "errors": []},
        {"error": "duplicate email"},
        {"errors": [{"message": "name too long"}, {"message": "bad zip"}]},
        {"error": {"code": "E1", "message": "locked"}},
        {"status": "created"},
    ]
    with respx.mock(base_url="https://crm.test") as router:
        router.post("/contacts/batch/upsert").mock(return_value=httpx.Response(207, json={"results": entries}))
        client = batch_target("https://crm.test")
        try:
            result = client.write(writes(5))
        finally:
            client.close()
    assert result.target_ids == {"1": "a"}
    assert result.errors["2"].endswith("entry 1 of the batch: duplicate email")
    assert result.errors["3"].endswith("name too long; bad zip")
    assert result.errors["4"].endswith("locked")
    assert "batch.id_path `id` found nothing in entry 4" in result.errors["5"]


def test_a_401_to_a_batch_fails_the_page() -> None:
    """A 401 is about the credentials: the batch raises for the page, no record is blamed."""
    with respx.mock(base_url="https://crm.test") as router:
        router.post("/contacts/batch/upsert").mock(return_value=httpx.Response(401, json={"error": "no"}))
        client = batch_target("https://crm.test")
        try:
            with pytest.raises(FetchError) as caught:
                client.write(writes(3))
        finally:
            client.close()
    assert caught.value.status == 401


def test_the_fake_crm_refuses_oversized_and_misshapen_batches(crm: FakeCrm) -> None:
    """As a vendor would: more than batch_max inputs, a body of the wrong shape, an input
    without a key; a PUT to a batch route is not allowed."""
    with httpx.Client(base_url=crm.base_url) as http:
        too_many = http.post("/contacts/batch/upsert", json={"inputs": [person(n) for n in range(101)]})
        assert too_many.status_code == 400 and "at most 100" in too_many.json()["error"]
        assert http.post("/contacts/batch/upsert", json=[person(1)]).status_code == 400
        assert http.post("/contacts/batch/atomic", json={"inputs": [person(1)]}).status_code == 400
        assert http.put("/contacts/batch/upsert", json={"inputs": [person(1)]}).status_code == 405
        keyless = http.post("/contacts/batch/upsert", json={"inputs": [{"name": "x"}]}).json()["results"][0]
        assert "key" in keyless["error"]["message"]
    assert crm.objects == {}


# --- 429 ------------------------------------------------------------------------------


def test_a_429_storm_ends_with_every_record_written(
    tmp_path: Path, demo_api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """40 answers of 429 (Retry-After 0.01) in a row outlast each write's 3 attempts; the target
    holds and re-sends instead of failing, and every record lands once."""
    api: DemoApi = demo_api(60)
    with FakeCrm(retry_after=0.01) as crm:
        crm.fail_next(40, 429)
        path = sync_file(tmp_path, api.base_url, create_update(crm.base_url, 4), per_page=30)
        waits: list[float] = []
        with caplog.at_level(logging.WARNING, logger="runner.targets.http"):
            result = engine.run(path, sleep=waits.append)
        assert (result.status, result.counts.created, result.counts.failed) == ("success", 60, 0)
        assert sum(r.method == "POST" for r in crm.request_log) == 100
        assert {k: len(v) for k, v in by_key(crm).items()} == {str(n): 1 for n in range(1, 61)}
    assert waits.count(0.01) >= 20  # Retry-After honoured, by the client and by the hold
    assert "event=target.throttled" in caplog.text or "target.throttled" in caplog.text


def test_a_429_storm_longer_than_max_elapsed_fails_the_page() -> None:
    """The re-sends stop when retry.max_elapsed (0.5 s) has passed since the write was first sent:
    a 429 that never ends fails the page, after several rounds of the client's 2 attempts."""
    retry = Retry(max_attempts=2, backoff_initial=0.02, backoff_max=0.02, max_elapsed=0.5)
    with respx.mock(base_url="http://crm.test") as router:
        route = router.put(url__regex=r"/contacts/by-key/.*").mock(return_value=httpx.Response(429))
        client = target("http://crm.test", concurrency=1, retry=retry, real_sleep=True)
        started = time.monotonic()
        try:
            with pytest.raises(FetchError) as caught:
                client.write(writes(1))
        finally:
            client.close()
        took = time.monotonic() - started
    assert caught.value.status == 429 and route.call_count >= 4
    assert 0.45 <= took < 3.0


def test_a_retry_after_past_max_elapsed_fails_the_page_at_once() -> None:
    """Retry-After: 3600 with max_elapsed 300: no wait of an hour, no re-send; the page fails now."""
    with respx.mock(base_url="http://crm.test") as router:
        route = router.put(url__regex=r"/contacts/by-key/.*").mock(
            return_value=httpx.Response(429, headers={"Retry-After": "3600"})
        )
        client = target("http://crm.test", concurrency=1, real_sleep=True)
        started = time.monotonic()
        try:
            with pytest.raises(FetchError) as caught:
                client.write(writes(1))
        finally:
            client.close()
    assert caught.value.status == 429 and route.call_count == 1 and time.monotonic() - started < 5
    assert "Retry-After asks to wait 3600 s" in str(caught.value)


def test_the_throttle_holds_every_request_for_retry_after_then_backs_off() -> None:
    """A 429 with Retry-After 2 holds the next request 2 s (fake time); 429s without one back off
    0.5, 1, 2 s; another answer ends the streak."""
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    throttle = Throttle(backoff_initial=0.5, backoff_max=30, max_elapsed=300, clock=lambda: now[0], sleep=sleep)
    answers = iter([
        httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200),
        httpx.Response(429), httpx.Response(429), httpx.Response(429), httpx.Response(200), httpx.Response(200),
    ])
    transport = ThrottledTransport(httpx.MockTransport(lambda request: next(answers)), throttle)
    with httpx.Client(transport=transport) as http:
        statuses = [http.get("https://crm.test/x").status_code for _ in range(7)]
    assert statuses == [429, 200, 429, 429, 429, 200, 200]
    assert slept == [2.0, 0.5, 1.0, 2.0] and throttle.throttled == 4
    assert throttle.may_resend(now[0] - 299) and not throttle.may_resend(now[0] - 300)
    http_429 = httpx.Response(429, headers={"Retry-After": "200"})
    throttle.hold(httpx.Request("PUT", "https://crm.test/x"), http_429)
    assert not throttle.may_resend(now[0] - 101) and throttle.may_resend(now[0] - 99)  # the hold ends at +200 s


# --- validation ------------------------------------------------------------------------


BASE = (
    "version: 1\nname: v\nsource:\n  url: https://api.example.com/items\n"
    "mapping:\n  external_id: to_string(id)\n  fields: {key: to_string(id)}\n"
    "target:\n  type: http\n  base_url: https://crm.example.com\n"
)


@pytest.mark.parametrize(
    ("lines", "message", "line"),
    [
        ("  upsert: {method: PUT, path: /x}\n  batch: {path: /b}\n",
         "target.upsert: 'batch' sends every create and update; remove 'upsert'", 11),
        ("  create: {method: POST, path: /x, id_path: id}\n  update: {method: PATCH, path: /x}\n  batch: {path: /b}\n",
         "target.create: 'batch' sends every create and update; remove 'create'", 11),
        ("  batch: {path: /b, id_path: id}\n", "target.batch.id_path: id_path reads each entry of 'results'", 11),
        ("  batch: {path: \"/b/{external_id}\"}\n", "placeholder '{external_id}' in batch path", 11),
        ("  batch: {path: /b, size: 0}\n", "target.batch.size: must be at least 1", 11),
        ("  batch: {path: /b, size: 1001}\n", "target.batch.size: must be at most 1000", 11),
        ("  batch: {path: /b, body: \"{inputs: @\"}\n", "target.batch.body: invalid JMESPath", 11),
        ("  batch: {path: /b, result: x}\n", "did you mean 'results'", 11),
        ("  concurrency: 65\n  upsert: {method: PUT, path: /x}\n", "target.concurrency: must be at most 64", 11),
        ("  concurrency: 0\n  upsert: {method: PUT, path: /x}\n", "target.concurrency: must be at least 1", 11),
    ],
)
def test_invalid_batch_and_concurrency_keys_are_reported_at_their_line(
    tmp_path: Path, lines: str, message: str, line: int
) -> None:
    """Each bad combination or value is one error naming its key, at its line."""
    path = tmp_path / "v.yaml"
    path.write_text(BASE + lines)
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    text = str(caught.value)
    assert message in text and f"v.yaml:{line}:" in text, text


def test_a_batch_alone_loads_with_its_defaults(tmp_path: Path) -> None:
    """`batch: {path}` alone is a whole target: POST, size 100, body `@`, no results; concurrency 4."""
    path = tmp_path / "v.yaml"
    path.write_text(BASE + "  batch: {path: /contacts/batch}\n")
    config = load_pipeline(path).target
    assert isinstance(config, HttpTargetConfig) and config.concurrency == 4
    assert config.batch == HttpBatch(path="/contacts/batch", method="POST", size=100)


# --- the journal of answered writes ----------------------------------------------------


class RecordingStore:
    """Only what Journal calls: commit_page, recorded."""

    def __init__(self) -> None:
        self.commits: list[PageCommit] = []

    def commit_page(self, pipeline: str, commit: PageCommit) -> None:
        self.commits.append(commit)


def test_the_journal_keeps_answered_writes_at_most_every_interval_with_the_old_checkpoint() -> None:
    """Answers are kept in one commit per interval (fake time), with their hash and new id and the
    checkpoint committed before the page; refused records and deletes (no hash) are not."""
    now = [0.0]
    store = RecordingStore()
    hashes = {"1": "h1", "2": "h2", "3": "h3"}  # "4" is a delete: no hash
    journal = Journal("p", store, hashes, "page-1", every=0.1, clock=lambda: now[0])  # type: ignore[arg-type]
    journal(("1",), WriteResult(target_ids={"1": "c_1"}))
    assert store.commits == []  # within the interval
    now[0] = 0.15
    journal(("2", "3", "4"), WriteResult(errors={"3": "422 invalid email"}))
    (commit,) = store.commits
    assert list(commit.hashes) == [("1", "h1", "c_1"), ("2", "h2", None)]
    assert list(commit.succeeded) == ["1", "2"] and commit.checkpoint == "page-1" and list(commit.failed) == []
    journal.flush()
    assert len(store.commits) == 1 and journal.kept == {"1", "2"}  # nothing new: no empty transaction


@pytest.mark.parametrize(
    ("batch", "valid"),
    [("  batch: {path: /b, results: results, id_path: id}\n", True), ("  batch: {path: /b}\n", False)],
)
def test_a_delete_path_with_target_id_needs_a_batch_that_stores_ids(tmp_path: Path, batch: str, valid: bool) -> None:
    """`{target_id}` in the delete path is filled from the id a batch's id_path stored; a batch
    without id_path stores none, so the path is refused at its line."""
    path = tmp_path / "v.yaml"
    path.write_text(BASE + batch + "  delete: {method: DELETE, path: \"/contacts/{target_id}\"}\n")
    if valid:
        assert load_pipeline(path).target.delete is not None  # type: ignore[union-attr]
        return
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    assert "v.yaml:12:" in str(caught.value) and "or a `batch` with id_path stored" in str(caught.value)


def test_the_shipped_batch_pipeline_syncs_the_demo_api_into_the_fake_crm(tmp_path: Path, demo_api: Any) -> None:
    """pipelines/demo-sync-batch.yaml, pointed at the test's servers: 1,200 records in 12 batch
    requests, one object each; an upstream change goes out as one batch of one; a re-run writes nothing."""
    api: DemoApi = demo_api(1200)
    shipped = Path(__file__).parents[1] / "pipelines" / "demo-sync-batch.yaml"
    path = tmp_path / "demo-sync-batch.yaml"
    path.write_text(shipped.read_text().replace(".etl/state.db", str(tmp_path / "state.db")))
    with FakeCrm() as crm:
        env = {"DEMO_PORT": str(api.port), "CRM_PORT": str(crm.port)}
        first = engine.run(path, env=env)
        assert (first.status, first.counts.created) == ("success", 1200)
        assert len(crm.writes()) == 12 and {k: len(v) for k, v in by_key(crm).items()} == {
            str(n): 1 for n in range(1, 1201)
        }
        api.update_record(700, name="Changed")
        second = engine.run(path, env=env)
        assert (second.counts.updated, second.counts.skipped) == (1, 1199)
        assert [[i["key"] for i in r.body["inputs"]] for r in crm.writes()[12:]] == [["700"]]
        assert by_key(crm)["700"][0]["name"] == "Changed" and len(crm.objects) == 1200
        third = engine.run(path, env=env)
        assert (third.counts.created, third.counts.updated, len(crm.writes())) == (0, 0, 13)
