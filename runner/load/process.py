"""The writer process's own side: applies planned pages to a database target and the state store.

(The engine's side of the pipes, its handshake, window and fallback, is
`ProcessApplier` in `runner.load.applier`.)

Why a process: a run is CPU-bound in Python once the API is fast (decoding,
mapping, hashing on one side; building rows, diffing and committing on the
other), and threads share one GIL. A second process puts the database side
on the second core, so a page is written while the next ones are fetched and
mapped. Plans travel over a pipe, pickled; each applied page comes back as a
`PageResult`, in order.

The protocol, on two pipes (the child's stdin and stdout, which it moves
aside at once so that a stray print cannot corrupt them):

    engine -> writer:  Setup, then PagePlan ..., then None (no more)
    writer -> engine:  ("ready", None) | ("error", (class, message, 0)), then for the plans:
                       ("page", PageResult) | ("error", (class, message, plans)) | ("dropped", plans)

The writer applies the plans that are waiting when it is ready as one batch
(one target commit, one state transaction, the last page's checkpoint), so
when it falls behind it catches up with fewer commits; each answer says how
many plans it covers. After an error the writer commits nothing more: the
plans still in flight are answered "dropped".

Signals and lifetime: the writer runs in a session of its own and ignores
SIGINT and SIGTERM (they are the engine's to handle: it stops planning and
waits for the pages in flight). It commits nothing once the engine is gone;
on Linux the kernel kills it with the engine, even in the middle of a commit,
which then rolls back. A page it has not applied is read again by the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from runner import log
from runner.load.apply import PagePlan, apply_plans
from runner.load.contenthash import RecordHasher
from runner.errors import EtlError
from runner.model import PostgresTargetConfig, SqliteTargetConfig, StateConfig
from runner.state.base import pid_alive

# plans applied as one batch at most: the pages that wait for the writer when it is behind
MAX_BATCH = 8


@dataclass(frozen=True, slots=True)
class Setup:
    """The first message to the writer: what to open, and how to log."""

    pipeline: str
    target: SqliteTargetConfig | PostgresTargetConfig
    state: StateConfig
    fields: list[str]
    committed: str | None  # the checkpoint committed before the first plan
    engine_pid: int
    run_id: str = ""
    secrets: frozenset[str] = frozenset()  # redacted from anything the writer prints
    log: tuple[str, bool] | None = None  # the engine's log format and verbosity, if etl set them
    # auth query parameter names: a checkpoint the writer stores drops them (the client adds them back)
    secret_params: frozenset[str] = frozenset()
    types: Mapping[str, str] = field(default_factory=dict)  # the typed fields' types: columns, hash


def main() -> None:
    """The child's entry point: serve one run's plans from stdin, results to stdout."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    plans = Connection(os.dup(0), writable=False)
    results = Connection(os.dup(1), readable=False)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # a stray print goes to stderr, never into the results pipe
    serve(plans, results)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this process the moment its parent dies. A writer
    whose engine was killed must not finish a batch it is in the middle of: the next run
    may already own the pipeline. (Elsewhere the writer stops at its next batch.)"""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # no prctl in this libc: the batch check remains
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def serve(plans: Connection, results: Connection) -> None:
    setup: Setup = plans.recv()
    from runner.state import open_store
    from runner.targets import open_target

    log.add_secrets(setup.secrets)
    log.add_secret_params(setup.secret_params)
    if setup.log is not None and not logging.getLogger("runner").handlers:  # a process of its own
        fmt, verbose = setup.log
        log.configure(fmt="json" if fmt == "json" else "text", verbose=verbose)
    with log.run_context(run_id=setup.run_id, pipeline=setup.pipeline):
        _serve(setup, plans, results, open_store, open_target)


def _serve(setup: Setup, plans: Connection, results: Connection, open_store: Any, open_target: Any) -> None:
    store = target = None
    try:
        store = open_store(setup.state)
        target = open_target(setup.target, fields=setup.fields, types=setup.types)
    except BaseException as exc:  # noqa: BLE001 - told to the engine instead of "ready"
        _answer(results, ("error", (*_describe(exc), 0)))
        for opened in (target, store):
            if opened is not None:
                opened.close()
        return
    _answer(results, ("ready", None))
    engine_alive = _liveness(setup.engine_pid)
    error: tuple[str, str] | None = None
    told, committed, hasher = False, setup.committed, RecordHasher(setup.fields, types=setup.types)
    try:
        while batch := _batch(plans):
            if error is not None:  # nothing after a failure is committed
                _answer(results, ("dropped", len(batch)) if told else ("error", (*error, len(batch))))
                told = True
                continue
            if not engine_alive():
                return  # the engine is gone: commit nothing more
            try:
                result = apply_plans(setup.pipeline, store, target, hasher, batch, committed=committed)
            except BaseException as exc:  # noqa: BLE001 - told to the engine
                error = _describe(exc)
                _answer(results, ("error", (*error, len(batch))))
                told = True
                continue
            committed = result.last_checkpoint
            _answer(results, ("page", result))
    finally:
        for opened in (target, store):
            if opened is not None:
                opened.close()


def _liveness(engine_pid: int) -> Callable[[], bool]:
    """Whether the engine still runs. Normally the engine is this process's parent, and a
    parent that dies leaves it to another; when a launcher stands between them (a wrapper
    script that did not exec), the engine's pid is checked instead."""
    if os.getppid() == engine_pid:
        return lambda: os.getppid() == engine_pid
    if engine_pid <= 0:  # not a process: os.kill would address a whole group
        return lambda: False
    return lambda: pid_alive(engine_pid)


def _batch(plans: Connection) -> list[PagePlan]:
    """The next plan and those already waiting behind it (up to MAX_BATCH); [] at the end."""
    batch: list[PagePlan] = []
    while len(batch) < MAX_BATCH and (not batch or plans.poll()):
        plan = _next(plans)
        if plan is None:
            plans.close()  # the end: apply this batch, then the next read finds nothing
            break
        batch.append(plan)
    return batch


def _answer(results: Connection, message: tuple[str, Any]) -> None:
    """Tell the engine; if it has stopped listening (closing after an error of its own), the
    plans it sent are still applied in order: each is a whole page, committed or not at all."""
    with contextlib.suppress(BrokenPipeError):
        results.send(message)


def _next(plans: Connection) -> Any:
    if plans.closed:
        return None
    try:
        return plans.recv()
    except (EOFError, OSError):  # OSError: the engine died in the middle of a message
        return None


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, EtlError):
        return type(exc).__name__, str(exc)
    # a bug: its traceback (secrets masked) goes to stderr, its gist to the engine
    sys.stderr.write(log.redact(traceback.format_exc()))
    return "EtlError", log.redact(f"writer process: {type(exc).__name__}: {exc}")
