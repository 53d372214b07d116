"""A recording's files, and what keeps every secret out of them.

A recording directory holds, in order, one JSON file per source exchange
(`0001.json`, `0002.json`, ...), `env.json` (the values of the variables the
pipeline file uses outside `auth` blocks), `recording.json` (when, what state
the run started from, which query parameters were masked) and, once
`etl test --update` wrote it, `expected.jsonl` (the intended writes).

An exchange file reads top to bottom as the exchange happened:

    {"request": {"method": "GET", "url": "https://api.example.com/items?page=2&api_key=***", "body": null},
     "response": {"status": 200, "headers": {"content-type": "application/json", ...}, "body": {...}}}

A body that is JSON is kept as JSON (indented, its keys in the API's order), any
other text under `body_text`, bytes under `body_base64`. Request headers are not
kept (they carry the credentials); response headers are, with credential headers
(`set-cookie`, ...) as `***`. Every string is scrubbed of every known secret in
every spelling (raw, URL-encoded, JSON-escaped, base64, and base64 of basic
auth's `user:password`) before anything reaches the disk, and the file's final
text is checked once more.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus, urlencode, urlsplit, urlunsplit

from runner import log
from runner.errors import EtlError

__all__ = [
    "ENV_FILE",
    "EXPECTED_FILE",
    "MASK",
    "META_FILE",
    "Exchange",
    "FixtureError",
    "Recording",
    "Scrubber",
    "decode_body",
    "encode_body",
    "exchange_files",
    "masked_url",
    "match_key",
    "read_recording",
    "write_json",
]

MASK = log.MASK
ENV_FILE = "env.json"
META_FILE = "recording.json"
EXPECTED_FILE = "expected.jsonl"
_EXCHANGE = re.compile(r"^\d{4,}\.json$")
# the body is kept decoded; the length and encoding of the bytes on the wire no longer apply
DROPPED_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding", "connection", "keep-alive"})


class FixtureError(EtlError):
    """The recording directory is missing, incomplete or unreadable (a usage error: exit 2)."""

    exit_code = 2


# --- secrets --------------------------------------------------------------------------


class Scrubber:
    """Replaces every spelling of every known secret with `***`, in text and in JSON values."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = {form for value in secrets if len(value or "") >= log.MIN_SECRET_LENGTH for form in _forms(value)}
        ordered = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers
        self._pattern = re.compile("|".join(re.escape(f) for f in ordered)) if ordered else None

    def text(self, text: str) -> str:
        scrubbed = self._pattern.sub(MASK, text) if self._pattern is not None else text
        return log.redact(scrubbed)  # and what the process's log filter knows (tokens fetched this run)

    def holds(self, text: str) -> bool:
        return (self._pattern is not None and self._pattern.search(text) is not None) or log.holds_secret(text)

    def value(self, value: Any) -> Any:
        """`value` with every string (and object key) scrubbed; numbers and structure kept."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


def _forms(value: str) -> set[str]:
    """How a secret can be spelled in a URL, a JSON text, a header or a body."""
    raw = value.encode()
    b64 = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    b64 |= {b.rstrip("=") for b in b64}
    return {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1], *b64}


def masked_url(url: str, params: Iterable[str], scrub: Scrubber) -> str:
    """`url` as sent, with the values of the named query parameters (and of secret-looking
    ones, `api_key`, `token`...) as `***`; every other byte kept."""
    names = {p.lower() for p in params}
    head, mark, rest = url.partition("?")
    if not mark:
        return scrub.text(url)
    query, hash_mark, fragment = rest.partition("#")

    def mask(pair: str) -> str:
        name = unquote_plus(pair.partition("=")[0])
        return f"{pair.partition('=')[0]}={MASK}" if name.lower() in names or log.is_secret_param(name) else pair

    masked = "&".join(mask(pair) for pair in query.split("&"))
    return scrub.text(f"{head}?{masked}{hash_mark}{fragment}")


def match_key(method: str, url: str, body: bytes, masked: Iterable[str]) -> tuple[str, str, str]:
    """What two requests must share to match: the method, the URL without its masked query
    parameters (its other parameters in any order) and the body (JSON compared as values)."""
    names = {p.lower() for p in masked}
    parts = urlsplit(url)
    pairs = sorted(
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if v != MASK and k.lower() not in names and not log.is_secret_param(k)
    )
    where = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(pairs), ""))
    try:
        text = json.dumps(json.loads(body), sort_keys=True) if body else ""
    except ValueError:
        text = body.decode("utf-8", "replace")
    return method.upper(), where, text


# --- bodies ---------------------------------------------------------------------------------


def encode_body(raw: bytes, content_type: str = "") -> dict[str, Any]:
    """A body as the file keeps it: `{"body": JSON}`, `{"body_text": ...}` or `{"body_base64": ...}`.

    JSON is kept as JSON only when writing it back gives the same values (a number written
    `1.10` or `1e3` would come back as `1.1` or `1000.0`): else as its text, unchanged."""
    if not raw:
        return {"body": None}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(raw).decode("ascii")}
    if "json" in content_type or text.lstrip()[:1] in ("{", "["):
        try:
            canonical = True

            def number(token: str) -> float:
                nonlocal canonical
                parsed = float(token)
                canonical = canonical and repr(parsed) == token
                return parsed

            value = json.loads(text, parse_float=number, parse_constant=_no_constant)
            if canonical:
                return {"body": value}
        except (ValueError, RecursionError):
            pass
    return {"body_text": text}


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not kept as JSON")


def decode_body(entry: Mapping[str, Any]) -> bytes:
    """The bytes of a body kept by `encode_body`."""
    if "body_base64" in entry:
        try:
            return base64.b64decode(entry["body_base64"], validate=True)
        except (binascii.Error, TypeError) as exc:
            raise ValueError(f"body_base64 is not base64: {exc}") from None
    if "body_text" in entry:
        return str(entry["body_text"]).encode("utf-8")
    body = entry.get("body")
    return b"" if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")


# --- files -------------------------------------------------------------------------------------


def write_json(path: Path, document: Any, scrub: Scrubber) -> None:
    """Write `document` indented, its secrets scrubbed; the final text is checked once more."""
    text = json.dumps(scrub.value(document), indent=2, ensure_ascii=False) + "\n"
    if scrub.holds(text):  # a secret spelled inside a number, say: never written as it is
        text = scrub.text(text)
    path.write_text(text, encoding="utf-8")


def exchange_files(directory: Path) -> list[Path]:
    """The exchange files of a recording, in order."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _EXCHANGE.match(p.name)), key=lambda p: int(p.stem))


@dataclass(frozen=True, slots=True)
class Exchange:
    """One recorded exchange, as `etl test` replays it."""

    file: str
    method: str
    url: str
    body: bytes
    status: int
    headers: Mapping[str, str]
    response: bytes


@dataclass(frozen=True, slots=True)
class Recording:
    """A recording directory read back."""

    directory: Path
    exchanges: tuple[Exchange, ...]
    env: Mapping[str, str | None] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)


def read_recording(directory: Path) -> Recording:
    """Read a recording; a missing or broken file is a FixtureError naming it."""
    if not (directory / META_FILE).is_file():
        raise FixtureError(
            f"{directory}: no recording here ({META_FILE} is missing); "
            f"record one with `etl run FILE --record {directory}`"
        )
    meta = _read(directory / META_FILE)
    env = _read(directory / ENV_FILE) if (directory / ENV_FILE).is_file() else {}
    if not isinstance(meta, dict) or not isinstance(env, dict):
        raise FixtureError(f"{directory}: {META_FILE} and {ENV_FILE} must each hold a JSON object")
    return Recording(directory, tuple(_exchange(p) for p in exchange_files(directory)), env, meta)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FixtureError(f"{path}: cannot read it: {exc}") from None


def _exchange(path: Path) -> Exchange:
    document = _read(path)
    try:
        request, response = document["request"], document["response"]
        headers = {str(k).lower(): str(v) for k, v in response.get("headers", {}).items()}
        return Exchange(
            path.name, str(request["method"]).upper(), str(request["url"]), decode_body(request),
            int(response["status"]), headers, decode_body(response),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FixtureError(
            f"{path}: not an exchange ({type(exc).__name__}: {exc}); it needs request.method, "
            "request.url, response.status"
        ) from None
