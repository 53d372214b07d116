"""The incremental watermark: the greatest cursor value seen, kept as the source wrote it;
or, in the other form of `incremental`, the sync token the API hands out.

Every value of one watermark must be of the kind of the first (number or
timestamp, see `runner.timestamps`); a value of another kind is an error
that names it. A sync token (`SyncToken`) is opaque: the last one seen is
kept as the API wrote it. Both move only as "When the watermark may move"
says: after a run that read to the end.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jmespath.exceptions import JMESPathError

from runner.errors import FetchError, ResponseError
from runner.model import Incremental, IncrementalToken
from runner.timestamps import Kind, sort_key, step_back
from runner.transform.expressions import json_kind, truthy

__all__ = ["Cursor", "IncrementalCursor", "SyncToken", "Watermark", "cursor_for"]


class Watermark:
    """The greatest cursor value observed (the least with `lowest=True`), as the source wrote it.

    `initial` counts as observed.
    """

    def __init__(
        self,
        initial: str | int | float | None = None,
        *,
        field: str = "cursor_field",
        lowest: bool = False,
    ) -> None:
        self.field = field
        self.lowest = lowest
        self._value: Any = None
        self._kind: Kind | None = None
        self._key: Any = None
        if initial is not None:
            self.observe(initial)

    @property
    def value(self) -> Any:
        return self._value

    @property
    def kind(self) -> Kind | None:
        return self._kind

    def observe(self, value: Any) -> None:
        """Keep `value` if it is greater (less, when `lowest`) than every value so far.

        A null value is ignored; on a tie the first value seen is kept.
        """
        if value is None:
            return
        key = self._checked_key(value)
        if self._key is None or (key < self._key if self.lowest else key > self._key):
            self._value, self._key = value, key

    def check(self, value: Any) -> None:
        """Raise ResponseError when `value` cannot join this watermark (not a number or
        timestamp, or not of the kind of the values so far)."""
        self._checked_key(value)

    def lesser(self, value: Any) -> Any:
        """The lesser of `.value` and `value` (both as written); None counts as absent."""
        if value is None or self._value is None:
            return self._value if value is None else value
        return value if self._checked_key(value) < self._key else self._value

    def _checked_key(self, value: Any) -> Any:
        kind, key = self._classify(value)
        if self._kind is None:
            self._kind = kind
        elif kind != self._kind:
            raise ResponseError(
                f"incremental {self.field}: value {value!r} is a {kind}, "
                f"but earlier values were {self._kind}s; every value must be of one kind"
            )
        return key

    def _classify(self, value: Any) -> tuple[Kind, Any]:
        try:
            return sort_key(value)
        except (ValueError, ArithmeticError) as exc:
            raise ResponseError(
                f"incremental {self.field}: value {value!r} is neither a number nor a timestamp "
                "(ISO-8601 like 2024-05-01T12:00:00Z, or RFC 2822 like Wed, 01 May 2024 12:00:00 +0000)"
            ) from exc


class IncrementalCursor:
    """The one home of the incremental watermark for one run.

    - `params(base)`: the first request's query, with the saved watermark (or
      `initial_value`), less `lookback`, as the incremental param.
    - `read(raw)`: a record's cursor value, or why it cannot be read (that record
      fails alone: a value that is no number or timestamp, or of another kind).
    - `observe(value)`: every record read; the greatest cursor value wins.
    - `hold_back(value)`: a record that failed, in mapping or at the target, keeps
      the watermark just before its own cursor value, so the next run reads it again.
    - `seen`: what a checkpoint carries.
    - `to_save(...)`: the value the run saves at its end, or None to keep the saved one.

    When the watermark may move (the rule that keeps every record): only after a run
    that read to the end and was not resumed from a checkpoint (a resumed run keeps the
    watermark its interrupted run started from: positions may have shifted in between);
    a run that a limit stopped keeps it too, unless the source is declared `order: asc`
    (then the greatest committed value is safe to start from).
    """

    def __init__(self, spec: Incremental, *, saved: Any, resumed_from: Any = None) -> None:
        self._spec = spec
        self._saved = saved
        self._greatest = Watermark()
        self._least_failed: Watermark | None = None
        if resumed_from is not None:
            self._greatest.observe(resumed_from)

    @property
    def ascending(self) -> bool:
        return self._spec.order == "asc"

    def params(self, base: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(base)
        value = self.sent_value()
        if value is not None and self._spec.param is not None:
            params[self._spec.param] = value
        return params

    def sent_value(self) -> Any:
        """What the first request says: the saved watermark (or the initial value) less `lookback`."""
        value = self._saved if self._saved is not None else self._spec.initial_value
        if value is None or not self._spec.lookback:
            return value
        return step_back(value, self._spec.lookback)

    def read(self, raw: Any) -> tuple[Any, str | None]:
        """The record's cursor value (None when it has none), and the reason it cannot be used."""
        try:
            value = self._spec.cursor_field.search(raw)
        except JMESPathError:  # a record whose cursor cannot be read does not move it
            return None, None
        if value is None:
            return None, None
        try:
            self._greatest.check(value)
        except ResponseError as exc:
            return None, str(exc)
        return value, None

    def observe(self, value: Any) -> None:
        self._greatest.observe(value)

    def hold_back(self, value: Any) -> None:
        if value is None:
            return
        if self._least_failed is None:
            self._least_failed = Watermark(lowest=True)
        self._least_failed.observe(value)

    @property
    def seen(self) -> Any:
        return self._greatest.value

    def to_save(self, *, read_to_end: bool, resumed: bool) -> Any:
        """The watermark to save after a successful (or partial) run; None keeps the saved one."""
        if resumed or not (read_to_end or self.ascending):
            return None
        greatest = self._greatest.value
        if self._least_failed is None or self._least_failed.value is None:
            return greatest
        before = step_back(self._least_failed.value)
        return before if greatest is None else self._greatest.lesser(before)


class SyncToken:
    """The one home of a sync token for one run (Google's `nextSyncToken`, Graph's `@odata.deltaLink`).

    - `params(base)`: the first request's query, with the saved token as `param`.
    - `first_url`: with `as_url`, the saved token: the URL the run requests first.
    - `observe_page(value)`: each page's `token` value; the last non-null one wins.
    - `expired(error)` / `reset()`: the first request was refused as `reset_on` (and
      `reset_when`) say: the token is dropped and the run reads everything from the start.
    - `to_save(...)`: the token to save at the run's end, or None to keep the saved one.

    A token moves under the watermark's rule: only after a run that read to the end, with
    no record failed (a token cannot be held back to a record: the next run reads the same
    changes again), and not resumed from a checkpoint, unless that run was reset and so
    read everything from the start.
    """

    ascending = False  # a limit never moves a token: the run goes on from its checkpoint

    def __init__(self, spec: IncrementalToken, *, saved: Any) -> None:
        self._spec = spec
        self._saved = saved
        self._last: Any = None
        self._failed = False
        self.was_reset = False

    @property
    def first_url(self) -> str | None:
        if self._spec.as_url and isinstance(self._saved, str):
            return self._saved
        return None

    def params(self, base: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(base)
        if self._saved is not None and self._spec.param is not None:
            params[self._spec.param] = self._saved
        return params

    def expired(self, error: FetchError) -> bool:
        """Whether `error` (the first request's) says the saved token has expired."""
        if self._saved is None or error.status not in self._spec.reset_on:
            return False
        when = self._spec.reset_when
        if when is None:
            return True
        body = error.body if error.body is not None else _error_body(error.detail)
        return truthy(_search(when.search, body))

    def reset(self) -> None:
        self._saved, self.was_reset = None, True

    def read(self, raw: Any) -> tuple[Any, str | None]:
        return None, None  # a token is in the page's body, not in its records

    def observe(self, value: Any) -> None:
        pass

    def observe_page(self, value: Any) -> None:
        """A page's token; with `as_url` it must be an http(s) URL, which the next run requests."""
        if value is None:
            return
        if self._spec.as_url and not (isinstance(value, str) and value.startswith(("https://", "http://"))):
            raise ResponseError(
                f"incremental token {self._spec.token.text!r} gave {json_kind(value)}, not an http(s) URL, "
                "but as_url is true; point `token` at the URL (e.g. '\"@odata.deltaLink\"') or use `param`"
            )
        self._last = value

    def hold_back(self, value: Any) -> None:
        self._failed = True

    @property
    def seen(self) -> Any:
        return self._last

    def to_save(self, *, read_to_end: bool, resumed: bool) -> Any:
        """The token to save after a successful (or partial) run; None keeps the saved one."""
        if not read_to_end or self._failed or (resumed and not self.was_reset):
            return None
        return self._last


Cursor = IncrementalCursor | SyncToken


def cursor_for(spec: Incremental | IncrementalToken, *, saved: Any, resumed_from: Any = None) -> Cursor:
    """The run's cursor for either form of `incremental`."""
    if isinstance(spec, IncrementalToken):
        return SyncToken(spec, saved=saved)
    return IncrementalCursor(spec, saved=saved, resumed_from=resumed_from)


def _error_body(detail: str) -> Any:
    """The error response's JSON body from its excerpt (its first 200 characters), when the
    whole body could not be read as JSON (over max_response_bytes, cut by a deadline): the
    members complete before the cut are kept. Null when the excerpt is no JSON at all."""
    for text in _json_prefixes(detail):
        try:
            return json.loads(text)
        except ValueError:
            continue
    return None


def _json_prefixes(text: str) -> list[str]:
    """`text`, then each prefix that ends before a member separator (outside strings) with
    its open objects and lists closed, longest first."""
    closers = {"{": "}", "[": "]"}
    stack: list[str] = []
    found = [text]
    in_string = escaped = False
    for i, char in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in closers:
            stack.append(closers[char])
            found.append(text[: i + 1] + "".join(reversed(stack)))
        elif char in "}]" and stack:
            stack.pop()
        elif char == "," and stack:
            found.append(text[:i] + "".join(reversed(stack)))
    return [found[0], *reversed(found[1:])]


def _search(search: Any, data: Any) -> Any:
    try:
        return search(data)
    except JMESPathError:  # a function given the wrong type: no match
        return None
