"""Values a target cannot store fail their record alone (reliability review D9, D14):
NaN and Infinity, integers past 64 bits into SQLite, numbers of more than 4,300 digits."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from conftest import whole, write_pipeline_file
from runner.engine import run
from runner.transform.values import INT64, HugeNumber, unstorable

HUGE = "9" * 5000
BODY = (
    '{"data": ['
    '{"id": 1, "v": 1.5}, {"id": 2, "v": NaN}, {"id": 3, "v": 9223372036854775808},'
    '{"id": 4, "v": [1, {"x": -Infinity}]}, {"id": 5, "v": ' + HUGE + '}, {"id": 6, "v": 9223372036854775807}'
    "]}"
)


def source(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=BODY.encode(), headers={"content-type": "application/json"})


def pipeline(tmp_path: Path, target: dict[str, Any]) -> Path:
    return write_pipeline_file(
        tmp_path, "https://api.test",
        source={"url": "https://api.test/items", "pagination": whole({"type": "none"})},
        mapping={"fields": whole({"v": "v"})}, target=whole(target),
    )


def failed_keys(tmp_path: Path) -> dict[str, str]:
    db = sqlite3.connect(tmp_path / "state.db")
    try:
        return dict(db.execute("SELECT external_id, error FROM failed").fetchall())
    finally:
        db.close()


def test_the_page_scan_finds_each_kind_and_passes_clean_pages() -> None:
    """One pass finds NaN, Infinity inside a list, a 64-bit overflow and a huge number; a clean
    page, and a large int where the target has no 64-bit bound, pass."""
    records = [("a", {"v": 1.5}), ("b", {"v": math.nan}), ("c", {"v": [1, {"x": -math.inf}]}),
               ("d", {"v": 2**63}), ("e", {"v": HugeNumber("9" * 5000)}), ("f", {"v": [2**63]})]
    found = unstorable(records, int_range=INT64)
    assert sorted(found) == ["b", "c", "d", "e"]  # f: a big int inside a list is JSON text
    assert "nan is not a JSON number" in found["b"] and "does not fit in 64 bits" in found["d"]
    assert "5000 digits" in found["e"]
    assert unstorable([("a", {"v": 1.5, "w": "x", "n": [1, 2]})], int_range=INT64) == {}
    assert unstorable([("d", {"v": 2**63})], int_range=None) == {}
    # a body without NaN, Infinity or huge numbers: only the fields' own ints are looked at
    assert sorted(unstorable(records, int_range=INT64, deep=False)) == ["d"]


def test_unstorable_values_into_sqlite_fail_their_records_alone(tmp_path: Path) -> None:
    """Before: an OverflowError failed every run (a 51-line traceback inline), NaN became NULL
    without a word, and a 5,000-digit number made the page 'not JSON'."""
    result = run(pipeline(tmp_path, {"type": "sqlite", "path": "{tmp}/out.db", "table": "items"}),
                 transport=httpx.MockTransport(source))
    assert (result.status, result.counts.created, result.counts.failed) == ("partial", 2, 4)
    db = sqlite3.connect(tmp_path / "out.db")
    try:
        rows = dict(db.execute("SELECT external_id, v FROM items").fetchall())
    finally:
        db.close()
    assert rows == {"1": 1.5, "6": 2**63 - 1}
    assert sorted(failed_keys(tmp_path)) == ["2", "3", "4", "5"]


def test_nan_never_reaches_a_json_line(tmp_path: Path) -> None:
    """The jsonl target wrote `"v":NaN`, which is not JSON; a big int is fine there."""
    out = tmp_path / "out.jsonl"
    result = run(pipeline(tmp_path, {"type": "jsonl", "path": str(out)}), transport=httpx.MockTransport(source))
    assert (result.counts.created, result.counts.failed) == (3, 3)
    lines = [json.loads(line) for line in out.read_text().splitlines()]  # every line is JSON
    assert sorted(line["external_id"] for line in lines) == ["1", "3", "6"]
