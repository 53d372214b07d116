"""A local demo API on 127.0.0.1: the same records in every pagination style.

The README demo, the tests and the benchmark all read from it. The records
(deterministic for a seed, in mixed UTC offsets) come from `runner.dev.demo_data`;
each one's JSON is encoded once and bodies are joined from those bytes, so
the server keeps up with a benchmark of 100,000 records. This module owns the
endpoints, the fault injection and the command line; `runner.dev.localserver`
the socket plumbing.

Endpoints (all take `updated_since`, an ISO timestamp: records whose
`updated_at` instant is at or after it, and `sort=updated_at`: listed by
that instant, so a changed record moves to the end and the positions of
those after it shift, as in many real APIs). Page sizes default to 100, but 30
for `link_header` (as GitHub) and 10 for `stripe` (as Stripe):

    GET /items/none         {"data": [...all]}
    GET /items/next_url     ?after=&limit=        {"data", "next": relative URL or null}
    GET /items/link_header  ?page=&per_page=      bare list; Link: rel="next"/"last"/"first"/"prev"
    GET /items/cursor       ?cursor=&limit=       {"data", "next_cursor"} (opaque strings)
    GET /items/stripe       ?starting_after=&limit=  {"object": "list", "data", "has_more"}
    GET /items/page         ?page=&per_page=      {"data", "page", "per_page", "total_pages", "total"}
    GET /items/offset       ?offset=&limit=       {"data", "offset", "limit", "total"}
    GET /items/{id}/notes  ?page=&per_page=      the item's notes (a child endpoint): {"data", "page",
                           "total_pages"}; `id % 4` notes (or --notes-per-item); 404 for no such item
    POST /_admin/update/{id}   JSON body = changes (updated_at is bumped)
    POST /_admin/add?n=N       appends N records
    POST /_admin/remove/{id}   the item's notes answer 404 from now on (deleted between two requests)

Faults (`Faults`) are drawn from a hash of the seed, the request target and
how many times that target was asked for, so they are the same run after run
and a retry of a failed request gets a fresh draw.

    python -m runner.dev.demo_api --port 8765 --records 1000 [--latency-ms N] [--error-rate F ...]
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from runner.dev.demo_data import EPOCH, Store, View, encode, format_instant
from runner.timestamps import parse_timestamp
from runner.dev.localserver import Handler, LocalServer

__all__ = ["DemoApi", "Faults", "main"]

DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class Faults:
    """Deterministic misbehaviour; rates are probabilities per request (0 to 1)."""

    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 0.0
    html_on_pages: frozenset[int] = field(default_factory=frozenset)
    loop_cursor: int = 0  # the cursor endpoint's page N hands back the cursor it was given

    @property
    def random(self) -> bool:
        return any((self.error_rate, self.rate_limit_rate, self.drop_rate, self.slow_rate))


# --- the endpoints ----------------------------------------------------------------


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    page: int = 0  # which page of the listing this is (1-based), for html_on_pages
    content_type: str = "application/json"

    def send(self, handler: Handler) -> None:
        handler.send_reply(self.status, self.body, f"{self.content_type}; charset=utf-8", self.headers)


def _join(blobs: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(blobs) + b"]"


def _object(data: bytes, **fields: Any) -> bytes:
    """`{"data": <data>, **fields}` with `data` already encoded."""
    parts = [b'"data":' + data]
    parts.extend(f"{json.dumps(k)}:{json.dumps(v)}".encode() for k, v in fields.items())
    return b"{" + b",".join(parts) + b"}"


class _Query:
    """The query parameters of one request, with typed getters that answer 400 on junk."""

    def __init__(self, raw: str) -> None:
        self.values = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        text = self.values.get(name)
        if text in (None, ""):
            return default
        try:
            value = int(text)
        except ValueError:
            raise _BadRequest(f"{name} must be an integer") from None
        if value < minimum:
            raise _BadRequest(f"{name} must be >= {minimum}")
        return value

    def since(self) -> datetime | None:
        text = self.values.get("updated_since")
        if not text:
            return None
        if len(text) > 6 and text[-6] == " ":  # an unencoded '+' of an offset arrives as a space
            text = text[:-6] + "+" + text[-5:]
        try:
            return parse_timestamp(text)
        except ValueError:
            raise _BadRequest("updated_since must be an ISO-8601 timestamp") from None

    def carried(self, **changes: Any) -> str:
        """A query string for a follow-up link: `updated_since` kept, `changes` applied."""
        keep = {k: v for k, v in self.values.items() if k == "updated_since"}
        return urlencode({**changes, **keep})


class _BadRequest(Exception):
    pass


def _after_slice(view: View, after: int, limit: int) -> tuple[int, int]:
    start = bisect.bisect_right(view.ids, after)
    return start, min(start + limit, len(view.ids))


def _encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        prefix, _, number = raw.partition(":")
        if prefix != "v1":
            raise ValueError(raw)
        return int(number)
    except ValueError:
        raise _BadRequest("cursor is not one this API handed out") from None


class _Endpoints:
    """Builds the reply of each listing endpoint from a view of the records."""

    def __init__(self, api: DemoApi) -> None:
        self.api = api

    def none(self, view: View, q: _Query) -> _Reply:
        return _Reply(200, _object(_join(view.blobs)), page=1)

    def next_url(self, view: View, q: _Query) -> _Reply:
        limit = q.integer("limit", DEFAULT_LIMIT, 1)
        start, end = _after_slice(view, q.integer("after", 0), limit)
        more = end < len(view.ids)
        link = f"/items/next_url?{q.carried(after=view.ids[end - 1], limit=limit)}" if more else None
        return _Reply(200, _object(_join(view.blobs[start:end]), next=link), page=start // limit + 1)

    def link_header(self, view: View, q: _Query) -> _Reply:
        page, per_page = q.integer("page", 1, 1), q.integer("per_page", 30, 1)
        last = max(1, math.ceil(len(view.ids) / per_page))
        start = (page - 1) * per_page
        url = f"{self.api.base_url}/items/link_header?"
        rels = [("first", 1), ("last", last)]
        if page < last:
            rels.insert(0, ("next", page + 1))
        if page > 1:
            rels.insert(0, ("prev", page - 1))
        link = ", ".join(f'<{url}{q.carried(page=n, per_page=per_page)}>; rel="{rel}"' for rel, n in rels)
        body = _join(view.blobs[start : start + per_page])
        return _Reply(200, body, [("Link", link)], page=page)

    def cursor(self, view: View, q: _Query) -> _Reply:
        limit = q.integer("limit", DEFAULT_LIMIT, 1)
        given = q.values.get("cursor") or ""
        start, end = _after_slice(view, _decode_cursor(given) if given else 0, limit)
        page = start // limit + 1
        token = _encode_cursor(view.ids[end - 1]) if end < len(view.ids) else None
        if token and self.api.faults.loop_cursor and page == self.api.faults.loop_cursor and given:
            token = given
        return _Reply(200, _object(_join(view.blobs[start:end]), next_cursor=token), page=page)

    def stripe(self, view: View, q: _Query) -> _Reply:
        limit = q.integer("limit", 10, 1)
        start, end = _after_slice(view, q.integer("starting_after", 0), limit)
        body = _object(
            _join(view.blobs[start:end]), object="list", url="/items/stripe", has_more=end < len(view.ids)
        )
        return _Reply(200, body, page=start // limit + 1)

    def page(self, view: View, q: _Query) -> _Reply:
        page, per_page = q.integer("page", 1, 1), q.integer("per_page", DEFAULT_LIMIT, 1)
        total = len(view.ids)
        start = (page - 1) * per_page
        body = _object(
            _join(view.blobs[start : start + per_page]),
            page=page, per_page=per_page, total_pages=math.ceil(total / per_page), total=total,
        )
        return _Reply(200, body, page=page)

    def offset(self, view: View, q: _Query) -> _Reply:
        offset, limit = q.integer("offset", 0), q.integer("limit", DEFAULT_LIMIT, 1)
        body = _object(
            _join(view.blobs[offset : offset + limit]), offset=offset, limit=limit, total=len(view.ids)
        )
        return _Reply(200, body, page=offset // limit + 1)


STYLES = ("none", "next_url", "link_header", "cursor", "stripe", "page", "offset")

HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\n"
    b"<body><h1>We'll be back soon</h1><p>Scheduled maintenance.</p></body></html>\n"
)


# --- HTTP ---------------------------------------------------------------------------


class _Handler(Handler):
    timeout = 60  # an idle keep-alive connection ends after a minute
    do_GET = do_POST = do_PUT = do_DELETE = Handler.dispatch


class DemoApi(LocalServer):
    """The demo server; `start()` returns its base URL, `stop()` closes every connection."""

    handler_class = _Handler
    thread_name = "demo-api"

    def __init__(
        self,
        records: int = 1000,
        *,
        port: int = 0,
        latency_ms: float = 0,
        seed: int = 0,
        faults: Faults | None = None,
        log_size: int = 10_000,
        notes_per_item: int | None = None,
    ) -> None:
        super().__init__(port)
        self.latency_ms = latency_ms
        self.faults = faults or Faults()
        self.request_log: deque[tuple[str, str]] = deque(maxlen=log_size)
        self._store = Store(seed, records)
        self._endpoints = _Endpoints(self)
        self._attempts: Counter[str] = Counter()
        self._attempts_lock = threading.Lock()
        self.notes_per_item = notes_per_item  # the child endpoint's notes per item; None: id % 4
        self.removed: set[int] = set()  # items whose notes answer 404

    # --- data -------------------------------------------------------------------

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every record, sorted by id (a copy of the list, not of the records)."""
        return list(self._store.current.records)

    def update_record(self, record_id: int, **changes: Any) -> dict[str, Any]:
        """Change one record; its `updated_at` becomes the newest unless `changes` sets it."""
        return self._store.update(record_id, changes)

    def add_records(self, count: int) -> list[dict[str, Any]]:
        """Append `count` records with the next ids and the newest `updated_at` values."""
        return self._store.add(count)

    # --- requests -----------------------------------------------------------------

    def handle(self, handler: Handler) -> None:
        method, target = handler.command, handler.path
        self.request_log.append((method, target))
        body = handler.read_body()
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if self._fault(handler, target):
            return
        try:
            reply = self._route(method, target, body)
        except _BadRequest as exc:
            reply = _Reply(400, json.dumps({"error": str(exc)}).encode())
        except KeyError as exc:
            reply = _Reply(404, json.dumps({"error": f"not found: {exc}"}).encode())
        if reply.page in self.faults.html_on_pages and reply.status == 200:
            reply = _Reply(200, HTML_PAGE, content_type="text/html")
        reply.send(handler)

    def _route(self, method: str, target: str, body: bytes) -> _Reply:
        parts = urlsplit(target)
        segments = parts.path.strip("/").split("/")
        q = _Query(parts.query)
        if method == "POST" and segments[:1] == ["_admin"]:
            return self._admin(segments[1:], q, body)
        if method == "GET" and len(segments) == 3 and segments[0] == "items" and segments[2] == "notes":
            return self._notes(segments[1], q)
        if method != "GET" or len(segments) != 2 or segments[0] != "items" or segments[1] not in STYLES:
            raise KeyError(parts.path)
        endpoint: Callable[[View, _Query], _Reply] = getattr(self._endpoints, segments[1])
        by_time = q.values.get("sort") == "updated_at"
        return endpoint(self._store.current.view(q.since(), by_time=by_time), q)

    def notes(self, item_id: int) -> list[dict[str, Any]]:
        """The notes of one item (the child endpoint): `id % 4` of them, unless `notes_per_item`."""
        count = self.notes_per_item if self.notes_per_item is not None else item_id % 4
        return [
            {"id": f"{item_id}-{n}", "item_id": item_id, "text": f"note {n} on item {item_id}",
             "created_at": format_instant(EPOCH + timedelta(minutes=item_id * 10 + n), timezone.utc)}
            for n in range(1, count + 1)
        ]

    def _notes(self, raw_id: str, q: _Query) -> _Reply:
        """GET /items/{id}/notes?page=N&per_page=M: numbered pages with `total_pages`; 404 for
        an item that does not exist or was removed (`POST /_admin/remove/{id}`)."""
        try:
            item_id = int(raw_id)
        except ValueError:
            raise _BadRequest(f"item id must be an integer, got {raw_id!r}") from None
        if not 1 <= item_id <= len(self._store.current.records) or item_id in self.removed:
            raise KeyError(f"item {item_id}")
        page, per_page = q.integer("page", 1, 1), q.integer("per_page", 20, 1)
        notes = self.notes(item_id)
        chunk = notes[(page - 1) * per_page: page * per_page]
        total_pages = max(1, -(-len(notes) // per_page))
        return _Reply(200, json.dumps({"data": chunk, "page": page, "total_pages": total_pages}).encode())

    def _admin(self, segments: list[str], q: _Query, body: bytes) -> _Reply:
        if segments[:1] == ["update"] and len(segments) == 2:
            try:
                changes = json.loads(body or b"{}")
                record = self.update_record(int(segments[1]), **changes)
            except (ValueError, TypeError):
                raise _BadRequest("POST /_admin/update/{id} takes a JSON object of changes") from None
            except KeyError:
                raise KeyError(f"record {segments[1]}") from None
            return _Reply(200, encode(record))
        if segments[:1] == ["remove"] and len(segments) == 2:
            self.removed.add(int(segments[1]))  # its notes answer 404 from now on
            return _Reply(200, b"{}")
        if segments == ["add"]:
            added = self.add_records(q.integer("n", 1, 1))
            return _Reply(200, _join(encode(r) for r in added))
        raise KeyError("/_admin/" + "/".join(segments))

    def _fault(self, handler: Handler, target: str) -> bool:
        """Misbehave for this request if the seeded draw says so; True when answered."""
        faults = self.faults
        if not faults.random or target.startswith("/_admin"):
            return False
        with self._attempts_lock:
            self._attempts[target] += 1
            attempt = self._attempts[target]
        draw = _draws(self._store.seed, target, attempt)
        if draw[0] < faults.drop_rate:
            handler.drop()
            return True
        if draw[1] < faults.error_rate:
            status = (500, 502, 503)[int(draw[4] * 3)]
            _Reply(status, b'{"error": "injected server error"}').send(handler)
            return True
        if draw[2] < faults.rate_limit_rate:
            retry_after = str(int(draw[4] * 2))
            _Reply(429, b'{"error": "rate limited"}', [("Retry-After", retry_after)]).send(handler)
            return True
        if draw[3] < faults.slow_rate:
            time.sleep(faults.slow_ms / 1000)
        return False


def _draws(seed: int, target: str, attempt: int) -> list[float]:
    """Five uniform numbers in [0, 1) fixed by the seed, the request target and the attempt."""
    digest = hashlib.blake2b(f"{seed}|{target}|{attempt}".encode(), digest_size=20).digest()
    return [int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in range(0, 20, 4)]


# --- command line -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground until SIGINT or SIGTERM; print the base URL on one line."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m runner.dev.demo_api", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--notes-per-item", type=int, default=None)
    parser.add_argument("--error-rate", type=float, default=0)
    parser.add_argument("--rate-limit-rate", type=float, default=0)
    parser.add_argument("--drop-rate", type=float, default=0)
    parser.add_argument("--slow-rate", type=float, default=0)
    parser.add_argument("--slow-ms", type=float, default=0)
    parser.add_argument("--html-on-pages", default="", help="comma-separated page numbers")
    parser.add_argument("--loop-cursor", type=int, default=0, help="page whose next cursor repeats")
    args = parser.parse_args(argv)
    faults = Faults(
        error_rate=args.error_rate, rate_limit_rate=args.rate_limit_rate, drop_rate=args.drop_rate,
        slow_rate=args.slow_rate, slow_ms=args.slow_ms, loop_cursor=args.loop_cursor,
        html_on_pages=frozenset(int(p) for p in args.html_on_pages.split(",") if p.strip()),
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    api = DemoApi(
        args.records, port=args.port, latency_ms=args.latency_ms, seed=args.seed, faults=faults,
        notes_per_item=args.notes_per_item,
    )
    with api:
        print(api.base_url, flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
