"""A local fake CRM API: the `http` target's counterpart in the demo and the tests.

A `LocalServer` on 127.0.0.1 that keeps contacts in memory:

    POST  /contacts                      create; 201 {"id": "c_<n>", ...fields}
    PATCH /contacts/{id}                 merge the body into contact {id}; 404 if unknown
    PUT   /contacts/by-key/{external_id} upsert keyed by external_id; 201 new, 200 replaced
    GET   /contacts                      {"data": [every contact]}

It honours `Idempotency-Key` on POST (a repeated key answers the first
object again and creates nothing), records every request in `request_log`,
and injects faults on demand: `fail_status_for` (a body-field table or a
predicate -> a 4xx with {"error": ...}), `fail_next(n, status)` and
`drop_after_commit_next(n)` (commit a create, then close the connection with
no answer: the lost-response case). With `token`, every request needs
`Authorization: Bearer <token>` or gets 401.

    python -m runner.dev.fake_crm --port 8766    # runs in the foreground
"""

from __future__ import annotations

import argparse
import json
import threading
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
    ) -> None:
        super().__init__(port)
        self.token = token
        self.fail_status_for = fail_status_for
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

    # --- request handling -------------------------------------------------------

    def handle(self, handler: Handler) -> None:
        """Decode the request, answer it with `_handle`, and write the JSON answer."""
        raw = handler.read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in handler.headers.items()}
        status, answer, drop = self._handle(handler.command, urlsplit(handler.path).path, headers, body)
        if drop:
            handler.drop()  # committed, never answered: the client sees the connection close
            return
        handler.send_reply(status, json.dumps(answer).encode())

    def _handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any, bool]:
        """Return (status, JSON answer, drop connection)."""
        with self._lock:
            self.request_log.append(LoggedRequest(method, path, headers, body))
            if self._fail_next:
                return self._fail_next.pop(0), {"error": "service unavailable"}, False
            if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                return 401, {"error": "unauthorized"}, False
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
        object_id = self._by_key.get(external_id)
        if object_id is None:
            obj = self._new(body)
            self._by_key[external_id] = obj["id"]
            return 201, obj, False
        self.objects[object_id] = {**body, "id": object_id}
        return 200, self.objects[object_id], False

    def _new(self, body: dict[str, Any]) -> dict[str, Any]:
        object_id = f"c_{self._next_id}"
        self._next_id += 1
        self.objects[object_id] = {**body, "id": object_id}
        return self.objects[object_id]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.dev.fake_crm", description="Run the fake CRM API.")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN")
    args = parser.parse_args(argv)
    crm = FakeCrm(args.port, token=args.token)
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
