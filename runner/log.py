"""Event logging and redaction: the one place where secrets are scrubbed.

Code logs *events*, not prose: `event(logger, "http.request", method=..., ...)`
puts a stable event name and its fields on the record (`record.event`,
`record.fields`). Two formatters write one line per record, `key=value` text
or JSON, each starting with `ts level event run_id pipeline`; `run_id` and
`pipeline` come from contextvars set by `run_context()` and copied onto every
record by `ContextFilter` (worker threads see them when the engine runs them
under `contextvars.copy_context()`).

Redaction: a process-wide set of known secret values (`add_secrets`) is
replaced by `***` in the final text of every formatted line, tracebacks
included, so a secret cannot leave through a handler this module configured.
`redact_url` keeps a URL's path and query with secret query parameters masked,
and `redact_headers` masks credential headers. The library only logs;
`configure()` (called by the CLI, never by the engine) installs the handler.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, Literal
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit

MASK = "***"
MIN_SECRET_LENGTH = 4
BASE_KEYS = ("ts", "level", "event", "run_id", "pipeline")

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("etl_run_id", default=None)
_pipeline: contextvars.ContextVar[str | None] = contextvars.ContextVar("etl_pipeline", default=None)

_lock = threading.Lock()
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None
_secret_params: set[str] = {
    "access_token", "token", "api_key", "apikey", "key",
    "client_secret", "password", "sig", "signature",
}
_secret_headers: set[str] = {
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
}
# the names given to `add_secret_params`: query parameters that carry this process's own
# credential (an api_key `in: query`), which the client puts on every request it sends
_credential_params: set[str] = set()


# --- events and run context -----------------------------------------------------


def event(
    logger: logging.Logger,
    name: str,
    *,
    level: int = logging.INFO,
    exc_info: Any = None,
    **fields: Any,
) -> None:
    """Log the event `name` with `fields` (kept whole on `record.fields`)."""
    if logger.isEnabledFor(level):
        extra = {"event": name, "fields": fields}
        logger.log(level, name, extra=extra, exc_info=exc_info, stacklevel=2)


@contextlib.contextmanager
def run_context(*, run_id: str, pipeline: str) -> Iterator[None]:
    """Tag every record logged inside the block (and its copied contexts) with the run."""
    run_token = _run_id.set(run_id)
    pipeline_token = _pipeline.set(pipeline)
    try:
        yield
    finally:
        _pipeline.reset(pipeline_token)
        _run_id.reset(run_token)


class ContextFilter(logging.Filter):
    """Copies the current run_id and pipeline onto each record that lacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, var in (("run_id", _run_id), ("pipeline", _pipeline)):
            if getattr(record, key, None) is None:
                setattr(record, key, var.get())
        return True


# --- redaction -----------------------------------------------------------------


def add_secrets(values: Iterable[str]) -> None:
    """Remember secret values (and their escaped/URL-encoded forms) for `redact`."""
    global _secret_pattern
    kept = [value for value in values if len(value or "") >= MIN_SECRET_LENGTH]
    new = {form for value in kept for form in _forms(value)}
    with _lock:
        if new <= _secrets:
            return
        _secrets.update(new)
        ordered = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leftovers
        _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def _forms(value: str) -> set[str]:
    """The ways a secret can be spelled in a log line, a URL or a JSON text."""
    escaped = {_escape(value), json.dumps(value)[1:-1]}
    return {value, quote(value, safe=""), quote_plus(value), *escaped}


def redact(text: str) -> str:
    """Replace every known secret value in `text` with `***`."""
    pattern = _secret_pattern
    return pattern.sub(MASK, text) if pattern is not None else text


def add_secret_params(names: Iterable[str]) -> None:
    """Mark query parameter names whose values `redact_url` masks (e.g. an api_key's name)."""
    with _lock:
        _secret_params.update(name.lower() for name in names)
        _credential_params.update(names)


def credential_params() -> frozenset[str]:
    """The query parameter names given to `add_secret_params`, as written: a stored request
    may drop them, since the client adds them back to every request it sends."""
    with _lock:
        return frozenset(_credential_params)


def holds_secret(text: str) -> bool:
    """Whether `text` contains a known secret value (in any of its spellings)."""
    pattern = _secret_pattern
    return pattern is not None and pattern.search(text) is not None


def add_secret_headers(names: Iterable[str]) -> None:
    """Mark header names whose values `redact_headers` masks (e.g. an api_key header)."""
    with _lock:
        _secret_headers.update(name.lower() for name in names)


def redact_url(url: object) -> str:
    """The path and query of `url`, secret query parameters masked; never the host."""
    parts = urlsplit(str(url))
    path = parts.path or "/"
    if not parts.query:
        return redact(path)
    query = "&".join(_mask_param(pair) for pair in parts.query.split("&"))
    return redact(f"{path}?{query}")


def _mask_param(pair: str) -> str:
    name, _, _ = pair.partition("=")
    if is_secret_param(unquote_plus(name)):
        return f"{name}={MASK}"
    return pair


def is_secret_param(name: str) -> bool:
    """Whether a query parameter of this name carries a credential (`api_key`, `token`, ...)."""
    return name.lower() in _secret_params


def mask_query(url: str) -> str:
    """The whole `url` (host kept) with secret query parameters masked and known secrets scrubbed."""
    head, mark, rest = url.partition("?")
    if not mark:
        return redact(url)
    query, hash_mark, fragment = rest.partition("#")
    masked = "&".join(_mask_param(pair) for pair in query.split("&"))
    return redact(f"{head}?{masked}{hash_mark}{fragment}")


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """A copy of `headers` with credential headers masked and known secrets scrubbed."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        name: MASK if name.lower() in _secret_headers else redact(value)
        for name, value in items
    }


# --- formatting ------------------------------------------------------------------

_NEEDS_QUOTES = re.compile(r'[\s"=\\]|[\x00-\x1f\x7f]')
# backslash, quote and the usual control characters as escapes; any other control as \xNN
_ESCAPES = str.maketrans({
    "\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t",
    **{chr(c): f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if chr(c) not in "\n\r\t"},
})


def _escape(text: str) -> str:
    return text.translate(_ESCAPES)


def _kv_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def format_value(value: Any) -> str:
    """One `key=value` value: quoted with escapes when it holds spaces, quotes or `=`."""
    text = redact(_kv_text(value))
    if text == "" or _NEEDS_QUOTES.search(text):
        return f'"{_escape(text)}"'
    return text


class _EventFormatter(logging.Formatter):
    """Shared part: the ordered fields of one record, exception text included."""

    def record_fields(self, record: logging.LogRecord) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
        }
        for key in ("run_id", "pipeline"):
            value = getattr(record, key, None)
            if value is not None:
                fields[key] = value
        fields.update(self._payload(record))
        if record.exc_info:
            fields["exc"] = redact(self.formatException(record.exc_info))
        return fields

    def _payload(self, record: logging.LogRecord) -> dict[str, Any]:
        if hasattr(record, "event"):
            own = getattr(record, "fields", None) or {}
            return {k: v for k, v in own.items() if k not in BASE_KEYS}
        return {"logger": record.name, "msg": record.getMessage()}


class KeyValueFormatter(_EventFormatter):
    """One `key=value` line per record; the final text is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        fields = self.record_fields(record)
        return redact(" ".join(f"{key}={format_value(value)}" for key, value in fields.items()))


class JsonFormatter(_EventFormatter):
    """One JSON object per line with the same keys as the text format; redacted."""

    def format(self, record: logging.LogRecord) -> str:
        fields = self.record_fields(record)
        return redact(json.dumps(fields, default=_json_default, ensure_ascii=False))


def _json_default(value: Any) -> str:
    return redact(str(value))


def _timestamp(created: float) -> str:
    moment = dt.datetime.fromtimestamp(created, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- configuration (the CLI's job) -------------------------------------------------


def configure(
    *,
    fmt: Literal["text", "json"] = "text",
    verbose: bool = False,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install the one handler of the `runner` logger (replacing an earlier one)."""
    logger = logging.getLogger("runner")
    for old in [h for h in logger.handlers if getattr(h, "_etl_handler", False)]:
        logger.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._etl_handler = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    handler.addFilter(ContextFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


def settings() -> tuple[Literal["text", "json"], bool] | None:
    """The format and verbosity `configure()` installed, or None (a host's own logging):
    what a helper process (the writer) needs to log as this process does."""
    for handler in logging.getLogger("runner").handlers:
        if getattr(handler, "_etl_handler", False):
            fmt: Literal["text", "json"] = "json" if isinstance(handler.formatter, JsonFormatter) else "text"
            return fmt, logging.getLogger("runner").level <= logging.DEBUG
    return None
