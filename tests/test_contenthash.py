"""Tests of runner.load.contenthash: the hash that decides whether a record changed."""

from __future__ import annotations

from typing import Any

import pytest

from runner.load.contenthash import RecordHasher


def content_hash(record: dict[str, Any]) -> str:
    """The hash of one record, whatever the order of its fields (a hasher over its own names)."""
    return RecordHasher(list(record))(record)


def test_hash_is_stable_and_sees_field_names() -> None:
    """The hash ignores field order but changes when a field is added or renamed."""
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 1, "c": None})
    assert content_hash({"a": 1}) != content_hash({"b": 1})


@pytest.mark.parametrize(
    "left,right",
    [
        ("1", 1), (1, 1.0), (1, True), (0, False), (None, "None"), ("", None), ([], None), ({}, []),
        (["a", "b"], ["b", "a"]), (["a"], "['a']"), ({"k": 1}, {"k": "1"}), ([{"k": 1}], [{"k": 2}]),
        ("é", "e"), (1.1, 1.10000001),
    ],
)
def test_values_of_other_type_or_content_differ(left: Any, right: Any) -> None:
    """Values that JSON tells apart hash apart: types, list order, nested content, text."""
    assert content_hash({"v": left}) != content_hash({"v": right})


def test_reordered_object_keys_are_no_change_at_any_depth() -> None:
    """An API that returns an object's keys in another order causes no update, nested in lists too."""
    first = {"meta": {"a": 1, "b": {"x": [1, {"p": 1, "q": 2}]}}, "lines": [{"sku": "x", "qty": 2}]}
    again = {"lines": [{"qty": 2, "sku": "x"}], "meta": {"b": {"x": [1, {"q": 2, "p": 1}]}, "a": 1}}
    assert content_hash(first) == content_hash(again)
    changed = {"lines": [{"qty": 3, "sku": "x"}], "meta": {"b": {"x": [1, {"q": 2, "p": 1}]}, "a": 1}}
    assert content_hash(first) != content_hash(changed)


def test_one_hasher_gives_what_content_hash_gives_and_a_missing_field_is_null() -> None:
    """The per-run hasher agrees with content_hash; a record without a field hashes as that field null."""
    hasher = RecordHasher(["name", "tags", "n"])
    record = {"name": "Zoë", "tags": ["a", "b"], "n": 2.5}
    assert hasher(record) == content_hash(record) == content_hash(dict(reversed(record.items())))
    assert hasher({"name": "Zoë", "tags": None}) == hasher({"name": "Zoë", "tags": None, "n": None})
    assert len(hasher(record)) == 32 and int(hasher(record), 16) >= 0
