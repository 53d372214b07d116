"""Targets: one module per type behind the Target protocol; `open_target` picks one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from runner.db import require_postgres_driver
from runner.model import HttpTargetConfig, JsonlTargetConfig, PostgresTargetConfig, SqliteTargetConfig, TargetConfig
from runner.targets.base import Target, Write, WriteResult


def open_target(
    config: TargetConfig, *, fields: list[str], types: Mapping[str, str] | None = None, **kwargs: Any
) -> Target:
    """Open (and prepare: table, columns of the typed fields' types) the configured target."""
    if isinstance(config, SqliteTargetConfig):
        from runner.targets.sqlite import SqliteTarget

        return SqliteTarget(config, fields=fields, types=types)
    if isinstance(config, JsonlTargetConfig):
        from runner.targets.jsonl import JsonlTarget

        resource = str(kwargs.get("pipeline", "")).partition("/")[2]  # the resources form's `name/resource`
        return JsonlTarget.for_path(config.path, resource=resource or None)
    if isinstance(config, PostgresTargetConfig):
        require_postgres_driver("the postgres target")  # a ConfigError naming the extra, not an ImportError
        from runner.targets.postgres import PostgresTarget

        return PostgresTarget(config, fields=fields, types=types)
    if isinstance(config, HttpTargetConfig):
        from runner.targets.http import HttpTarget

        return HttpTarget(config, **kwargs)
    raise TypeError(f"unknown target {config!r}")


def dry_run_target(stream: IO[str], *, resource: str | None = None) -> Target:
    """The dry-run target: prints each intended write as the jsonl target would write it."""
    from runner.targets.jsonl import JsonlTarget

    return JsonlTarget(stream, close_stream=False, resource=resource)


__all__ = ["Target", "Write", "WriteResult", "dry_run_target", "open_target"]
