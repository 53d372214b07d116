"""The `http` target: each write is one request to a REST API, through the same client as the source.

Two modes, as the pipeline file says:

* `upsert: {method, path}` sends every write with that method and path.
* `create` + `update`: a `create` write (or an `update` whose key has no
  target id yet while the update path needs one) goes out with `create`, and
  `create.id_path` (JMESPath) reads the new object's id from the response;
  it is returned in `WriteResult.target_ids` and the engine keeps it in the
  state store. An `update` write goes out with `update`, its `{target_id}`
  filled from that id.
* `batch`: creates and updates go out `size` at a time in one request each
  (`runner.targets.http_batch` builds the body and reads the answer).

The URL is `base_url` followed by the path, whose `{external_id}` and
`{target_id}` are filled URL-quoted. The body is the mapped record as JSON.

Idempotency: with `idempotency_key` (the default) every POST carries an
`Idempotency-Key` that is the SHA-256 (hex) of the pipeline name, the
operation, the key and the canonical JSON of the body. The same content gives
the same header, so a create retried after a lost response (or re-sent by a
later run after its page failed) does not make a second object on a target
that honours the header; and the client retries a POST only when it carries
the header. PUT and PATCH writes carry the whole mapped record, so repeating
one sets the same values: they are sent as idempotent (retried on 5xx and
dropped connections).

Outcomes: a 4xx that is about the record (400, 404, 409, 422 ...) fails that
record alone, its error text the status and the response's short error
message. 401, 403 and 407 are about the credentials, not the record: like a
5xx or a transport failure after retries, they raise FetchError and fail the
page (and the run). A 429 holds every write of the target for its
`Retry-After` (`runner.targets.throttle`); a write whose retries ran out on
429s is sent again until `retry.max_elapsed` has passed since it was first
sent, and only then fails the page.

Concurrency: the requests of a page go out `concurrency` at a time
(`runner.targets.writepool`), two writes of one key never at once and in
page order; `write` returns when every request has an answer, so the engine
commits the page's state only then. All of them share this target's client:
one connection pool, and one `rate_limit`, apart from the source's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal
from urllib.parse import quote

import httpx

from runner import log
from runner.http.client import HttpClient
from runner.errors import FetchError, TargetError
from runner.http.transport import LazyTlsTransport
from runner.model import HttpOperation, HttpTargetConfig
from runner.targets.base import OnAnswered, Write, WriteResult
from runner.targets.http_batch import batch_body, batch_key, batch_outcome, content_key, every_failed
from runner.targets.throttle import Throttle, ThrottledTransport
from runner.targets.writepool import Unit, WritePool

logger = logging.getLogger(__name__)

# statuses that say nothing about the record: failing record after record would be noise
PAGE_FAILURES = frozenset({401, 403, 407, 429})
ERROR_FIELDS = ("error", "message", "detail", "error_description", "title")
GONE = frozenset({404, 410})  # the answers to a delete that say the object is not there: done

Role = Literal["create", "update", "upsert"]
BATCHED = frozenset({"create", "update"})  # the ops `batch` carries; any other goes one by one


class RecordRejected(Exception):
    """One record failed; its message is the error text the state store keeps."""


class HttpTarget:
    """Writes a page as requests (one per write, or per batch), `concurrency` at a time;
    returns new ids and per-record errors."""

    def __init__(
        self,
        config: HttpTargetConfig,
        *,
        pipeline: str,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if config.batch is None and config.upsert is None and (config.create is None or config.update is None):
            raise TargetError("http target: give either `upsert` or both `create` and `update` (or `batch`)")
        self._config = config
        self._pipeline = pipeline
        self._base_url = config.base_url.rstrip("/")
        retry = config.retry
        self._throttle = Throttle(
            backoff_initial=retry.backoff_initial, backoff_max=retry.backoff_max, max_elapsed=retry.max_elapsed,
            sleep=sleep,
        )
        transport = ThrottledTransport(transport if transport is not None else LazyTlsTransport(), self._throttle)
        self._pool = WritePool(config.concurrency)
        self._client = HttpClient(
            timeout=config.timeout,
            retry=config.retry,
            rate_limit=config.rate_limit,
            auth=config.auth,
            headers=config.headers,
            transport=transport,
            sleep=sleep,
            logger_name="runner.http.target",
            origin=self._base_url,  # credentials go to base_url's origin (and auth.hosts) only
        )

    @property
    def requests(self) -> int:
        return self._client.requests

    @property
    def retries(self) -> int:
        return self._client.retries

    def write(self, writes: Sequence[Write]) -> WriteResult:
        """Send the page's writes, `concurrency` requests at a time; return when each has an
        answer. A record-level 4xx is kept in `errors`; anything else raises, with the ids of
        what was created meanwhile on the error's `partial`."""
        return self._pool.run(self._units(writes))

    def write_journaled(self, writes: Sequence[Write], on_answered: OnAnswered) -> WriteResult:
        """`write`, telling each request's keys and outcome as its answer arrives."""
        return self._pool.run(self._units(writes), on_answered)

    def close(self) -> None:
        self._pool.close()
        self._client.close()

    def _units(self, writes: Sequence[Write]) -> list[Unit]:
        """One unit per request, in page order: each batched write joins the open batch (which
        goes out when full, or before a write of a key it holds), every other write is its own."""
        batch = self._config.batch
        units: list[Unit] = []
        chunk: dict[str, Write] = {}  # the open batch, by key

        def flush() -> None:
            if chunk:
                units.append(Unit(tuple(chunk), partial(self._send_batch, tuple(chunk.values()))))
                chunk.clear()

        for write in writes:
            if write.external_id in chunk:
                flush()  # a key's second write goes after the batch that holds its first
            if batch is not None and write.op in BATCHED:
                chunk[write.external_id] = write
                if len(chunk) >= batch.size:
                    flush()
            else:
                units.append(Unit((write.external_id,), partial(self._send_single, write)))
        flush()
        return units

    def _send_single(self, write: Write) -> WriteResult:
        """One write, one request: its new id, or its error when the target refused the record."""
        try:
            target_id = self._write_one(write)
        except RecordRejected as exc:
            return self._rejected(WriteResult(errors={write.external_id: str(exc)}))
        return WriteResult(target_ids={} if target_id is None else {write.external_id: target_id})

    def _send_batch(self, writes: Sequence[Write]) -> WriteResult:
        """One batch, one request: per-record outcomes from its answer, or all failed by a 4xx."""
        batch = self._config.batch
        assert batch is not None, "only a target with `batch` makes batch units"
        method = batch.method.upper()
        headers: dict[str, str] = {}
        if method == "POST" and self._config.idempotency_key:
            headers["Idempotency-Key"] = batch_key(self._pipeline, writes)
        try:
            response = self._request(method, self._join(batch.path), batch_body(batch, writes), headers)
        except RecordRejected as exc:
            return self._rejected(every_failed(writes, str(exc)))
        return self._rejected(batch_outcome(batch, writes, response))

    def _rejected(self, result: WriteResult) -> WriteResult:
        for key, error in result.errors.items():
            log.event(logger, "target.record_failed", level=logging.WARNING, external_id=key, error=error)
        return result

    # --- one write ----------------------------------------------------------------

    def _write_one(self, write: Write) -> str | None:
        """Send one write; return the new target id of a create, if there is one."""
        if write.op == "delete":
            self._delete(write)
            return None
        upsert, create, update = self._config.upsert, self._config.create, self._config.update
        if upsert is not None:
            self._send("upsert", upsert, write)
            return None
        if create is None or update is None:  # ruled out in __init__; narrows the types
            raise TargetError("http target: give either `upsert` or both `create` and `update`")
        if write.op == "update" and (write.target_id is not None or not _needs_target_id(update)):
            self._send("update", update, write)
            return None
        response = self._send("create", create, write)
        return None if create.id_path is None else _read_id(create, response)

    def _send(self, role: Role, operation: HttpOperation, write: Write) -> httpx.Response:
        method = operation.method.upper()
        headers: dict[str, str] = {}
        if method == "POST" and self._config.idempotency_key:
            headers["Idempotency-Key"] = idempotency_key(self._pipeline, role, write.external_id, write.record)
        return self._request(method, self._url(operation, write), write.record, headers)

    def _request(self, method: str, url: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        """Send until an answer < 400; a 4xx about the record raises RecordRejected.

        A write whose client gave up on 429s goes again (it waits for the throttle's hold)
        until `retry.max_elapsed` has passed since it was first sent."""
        first_sent = self._throttle.now()
        while True:
            try:
                return self._client.send(
                    method, url, json=body, headers=headers,
                    # a PUT or PATCH carries the whole record: repeating it is harmless
                    idempotent=None if method == "POST" else True,
                )
            except FetchError as exc:
                if exc.status == 429 and self._throttle.may_resend(first_sent):
                    continue
                if exc.status is not None and 400 <= exc.status < 500 and exc.status not in PAGE_FAILURES:
                    raise RecordRejected(_rejection(exc)) from exc
                raise

    def _delete(self, write: Write) -> None:
        """Send the `delete` request, without a body; a 404 or 410 answer means the object is
        gone already, which is what was asked: done."""
        operation = self._config.delete
        if operation is None:  # the loader refuses deletes without it
            raise TargetError("http target: deleting a key needs a `delete: {method, path}` operation")
        if write.target_id is None and _needs_target_id(operation):
            raise RecordRejected(
                f"key {write.external_id!r} has no stored target id to fill {{target_id}} in the delete path "
                f"{operation.path}; delete it on the target by hand, or use {{external_id}} in the path"
            )
        try:
            self._client.send(operation.method.upper(), self._url(operation, write), idempotent=True)
        except FetchError as exc:
            if exc.status in GONE:
                return
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in PAGE_FAILURES:
                raise RecordRejected(_rejection(exc)) from exc
            raise

    def _url(self, operation: HttpOperation, write: Write) -> str:
        path = operation.path.replace("{external_id}", quote(write.external_id, safe=""))
        if write.target_id is not None:
            path = path.replace("{target_id}", quote(write.target_id, safe=""))
        return self._join(path)

    def _join(self, path: str) -> str:
        return f"{self._base_url}/{path.lstrip('/')}"


def idempotency_key(pipeline: str, role: str, external_id: str, body: Any) -> str:
    """A write's Idempotency-Key: of pipeline, operation, key and body (`content_key`)."""
    return content_key([pipeline, role, external_id, body])


def _needs_target_id(operation: HttpOperation) -> bool:
    return "{target_id}" in operation.path


def _read_id(operation: HttpOperation, response: httpx.Response) -> str:
    """The new object's id from a create response, or RecordRejected saying why there is none."""
    if operation.id_path is None:
        raise TypeError("_read_id needs create.id_path")
    where = f"{operation.method.upper()} {log.redact_url(response.request.url)}"
    try:
        body = response.json()
    except ValueError as exc:
        raise RecordRejected(f"{where}: the create response is not JSON, so id_path cannot read the id") from exc
    value = operation.id_path.search(body)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        found = "nothing" if value is None else f"a {type(value).__name__}"
        raise RecordRejected(
            f"{where}: create.id_path `{operation.id_path.text}` found {found} in the response,"
            " not an id (string or integer); the object may exist on the target without a stored id"
        )
    return str(value)


def _rejection(exc: FetchError) -> str:
    """The record's error text: where, status, and the response's short error message."""
    message = _error_message(exc.detail)
    return f"{exc}: {message}" if message else str(exc)


def _error_message(detail: str) -> str:
    """The error text of a JSON error body (`error`, `message`, ...), else the raw excerpt."""
    try:
        body = json.loads(detail)
    except ValueError:
        return detail
    if isinstance(body, dict):
        for name in ERROR_FIELDS:
            value = body.get(name)
            if isinstance(value, dict):  # {"error": {"message": ...}}
                value = next((value[k] for k in ERROR_FIELDS if isinstance(value.get(k), str)), None)
            if isinstance(value, str) and value:
                return value
    return detail
