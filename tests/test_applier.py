"""Tests of runner.load.applier: the writer process's handshake, fallback and failures,
driven with stand-in children (a child is any program on the two pipes)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from runner.errors import EtlError, TargetError
from runner.load.applier import InlineApplier, ProcessApplier
from runner.load.apply import PagePlan, PageResult
from runner.load.process import Setup
from runner.model import SqliteTargetConfig, StateConfig
from runner.result import Counts
from runner.state.sqlite import SqliteStateStore
from runner.targets.base import Write, WriteResult

FIELDS = ["name"]

# stand-in children: one that ends without a word, one that cannot open its target
SILENT = "import sys; sys.exit(3)"
CANNOT_OPEN = (
    "import os; from multiprocessing.connection import Connection; "
    "Connection(os.dup(1), readable=False).send(('error', ('TargetError', 'sqlite target x: cannot open', 0)))"
)


class Recording:
    """A target that keeps every write it is given."""

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self.closed = False

    def write(self, writes: Any) -> WriteResult:
        self.writes += list(writes)
        return WriteResult()

    def close(self) -> None:
        self.closed = True


def plan(number: int, *keys: str) -> PagePlan:
    return PagePlan(number, len(keys), [(k, {"name": k}) for k in keys], [], f'{{"page": {number + 1}}}',
                    Counts(processed=len(keys)))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup("p", SqliteTargetConfig(tmp_path / "out.db", "items"), StateConfig(path=tmp_path / "state.db"),
                 FIELDS, None, __import__("os").getpid())


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = SqliteStateStore(tmp_path / "state.db")
    yield opened
    opened.close()


def test_a_writer_that_ends_before_it_is_ready_hands_its_plans_back_to_be_applied_here(
    setup: Setup, store: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A child that exits without a word applied nothing: every plan sent to it is applied
    inline, in order, on a target opened only then (`writer.inline` says why)."""
    monkeypatch.setattr("runner.load.applier._BOOT", SILENT)
    target, committed, opened = Recording(), list[PageResult](), []

    def fallback() -> InlineApplier:
        opened.append(1)
        return InlineApplier("p", store, target, FIELDS, committed=None, on_committed=committed.append)

    applier = ProcessApplier(setup, depth=4, on_committed=committed.append, fallback=fallback)
    with caplog.at_level(logging.WARNING, logger="runner"):
        for number in (1, 2, 3):
            applier.submit(plan(number, f"k{number}"))
        applier.close()
    assert opened == [1] and target.closed
    assert [w.external_id for w in target.writes] == ["k1", "k2", "k3"]
    assert [r.last_page for r in committed] == [1, 2, 3]
    assert any(r.getMessage() == "writer.inline" for r in caplog.records)


@pytest.mark.parametrize("trial", range(5))
def test_a_writer_that_cannot_open_its_target_fails_the_run_whenever_its_error_is_read(
    setup: Setup, store: Any, monkeypatch: pytest.MonkeyPatch, trial: int
) -> None:
    """Review 5.5: the child's error fails the run, whether the engine meets the closed pipe
    first or reads the error first; nothing is ever applied here instead."""
    monkeypatch.setattr("runner.load.applier._BOOT", CANNOT_OPEN)
    fallbacks: list[int] = []

    def fallback() -> InlineApplier:
        fallbacks.append(1)
        return InlineApplier("p", store, Recording(), FIELDS, committed=None, on_committed=lambda r: None)

    applier = ProcessApplier(setup, depth=2, on_committed=lambda r: None, fallback=fallback)
    if trial % 2:
        threading.Event().wait(0.2)  # the child has answered and ended: the next send meets a closed pipe
    with pytest.raises(TargetError, match="cannot open"):
        try:
            for number in range(1, 6):
                applier.submit(plan(number, f"k{number}"))
        finally:
            applier.close()
    assert fallbacks == []


def test_a_plan_that_cannot_be_pickled_fails_at_once_and_close_does_not_wait_for_it(
    setup: Setup, store: Any
) -> None:
    """Reliability D1: a record nested past pickle's recursion limit used to be counted in
    flight but never sent, so close() waited forever; now it is an error before anything is
    counted, and close() returns after the plans that were sent."""
    committed: list[PageResult] = []
    applier = ProcessApplier(setup, depth=4, on_committed=committed.append, fallback=lambda: pytest.fail("no fallback"))
    applier.submit(plan(1, "a"))
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    bad = plan(2, "b")
    bad.mapped[0][1]["name"] = deep
    with pytest.raises(EtlError, match="cannot be handed to the writer process"):
        applier.submit(bad)
    done = threading.Event()
    closer = threading.Thread(target=lambda: (applier.close(), done.set()), daemon=True)
    closer.start()
    assert done.wait(30), "close() hung on a plan that was never sent"
    assert [r.last_page for r in committed] == [1]
