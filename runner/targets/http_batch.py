"""The http target's `batch`: many records in one request, and what the answer says of each.

`HttpTarget` cuts a page's creates and updates into batches of `size` and
sends each as one request (through its pool, `concurrency` at a time); this
module builds the request's body and `Idempotency-Key`, and reads the
answer:

* `body` (JMESPath, default `@`) on the list of the batch's mapped records.
* The key is the SHA-256 (hex) of the pipeline, `batch`, and each record's
  key and canonical JSON, in order: a batch re-sent with the same contents
  (a lost answer, a re-run after a kill) has the same key, so a target that
  honours it does not apply it twice.
* Without `results`, a 2xx answer wrote every record; the caller turns a
  4xx into an error of every record.
* With `results`, the answer must hold one entry per record, in order. An
  entry with a non-empty `error` or `errors` fails its record alone (its
  text kept); `id_path` reads each created record's id from its entry. An
  answer that cannot be matched to the records (not JSON, a list of another
  length) fails every record of the batch: no hash is stored for them, so
  the next run sends them again, which an upsert makes harmless.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import httpx

from runner import log
from runner.model import HttpBatch
from runner.targets.base import Write, WriteResult

ERROR_KEYS = ("error", "errors")
MESSAGE_KEYS = ("message", "error", "detail", "error_description", "title", "errorCode", "code")
MAX_ERROR_CHARS = 300


def batch_body(batch: HttpBatch, writes: Sequence[Write]) -> Any:
    records = [write.record for write in writes]
    return records if batch.body is None else batch.body.search(records)


def batch_key(pipeline: str, writes: Sequence[Write]) -> str:
    """The batch's Idempotency-Key: of the pipeline and every (key, record) of the batch, in order."""
    return content_key([pipeline, "batch", [[write.external_id, write.record] for write in writes]])


def content_key(content: Any) -> str:
    """SHA-256 hex of `content` as canonical JSON: the same content, the same Idempotency-Key."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def every_failed(writes: Sequence[Write], error: str) -> WriteResult:
    return WriteResult(errors={write.external_id: error for write in writes})


def batch_outcome(batch: HttpBatch, writes: Sequence[Write], response: httpx.Response) -> WriteResult:
    """Per-record outcomes of a 2xx answer to one batch."""
    if batch.results is None:
        return WriteResult()
    where = f"{response.request.method} {log.redact_url(response.request.url)}"
    try:
        body = response.json()
    except ValueError:
        return every_failed(writes, f"{where}: the batch answer is not JSON, so results `{batch.results.text}` "
                            "cannot say which records were written; they are sent again next run")
    entries = batch.results.search(body)
    if not isinstance(entries, list) or len(entries) != len(writes):
        found = f"{len(entries)} entries" if isinstance(entries, list) else _kind(entries)
        return every_failed(writes, f"{where}: results `{batch.results.text}` found {found} for a batch of "
                            f"{len(writes)} records (one entry per record, in order, is needed); they are sent "
                            "again next run")
    result = WriteResult()
    for index, (write, entry) in enumerate(zip(writes, entries, strict=True)):
        error = entry_error(entry)
        if error is not None:
            result.errors[write.external_id] = f"{where}: entry {index} of the batch: {error}"
            continue
        if batch.id_path is None:
            continue
        value = batch.id_path.search(entry)
        if _is_id(value):
            result.target_ids[write.external_id] = str(value)
        elif write.op == "create":
            result.errors[write.external_id] = (
                f"{where}: batch.id_path `{batch.id_path.text}` found {_kind(value)} in entry {index}, not an "
                "id (string or integer); the object may exist on the target without a stored id"
            )
    return result


def entry_error(entry: Any) -> str | None:
    """The error text of a result entry with a non-empty `error` or `errors`, else None."""
    if not isinstance(entry, dict):
        return None
    for name in ERROR_KEYS:
        value = entry.get(name)
        if value:
            return _text(value)[:MAX_ERROR_CHARS]
    return None


def _text(value: Any) -> str:
    """A message from a string, an error object, or a list of either."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "; ".join(_text(item) for item in value if item)
    if isinstance(value, dict):
        for name in MESSAGE_KEYS:
            if isinstance(value.get(name), str) and value[name]:
                return str(value[name])
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _is_id(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (str, int)) and value != ""


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"
