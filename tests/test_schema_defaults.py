"""The schema's documented defaults are the defaults the typed model really uses."""

from __future__ import annotations

from typing import Any

import pytest

from runner import model
from runner.config import load_schema

SCHEMA = load_schema()
DEFS = SCHEMA["$defs"]
SOURCE = SCHEMA["properties"]["source"]["properties"]


def default(node: dict[str, Any], key: str) -> Any:
    return node["properties"][key]["default"]


@pytest.mark.parametrize(
    "documented,actual",
    [
        (default(DEFS["timeout"], "connect"), model.Timeout().connect),
        (default(DEFS["timeout"], "read"), model.Timeout().read),
        (default(DEFS["retry"], "max_attempts"), model.Retry().max_attempts),
        (default(DEFS["retry"], "backoff_initial"), model.Retry().backoff_initial),
        (default(DEFS["retry"], "backoff_max"), model.Retry().backoff_max),
        (default(DEFS["retry"], "max_elapsed"), model.Retry().max_elapsed),
        (default(SOURCE["limits"], "max_pages"), model.Limits().max_pages),
        (default(SOURCE["limits"], "max_items"), model.Limits().max_items),
        (default(SOURCE["limits"], "max_seconds"), model.Limits().max_seconds),
        (SOURCE["concurrency"]["default"], model.Source(url="x").concurrency),
        (SOURCE["max_response_bytes"]["default"], model.Source(url="x").max_response_bytes),
        (SOURCE["method"]["default"], model.Source(url="x").method),
        (default(DEFS["pagination_page"], "param"), model.PagePagination().param),
        (default(DEFS["pagination_page"], "start"), model.PagePagination().start),
        (default(DEFS["pagination_offset"], "param"), model.OffsetPagination(limit=1).param),
        (default(DEFS["pagination_offset"], "limit_param"), model.OffsetPagination(limit=1).limit_param),
        (default(DEFS["auth_api_key"], "in"), model.ApiKeyAuth("k", model.Secret("v")).location),
        (default(DEFS["target_http"], "idempotency_key"), model.HttpTargetConfig(base_url="x").idempotency_key),
        (default(DEFS["target_http"], "concurrency"), model.HttpTargetConfig(base_url="x").concurrency),
        (default(DEFS["http_batch"], "method"), model.HttpBatch(path="/b").method),
        (default(DEFS["http_batch"], "size"), model.HttpBatch(path="/b").size),
        (SCHEMA["properties"]["state"]["properties"]["path"]["default"], str(model.StateConfig().path)),
        (default(DEFS["deletes"], "missing"), model.Deletes().missing),
        (default(DEFS["deletes"], "mode"), model.Deletes().mode),
        (default(DEFS["deletes"], "max_fraction"), model.Deletes().max_fraction),
    ],
)
def test_documented_default_is_the_model_default(documented: Any, actual: Any) -> None:
    """Each default written in the schema equals the dataclass default the engine runs with."""
    assert documented == actual


def test_every_pagination_type_has_a_paginator() -> None:
    """The schema's pagination types and the paginator registry are the same set."""
    from runner.extract.pagination import PAGINATORS

    assert set(DEFS["pagination"]["properties"]["type"]["enum"]) == set(PAGINATORS)
