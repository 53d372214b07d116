"""The `http` target: each write is one request to a REST API, through the same client as the source.

Two modes, as the pipeline file says:

* `upsert: {method, path}` sends every write with that method and path.
* `create` + `update`: a `create` write (or an `update` whose key has no
  target id yet while the update path needs one) goes out with `create`, and
  `create.id_path` (JMESPath) reads the new object's id from the response;
  it is returned in `WriteResult.target_ids` and the engine keeps it in the
  state store. An `update` write goes out with `update`, its `{target_id}`
  filled from that id.

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
message. 401, 403, 407 and 429 are about the credentials or the rate, not
the record: like a 5xx or a transport failure after retries, they raise
FetchError and fail the page (and the run).

The writes of a page are sent one after another, in order: simple, and the
order of a page is kept. A page's throughput is one round trip per record
(plus the target's `rate_limit`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import quote

import httpx

from runner import log
from runner.http.client import HttpClient
from runner.errors import EtlError, FetchError, TargetError
from runner.model import HttpOperation, HttpTargetConfig
from runner.targets.base import Write, WriteResult

logger = logging.getLogger(__name__)

# statuses that say nothing about the record: failing record after record would be noise
PAGE_FAILURES = frozenset({401, 403, 407, 429})
ERROR_FIELDS = ("error", "message", "detail", "error_description", "title")

Role = Literal["create", "update", "upsert"]


class RecordRejected(Exception):
    """One record failed; its message is the error text the state store keeps."""


class HttpTarget:
    """Writes each record of a page as one request; returns new ids and per-record errors."""

    def __init__(
        self,
        config: HttpTargetConfig,
        *,
        pipeline: str,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if config.upsert is None and (config.create is None or config.update is None):
            raise TargetError("http target: give either `upsert` or both `create` and `update`")
        self._config = config
        self._pipeline = pipeline
        self._base_url = config.base_url.rstrip("/")
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
        """Send the page's writes in order; a record-level 4xx is kept, anything else raises."""
        result = WriteResult()
        for write in writes:
            try:
                target_id = self._write_one(write)
            except EtlError as exc:
                # the page fails, but the objects created before it exist: hand their ids
                # back so the engine keeps them and the next run updates, never re-creates
                exc.partial = result
                raise
            except RecordRejected as exc:
                result.errors[write.external_id] = str(exc)
                log.event(
                    logger, "target.record_failed", level=logging.WARNING,
                    external_id=write.external_id, error=str(exc),
                )
                continue
            if target_id is not None:
                result.target_ids[write.external_id] = target_id
        return result

    def close(self) -> None:
        self._client.close()

    # --- one write ----------------------------------------------------------------

    def _write_one(self, write: Write) -> str | None:
        """Send one write; return the new target id of a create, if there is one."""
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
        try:
            return self._client.send(
                method,
                self._url(operation, write),
                json=write.record,
                headers=headers,
                # a PUT or PATCH carries the whole record: repeating it is harmless
                idempotent=None if method == "POST" else True,
            )
        except FetchError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in PAGE_FAILURES:
                raise RecordRejected(_rejection(exc)) from exc
            raise

    def _url(self, operation: HttpOperation, write: Write) -> str:
        path = operation.path.replace("{external_id}", quote(write.external_id, safe=""))
        if write.target_id is not None:
            path = path.replace("{target_id}", quote(write.target_id, safe=""))
        return f"{self._base_url}/{path.lstrip('/')}"


def idempotency_key(pipeline: str, role: str, external_id: str, body: Any) -> str:
    """SHA-256 hex of pipeline, operation, key and canonical JSON body: same content, same key."""
    canonical = json.dumps(
        [pipeline, role, external_id, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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
