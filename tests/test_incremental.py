"""The watermark: numbers as numbers, ISO-8601 timestamps as instants, never as text."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from runner.errors import EtlError
from runner.load.watermark import Watermark
from runner.timestamps import parse_timestamp, sort_key

UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T07:00:00-05:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T14:00:00+0200", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T14:00+02", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01 12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01T12:00:00.5Z", datetime(2024, 5, 1, 12, 0, 0, 500_000, tzinfo=UTC)),
        ("2024-05-01T12:00:00,123456789Z", datetime(2024, 5, 1, 12, 0, 0, 123_456, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_accepts_iso_8601_forms(text: str, expected: datetime) -> None:
    """`Z`, offsets with or without colons, naive times (UTC), dates and long fractions all parse."""
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text", ["yesterday", "2024-13-01", "2024-05-01T25:00:00Z", "20240501", "2024-05-01T12:00:00+25:00", ""]
)
def test_parse_timestamp_rejects_what_is_not_a_timestamp(text: str) -> None:
    """Text, impossible dates and the basic (no dashes) format are not timestamps."""
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_mixed_offsets_compare_as_instants_not_text() -> None:
    """The greatest instant wins even when its text sorts lowest; the value is kept as written."""
    values = ["2024-05-01T13:30:00+02:00", "2024-05-01T11:45:00Z", "2024-05-01T07:00:00-05:00"]
    assert max(values) != values[2]  # as text, the wrong one would win
    mark = Watermark()
    for value in values:
        mark.observe(value)
    assert mark.value == "2024-05-01T07:00:00-05:00" and mark.kind == "timestamp"


def test_dates_and_naive_timestamps_mix_with_offsets() -> None:
    """A date is midnight UTC and a naive time is UTC, so they order against offset timestamps."""
    mark = Watermark("2024-05-01")
    mark.observe("2024-04-30T23:00:00-02:00")  # 2024-05-01T01:00Z
    mark.observe("2024-05-01T00:30:00")
    assert mark.value == "2024-04-30T23:00:00-02:00"


def test_sub_microsecond_fractions_still_order() -> None:
    """Nanosecond timestamps that share a microsecond are still told apart."""
    mark = Watermark()
    mark.observe("2024-05-01T12:00:00.123456789Z")
    mark.observe("2024-05-01T12:00:00.123456700Z")
    assert mark.value == "2024-05-01T12:00:00.123456789Z"


def test_numbers_compare_as_numbers() -> None:
    """Integers and floats order numerically (10 > 9), and numeric strings count as numbers."""
    mark = Watermark()
    for value in (9, 10, 2.5, "11", 10.5):
        mark.observe(value)
    assert mark.value == "11" and mark.kind == "number"


@pytest.mark.parametrize(
    ("first", "second"),
    [(5, "2024-05-01T12:00:00Z"), ("2024-05-01T12:00:00Z", 1714564800), ("2024-05-01", "7")],
)
def test_a_value_of_another_kind_is_an_error_naming_it(first: Any, second: Any) -> None:
    """Once the first value sets the kind, a value of the other kind is an error that names the value."""
    mark = Watermark(field="updated_at")
    mark.observe(first)
    with pytest.raises(EtlError) as caught:
        mark.observe(second)
    assert repr(second) in str(caught.value) and "updated_at" in str(caught.value)
    assert mark.value == first


@pytest.mark.parametrize("value", ["soon", True, [1], {"a": 1}])
def test_a_value_that_is_neither_kind_is_an_error(value: Any) -> None:
    """Text that is not a timestamp, booleans, lists and objects cannot be a watermark."""
    with pytest.raises(EtlError, match=r"neither a number nor a timestamp \(ISO-8601 .*, or RFC 2822"):
        Watermark().observe(value)


def test_initial_value_counts_and_nulls_are_ignored() -> None:
    """The initial value is the floor, a null cursor is skipped, and an empty watermark is None."""
    assert Watermark().value is None
    mark = Watermark("2024-05-01T00:00:00Z")
    mark.observe(None)
    mark.observe("2024-04-01T00:00:00Z")
    assert mark.value == "2024-05-01T00:00:00Z"


def test_equal_instants_keep_the_first_spelling() -> None:
    """Two spellings of one instant do not move the watermark."""
    mark = Watermark("2024-05-01T12:00:00Z")
    mark.observe("2024-05-01T14:00:00+02:00")
    assert mark.value == "2024-05-01T12:00:00Z"


def test_lowest_tracks_the_least_value_and_lesser_compares_as_instants() -> None:
    """`lowest=True` keeps the least value; `lesser` picks the lesser of the value and another."""
    low = Watermark(lowest=True)
    for value in ("2024-05-01T12:00:00Z", "2024-05-01T08:00:00-05:00", "2024-05-01T13:00:00+02:00"):
        low.observe(value)
    assert low.value == "2024-05-01T13:00:00+02:00"
    high = Watermark("2024-05-01T12:00:00Z")
    assert high.lesser("2024-05-01T13:00:00+02:00") == "2024-05-01T13:00:00+02:00"
    assert high.lesser("2024-05-01T12:30:00Z") == "2024-05-01T12:00:00Z"
    assert high.lesser(None) == "2024-05-01T12:00:00Z"
    assert Watermark().lesser(3) == 3


def test_sort_key_orders_a_shuffled_timeline() -> None:
    """Sorting by `sort_key` orders timestamps of many offsets by instant."""
    base = datetime(2024, 1, 1, tzinfo=UTC)
    zones = [timezone(timedelta(hours=h)) for h in (-8, -5, 0, 2, 9)]
    texts = [(base + timedelta(minutes=37 * i)).astimezone(zones[i % 5]).isoformat() for i in range(50)]
    shuffled = sorted(texts)  # text order differs from time order
    assert shuffled != texts
    assert sorted(shuffled, key=sort_key) == texts
