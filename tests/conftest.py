"""Shared fixtures: a local demo API on 127.0.0.1."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from runner.dev.demo_api import DemoApi

StartDemoApi = Callable[..., DemoApi]


@pytest.fixture
def demo_api() -> Iterator[StartDemoApi]:
    """A factory: `demo_api(records=1000, **options)` starts a DemoApi on a free port; all stop after the test."""
    started: list[DemoApi] = []

    def start(records: int = 1000, **options: Any) -> DemoApi:
        api = DemoApi(records, **options)
        api.start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()
