"""Writes answered before their page ends, kept in the state store as they come.

A page's state (its checkpoint, its failures) commits when every write of
the page has an answer. With a target that answers request by request (the
http target, `AnswersAsItGoes`), the writes answered so far are kept before
that: every `every` seconds, their hashes and target ids go to the store in
one transaction that leaves the checkpoint where it was (`committed`, the
page before). A run killed mid-page then resumes at that page, and `decide`
finds the kept keys unchanged: only the writes that had no answer are sent
again. Records the target refused are not kept here; the page's commit
records them, or the next run sends them again.

Not used for a page whose resource has children: the children's pending
work is recorded with the page, and a parent kept without it would never
get its children.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from runner.state.base import PageCommit, StateStore
from runner.targets.base import WriteResult

FLUSH_EVERY_S = 0.1  # one small transaction a tenth of a second at most, whatever the write rate


class Journal:
    """Collects answered writes; `flush` keeps them in the store (also when the page fails)."""

    def __init__(
        self, pipeline: str, store: StateStore, hashes: Mapping[str, str], committed: str | None, *,
        every: float = FLUSH_EVERY_S, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pipeline, self._store, self._hashes, self._committed = pipeline, store, hashes, committed
        self._every, self._clock = every, clock
        self._rows: list[tuple[str, str | None, str | None]] = []
        self._last = clock()
        self.kept: set[str] = set()

    def __call__(self, keys: Sequence[str], part: WriteResult) -> None:
        for key in keys:
            if key not in part.errors and key in self._hashes:  # a delete has no hash: its page commits it
                self._rows.append((key, self._hashes[key], part.target_ids.get(key)))
        if self._rows and self._clock() - self._last >= self._every:
            self.flush()

    def flush(self) -> None:
        self._last = self._clock()
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        keys = [key for key, _, _ in rows]
        self._store.commit_page(self._pipeline, PageCommit(rows, [], keys, self._committed))
        self.kept.update(keys)
