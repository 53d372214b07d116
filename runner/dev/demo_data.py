"""The demo API's records: how they are generated and the store that serves them.

Records are deterministic for a seed (record N is the same whatever was made
before), sorted by id, with ISO-8601 `updated_at` values in mixed offsets
(`Z`, `+02:00`, `-05:00`) and zip codes with leading zeros. Each record's JSON
is encoded once and kept, so that bodies are joined from those bytes; writers
swap in a new snapshot, so readers never take a lock.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import struct
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from runner.timestamps import parse_timestamp

__all__ = ["Store", "View", "encode", "format_instant", "make_record"]

EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
ZONES = (timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5)))
STATUSES = ("active", "active", "inactive", "pending", "suspended")
TAGS = ("alpha", "beta", "gamma", "delta", "vip", "trial")
CITIES = ("Morristown", "Newark", "Zürich", "São Paulo", "Kraków", "Osaka", "Lyon")
FIRST = ("Ada", "Alan", "Grace", "Linus", "Zoë", "Émile", "Søren", "Mei", "Ravi", "Olu")
LAST = ("Lovelace", "Turing", "Hopper", "Torvalds", "Nakamura", "Okafor", "García", "Müller")
CACHED_VIEWS = 64


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


def encode(record: dict[str, Any]) -> bytes:
    """A record's JSON as the API sends it (compact, UTF-8)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def _instant(text: str) -> datetime:
    """`parse_timestamp`, with the C parser first: it is most of the start-up time."""
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return parse_timestamp(text)
    return moment if moment.tzinfo is not None else parse_timestamp(text)


@dataclass(frozen=True)
class View:
    """The records an `updated_since` filter lets through: ids and encoded bodies, by id."""

    ids: list[int]
    blobs: list[bytes]


@dataclass(frozen=True)
class _Snapshot:
    """One version of the data; a change makes a new one, so readers never need a lock."""

    records: list[dict[str, Any]]
    instants: list[datetime]
    all: View
    views: dict[str, View] = field(default_factory=dict)  # filtered views, cached

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> _Snapshot:
        instants = [_instant(r["updated_at"]) for r in records]
        return cls(records, instants, View([r["id"] for r in records], [encode(r) for r in records]))

    def view(self, since: datetime | None, *, by_time: bool = False) -> View:
        """The records at or after `since`, by id (or by updated_at, then id: a listing
        whose positions shift when a record changes, as many APIs' are)."""
        if since is None and not by_time:
            return self.all
        key = f"{since.isoformat() if since else ''}|{by_time}"
        found = self.views.get(key)
        if found is None:
            keep = [i for i, t in enumerate(self.instants) if since is None or t >= since]
            if by_time:
                keep.sort(key=lambda i: (self.instants[i], self.all.ids[i]))
            found = View([self.all.ids[i] for i in keep], [self.all.blobs[i] for i in keep])
            if len(self.views) < CACHED_VIEWS:
                self.views[key] = found
        return found

    def replaced(self, index: int, record: dict[str, Any]) -> _Snapshot:
        records, instants = list(self.records), list(self.instants)
        ids, blobs = list(self.all.ids), list(self.all.blobs)
        records[index], instants[index], blobs[index] = record, _instant(record["updated_at"]), encode(record)
        return _Snapshot(records, instants, View(ids, blobs))

    def extended(self, new: list[dict[str, Any]]) -> _Snapshot:
        more = _Snapshot.of(new)
        return _Snapshot(
            self.records + new, self.instants + more.instants,
            View(self.all.ids + more.all.ids, self.all.blobs + more.all.blobs),
        )


class Store:
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
