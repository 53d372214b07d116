"""The StateStore protocol, the plain records it reads and writes, and what both
backends share: the run lock's shape (`LockingStore`), `show` (`build_show` over
`StateQueries`), failure keys, timestamps and the lock holder checks.

Also shared: what keeps secrets out of the store (`stored_checkpoint`,
`stored_failures`: a query value that is a known secret, or the api_key's own
query parameter, is dropped from a stored next request, which is complete
again when resumed because the client adds the credential to every request;
a failed record's raw text has every secret replaced by `***`), and what
turns a state row that cannot be read into one StateError naming the
pipeline, the table and what to do (`read_json`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, TypeAlias
from urllib.parse import unquote_plus

from runner import log
from runner.errors import StateError
from runner.transform.expressions import json_kind


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the store knows of one external_id: its content hash and target id."""

    hash: str | None
    target_id: str | None = None


@dataclass(frozen=True, slots=True)
class FailedRecord:
    """A record that could not be mapped or written, kept until it succeeds."""

    external_id: str | None
    raw: Any
    error: str


@dataclass(slots=True)
class RunRecord:
    """One run as the store records it; `counts` are the run's totals."""

    run_id: str
    status: str = "running"
    started_at: str = ""
    finished_at: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PageCommit:
    """Everything one committed page changes in the store, written in one transaction."""

    hashes: Sequence[tuple[str, str | None, str | None]]  # (external_id, hash, target_id)
    failed: Sequence[FailedRecord]
    succeeded: Sequence[str]  # keys whose earlier failures are cleared
    checkpoint: str | None
    # child resources' work that this page's records make: (child's state key, parent key,
    # the parent's source record as JSON), recorded with the page (resources, parent/child)
    pending: Sequence[tuple[str, str, str]] = ()
    done: Sequence[str] = ()  # parent keys whose children this page completes: their work goes
    # deletes.missing on a child resource: the parent each child key was read under, and the
    # parents whose children were read completely (marked with `sweep`)
    parent_of: Sequence[tuple[str, str]] = ()
    swept: Sequence[str] = ()
    deleted: Sequence[str] = ()  # keys deleted in the target: their rows (hash, target id) go
    seen: Sequence[str] = ()  # keys the run read (deletes.missing): marked with `sweep`
    sweep: str | None = None


class StateStore(Protocol):
    """Per pipeline: key hashes and target ids, watermark, checkpoint, failed records, runs, lock."""

    location: str  # where the store is, for messages: a path, or host:port/dbname

    def lock(self, pipeline: str, run_id: str) -> AbstractContextManager[None]:
        """Hold the pipeline's run lock for the block; raise LockError while a live run holds it."""
        ...

    def unlock(self, pipeline: str, *, force: bool = False) -> bool:
        """Remove the pipeline's lock; True when there was one. A holder alive on this host
        is refused (LockError) unless `force`; one elsewhere cannot be checked."""
        ...

    def knows(self, pipeline: str) -> bool:
        """Whether the store holds anything of the pipeline (a run, a key, a lock...)."""
        ...

    def watermark(self, pipeline: str) -> Any:
        """The incremental cursor value saved by the last run (a JSON value), or None."""
        ...

    def checkpoint(self, pipeline: str) -> str | None:
        """Where an unfinished run stopped (JSON text), or None."""
        ...

    def key_states(self, pipeline: str, keys: Sequence[str]) -> dict[str, KeyState]:
        """What is known of each of `keys`; a key never written is left out."""
        ...

    def commit_page(self, pipeline: str, commit: PageCommit) -> None:
        """Write one page's hashes, failures and checkpoint in one transaction; remove the rows
        of its deleted keys, and mark its seen keys with its sweep."""
        ...

    def count_keys(self, pipeline: str, sweep: str) -> tuple[int, int]:
        """(keys held, keys of them not marked seen by `sweep`)."""
        ...

    def count_orphans(self, pipeline: str, parent: str, sweep: str) -> tuple[int, int]:
        """A child resource's (keys held, keys deletes.missing removes): those last read under
        a parent whose children run `sweep` read completely and did not read now, and those
        whose parent the state of `parent` (the parent resource's key) no longer holds."""
        ...

    def orphan_keys(self, pipeline: str, parent: str, sweep: str, *, after: str, limit: int) -> list[str]:
        """The keys `count_orphans` counts as missing, in key order, past `after`."""
        ...

    def unseen_keys(self, pipeline: str, sweep: str, *, after: str, limit: int) -> list[str]:
        """Up to `limit` keys after `after` (in key order) not marked seen by `sweep`."""
        ...

    def start_run(self, pipeline: str, run: RunRecord) -> None:
        """Record a run as started."""
        ...

    def finish_run(self, pipeline: str, run: RunRecord, *, watermark: Any, clear_checkpoint: bool) -> None:
        """Record a run's end; save `watermark` unless None, and clear the checkpoint if asked."""
        ...

    def show(self, pipeline: str, *, runs: int = 10, failed: int = 20) -> dict[str, Any]:
        """Everything `etl state show` prints, as a JSON-ready dict (see `build_show`)."""
        ...

    def pending_work(self, pipeline: str, *, after: int, limit: int) -> list[tuple[int, str, str]]:
        """A child resource's recorded work, oldest first, past sequence number `after`:
        (sequence, parent key, parent record as JSON)."""
        ...

    def resources(self, pipeline: str) -> list[str]:
        """The state keys of a resources-form pipeline's resources (`name/resource`), sorted."""
        ...

    def reset(self, pipeline: str) -> None:
        """Under the pipeline's lock (LockError while a run holds it): clear watermark,
        checkpoint, hashes and failures; keep target ids."""
        ...

    def close(self) -> None:
        """Release what the store holds (its connection, its locks)."""
        ...


class LockingStore:
    """A base for stores: `lock()` acquires, runs the block, releases; a read-only store
    takes no lock. Each store supplies `_acquire` and `_release`."""

    read_only: bool

    @contextmanager
    def lock(self, pipeline: str, run_id: str) -> Iterator[None]:
        """Hold the pipeline's run lock for the block (none when read-only)."""
        if self.read_only:
            yield
            return
        self._acquire(pipeline, run_id)
        try:
            yield
        finally:
            self._release(pipeline, run_id)

    def _acquire(self, pipeline: str, run_id: str) -> None:
        raise NotImplementedError

    def _release(self, pipeline: str, run_id: str) -> None:
        raise NotImplementedError


def reset_run_id() -> str:
    """The lock holder's run id that `reset` writes while it holds a pipeline's lock."""
    return "reset-" + uuid.uuid4().hex[:12]


# --- show ------------------------------------------------------------------------------

# run_id, status, started_at, finished_at, counts
RunRow: TypeAlias = tuple[str, str, str, str | None, dict[str, Any]]
# external_id, error, failed_at, the raw record as JSON text
FailureRow: TypeAlias = tuple[str | None, str, str, str]


class StateQueries(Protocol):
    """The reads `build_show` (and a store's watermark and checkpoint) are made of; each
    backend answers them with its own SQL. A row that cannot be read is a StateError."""

    def pipeline_row(self, pipeline: str) -> tuple[Any, str | None] | None:
        """(watermark as its JSON value, checkpoint), or None for a pipeline never seen."""
        ...

    def knows(self, pipeline: str) -> bool:
        """Whether any table holds a row of the pipeline."""
        ...

    def count(self, table: Literal["keys", "failed", "pending"], pipeline: str) -> int:
        """The number of the pipeline's rows in `table`."""
        ...

    def lock_holder(self, pipeline: str) -> dict[str, Any] | None:
        """run_id, pid, host, acquired_at of the lock's holder, or None when none holds it."""
        ...

    def runs(self, pipeline: str, limit: int) -> Sequence[RunRow]:
        """The last `limit` runs, newest first."""
        ...

    def failures(self, pipeline: str, limit: int) -> Sequence[FailureRow]:
        """The last `limit` failed records, newest first."""
        ...


def build_show(queries: StateQueries, pipeline: str, *, runs: int, failed: int, where: str) -> dict[str, Any]:
    """The dict `StateStore.show` returns, the same keys for every backend. A row that cannot
    be read is a StateError; secret values and credential query values are masked."""
    row = queries.pipeline_row(pipeline)
    watermark, checkpoint = (None, None) if row is None else row
    if checkpoint is not None:
        checkpoint = _shown_checkpoint(checkpoint, where, pipeline)
    return {
        "pipeline": pipeline,
        "watermark": watermark,
        "checkpoint": checkpoint,
        "keys": queries.count("keys", pipeline),
        "pending": queries.count("pending", pipeline),  # child work recorded, not yet done
        "lock": queries.lock_holder(pipeline),
        "runs": [
            {"run_id": run_id, "status": status, "started_at": started, "finished_at": finished,
             **_counts(counts, where, pipeline, run_id)}
            for run_id, status, started, finished, counts in queries.runs(pipeline, runs)
        ],
        "failed_total": queries.count("failed", pipeline),
        "failed": [
            {"external_id": external_id, "error": error, "failed_at": failed_at,
             "raw": read_json(raw, where, pipeline, "a failed record's raw text in table failed", reset_clears_failed)}
            for external_id, error, failed_at, raw in queries.failures(pipeline, failed)
        ],
    }


def _counts(counts: Any, where: str, pipeline: str, run_id: str) -> dict[str, Any]:
    if not isinstance(counts, dict):
        what = f"the counts column of run {run_id} in table runs"
        raise unreadable(where, pipeline, f"{what} is {json_kind(counts)}, not an object", reset_drops_runs(pipeline))
    return counts


def _shown_checkpoint(text: str, where: str, pipeline: str) -> str:
    """A checkpoint for `etl state show`, the values of secret-named query parameters
    (`api_key`, `token`, ... and an api_key's own name) masked in its request: a state file
    written before secrets were kept out of it may hold them. Text that is not JSON is a
    StateError; JSON that is not a checkpoint is shown as it is (the run says what is wrong)."""
    data = read_json(text, where, pipeline, "the checkpoint in table pipelines", restart_or_reset)
    request = data.get("next") if isinstance(data, dict) else None
    if not (isinstance(request, dict) and isinstance(request.get("url"), str)):
        return text
    url, params = request["url"], request.get("params")
    request["url"] = log.mask_query(url)
    if isinstance(params, dict):
        request["params"] = {name: log.MASK if log.is_secret_param(name) else value for name, value in params.items()}
    return text if (request["url"], request.get("params")) == (url, params) else json.dumps(data)


# --- rows that cannot be read ----------------------------------------------------------


# what to do about a row that cannot be read: each names the command that clears it
def reset_clears(pipeline: str) -> str:
    return f"run `etl state reset {pipeline}` to clear it (the next run reads everything again)"


def reset_drops_runs(pipeline: str) -> str:
    return f"run `etl state reset {pipeline}`: it also drops the run rows it cannot read"


def reset_clears_failed(pipeline: str) -> str:
    return f"run `etl state reset {pipeline}` to clear the failed records"


def restart_or_reset(pipeline: str) -> str:
    return f"run `etl run --restart` to ignore it, or `etl state reset {pipeline}` to clear it"


def unreadable(where: str, pipeline: str, problem: str, remedy: str) -> StateError:
    """The one-line error of a state row that cannot be read: where, whose, what, what to do."""
    return StateError(f"{where}: pipeline {pipeline!r}: {problem}; {remedy}")


def read_json(text: str, where: str, pipeline: str, what: str, remedy: Callable[[str], str] = reset_clears) -> Any:
    """`text` (a state row's JSON column) decoded, or a StateError saying `what` is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise unreadable(where, pipeline, f"{what} is not JSON ({reason})", remedy(pipeline)) from None


# --- no secret in the store -----------------------------------------------------------------


def stored_checkpoint(text: str | None) -> str | None:
    """The checkpoint as the store keeps it: no secret query value, no credential parameter.

    A query parameter (in `next.url` or `next.params`) whose value holds a known secret,
    or whose name is the api_key's own query parameter, is removed; the client adds the
    credential back to every request it sends, so the resumed request is complete. A
    checkpoint that would still hold a secret elsewhere (a URL path, the watermark) is not
    kept at all: the next run then starts from the beginning, which upserts make harmless.
    """
    if text is None:
        return None
    names = log.credential_params()
    if not log.holds_secret(text) and not any(name in text for name in names):
        return text  # the common case: nothing to remove
    try:
        data = json.loads(text)
        request = data["next"]
        request["url"] = _without_secret_params(request["url"], names)
        if request.get("params"):
            request["params"] = {
                name: value for name, value in request["params"].items()
                if not _secret_param(str(name), json.dumps(value, default=str), names)
            }
        kept = json.dumps(data)
    except (ValueError, TypeError, KeyError, AttributeError):
        kept = text
    if log.holds_secret(kept):
        log.event(
            logging.getLogger("runner.state"), "state.checkpoint_dropped", level=logging.WARNING,
            reason="the checkpoint holds a secret outside its query; the next run starts from the beginning",
        )
        return None
    return kept


def _without_secret_params(url: str, names: frozenset[str]) -> str:
    """`url` without the query parameters that `_secret_param` picks; otherwise as written."""
    head, mark, rest = url.partition("?")
    if not mark:
        return url
    query, hash_mark, fragment = rest.partition("#")
    pairs = [pair for pair in query.split("&") if pair]
    kept = [pair for pair in pairs if not _secret_param(unquote_plus(pair.partition("=")[0]), pair, names)]
    if len(kept) == len(pairs):
        return url
    return head + ("?" + "&".join(kept) if kept else "") + hash_mark + fragment


def _secret_param(name: str, written: str, names: frozenset[str]) -> bool:
    """The api_key's own parameter, or one whose text (as written, or decoded) holds a secret."""
    return name in names or any(log.holds_secret(text) for text in (name, written, unquote_plus(written)))


def stored_failures(failed: Sequence[FailedRecord]) -> list[tuple[str, str | None, str, str]]:
    """(failure key, external_id, raw JSON text, error) per failed record, as the store keeps
    them: every known secret value replaced by `***`, the raw text still JSON."""
    rows = []
    for f in failed:
        raw, text = _stored_raw(f.raw)
        external_id = None if f.external_id is None else log.redact(f.external_id)
        rows.append((failure_key(external_id, raw), external_id, text, log.redact(f.error)))
    return rows


def stored_failure_key(external_id: str) -> str:
    """The failure key of a record that succeeded, as `stored_failures` wrote it."""
    return failure_key(log.redact(external_id), None)


def _stored_raw(raw: Any) -> tuple[Any, str]:
    """`raw` with every known secret replaced by `***` (in keys and values), and its JSON text.
    A record without a secret, the common case, costs one scan of its text."""
    text = json.dumps(raw, default=str)
    if not log.holds_secret(text):
        return raw, text
    raw = _scrub_value(raw)
    text = json.dumps(raw, default=str)
    if log.holds_secret(text):  # a secret across JSON's own syntax: keep the masked text, as a string
        raw = log.redact(text)
        text = json.dumps(raw)
    return raw, text


def _scrub_value(value: Any) -> Any:
    # records are at most 200 levels deep (the reader refuses deeper bodies): recursion is safe
    if isinstance(value, str):
        return log.redact(value)
    if isinstance(value, Mapping):
        return {log.redact(str(key)): _scrub_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_value(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return log.MASK if log.holds_secret(json.dumps(value)) else value
    return log.redact(str(value))  # as json.dumps(default=str) writes it


# --- shared by both backends ----------------------------------------------------------------


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds, as the stores write it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def failure_key(external_id: str | None, raw: Any) -> str:
    """Failures are kept per key; a record without a key is kept per raw content."""
    if external_id is not None:
        return "id:" + external_id
    return "raw:" + json.dumps(raw, sort_keys=True, default=str)[:500]


def log_takeover(pipeline: str, run_id: str, pid: int, host: str) -> None:
    """A lock whose process is gone is taken over; say so in the log."""
    log.event(
        logging.getLogger("runner.state"), "lock.taken_over", level=logging.WARNING,
        stale_run_id=run_id, stale_pid=pid, host=host, locked_pipeline=pipeline,
    )


def live_local_holder(pid: int, host: str) -> bool:
    """Whether a lock's holder is a live process on this host (one elsewhere cannot be checked)."""
    return host == socket.gethostname() and pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one we may not signal runs too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
