"""The naive baseline and the API-alone probe: hand-written loops, each run as its own process.

    python bench/naive.py fetch --url BASE --style page --per-page 100 --records N [--threads T]
    python bench/naive.py sync  --url BASE --style page --per-page 100 --db out.db

`fetch` reads every page and does nothing with it (for `cursor` it finds
`next_cursor` in the raw bytes; for `page`/`offset` the page count follows
from --records), so its figure is what the API alone can serve. With
--threads T > 1 (page/offset only) T threads share one client, as etl's
`concurrency` does.

`sync` is what someone would write without etl: one sequential httpx client,
`json` decoding, the same nine columns as the bench pipeline taken by plain
dict access, and one `executemany` INSERT ... ON CONFLICT DO UPDATE
transaction per page (WAL, like etl's SQLite target). No JMESPath, no hashes,
no state store, no checkpoint, no logs.

Both print one JSON line: {"pages", "records", "seconds"} (seconds: the loop
only, without interpreter start-up).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

COLUMNS = ("name", "email", "status", "tags", "city", "zip", "amount", "active", "updated_at")
_NEXT_CURSOR = re.compile(rb'"next_cursor":(null|"([^"]*)")')


# --- requests, per style --------------------------------------------------------


def page_params(style: str, index: int, per_page: int) -> dict[str, Any]:
    """Query of the `index`-th (0-based) page for a predictable style."""
    if style == "page":
        return {"page": index + 1, "per_page": per_page}
    if style == "offset":
        return {"offset": index * per_page, "limit": per_page}
    raise ValueError(f"style {style!r} is not predictable; use page or offset")


def next_params(style: str, body: dict[str, Any], params: dict[str, Any], per_page: int) -> dict[str, Any] | None:
    """The next page's query from the decoded body, or None at the end."""
    if style == "cursor":
        token = body.get("next_cursor")
        return {"limit": per_page, "cursor": token} if token else None
    if style == "page":
        return {**params, "page": params["page"] + 1} if params["page"] < body["total_pages"] else None
    if style == "offset":
        following = params["offset"] + per_page
        return {**params, "offset": following} if following < body["total"] else None
    raise ValueError(f"unsupported style {style!r}")


def first_params(style: str, per_page: int) -> dict[str, Any]:
    return {"limit": per_page} if style == "cursor" else page_params(style, 0, per_page)


# --- fetch: the API alone ---------------------------------------------------------


def fetch(url: str, style: str, per_page: int, records: int, threads: int) -> dict[str, Any]:
    endpoint = f"{url}/items/{style}"
    started = time.perf_counter()
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=max(threads, 1))) as client:
        if style == "cursor":
            pages, size = _fetch_cursor(client, endpoint, per_page)
        else:
            pages, size = _fetch_predictable(client, endpoint, style, per_page, records, threads)
    return {"pages": pages, "bytes": size, "seconds": time.perf_counter() - started}


def _fetch_cursor(client: httpx.Client, endpoint: str, per_page: int) -> tuple[int, int]:
    params: dict[str, Any] | None = {"limit": per_page}
    pages = size = 0
    while params is not None:
        content = _get(client, endpoint, params).content
        pages, size = pages + 1, size + len(content)
        found = _NEXT_CURSOR.search(content, max(0, len(content) - 300))
        if found is None:
            raise RuntimeError(f"no next_cursor at the end of page {pages}")
        params = {"limit": per_page, "cursor": found.group(2).decode()} if found.group(2) else None
    return pages, size


def _fetch_predictable(
    client: httpx.Client, endpoint: str, style: str, per_page: int, records: int, threads: int
) -> tuple[int, int]:
    count = max(1, math.ceil(records / per_page))

    def one(index: int) -> int:
        return len(_get(client, endpoint, page_params(style, index, per_page)).content)

    if threads <= 1:
        return count, sum(map(one, range(count)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return count, sum(pool.map(one, range(count)))


def _get(client: httpx.Client, endpoint: str, params: dict[str, Any]) -> httpx.Response:
    response = client.get(endpoint, params=params)
    response.raise_for_status()
    return response


# --- sync: the naive baseline -------------------------------------------------------


def sync(url: str, style: str, per_page: int, db_path: str, journal: str = "wal") -> dict[str, Any]:
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.execute(f"CREATE TABLE IF NOT EXISTS items (external_id TEXT PRIMARY KEY, {', '.join(COLUMNS)})")
    sql = (
        f"INSERT INTO items (external_id, {', '.join(COLUMNS)}) VALUES ({', '.join('?' * (len(COLUMNS) + 1))}) "
        f"ON CONFLICT (external_id) DO UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in COLUMNS)}"
    )
    started = time.perf_counter()
    pages = records = 0
    with httpx.Client(timeout=60) as client:
        for data in _pages(client, f"{url}/items/{style}", style, per_page):
            db.execute("BEGIN")
            db.executemany(sql, [_row(r) for r in data])
            db.execute("COMMIT")
            pages, records = pages + 1, records + len(data)
    db.close()
    return {"pages": pages, "records": records, "seconds": time.perf_counter() - started}


def _pages(client: httpx.Client, endpoint: str, style: str, per_page: int) -> Iterator[list[dict[str, Any]]]:
    params: dict[str, Any] | None = first_params(style, per_page)
    while params is not None:
        body = _get(client, endpoint, params).json()
        if not body["data"]:
            return
        yield body["data"]
        params = next_params(style, body, params, per_page)


def _row(r: dict[str, Any]) -> tuple[Any, ...]:
    address = r.get("address") or {}
    return (
        str(r["id"]), r.get("name"), r.get("email"), r.get("status"),
        json.dumps(r.get("tags"), ensure_ascii=False, separators=(",", ":")),
        address.get("city"), address.get("zip"), r.get("amount"), r.get("active"), r.get("updated_at"),
    )


# --- command line ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="naive", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("fetch", "sync"))
    parser.add_argument("--url", required=True, help="the demo API's base URL")
    parser.add_argument("--style", choices=("page", "offset", "cursor"), default="page")
    parser.add_argument("--per-page", type=int, default=100)
    parser.add_argument("--records", type=int, default=0, help="fetch: how many records the API holds")
    parser.add_argument("--threads", type=int, default=1, help="fetch: concurrent requests (page/offset)")
    parser.add_argument("--db", default="naive.db", help="sync: the SQLite file")
    parser.add_argument(
        "--journal", default="wal", choices=("wal", "delete"),
        help="sync: SQLite journal mode; wal (the default) matches etl's target, delete is sqlite3's default",
    )
    args = parser.parse_args(argv)
    if args.mode == "fetch":
        result = fetch(args.url, args.style, args.per_page, args.records, args.threads)
    else:
        result = sync(args.url, args.style, args.per_page, args.db, args.journal)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
