"""Appliers: where planned pages are applied, in order, and how their results come back.

    engine -> Applier.submit(plan) -> apply_plans (here, or in the writer process)
                                   -> on_committed(PageResult), on the engine's thread, in page order

`InlineApplier` applies each plan in this process, on a target it opened.
`ProcessApplier` hands plans to the writer process (`runner.load.process`),
which applies them on the second core while this process fetches and maps
the next pages. It owns the writer's whole life: start, the "ready"
handshake, a window of at most `depth` plans in flight, and the fallback:
a writer that ends before it said it is ready (and said no error) applied
nothing, so the plans sent to it are applied here, on a target opened then.
A writer that said an error fails the run, whenever the engine reads it.

Only a plan that was handed over is waited for: a plan that cannot be
pickled is an error of the run before anything is counted in flight.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Protocol

from runner import errors, log
from runner.errors import EtlError
from runner.load.apply import PagePlan, PageResult, apply_plans
from runner.load.contenthash import RecordHasher
from runner.load.process import Setup
from runner.state.base import StateStore
from runner.targets.base import Target

logger = logging.getLogger(__name__)

OnCommitted = Callable[[PageResult], None]

# the child imports from exactly the engine's path (not its working directory's contents)
_BOOT = "import json, sys; sys.path[:] = json.loads(sys.argv[1]); from runner.load.process import main; main()"


class Applier(Protocol):
    """Applies plans in order; each committed page is told to `on_committed`."""

    def submit(self, plan: PagePlan) -> None:
        """Hand one plan over (pages committed meanwhile are told as they come)."""

    def flush(self) -> None:
        """Wait until every plan handed over is committed; raise the first error."""

    def close(self) -> None:
        """Wait until every plan handed over is committed, close what was opened; raise the first error."""


class InlineApplier:
    """Applies each plan here, on `target`, which it closes."""

    def __init__(
        self, pipeline: str, store: StateStore, target: Target, fields: list[str], *,
        committed: str | None, on_committed: OnCommitted, types: Mapping[str, str] | None = None,
    ) -> None:
        self.target = target
        self._pipeline, self._store, self._on_committed = pipeline, store, on_committed
        self._hasher = RecordHasher(fields, types=types)
        self._committed = committed  # the last checkpoint committed

    def submit(self, plan: PagePlan) -> None:
        result = apply_plans(self._pipeline, self._store, self.target, self._hasher, [plan], committed=self._committed)
        self._committed = result.last_checkpoint
        self._on_committed(result)

    def flush(self) -> None:
        """Nothing waits: `submit` committed each plan."""

    def close(self) -> None:
        self.target.close()


class WriterUnavailable(Exception):
    """The writer process could not be started: the engine applies inline instead."""


class ProcessApplier:
    """The engine's end of the writer process: plans out, results back in order."""

    def __init__(
        self, setup: Setup, *, depth: int, on_committed: OnCommitted, fallback: Callable[[], InlineApplier],
    ) -> None:
        self._depth, self._on_committed, self._fallback = depth, on_committed, fallback
        self._in_flight = 0
        self._ready = False
        self._failed = False  # the writer said an error: it commits nothing more
        self._unconfirmed: list[PagePlan] = []  # sent before the writer said it is ready
        self._inline: InlineApplier | None = None
        self._process, self._plans, self._results = _start(setup)

    @property
    def target(self) -> Target | None:
        """The target this process opened (after a fallback), if any."""
        return self._inline.target if self._inline is not None else None

    def submit(self, plan: PagePlan) -> None:
        while self._inline is None and self._in_flight >= self._depth:
            self._receive()
        if self._inline is not None:
            self._inline.submit(plan)
            return
        payload = _pickled(plan)
        if not self._ready:
            self._unconfirmed.append(plan)
        try:
            self._plans.send_bytes(payload)
        except OSError:  # BrokenPipeError: the writer is gone; what did it say?
            self._drain()
            return
        self._in_flight += 1

    def flush(self) -> None:
        """Wait until the writer committed every plan sent (it goes on running)."""
        while self._inline is None and self._in_flight > 0:
            self._receive()

    def close(self) -> None:
        error: EtlError | None = None
        try:
            while self._inline is None and self._in_flight > 0:
                try:
                    self._receive()
                except EtlError as exc:
                    error = error or exc
        finally:
            self._stop_writer()
        if self._inline is not None:
            self._inline.close()
        if error is not None:
            raise error

    # --- answers ------------------------------------------------------------------

    def _receive(self) -> None:
        """One answer: ready, pages committed (one or a batch), plans dropped, or an error."""
        try:
            kind, value = self._results.recv()
        except (EOFError, OSError):
            self._ended()
            return
        if kind == "ready":
            self._ready = True
            self._unconfirmed.clear()
        elif kind == "page":
            self._in_flight -= value.pages
            self._on_committed(value)
        elif kind == "dropped":
            self._in_flight -= value
        else:  # "error": nothing after it is committed
            name, message, plans = value
            self._in_flight -= plans
            self._failed = True
            raise _rebuild(name, message)

    def _drain(self) -> None:
        """Read what a writer that is gone said, to the end (which decides the fallback)."""
        while self._inline is None and not self._results.closed:
            self._receive()

    def _ended(self) -> None:
        """The writer's pipe is closed: it said an error, it died, or it never got ready."""
        code = self._stop_writer()
        if self._failed:  # its error was raised already; the plans after it were not applied
            self._in_flight = 0
            return
        if self._ready:
            self._in_flight = 0
            raise EtlError(
                f"the writer process exited unexpectedly (exit code {code}); its own error, if any, "
                "is on stderr above; the pages it had not committed are read again by the next run "
                "(ETL_WRITER=inline runs without a writer process)"
            )
        log.event(
            logger, "writer.inline", level=logging.WARNING,
            reason=f"the writer process ended before it was ready (exit code {code})",
        )
        self._in_flight = 0
        self._inline = self._fallback()
        plans, self._unconfirmed = self._unconfirmed, []
        for plan in plans:
            self._inline.submit(plan)

    def _stop_writer(self) -> int:
        """Tell the writer there is no more; wait for it to close the target and the store."""
        if not self._plans.closed:
            with contextlib.suppress(OSError):  # the writer is gone already: its exit code tells why
                self._plans.send(None)
            self._plans.close()
        if not self._results.closed:
            self._results.close()
        return self._process.wait()


def _start(setup: Setup) -> tuple[subprocess.Popen[bytes], Connection, Connection]:
    """Start the writer in a session of its own (a Ctrl-C or a SIGTERM to the engine's
    process group reaches only the engine, even before the child could ignore it)."""
    if os.name != "posix" or not sys.executable:
        raise WriterUnavailable("a writer process needs a POSIX system and sys.executable")
    plans_r, plans_w = os.pipe()
    results_r, results_w = os.pipe()
    path = [str(Path(entry or ".").resolve()) for entry in sys.path]
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, json.dumps(path)],
            stdin=plans_r, stdout=results_w, close_fds=True, start_new_session=True,
        )
    except OSError as exc:
        for fd in (plans_r, plans_w, results_r, results_w):
            os.close(fd)
        raise WriterUnavailable(f"cannot start the writer process: {exc}") from exc
    os.close(plans_r)
    os.close(results_w)
    plans = Connection(plans_w, readable=False)
    with contextlib.suppress(OSError):  # it is gone already: its end is read when the first answer is
        plans.send(setup)
    return process, plans, Connection(results_r, writable=False)


def _pickled(plan: PagePlan) -> bytes:
    """The plan as the pipe carries it; a plan that cannot be pickled fails the run here."""
    try:
        return bytes(ForkingPickler.dumps(plan))
    except (RecursionError, TypeError, ValueError, AttributeError) as exc:
        raise EtlError(
            f"page {plan.number} cannot be handed to the writer process ({type(exc).__name__}: "
            f"{log.redact(str(exc))[:200]}); ETL_WRITER=inline applies pages without it"
        ) from exc


def _rebuild(name: str, message: str) -> EtlError:
    """The writer's error as the same class in this process (all take a message)."""
    kind = getattr(errors, name, None)
    if isinstance(kind, type) and issubclass(kind, EtlError) and kind.__init__ is EtlError.__init__:
        return kind(message)
    return EtlError(message)
