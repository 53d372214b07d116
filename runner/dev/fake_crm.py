"""A local fake CRM API: the `http` target's counterpart in the demo and the tests.

A `LocalServer` on 127.0.0.1 that keeps contacts in memory:

    POST  /contacts                      create; 201 {"id": "c_<n>", ...fields}
    PATCH /contacts/{id}                 merge the body into contact {id}; 404 if unknown
    PUT   /contacts/by-key/{external_id} upsert keyed by external_id; 201 new, 200 replaced
    DELETE /contacts/{id}                delete contact {id}; 200 {"id", "deleted": true}; 404 if unknown
    DELETE /contacts/by-key/{external_id} the same, by external_id
    GET   /contacts                      {"data": [every contact]}
    POST  /contacts/batch/upsert         {"inputs": [record, ...]}: each upserted by its "key";
                                         200 {"results": [one entry per input, in order]}, an
                                         entry {"id", "key", "status"} or {"key", "error": {...}}
    POST  /contacts/batch/atomic         [record, ...]: all upserted by "key", or none: 200
                                         {"written": n}, or 422 naming the first bad input
    GET   /stats                         writes in flight now, the most seen, writes started

A batch holds at most `batch_max` (100) inputs, else 400; an input without
a string "key" is refused like a faulty one. Every write (POST, PATCH, PUT,
DELETE; a batch is one) takes `latency` seconds and counts as in flight from
its arrival until its answer is ready (`max_in_flight`, also in GET /stats;
`reset_stats()` or POST /stats/reset start it again); two writes on one
object path at once count in `overlaps`.

It honours `Idempotency-Key` on POST (a repeated key answers the first
object, or the first answer of a batch, again and writes nothing), records
every request in `request_log` (GET /stats aside), and injects faults on
demand: `fail_status_for` (a body-field table or a predicate -> a 4xx with
{"error": ...}; per input in a batch), `fail_next(n, status)` (with
`Retry-After: retry_after` on a 429 when `retry_after` is set) and
`drop_after_commit_next(n)` (commit a create or a batch, then close the
connection with no answer: the lost-response case). With `token`, every
request needs `Authorization: Bearer <token>` or gets 401.

    python -m runner.dev.fake_crm --port 8766 --latency-ms 20   # runs in the foreground
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from runner.dev.localserver import Handler, LocalServer

# a predicate on the request body returns None (accept) or (status, error text)
FaultRule = Callable[[dict[str, Any]], tuple[int, str] | None]
# or a table: field -> {value: status}, e.g. {"email": {"bad@example.com": 422}}
FaultTable = Mapping[str, Mapping[Any, int]]


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # the decoded JSON body, or None
    at: float = 0.0  # time.monotonic() when it was handled


WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


class _Handler(Handler):
    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = Handler.dispatch


class FakeCrm(LocalServer):
    """An in-memory contacts API on loopback; `start()` returns its base URL."""

    handler_class = _Handler
    thread_name = "fake-crm"

    def __init__(
        self,
        port: int = 0,
        *,
        token: str | None = None,
        fail_status_for: FaultRule | FaultTable | None = None,
        latency: float = 0.0,
        retry_after: float | None = None,
        batch_max: int = 100,
    ) -> None:
        super().__init__(port)
        self.token = token
        self.fail_status_for = fail_status_for
        self.latency = latency  # seconds every write takes
        self.retry_after = retry_after  # the Retry-After of a 429, if any
        self.batch_max = batch_max
        self.in_flight = 0
        self.max_in_flight = 0
        self.writes_started = 0
        self.overlaps = 0  # writes that arrived while another was in flight on the same object path
        self._busy: dict[str, int] = {}
        self._answers: dict[str, tuple[int, Any]] = {}  # Idempotency-Key -> a batch's first answer
        self.objects: dict[str, dict[str, Any]] = {}
        self.request_log: list[LoggedRequest] = []
        self._by_key: dict[str, str] = {}  # external_id -> id (PUT by-key)
        self._idempotent: dict[str, str] = {}  # Idempotency-Key -> id
        self._next_id = 1
        self._fail_next: list[int] = []
        self._drop_next = 0
        self._lock = threading.Lock()

    # --- faults ----------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next `n` requests with `status` (no side effect)."""
        with self._lock:
            self._fail_next.extend([status] * n)

    def drop_after_commit_next(self, n: int = 1) -> None:
        """For the next `n` creates: commit the object, then close the connection unanswered."""
        with self._lock:
            self._drop_next += n

    # --- views -----------------------------------------------------------------

    def writes(self) -> list[LoggedRequest]:
        """The logged POST, PATCH and PUT requests."""
        return [r for r in self.request_log if r.method in ("POST", "PATCH", "PUT")]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                "writes_started": self.writes_started, "overlaps": self.overlaps, "objects": len(self.objects),
            }

    def reset_stats(self) -> None:
        with self._lock:
            self.max_in_flight = self.in_flight
            self.writes_started = self.overlaps = 0

    # --- request handling -------------------------------------------------------

    def handle(self, handler: Handler) -> None:
        """Decode the request, answer it with `_handle`, and write the JSON answer."""
        raw = handler.read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in handler.headers.items()}
        method, path = handler.command, urlsplit(handler.path).path
        if path.rstrip("/") in ("/stats", "/stats/reset"):
            if method == "POST":
                self.reset_stats()
            handler.send_reply(200, json.dumps(self.stats()).encode())
            return
        write = method in WRITE_METHODS
        if write:
            self._arrive(method, path)
        try:
            if write and self.latency > 0:
                time.sleep(self.latency)
            status, answer, drop = self._handle(method, path, headers, body)
        finally:
            if write:  # before the answer goes out: the client may send its next write at once
                self._depart(method, path)
        if drop:
            handler.drop()  # committed, never answered: the client sees the connection close
            return
        extra = [("Retry-After", f"{self.retry_after:g}")] if status == 429 and self.retry_after is not None else []
        handler.send_reply(status, json.dumps(answer).encode(), headers=extra)

    def _arrive(self, method: str, path: str) -> None:
        with self._lock:
            self.in_flight += 1
            self.writes_started += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if method != "POST":  # a PATCH, PUT or DELETE names one object in its path
                self.overlaps += self._busy.get(path, 0) > 0
                self._busy[path] = self._busy.get(path, 0) + 1

    def _depart(self, method: str, path: str) -> None:
        with self._lock:
            self.in_flight -= 1
            if method != "POST":
                self._busy[path] -= 1

    def _handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any, bool]:
        """Return (status, JSON answer, drop connection)."""
        with self._lock:
            self.request_log.append(LoggedRequest(method, path, headers, body, time.monotonic()))
            if self._fail_next:
                status = self._fail_next.pop(0)
                return status, {"error": "rate limited" if status == 429 else "service unavailable"}, False
            if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                return 401, {"error": "unauthorized"}, False
            if path.startswith("/contacts/batch/"):
                return self._batch(method, path, headers.get("idempotency-key"), body)
            if method in ("POST", "PATCH", "PUT"):
                if not isinstance(body, dict):
                    return 400, {"error": "body must be a JSON object"}, False
                fault = self._fault(body)
                if fault is not None:
                    return fault[0], {"error": fault[1]}, False
            return self._route(method, path, headers, body)

    def _fault(self, body: dict[str, Any]) -> tuple[int, str] | None:
        rule = self.fail_status_for
        if rule is None:
            return None
        if callable(rule):
            return rule(body)
        for name, table in rule.items():
            value = body.get(name)
            if isinstance(value, (str, int, float, bool)) and value in table:
                return table[value], f"invalid {name}"
        return None

    def _route(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any, bool]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] != "contacts":
            return 404, {"error": "not found"}, False
        if method == "GET" and len(parts) == 1:
            return 200, {"data": list(self.objects.values())}, False
        if method == "POST" and len(parts) == 1:
            return self._create(headers.get("idempotency-key"), body)
        if method == "PATCH" and len(parts) == 2:
            return self._patch(parts[1], body)
        if method == "PUT" and len(parts) == 3 and parts[1] == "by-key":
            return self._put_by_key(parts[2], body)
        if method == "DELETE" and len(parts) == 2:
            return self._delete(parts[1])
        if method == "DELETE" and len(parts) == 3 and parts[1] == "by-key":
            return self._delete(self._by_key.get(parts[2]))
        return 405, {"error": f"{method} not allowed on {path}"}, False

    def _create(self, key: str | None, body: dict[str, Any]) -> tuple[int, Any, bool]:
        if key is not None and key in self._idempotent:
            return 201, self.objects[self._idempotent[key]], False
        obj = self._new(body)
        if key is not None:
            self._idempotent[key] = obj["id"]
        drop = self._drop_next > 0
        if drop:
            self._drop_next -= 1
        return 201, obj, drop

    def _patch(self, object_id: str, body: dict[str, Any]) -> tuple[int, Any, bool]:
        if object_id not in self.objects:
            return 404, {"error": f"no contact {object_id}"}, False
        self.objects[object_id].update({k: v for k, v in body.items() if k != "id"})
        return 200, self.objects[object_id], False

    def _put_by_key(self, external_id: str, body: dict[str, Any]) -> tuple[int, Any, bool]:
        obj, created = self._upsert_by_key(external_id, body)
        return 201 if created else 200, obj, False

    def _upsert_by_key(self, external_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        object_id = self._by_key.get(external_id)
        if object_id is None or object_id not in self.objects:
            obj = self._new(body)
            self._by_key[external_id] = obj["id"]
            return obj, True
        self.objects[object_id] = {**body, "id": object_id}
        return self.objects[object_id], False

    # --- batches ------------------------------------------------------------------

    def _batch(self, method: str, path: str, key: str | None, body: Any) -> tuple[int, Any, bool]:
        """A batch route; a repeated Idempotency-Key gets the first answer and writes nothing."""
        if key is not None and key in self._answers:
            status, answer = self._answers[key]
            return status, answer, False
        kind = path.rstrip("/").rsplit("/", 1)[-1]
        if kind not in ("upsert", "atomic"):
            return 404, {"error": f"no batch route {path}"}, False
        if method != "POST":
            return 405, {"error": f"{method} not allowed on {path}"}, False
        inputs = body.get("inputs") if kind == "upsert" and isinstance(body, dict) else body
        if (kind == "upsert" and not isinstance(body, dict)) or not isinstance(inputs, list) or not inputs:
            shape = '{"inputs": [records]}' if kind == "upsert" else "a JSON list of records"
            return 400, {"error": f"the body must be {shape}"}, False
        if len(inputs) > self.batch_max:
            return 400, {"error": f"at most {self.batch_max} inputs in one batch, got {len(inputs)}"}, False
        status, answer = self._upsert_all(inputs) if kind == "upsert" else self._atomic(inputs)
        if key is not None and status < 300:
            self._answers[key] = (status, answer)
        drop = self._drop_next > 0 and status < 300
        if drop:
            self._drop_next -= 1
        return status, answer, drop

    def _upsert_all(self, inputs: list[Any]) -> tuple[int, Any]:
        """Each input alone: its entry is the object's id, or its error."""
        results: list[dict[str, Any]] = []
        for item in inputs:
            refused = self._refused(item)
            if refused is not None:
                key = item.get("key") if isinstance(item, dict) else None
                results.append({"key": key, "error": {"status": refused[0], "message": refused[1]}})
                continue
            obj, created = self._upsert_by_key(item["key"], item)
            results.append({"id": obj["id"], "key": item["key"], "status": "created" if created else "updated"})
        return 200, {"results": results}

    def _atomic(self, inputs: list[Any]) -> tuple[int, Any]:
        """All inputs or none: the first refused one fails the whole batch."""
        for index, item in enumerate(inputs):
            refused = self._refused(item)
            if refused is not None:
                return 422, {"error": f"input {index}: {refused[1]}; nothing was written"}
        for item in inputs:
            self._upsert_by_key(item["key"], item)
        return 200, {"written": len(inputs)}

    def _refused(self, item: Any) -> tuple[int, str] | None:
        if not isinstance(item, dict):
            return 400, "an input must be a JSON object"
        if not isinstance(item.get("key"), str) or not item["key"]:
            return 400, "an input needs a string 'key' to upsert by"
        return self._fault(item)

    def _delete(self, object_id: str | None) -> tuple[int, Any, bool]:
        if object_id is None or self.objects.pop(object_id, None) is None:
            return 404, {"error": f"no contact {object_id}"}, False
        self._by_key = {key: oid for key, oid in self._by_key.items() if oid != object_id}
        return 200, {"id": object_id, "deleted": True}, False

    def _new(self, body: dict[str, Any]) -> dict[str, Any]:
        object_id = f"c_{self._next_id}"
        self._next_id += 1
        self.objects[object_id] = {**body, "id": object_id}
        return self.objects[object_id]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.dev.fake_crm", description="Run the fake CRM API.")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN")
    parser.add_argument("--latency-ms", type=float, default=0, help="milliseconds every write takes")
    parser.add_argument("--batch-max", type=int, default=100, help="most inputs one batch may hold")
    args = parser.parse_args(argv)
    crm = FakeCrm(args.port, token=args.token, latency=args.latency_ms / 1000, batch_max=args.batch_max)
    base_url = crm.start()
    print(base_url, flush=True)  # a dev server's one line of output
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        crm.stop()


if __name__ == "__main__":
    main()
