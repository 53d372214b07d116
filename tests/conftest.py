"""Shared fixtures: a local demo API on 127.0.0.1, and the one pipeline-file builder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.dev.demo_api import DemoApi

StartDemoApi = Callable[..., DemoApi]


@pytest.fixture(scope="session")
def pg_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One PostgreSQL server for the whole session (tests/pgserver.py): each test file that
    needs one takes a fresh database from it. Skipped without psycopg (failed in CI)."""
    pytest.importorskip("psycopg")
    import pgserver

    with pgserver.server(tmp_path_factory.mktemp("pg") / "server") as dsn:
        yield dsn


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


PIPELINE_DEFAULTS: dict[str, Any] = {
    "version": 1,
    "name": "test",
    "source": {
        "url": "{base_url}/items/page",
        "records": "data",
        "pagination": {"type": "page", "size_param": "per_page", "size": 100, "total_pages": "total_pages"},
    },
    "mapping": {"external_id": "to_string(id)", "fields": {"name": "name", "tags": "tags"}},
    "target": {"type": "sqlite", "path": "{tmp}/out.db", "table": "items"},
    "state": {"path": "{tmp}/state.db"},
}


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it: dicts merge key by key, None removes a key, else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and not value.get("__replace__"):
            out[key] = merged(out[key], value)
        else:
            out[key] = {k: v for k, v in value.items() if k != "__replace__"} if isinstance(value, dict) else value
    return out


def whole(block: dict[str, Any]) -> dict[str, Any]:
    """`block` as an override that replaces the block it lands on instead of merging into it."""
    return {"__replace__": True, **block}


def write_pipeline_file(
    tmp_path: Path, base_url: str = "http://127.0.0.1:9", *, file: str = "pipeline.yaml",
    defaults: dict[str, Any] | None = None, **overrides: Any,
) -> Path:
    """The one pipeline builder of the tests: a demo-API `page` pipeline into `tmp_path/out.db`
    (state in `tmp_path/state.db`), with a test file's own `defaults` and then `overrides`
    merged over it (see `merged`); written as YAML.

    `{base_url}` and `{tmp}` in any string are replaced by `base_url` and `tmp_path`. Blocks of
    scalars are written in flow style on one line (`pagination: {type: page, ...}`), the rest in
    block style, so a key's line number depends only on the keys before it.
    """
    document = merged(merged(PIPELINE_DEFAULTS, defaults or {}), overrides)

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{base_url}", base_url).replace("{tmp}", str(tmp_path))
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items() if k != "__replace__"}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    path = tmp_path / file
    path.write_text(yaml.safe_dump(fill(document), sort_keys=False, default_flow_style=None, width=float("inf")))
    return path


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Callable[..., Path]:
    """`pipeline_file(base_url, **overrides)`: `write_pipeline_file` in this test's tmp_path."""

    def build(base_url: str = "http://127.0.0.1:9", **overrides: Any) -> Path:
        return write_pipeline_file(tmp_path, base_url, **overrides)

    return build
