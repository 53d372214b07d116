"""A local demo API on 127.0.0.1: the same records in every pagination style.

The README demo, the tests and the benchmark all read from it. Records are
deterministic for a seed, sorted by id, with ISO-8601 `updated_at` values in
mixed offsets (`Z`, `+02:00`, `-05:00`) and zip codes with leading zeros.
Each record's JSON is encoded once and bodies are joined from those bytes,
so the server keeps up with a benchmark of 100,000 records.

Endpoints (all take `updated_since`, an ISO timestamp: records whose
`updated_at` instant is at or after it). Page sizes default to 100, but 30
for `link_header` (as GitHub) and 10 for `stripe` (as Stripe):

    GET /items/none         {"data": [...all]}
    GET /items/next_url     ?after=&limit=        {"data", "next": relative URL or null}
    GET /items/link_header  ?page=&per_page=      bare list; Link: rel="next"/"last"/"first"/"prev"
    GET /items/cursor       ?cursor=&limit=       {"data", "next_cursor"} (opaque strings)
    GET /items/stripe       ?starting_after=&limit=  {"object": "list", "data", "has_more"}
    GET /items/page         ?page=&per_page=      {"data", "page", "per_page", "total_pages", "total"}
    GET /items/offset       ?offset=&limit=       {"data", "offset", "limit", "total"}
    POST /_admin/update/{id}   JSON body = changes (updated_at is bumped)
    POST /_admin/add?n=N       appends N records

Faults (`Faults`) are drawn from a hash of the seed, the request target and
how many times that target was asked for, so they are the same run after run
and a retry of a failed request gets a fresh draw.

    python -m runner.demo_api --port 8765 --records 1000 [--latency-ms N] [--error-rate F ...]
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import math
import socket
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlencode, urlsplit

from runner.incremental import parse_timestamp

__all__ = ["DemoApi", "Faults", "main"]

DEFAULT_LIMIT = 100
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
ZONES = (timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5)))
STATUSES = ("active", "active", "inactive", "pending", "suspended")
TAGS = ("alpha", "beta", "gamma", "delta", "vip", "trial")
CITIES = ("Morristown", "Newark", "Zürich", "São Paulo", "Kraków", "Osaka", "Lyon")
FIRST = ("Ada", "Alan", "Grace", "Linus", "Zoë", "Émile", "Søren", "Mei", "Ravi", "Olu")
LAST = ("Lovelace", "Turing", "Hopper", "Torvalds", "Nakamura", "Okafor", "García", "Müller")


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


# --- the records ------------------------------------------------------------------


def make_record(seed: int, record_id: int) -> dict[str, Any]:
    """Record `record_id` for `seed`: the same every time, whatever was made before."""
    digest = hashlib.blake2b(f"{seed}:{record_id}".encode(), digest_size=32).digest()
    n = struct.unpack(">8I", digest)
    status = STATUSES[n[0] % len(STATUSES)]
    instant = EPOCH + timedelta(seconds=n[3] % (180 * 86_400))
    return {
        "id": record_id,
        "name": f"{FIRST[n[1] % len(FIRST)]} {LAST[n[2] % len(LAST)]}",
        "email": f"user{record_id}@example.com",
        "status": status,
        "tags": [tag for i, tag in enumerate(TAGS) if (n[4] >> (3 * i)) & 7 < 2],
        "address": {"city": CITIES[n[5] % len(CITIES)], "zip": f"0{1000 + n[6] % 9000}"},
        "amount": n[7] % 1_000_000 / 100,
        "active": status == "active",
        "updated_at": format_instant(instant, ZONES[record_id % len(ZONES)]),
    }


def format_instant(instant: datetime, zone: timezone) -> str:
    """ISO-8601 to the second in `zone`: `Z` for UTC, `+02:00` style otherwise."""
    text = instant.astimezone(zone).replace(microsecond=0).isoformat()
    return text[:-6] + "Z" if zone is timezone.utc else text


def _instant(text: str) -> datetime:
    """`parse_timestamp`, with the C parser first: it is most of the start-up time."""
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return parse_timestamp(text)
    return moment if moment.tzinfo is not None else parse_timestamp(text)


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _View:
    """The records an `updated_since` filter lets through: ids and encoded bodies, by id."""

    ids: list[int]
    blobs: list[bytes]


@dataclass(frozen=True)
class _Snapshot:
    """One version of the data; a change makes a new one, so readers never need a lock."""

    records: list[dict[str, Any]]
    instants: list[datetime]
    all: _View
    views: dict[str, _View] = field(default_factory=dict)  # filtered views, cached

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> _Snapshot:
        instants = [_instant(r["updated_at"]) for r in records]
        return cls(records, instants, _View([r["id"] for r in records], [_encode(r) for r in records]))

    def view(self, since: datetime | None) -> _View:
        if since is None:
            return self.all
        key = since.isoformat()
        found = self.views.get(key)
        if found is None:
            keep = [i for i, t in enumerate(self.instants) if t >= since]
            found = _View([self.all.ids[i] for i in keep], [self.all.blobs[i] for i in keep])
            if len(self.views) < 64:
                self.views[key] = found
        return found

    def replaced(self, index: int, record: dict[str, Any]) -> _Snapshot:
        records, instants = list(self.records), list(self.instants)
        ids, blobs = list(self.all.ids), list(self.all.blobs)
        records[index], instants[index], blobs[index] = record, _instant(record["updated_at"]), _encode(record)
        return _Snapshot(records, instants, _View(ids, blobs))

    def extended(self, new: list[dict[str, Any]]) -> _Snapshot:
        more = _Snapshot.of(new)
        return _Snapshot(
            self.records + new, self.instants + more.instants,
            _View(self.all.ids + more.all.ids, self.all.blobs + more.all.blobs),
        )


class _Store:
    """The records of one DemoApi; writers serialize on a lock and swap in a new snapshot."""

    def __init__(self, seed: int, count: int) -> None:
        self.seed = seed
        self._lock = threading.Lock()
        self.current = _Snapshot.of([make_record(seed, i) for i in range(1, count + 1)])

    def update(self, record_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            snap = self.current
            index = bisect.bisect_left(snap.all.ids, record_id)
            if index >= len(snap.records) or snap.records[index]["id"] != record_id:
                raise KeyError(record_id)
            record = {**snap.records[index], **changes}
            if "updated_at" not in changes:
                record["updated_at"] = self._newest(1, record_id)
            self.current = snap.replaced(index, record)
            return record

    def add(self, count: int) -> list[dict[str, Any]]:
        with self._lock:
            snap = self.current
            start = snap.all.ids[-1] if snap.all.ids else 0
            new = [make_record(self.seed, start + n) for n in range(1, count + 1)]
            for n, record in enumerate(new, 1):
                record["updated_at"] = self._newest(n, record["id"])
            self.current = snap.extended(new)
            return new

    def _newest(self, step: int, record_id: int) -> str:
        """A timestamp `step` seconds after the newest one: a change is always the latest."""
        latest = max(self.current.instants, default=EPOCH)
        return format_instant(latest + timedelta(seconds=step), ZONES[record_id % len(ZONES)])


# --- the endpoints ----------------------------------------------------------------


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    page: int = 0  # which page of the listing this is (1-based), for html_on_pages
    content_type: str = "application/json"


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
            value = int(text)  # type: ignore[arg-type]
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


def _after_slice(view: _View, after: int, limit: int) -> tuple[int, int]:
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

    def none(self, view: _View, q: _Query) -> _Reply:
        return _Reply(200, _object(_join(view.blobs)), page=1)

    def next_url(self, view: _View, q: _Query) -> _Reply:
        limit = q.integer("limit", DEFAULT_LIMIT, 1)
        start, end = _after_slice(view, q.integer("after", 0), limit)
        more = end < len(view.ids)
        link = f"/items/next_url?{q.carried(after=view.ids[end - 1], limit=limit)}" if more else None
        return _Reply(200, _object(_join(view.blobs[start:end]), next=link), page=start // limit + 1)

    def link_header(self, view: _View, q: _Query) -> _Reply:
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

    def cursor(self, view: _View, q: _Query) -> _Reply:
        limit = q.integer("limit", DEFAULT_LIMIT, 1)
        given = q.values.get("cursor") or ""
        start, end = _after_slice(view, _decode_cursor(given) if given else 0, limit)
        page = start // limit + 1
        token = _encode_cursor(view.ids[end - 1]) if end < len(view.ids) else None
        if token and self.api.faults.loop_cursor and page == self.api.faults.loop_cursor and given:
            token = given
        return _Reply(200, _object(_join(view.blobs[start:end]), next_cursor=token), page=page)

    def stripe(self, view: _View, q: _Query) -> _Reply:
        limit = q.integer("limit", 10, 1)
        start, end = _after_slice(view, q.integer("starting_after", 0), limit)
        body = _object(
            _join(view.blobs[start:end]), object="list", url="/items/stripe", has_more=end < len(view.ids)
        )
        return _Reply(200, body, page=start // limit + 1)

    def page(self, view: _View, q: _Query) -> _Reply:
        page, per_page = q.integer("page", 1, 1), q.integer("per_page", DEFAULT_LIMIT, 1)
        total = len(view.ids)
        start = (page - 1) * per_page
        body = _object(
            _join(view.blobs[start : start + per_page]),
            page=page, per_page=per_page, total_pages=math.ceil(total / per_page), total=total,
        )
        return _Reply(200, body, page=page)

    def offset(self, view: _View, q: _Query) -> _Reply:
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


class _Handler(BaseHTTPRequestHandler):
    """One connection; keep-alive (HTTP/1.1), answers written in one send."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self.server.api.handle(self)

    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET

    def reply(self, reply: _Reply) -> None:
        head = [f"HTTP/1.1 {reply.status} {self.responses.get(reply.status, ('',))[0]}"]
        head.append(f"Content-Type: {reply.content_type}; charset=utf-8")
        head.append(f"Content-Length: {len(reply.body)}")
        head.extend(f"{k}: {v}" for k, v in reply.headers)
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body
        self.wfile.write(data)

    def drop(self) -> None:
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: DemoApi) -> None:
        self.api = api
        self.connections: set[socket.socket] = set()
        super().__init__(address, _Handler)


class DemoApi:
    """The demo server; `start()` returns its base URL, `stop()` closes every connection."""

    def __init__(
        self,
        records: int = 1000,
        *,
        port: int = 0,
        latency_ms: float = 0,
        seed: int = 0,
        faults: Faults | None = None,
        log_size: int = 10_000,
    ) -> None:
        self.port = port
        self.latency_ms = latency_ms
        self.faults = faults or Faults()
        self.request_log: deque[tuple[str, str]] = deque(maxlen=log_size)
        self._store = _Store(seed, records)
        self._endpoints = _Endpoints(self)
        self._attempts: Counter[str] = Counter()
        self._attempts_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # --- lifecycle --------------------------------------------------------------

    def start(self) -> str:
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"demo-api-{self.port}",
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        for conn in list(server.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DemoApi:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

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

    def handle(self, handler: _Handler) -> None:
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
        handler.reply(reply)

    def _route(self, method: str, target: str, body: bytes) -> _Reply:
        parts = urlsplit(target)
        segments = parts.path.strip("/").split("/")
        q = _Query(parts.query)
        if method == "POST" and segments[:1] == ["_admin"]:
            return self._admin(segments[1:], q, body)
        if method != "GET" or len(segments) != 2 or segments[0] != "items" or segments[1] not in STYLES:
            raise KeyError(parts.path)
        endpoint: Callable[[_View, _Query], _Reply] = getattr(self._endpoints, segments[1])
        return endpoint(self._store.current.view(q.since()), q)

    def _admin(self, segments: list[str], q: _Query, body: bytes) -> _Reply:
        if segments[:1] == ["update"] and len(segments) == 2:
            try:
                changes = json.loads(body or b"{}")
                record = self.update_record(int(segments[1]), **changes)
            except (ValueError, TypeError):
                raise _BadRequest("POST /_admin/update/{id} takes a JSON object of changes") from None
            except KeyError:
                raise KeyError(f"record {segments[1]}") from None
            return _Reply(200, _encode(record))
        if segments == ["add"]:
            added = self.add_records(q.integer("n", 1, 1))
            return _Reply(200, _join(_encode(r) for r in added))
        raise KeyError("/_admin/" + "/".join(segments))

    def _fault(self, handler: _Handler, target: str) -> bool:
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
            handler.reply(_Reply(status, b'{"error": "injected server error"}'))
            return True
        if draw[2] < faults.rate_limit_rate:
            retry_after = str(int(draw[4] * 2))
            handler.reply(_Reply(429, b'{"error": "rate limited"}', [("Retry-After", retry_after)]))
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

    parser = argparse.ArgumentParser(prog="python -m runner.demo_api", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0)
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
    api = DemoApi(args.records, port=args.port, latency_ms=args.latency_ms, seed=args.seed, faults=faults)
    with api:
        print(api.base_url, flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
