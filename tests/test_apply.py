"""Tests of runner.load.apply: diffing planned pages against the state store and committing them,
one page at a time or several as one batch (what the writer process does when it is behind)."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from runner.load.apply import PagePlan, apply_plans
from runner.result import Counts
from runner.load.contenthash import RecordHasher
from runner.errors import TargetError
from runner.model import SqliteTargetConfig
from runner.state.base import FailedRecord
from runner.state.sqlite import SqliteStateStore
from runner.targets.base import Write, WriteResult
from runner.targets.sqlite import SqliteTarget

FIELDS = ["name", "tags"]
HASHER = RecordHasher(FIELDS)


class Recording:
    """A target that keeps every page of writes it is given."""

    def __init__(self) -> None:
        self.pages: list[list[Write]] = []

    def write(self, writes: Sequence[Write]) -> WriteResult:
        self.pages.append(list(writes))
        return WriteResult()

    def close(self) -> None:
        pass


def plan(number: int, *records: tuple[str, str], failed: int = 0) -> PagePlan:
    mapped = [(key, {"name": name, "tags": [name[:1]]}) for key, name in records]
    failures = [FailedRecord(None, {"n": number, "i": i}, "null key") for i in range(failed)]
    counts = Counts(processed=len(records) + failed)
    return PagePlan(number, len(records) + failed, mapped, failures, f'{{"page": {number + 1}}}', counts)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = SqliteStateStore(tmp_path / "state.db")
    yield opened
    opened.close()


def test_a_batch_counts_as_its_pages_one_by_one_and_writes_each_key_once(store: Any) -> None:
    """x is created on page 1, changed on page 2, unchanged on page 3: created 1, updated 1, skipped 1,
    and the target gets one write of x with its newest record; y is created once."""
    target = Recording()
    pages = [plan(1, ("x", "Ada"), ("y", "Bo")), plan(2, ("x", "Ada L.")), plan(3, ("x", "Ada L."))]
    result = apply_plans("p", store, target, HASHER, pages, committed=None)
    c = result.counts
    assert (c.processed, c.created, c.updated, c.skipped, c.failed) == (4, 2, 1, 1, 0)
    assert (result.last_page, result.pages, result.records, result.writes) == (3, 3, 4, 2)
    (written,) = target.pages
    assert sorted((w.op, w.external_id, w.record["name"]) for w in written) == [
        ("create", "x", "Ada L."), ("create", "y", "Bo"),
    ]
    states = store.key_states("p", ["x", "y"])
    assert states["x"].hash == HASHER({"name": "Ada L.", "tags": ["A"]})
    assert store.checkpoint("p") == '{"page": 4}'


def test_a_batch_leaves_what_the_pages_one_by_one_leave(tmp_path: Path) -> None:
    """The same five pages, applied one by one and as one batch, give the same counts, rows and hashes."""
    def pages() -> list[PagePlan]:
        return [
            plan(1, ("a", "A"), ("b", "B")), plan(2, ("b", "B2"), ("c", "C")), plan(3, ("a", "A"), failed=1),
            plan(4, ("c", "C3"), ("d", "D")), plan(5, ("b", "B2"), ("a", "A5")),
        ]

    outcomes = []
    for batched in (False, True):
        folder = tmp_path / str(batched)
        store = SqliteStateStore(folder / "state.db")
        target = SqliteTarget(SqliteTargetConfig(folder / "out.db", "items"), fields=FIELDS)
        seed = plan(0, ("a", "A"))  # a is known before the pages come
        apply_plans("p", store, target, HASHER, [seed], committed=None)
        total = Counts()
        for group in ([pages()] if batched else [[p] for p in pages()]):
            counts = apply_plans("p", store, target, HASHER, group, committed=None).counts
            names = ("processed", "created", "updated", "skipped", "failed")
            total = Counts(*(getattr(total, f) + getattr(counts, f) for f in names))
        out = sqlite3.connect(folder / "out.db")
        rows = out.execute("SELECT external_id, name, tags FROM items ORDER BY 1").fetchall()
        hashes = {k: s.hash for k, s in store.key_states("p", ["a", "b", "c", "d"]).items()}
        outcomes.append((total, rows, hashes, store.checkpoint("p"), store.show("p")["failed_total"]))
        target.close()
        store.close()
    assert outcomes[0] == outcomes[1]
    total, rows, _, checkpoint, failures = outcomes[1]
    assert (total.created, total.updated, total.skipped, total.failed) == (3, 3, 3, 1)
    assert rows == [("a", "A5", '["A"]'), ("b", "B2", '["B"]'), ("c", "C3", '["C"]'), ("d", "D", '["D"]')]
    assert (checkpoint, failures) == ('{"page": 6}', 1)


def test_a_failed_target_write_commits_no_state(store: Any) -> None:
    """When the target fails, the batch's hashes and checkpoint are not committed: the pages come again."""
    class Failing(Recording):
        def write(self, writes: Sequence[Write]) -> WriteResult:
            raise TargetError("disk full")

    with pytest.raises(TargetError, match="disk full"):
        apply_plans("p", store, Failing(), HASHER, [plan(1, ("x", "X")), plan(2, ("y", "Y"))], committed=None)
    assert store.key_states("p", ["x", "y"]) == {} and store.checkpoint("p") is None


def test_a_page_of_unchanged_records_writes_nothing_and_still_moves_the_checkpoint(store: Any) -> None:
    """A page whose records are all known and unchanged sends no write, and its checkpoint is saved."""
    target = Recording()
    apply_plans("p", store, target, HASHER, [plan(1, ("x", "X"))], committed=None)
    result = apply_plans("p", store, target, HASHER, [plan(2, ("x", "X"))], committed=None)
    assert (result.counts.skipped, result.writes, len(target.pages)) == (1, 0, 1)
    assert store.checkpoint("p") == '{"page": 3}'


def test_a_failure_cleared_by_a_later_page_of_the_batch_is_not_kept(store: Any) -> None:
    """Key k fails to map on page 1 and maps on page 2: one by one, page 2 clears the failure;
    as one batch it must not be kept either. A failure after a write stays, as one by one."""
    def failing(number: int, key: str) -> PagePlan:
        page = plan(number)
        page.failed.append(FailedRecord(key, {"id": key}, "bad date"))
        page.counts.processed += 1
        return page

    pages = [failing(1, "k"), plan(2, ("k", "K")), plan(3, ("j", "J")), failing(4, "j")]
    result = apply_plans("p", store, Recording(), HASHER, pages, committed=None)
    shown = store.show("p")
    assert [f["external_id"] for f in shown["failed"]] == ["j"] and shown["failed_total"] == 1
    assert (result.counts.created, result.counts.failed) == (2, 2)  # both failures happened


def test_random_batches_leave_what_the_same_pages_one_by_one_leave(tmp_path: Path) -> None:
    """200 seeded random page sequences over three keys (records written, changed, unchanged,
    failing): counts, target rows, hashes, checkpoint and failed records agree."""
    rng = random.Random(1)

    def outcome(pages: list[PagePlan], batched: bool, folder: Path) -> tuple[Any, ...]:
        store = SqliteStateStore(folder / "state.db")
        target = SqliteTarget(SqliteTargetConfig(folder / "out.db", "items"), fields=FIELDS)
        total = Counts()
        for group in ([pages] if batched else [[p] for p in pages]):
            counts = apply_plans("p", store, target, HASHER, group, committed=None).counts
            for name in ("processed", "created", "updated", "skipped", "failed"):
                setattr(total, name, getattr(total, name) + getattr(counts, name))
        rows = sqlite3.connect(folder / "out.db").execute("SELECT * FROM items ORDER BY 1").fetchall()
        hashes = {k: s.hash for k, s in store.key_states("p", list("ABC")).items()}
        shown = store.show("p")
        failed = sorted(f["external_id"] for f in shown["failed"])
        store.close()
        target.close()
        return total, rows, hashes, shown["checkpoint"], failed

    def pages(spec: list[list[tuple[str, str, bool]]]) -> list[PagePlan]:
        made = []
        for number, records in enumerate(spec, start=1):
            page = plan(number, *[(k, v) for k, v, bad in records if not bad])
            page.failed.extend(FailedRecord(k, {"id": k}, "bad") for k, _, bad in records if bad)
            page.counts.processed += sum(bad for _, _, bad in records)
            made.append(page)
        return made

    for case in range(200):
        spec = []
        for _ in range(rng.randint(2, 4)):
            keys = rng.sample("ABC", rng.randint(0, 3))
            spec.append([(k, rng.choice("xy"), rng.random() < 0.3) for k in keys])
        one, batch = (outcome(pages(spec), b, tmp_path / f"{case}-{b}") for b in (False, True))
        assert one == batch, spec


def test_decide_is_plain_data_in_and_writes_out() -> None:
    """decide() needs no store or target: known key states and hashes in, one write per key
    (its newest record) and per-page unchanged counts out; a key created earlier in the
    batch stays a create, an update carries the stored target id."""
    from runner.load.apply import decide
    from runner.state.base import KeyState

    pages = [plan(1, ("new", "A"), ("same", "S"), ("changed", "C2")), plan(2, ("new", "A2"))]
    hashed = [{"new": "h-new", "same": "h-same", "changed": "h-c2"}, {"new": "h-new2"}]
    known = {"same": KeyState("h-same", "t1"), "changed": KeyState("h-c1", "t2")}
    decision = decide(pages, known, hashed)
    assert [(w.op, w.external_id, w.record["name"], w.target_id) for w in decision.writes] == [
        ("create", "new", "A2", None), ("update", "changed", "C2", "t2"),
    ]
    assert decision.unchanged == [1, 0]
    assert decision.hashes == {"new": "h-new2", "changed": "h-c2"}
    assert [(i, w.external_id) for i, w in decision.decided] == [(0, "new"), (0, "changed"), (1, "new")]
    assert known == {"same": KeyState("h-same", "t1"), "changed": KeyState("h-c1", "t2")}  # not mutated
