"""PostgreSQL connections shared by the state store and the target: connect, advisory
lock keys, and messages that name host:port/db but never the password."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from psycopg import conninfo

from runner.errors import EtlError

# unless the DSN says otherwise: fail a dead host in 10 s, and name the client in pg_stat_activity
DEFAULTS: dict[str, str | int] = {"connect_timeout": 10, "application_name": "etl"}


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_*advisory_lock (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(f"etl:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def describe(dsn: str) -> str:
    """`host:port/dbname` of a DSN, for messages; never the user's password."""
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<invalid dsn>"
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost")
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or parts.get('user') or ''}"


def scrub(text: str, dsn: str) -> str:
    """The text with the DSN's password, and the DSN itself, replaced by '***'."""
    try:
        password = conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    for secret in (dsn, password):
        if secret:
            text = text.replace(str(secret), "***")
    return text


def connect(dsn: str, *, error: type[EtlError], where: str) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit), or `error` naming `where`."""
    try:
        given = conninfo.conninfo_to_dict(dsn)
        # what psycopg.connect(dsn, **extra) would build, but typed: its keyword
        # arguments mix connection parameters with options of other types
        target = conninfo.make_conninfo(dsn, **{k: v for k, v in DEFAULTS.items() if k not in given})
    except psycopg.Error:
        # the parser's message quotes the DSN, password included: do not chain it
        raise error(f"{where}: the DSN is not a valid PostgreSQL connection string") from None
    try:
        return psycopg.connect(target, autocommit=True)
    except psycopg.Error as exc:
        raise error(f"{where}: cannot connect: {scrub(str(exc).strip(), dsn)}") from exc
