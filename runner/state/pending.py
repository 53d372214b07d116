"""A dry run's child work, kept in memory.

A dry run writes nothing to the state store, yet a file in the resources form
must show its children's intended writes too. `DryRunPending` wraps the
read-only store: the child work that parent pages record is kept here, and
a child resource reads it back after any work a killed run left in the store.
"""

from __future__ import annotations

from typing import Any, cast

from runner.state.base import PageCommit, StateStore

_MEMORY = 1 << 62  # sequence numbers past the store's: the work this dry run recorded


class DryRunPending:
    """The read-only store of a dry run, with the pending child work of this run in memory."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._work: dict[str, dict[str, str]] = {}  # child's state key -> parent key -> parent JSON

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def commit_page(self, pipeline: str, commit: PageCommit) -> None:
        for child, key, parent in commit.pending:
            self._work.setdefault(child, {})[key] = parent
        self._store.commit_page(pipeline, commit)

    def pending_work(self, pipeline: str, *, after: int, limit: int) -> list[tuple[int, str, str]]:
        """The work a killed run left in the store first, less the parents this dry run
        recorded again (read once, from memory, with their record as read now); then those."""
        recorded = self._work.get(pipeline, {})
        while after < _MEMORY:
            stored = self._store.pending_work(pipeline, after=after, limit=limit)
            if not stored:
                after = _MEMORY
                break
            left = [row for row in stored if row[1] not in recorded]
            if left:
                return left
            after = stored[-1][0]
        rows = list(self._work.get(pipeline, {}).items())[after - _MEMORY: after - _MEMORY + limit]
        return [(after + n + 1, key, parent) for n, (key, parent) in enumerate(rows)]

    @classmethod
    def wrap(cls, store: StateStore) -> StateStore:
        return cast(StateStore, cls(store))
