"""`etl test FILE --fixtures DIR`: the pipeline run offline against a recording.

The run is the engine's own dry run with three seams filled: the source's
transport answers from the recorded exchanges (`ReplayTransport`), the state
store is the recording's starting state held in memory (`ReplayStore`: no
state file is read, created or written), and `now()` is the recording's time.
Auth is taken off the source, so no secret is needed: a variable used in an
`auth` block gets a placeholder; every other variable comes from `env.json`.

A request matches a recorded one when the method, the URL (its masked
credential parameters left out, the other parameters in any order) and the
body (JSON compared as values) are equal. The same request recorded twice
(a 503, then its retry's 200) is answered in recorded order. A request with
no match fails the run naming the request and the nearest recording, and how
they differ. What makes the replay hold: the watermark and checkpoint the
recorded run started from are the replay's too, so a URL carrying the saved
watermark is the same URL; `now()` in a template or a mapping gives the
recorded instant; pages fetched concurrently are matched by content, not order.

The writes the dry run prints, then one line per failed record, are compared
with `DIR/expected.jsonl`; `update=True` writes that file instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from runner.authoring.fixtures import EXPECTED_FILE, Exchange, FixtureError, Recording, match_key, read_recording
from runner.authoring.record import file_variables
from runner.config import load_pipeline
from runner.errors import FetchError
from runner.model import JsonlTargetConfig, Pipeline, PostgresTargetConfig, Source
from runner.result import RunResult
from runner.state.base import FailedRecord, KeyState, PageCommit, RunRecord, failure_key
from runner.timestamps import parse_timestamp
from runner.transform.functions import frozen_now

__all__ = ["OfflineResult", "ReplayStore", "ReplayTransport", "UnmatchedRequest", "run_offline"]

PLACEHOLDER = "etl-test-placeholder"  # the value of a variable used in an auth block, offline
SHOWN_BODY = 120  # characters of a request body in an unmatched request's message


class UnmatchedRequest(FetchError):
    """The offline run sent a request that the recording does not hold."""


@dataclass(frozen=True, slots=True)
class OfflineResult:
    """What an offline test found: `equal` unless the writes differ (`diff`, unified)."""

    pipeline: str
    expected: Path
    equal: bool
    updated: bool
    diff: str
    lines: int
    run: RunResult
    unused: tuple[str, ...] = field(default=())  # recorded exchanges that no request asked for


def run_offline(
    file: str | Path, fixtures: str | Path, *, update: bool = False, env_file: str | Path | None = None
) -> OfflineResult:
    """Replay `file` against the recording in `fixtures`; compare (or, with `update`, write)
    `expected.jsonl`. A failed run (an unmatched request) raises its EtlError."""
    from runner import engine

    recording = read_recording(Path(fixtures))
    pipeline = _offline_pipeline(load_pipeline(file, env=_offline_env(file, recording), env_file=env_file))
    masked = [str(p) for p in recording.meta.get("masked_params", [])]
    transport = ReplayTransport(recording.exchanges, masked)
    store = ReplayStore(recording.meta.get("state") or {})
    out = io.StringIO()
    with frozen_now(_recorded_at(recording)):
        result = engine.run(
            pipeline, dry_run=True, stdout=out, source_transport=transport, store=store, sleep=_no_sleep,
        )
    actual = out.getvalue() + "".join(store.failure_lines())
    return _compare(pipeline.name, recording.directory / EXPECTED_FILE, actual, result, update, transport.unused())


def _no_sleep(seconds: float) -> None:
    """Retry-After and backoff waits of a replay take no time."""


def _offline_env(file: str | Path, recording: Recording) -> dict[str, str]:
    """env.json's values (an unset one as empty, which `${X:-default}` treats as unset), and a
    placeholder for each variable of an auth block: auth is not applied offline."""
    env = {name: value or "" for name, value in recording.env.items()}
    _, secret = file_variables(file)
    for name in secret:
        env.setdefault(name, _placeholder(name))
    return env


def _placeholder(name: str) -> str:
    """A stand-in that passes validation where the variable stands (a URL, a DSN, a token)."""
    upper = name.upper()
    if "DSN" in upper or "DATABASE" in upper:
        return "postgresql://offline@etl-test.invalid/offline"
    if "URL" in upper or "URI" in upper or "HOST" in upper:
        return "https://etl-test.invalid/offline"
    return PLACEHOLDER


def _offline_pipeline(pipeline: Pipeline) -> Pipeline:
    """No auth on any source; a postgres target is printed like any dry run's (no driver needed)."""
    changes: dict[str, Any] = {"source": _no_auth(pipeline.source)}
    if isinstance(pipeline.target, PostgresTargetConfig):
        changes["target"] = JsonlTargetConfig(path="-")
    resources = getattr(pipeline, "resources", ())
    if resources:
        changes["resources"] = tuple(dataclasses.replace(r, source=_no_auth(r.source)) for r in resources)
    return dataclasses.replace(pipeline, **changes)


def _no_auth(source: Source) -> Source:
    return source if source.auth is None else dataclasses.replace(source, auth=None)


def _recorded_at(recording: Recording) -> datetime:
    text = recording.meta.get("recorded_at")
    try:
        return parse_timestamp(str(text))
    except (TypeError, ValueError):
        raise FixtureError(f"{recording.directory}: recording.json has no valid recorded_at ({text!r})") from None


def _compare(
    name: str, expected: Path, actual: str, result: RunResult, update: bool, unused: tuple[str, ...]
) -> OfflineResult:
    lines = actual.count("\n")
    if update:
        expected.write_text(actual, encoding="utf-8")
        return OfflineResult(name, expected, True, True, "", lines, result, unused)
    if not expected.is_file():
        raise FixtureError(f"{expected}: no expected writes yet; write them with --update, then review the file")
    before = expected.read_text(encoding="utf-8")
    if before == actual:
        return OfflineResult(name, expected, True, False, "", lines, result, unused)
    diff = difflib.unified_diff(
        before.splitlines(keepends=True), actual.splitlines(keepends=True),
        fromfile=str(expected), tofile=f"{name} (this run)",
    )
    return OfflineResult(name, expected, False, False, "".join(diff), lines, result, unused)


# --- the replayed source -----------------------------------------------------------------------


class ReplayTransport(httpx.BaseTransport):
    """Answers each request with the recorded exchange that matches it, or raises UnmatchedRequest."""

    def __init__(self, exchanges: Sequence[Exchange], masked: Sequence[str]) -> None:
        self._masked = list(masked)
        self._entries = [(match_key(e.method, e.url, e.body, masked), e) for e in exchanges]
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        key = match_key(request.method, str(request.url), body, self._masked)
        with self._lock:
            matches = [i for i, (k, _) in enumerate(self._entries) if k == key]
            fresh = [i for i in matches if i not in self._used]
            index = fresh[0] if fresh else (matches[-1] if matches else None)
            if index is not None:
                self._used.add(index)
        if index is None:
            raise self._unmatched(request, key)
        exchange = self._entries[index][1]
        return httpx.Response(exchange.status, headers=list(exchange.headers.items()), content=exchange.response)

    def unused(self) -> tuple[str, ...]:
        return tuple(e.file for i, (_, e) in enumerate(self._entries) if i not in self._used)

    def _unmatched(self, request: httpx.Request, key: tuple[str, str, str]) -> UnmatchedRequest:
        shown = _shown(key)
        if not self._entries:
            return UnmatchedRequest(f"no recorded exchange matches {shown}: the recording holds none")
        near_key, near = max(self._entries, key=lambda entry: _likeness(key, entry[0]))
        return UnmatchedRequest(
            f"no recorded exchange matches {shown}; the nearest is {near.file}: {_shown(near_key)}"
            f" ({_difference(key, near_key)}); record again (`etl run FILE --record DIR`) if the"
            " requests changed on purpose",
            method=request.method, path=request.url.path,
        )


def _shown(key: tuple[str, str, str]) -> str:
    method, url, body = key
    text = f"{method} {url}"
    if body:
        text += f" with body {body[:SHOWN_BODY]}{'...' if len(body) > SHOWN_BODY else ''}"
    return text


def _likeness(a: tuple[str, str, str], b: tuple[str, str, str]) -> float:
    """How alike two requests are: the method counts most, then the URL, then the body."""
    url = difflib.SequenceMatcher(None, a[1], b[1]).ratio()
    body = difflib.SequenceMatcher(None, a[2], b[2]).ratio() if (a[2] or b[2]) else 1.0
    return (a[0] == b[0]) * 4 + url * 2 + body


def _difference(a: tuple[str, str, str], b: tuple[str, str, str]) -> str:
    if a[0] != b[0]:
        return f"the method differs: {a[0]} vs {b[0]}"
    ua, ub = urlsplit(a[1]), urlsplit(b[1])
    if (ua.scheme, ua.netloc) != (ub.scheme, ub.netloc):
        return f"the host differs: {ua.netloc} vs {ub.netloc}"
    if ua.path != ub.path:
        return f"the path differs: {ua.path} vs {ub.path}"
    if ua.query != ub.query:
        qa, qb = dict(parse_qsl(ua.query, keep_blank_values=True)), dict(parse_qsl(ub.query, keep_blank_values=True))
        names = sorted(n for n in {*qa, *qb} if qa.get(n) != qb.get(n))
        return "the query differs in " + ", ".join(f"{n}={qa.get(n)!r} vs {qb.get(n)!r}" for n in names)
    return "the body differs"


# --- the replayed state -----------------------------------------------------------------------


class ReplayStore:
    """The state a recorded run started from, in memory; what the replay commits stays here.

    Kept per state key (`name`, or `name/resource` in the resources form), as the real stores
    keep it: a key of one resource is not a key of another."""

    location = "the recording (etl test)"

    def __init__(self, state: Mapping[str, Any]) -> None:
        self._state = {str(k): v for k, v in state.items() if isinstance(v, dict)}
        self._keys: dict[str, dict[str, KeyState]] = {}
        # (state key, failure key) -> the record, in the order they first failed; a record that fails
        # again replaces its entry, as in the real stores
        self._failed: dict[tuple[str, str], FailedRecord] = {}
        self._seen: dict[str, dict[str, str]] = {}  # key -> the sweep that saw it (deletes.missing)
        self._parent_of: dict[str, dict[str, str]] = {}  # a child's key -> the parent it was read under
        self._swept: dict[str, dict[str, str]] = {}  # a child's parent key -> the sweep that read it whole
        self._pending: list[tuple[int, str, str, str]] = []  # (sequence, child state key, parent key, record)

    @contextmanager
    def lock(self, pipeline: str, run_id: str) -> Iterator[None]:
        yield

    def unlock(self, pipeline: str, *, force: bool = False) -> bool:
        return False

    def knows(self, pipeline: str) -> bool:
        return True

    def watermark(self, pipeline: str) -> Any:
        return self._state.get(pipeline, {}).get("watermark")

    def checkpoint(self, pipeline: str) -> str | None:
        value = self._state.get(pipeline, {}).get("checkpoint")
        return value if isinstance(value, str) else None

    def key_states(self, pipeline: str, keys: Sequence[str]) -> dict[str, KeyState]:
        known = self._keys.get(pipeline, {})
        return {k: known[k] for k in keys if k in known}

    def commit_page(self, pipeline: str, commit: PageCommit) -> None:
        known = self._keys.setdefault(pipeline, {})
        for key, digest, target_id in commit.hashes:
            known[key] = KeyState(digest, target_id)
        cleared = set(commit.succeeded)
        for where in [w for w, f in self._failed.items() if w[0] == pipeline and f.external_id in cleared]:
            del self._failed[where]
        for failure in commit.failed:
            self._failed[(pipeline, failure_key(failure.external_id, failure.raw))] = failure
        # what deletes and the resources form add to a commit (child work, deletes, the keys seen)
        for key in getattr(commit, "deleted", ()):
            known.pop(key, None)
        sweep = getattr(commit, "sweep", None)
        seen = self._seen.setdefault(pipeline, {})
        for key in getattr(commit, "seen", ()) if isinstance(sweep, str) else ():
            seen[key] = str(sweep)
        done = set(getattr(commit, "done", ()))
        self._pending = [p for p in self._pending if not (p[1] == pipeline and p[2] in done)]
        self._parent_of.setdefault(pipeline, {}).update(commit.parent_of)
        if isinstance(sweep, str):
            self._swept.setdefault(pipeline, {}).update(dict.fromkeys(commit.swept, sweep))
        for child, parent, record in getattr(commit, "pending", ()):
            self._pending.append((len(self._pending) + 1, child, parent, record))

    def count_keys(self, pipeline: str, sweep: str) -> tuple[int, int]:
        known, seen = self._keys.get(pipeline, {}), self._seen.get(pipeline, {})
        return len(known), sum(1 for key in known if seen.get(key) != sweep)

    def count_orphans(self, pipeline: str, parent: str, sweep: str) -> tuple[int, int]:
        known = self._keys.get(pipeline, {})
        return len(known), len(self._orphans(pipeline, parent, sweep))

    def orphan_keys(self, pipeline: str, parent: str, sweep: str, *, after: str, limit: int) -> list[str]:
        return sorted(k for k in self._orphans(pipeline, parent, sweep) if k > after)[:limit]

    def _orphans(self, pipeline: str, parent: str, sweep: str) -> list[str]:
        seen, parent_of = self._seen.get(pipeline, {}), self._parent_of.get(pipeline, {})
        swept = {k for k, s in self._swept.get(pipeline, {}).items() if s == sweep}
        parents = self._keys.get(parent, {})
        return [
            key for key in self._keys.get(pipeline, {})
            if (parent_of.get(key) in swept and seen.get(key) != sweep)
            or (key in parent_of and parent_of[key] not in parents)
        ]

    def unseen_keys(self, pipeline: str, sweep: str, *, after: str, limit: int) -> list[str]:
        known, seen = self._keys.get(pipeline, {}), self._seen.get(pipeline, {})
        return sorted(k for k in known if k > after and seen.get(k) != sweep)[:limit]

    def pending_work(self, pipeline: str, *, after: int, limit: int) -> list[tuple[int, str, str]]:
        return [(n, parent, record) for n, child, parent, record in self._pending if child == pipeline and n > after][
            :limit
        ]

    def resources(self, pipeline: str) -> list[str]:
        return []

    def start_run(self, pipeline: str, run: RunRecord) -> None:
        pass

    def finish_run(self, pipeline: str, run: RunRecord, *, watermark: Any, clear_checkpoint: bool) -> None:
        pass

    def show(self, pipeline: str, *, runs: int = 10, failed: int = 20) -> dict[str, Any]:
        failures = sum(1 for p, _ in self._failed if p == pipeline)  # keys: (state key, failure key)
        return {"pipeline": pipeline, "keys": len(self._keys.get(pipeline, {})), "failed_total": failures}

    def reset(self, pipeline: str) -> None:
        pass

    def close(self) -> None:
        pass

    def failure_lines(self) -> list[str]:
        """One line per failed record, after the writes: a mapping that starts failing shows.
        In the resources form each line names its resource first, as the dry run's lines do."""
        lines = []
        for (key, _), f in self._failed.items():
            resource = {"resource": key.partition("/")[2]} if "/" in key else {}
            line = {**resource, "op": "failed", "external_id": f.external_id, "error": f.error}
            lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        return lines
