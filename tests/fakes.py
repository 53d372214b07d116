"""Test doubles shared by several test files: a clock that moves only when code sleeps, an
HttpClient that runs on it, and a compiled expression as the config loader makes one."""

from __future__ import annotations

import random
import threading
from typing import Any

import jmespath

from runner.http.client import HttpClient
from runner.model import Expr, Retry, Timeout

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


def fake_client(fake: FakeTime, *, seed: int, **overrides: Any) -> HttpClient:
    """An HttpClient on `fake`'s clocks and sleep, its jitter seeded; `overrides` as HttpClient takes them."""
    options: dict[str, Any] = {
        "timeout": Timeout(), "retry": Retry(), "sleep": fake.sleep, "clock": fake.clock,
        "wall_clock": fake.wall, "rng": random.Random(seed),
    }
    return HttpClient(**{**options, **overrides})


def expr(text: str) -> Expr:
    """A JMESPath expression compiled as the config loader compiles one."""
    return Expr(text, jmespath.compile(text))
