"""Test doubles shared by several test files: a clock that moves only when code sleeps."""

from __future__ import annotations

import threading

WALL = 1_700_000_000.0


class FakeTime:
    """Monotonic and wall clocks that move only when someone sleeps; sleeps recorded."""

    def __init__(self, *, frozen: bool = False) -> None:
        self.now = 0.0
        self.frozen = frozen
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL + self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if not self.frozen:
                self.now += seconds
