"""Dates as SaaS APIs write them: RFC 2822 / HTTP dates as instants, `to_iso` and `parse_date`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from conftest import whole, write_pipeline_file
from fakes import expr
from runner.config import load_pipeline
from runner.engine import run
from runner.load.watermark import Watermark
from runner.model import MappingSpec
from runner.state import open_store
from runner.timestamps import parse_timestamp, sort_key, step_back
from runner.transform.mapping import Failed, Mapped, Mapper

UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wed, 21 Oct 2015 07:28:00 +0000", datetime(2015, 10, 21, 7, 28, tzinfo=UTC)),
        ("Wed, 21 Oct 2015 07:28:00 GMT", datetime(2015, 10, 21, 7, 28, tzinfo=UTC)),
        ("Tue, 05 Mar 2024 18:53:33 +0000", datetime(2024, 3, 5, 18, 53, 33, tzinfo=UTC)),
        ("Tue, 05 Mar 2024 20:53:33 +0200", datetime(2024, 3, 5, 18, 53, 33, tzinfo=UTC)),
        ("Tue, 05 Mar 2024 13:53:33 -0500", datetime(2024, 3, 5, 18, 53, 33, tzinfo=UTC)),
        ("Tue, 05 Mar 2024 18:53:33 -0000", datetime(2024, 3, 5, 18, 53, 33, tzinfo=UTC)),
        ("5 Mar 2024 18:53 UT", datetime(2024, 3, 5, 18, 53, tzinfo=UTC)),
        ("tue, 05 mar 2024 18:53:33 gmt", datetime(2024, 3, 5, 18, 53, 33, tzinfo=UTC)),
    ],
)
def test_rfc_2822_and_http_dates_parse_as_instants(text: str, expected: datetime) -> None:
    """Numeric offsets, GMT, UT, "-0000", no day name, no seconds and any case give the UTC instant."""
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Tue, 31 Feb 2024 18:53:33 +0000",  # no such day
        "Tue, 05 Foo 2024 18:53:33 +0000",  # no such month
        "Tue, 05 Mar 2024 25:53:33 +0000",  # no such hour
        "Tue, 05 Mar 2024 18:53:33",  # no zone: which instant is unknown
        "Tue, 05 Mar 24 18:53:33 GMT",  # two-digit year (obsolete)
        "Tue, 05 Mar 2024 18:53:33 EST",  # US zone name (obsolete)
        "Tue 05 Mar 2024 18:53:33 GMT",  # day name without its comma
    ],
)
def test_a_bad_rfc_2822_date_is_a_value_error(text: str) -> None:
    """Impossible dates, a missing zone and the obsolete forms are not timestamps."""
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_mixed_iso_and_rfc_2822_values_order_as_instants_not_text() -> None:
    """ISO-8601 and RFC 2822 values are one kind and order by instant; the greatest is kept as written."""
    values = [
        "2024-03-05T18:00:00Z",
        "Tue, 05 Mar 2024 18:53:33 +0000",
        "2024-03-05T19:30:00+02:00",  # 17:30Z
        "Tue, 05 Mar 2024 14:00:00 -0500",  # 19:00Z: the greatest
    ]
    assert {sort_key(v)[0] for v in values} == {"timestamp"}
    assert sorted(values, key=sort_key) == [values[2], values[0], values[1], values[3]]
    mark = Watermark()
    for value in values:
        mark.observe(value)
    assert mark.value == "Tue, 05 Mar 2024 14:00:00 -0500" and mark.kind == "timestamp"


@pytest.mark.parametrize(
    ("value", "amount", "expected"),
    [
        ("Tue, 05 Mar 2024 18:53:33 +0000", None, "Tue, 05 Mar 2024 18:53:32 +0000"),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None, "Wed, 21 Oct 2015 07:27:59 GMT"),
        ("Fri, 01 Mar 2024 00:00:00 +0200", None, "Thu, 29 Feb 2024 23:59:59 +0200"),
        ("Mon, 01 Jan 2024 00:00:00 -0000", 3600, "Sun, 31 Dec 2023 23:00:00 -0000"),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.5, "Wed, 21 Oct 2015 07:27:59 GMT"),
        ("21 Oct 2015 07:28 +0000", None, "21 Oct 2015 07:27 +0000"),
    ],
)
def test_step_back_writes_rfc_2822_in_rfc_2822_with_its_zone(value: str, amount: float | None, expected: str) -> None:
    """An RFC 2822 value moves back in its own form: its zone spelling (GMT or an offset),
    a day name that matches the new date, and whole seconds (a fraction rounds to the past)."""
    moved = step_back(value, amount)
    assert moved == expected
    assert parse_timestamp(value) - parse_timestamp(moved) >= timedelta(seconds=amount or 1)


def test_step_back_keeps_iso_and_numbers_in_their_own_form() -> None:
    """ISO-8601 values and epoch numbers are unchanged by RFC 2822 support."""
    assert step_back("2024-05-01T12:00:00+02:00") == "2024-05-01T11:59:59+02:00"
    assert step_back("2024-05-01T12:00:00.120Z", 60) == "2024-05-01T11:59:00.120Z"
    assert step_back(1709664813) == 1709664812
    assert sort_key(1709664813) == ("number", 1709664813)


def mapper(**fields: str) -> Mapper:
    return Mapper(
        MappingSpec(
            external_id=expr("to_string(id)"),
            fields=tuple((name, expr(text)) for name, text in fields.items()),
            filter=None,
        )
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Tue, 05 Mar 2024 18:53:33 +0000", "2024-03-05T18:53:33Z"),
        ("Wed, 21 Oct 2015 09:28:00 +0200", "2015-10-21T07:28:00Z"),
        ("Wed, 21 Oct 2015 07:28:00 GMT", "2015-10-21T07:28:00Z"),
        ("2024-05-01T10:00:00+02:00", "2024-05-01T08:00:00Z"),
        (None, None),
    ],
)
def test_to_iso_reads_rfc_2822_dates_in_a_mapping(raw: str | None, expected: str | None) -> None:
    """`to_iso` turns RFC 2822 / HTTP dates (and still ISO-8601) into ISO-8601 UTC; null stays null."""
    out = mapper(updated="to_iso(date_updated)").map({"id": 1, "date_updated": raw})
    assert isinstance(out, Mapped) and out.record == {"updated": expected}


@pytest.mark.parametrize(
    ("raw", "fmt", "expected"),
    [
        ("01/05/2024 08:00", "%d/%m/%Y %H:%M", "2024-05-01T08:00:00Z"),
        ("2024-05-01 10:00:00+0200", "%Y-%m-%d %H:%M:%S%z", "2024-05-01T08:00:00Z"),
        ("20240501 080000.250", "%Y%m%d %H%M%S.%f", "2024-05-01T08:00:00.250000Z"),
        ("May 1, 2024", "%b %d, %Y", "2024-05-01T00:00:00Z"),
        (None, "%d/%m/%Y", None),
    ],
)
def test_parse_date_reads_a_strptime_format_as_iso_utc(raw: str | None, fmt: str, expected: str | None) -> None:
    """`parse_date` reads with `strptime`: no offset in the format means UTC, an offset is
    honoured, a fraction is kept, and null gives null."""
    out = mapper(when=f"parse_date(raw, '{fmt}')").map({"id": 1, "raw": raw})
    assert isinstance(out, Mapped) and out.record == {"when": expected}


def test_a_value_that_does_not_match_the_format_fails_that_record_only() -> None:
    """A date that `parse_date`'s format does not match fails its own record; the next one maps."""
    m = mapper(when="parse_date(raw, '%d/%m/%Y')")
    bad = m.map({"id": 1, "raw": "2024-05-01"})
    good = m.map({"id": 2, "raw": "01/05/2024"})
    assert isinstance(bad, Failed) and bad.external_id == "1"
    assert "ValueError" in bad.error and "does not match format" in bad.error
    assert isinstance(good, Mapped) and good.record == {"when": "2024-05-01T00:00:00Z"}


def test_parse_date_is_a_known_function_for_validation(tmp_path: Path) -> None:
    """`etl validate` knows `parse_date`: a pipeline that maps with it loads."""
    path = write_pipeline_file(tmp_path, mapping={"fields": whole({"when": "parse_date(created, '%d/%m/%Y')"})})
    assert load_pipeline(path).mapping.fields[0][0] == "when"


class TwilioApi:
    """Messages with Twilio's `date_updated`, whose text order is not their time order;
    `DateUpdated>` (as Twilio names it) filters by instant."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = [
            {"sid": "SM1", "date_updated": "Tue, 05 Mar 2024 18:53:33 +0000"},
            {"sid": "SM2", "date_updated": "Wed, 28 Feb 2024 09:00:00 +0000"},  # text-greatest, earliest
            {"sid": "SM3", "date_updated": "Fri, 08 Mar 2024 07:15:00 +0000"},  # the latest instant
            {"sid": "SM4", "date_updated": "Mon, 04 Mar 2024 23:59:59 +0000"},
        ]
        self.sent: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        query = {k: v[0] for k, v in parse_qs(urlsplit(str(request.url)).query).items()}
        since = query.get("DateUpdated>")
        self.sent.append(since)
        rows = [
            r for r in self.records
            if since is None or parse_timestamp(r["date_updated"]) > parse_timestamp(since)
        ]
        return httpx.Response(200, json={"messages": rows})


def test_an_incremental_run_over_twilio_dates_saves_the_latest_instant(tmp_path: Path) -> None:
    """The watermark over RFC 2822 `date_updated` is the latest instant (not the text-greatest),
    saved as written, sent back as the next run's filter, which then reads only newer records."""
    api = TwilioApi()
    assert max(r["date_updated"] for r in api.records) != "Fri, 08 Mar 2024 07:15:00 +0000"
    path = write_pipeline_file(
        tmp_path, "https://api.test",
        source={
            "url": "https://api.test/Messages.json", "records": "messages", "pagination": None,
            "incremental": {"cursor_field": "date_updated", "param": "DateUpdated>"},
        },
        mapping={"external_id": "sid", "fields": whole({"updated": "to_iso(date_updated)"})},
    )
    first = run(path, transport=httpx.MockTransport(api))
    assert (first.status, first.counts.created) == ("success", 4)
    store = open_store(load_pipeline(path).state, read_only=True)
    try:
        assert store.watermark("test") == "Fri, 08 Mar 2024 07:15:00 +0000"
    finally:
        store.close()

    api.records.append({"sid": "SM5", "date_updated": "Sat, 09 Mar 2024 10:00:00 +0000"})
    second = run(path, transport=httpx.MockTransport(api))
    assert api.sent == [None, "Fri, 08 Mar 2024 07:15:00 +0000"]
    assert (second.status, second.counts.created) == ("success", 1)
