"""What one response says about an API: records, pagination, external id, field types.

Pure functions of a decoded body, the response headers and the request URL;
no I/O. Every answer carries `why`, the comment `etl init` writes beside it,
so each guess in the generated file says what it was based on. When the
response does not tell, the answer says so and is the safe choice
(`pagination: {type: none}`; an external id whose absence fails the record).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

__all__ = ["Field", "Guess", "Inferred", "infer", "jmespath_path"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(?P<zone>Z|z|[+-]\d{2}:?\d{2})?$")
_NEXT_KEY = re.compile(r"^(@odata\.)?next(_?(url|link|page(_url)?|href))?$|^nextlink$", re.IGNORECASE)
_FLAG_KEY = re.compile(r"^(has_?more|has_?next(_?page)?|more(_?results)?)$", re.IGNORECASE)
_CURSOR_KEY = re.compile(
    r"^(next_?)?(cursor|page_?token|token|continuation(_?token)?)$|^end_?cursor$|^next$", re.IGNORECASE
)
_TOTAL_PAGES_KEY = re.compile(r"^(total_?pages|page_?count|pages|num_?pages|last_?page)$", re.IGNORECASE)
_TOTAL_KEY = re.compile(r"^(total|total_?count|count|total_?results|total_?items|total_?size)$", re.IGNORECASE)
_PAGE_PARAMS = ("page", "page_number", "pageNumber", "p")
_SIZE_PARAMS = ("per_page", "page_size", "pageSize", "limit", "size", "count", "perPage")
_OFFSET_PARAMS = ("offset", "skip", "start", "from")
_ID_NAMES = ("id", "uuid", "guid", "_id", "key", "ID", "Id")
MAX_DEPTH = 4  # how deep the body is searched for the records and the paging fields


@dataclass(frozen=True, slots=True)
class Guess:
    """A value for the file and the comment that says what it was based on."""

    value: Any
    why: str


@dataclass(frozen=True, slots=True)
class Field:
    """One typed field: its name in the target, its JMESPath, its type, and why that type."""

    name: str
    path: str
    type: str
    why: str


@dataclass(slots=True)
class Inferred:
    """Everything `etl init` writes, each with its reason."""

    url: str  # without the query, which goes to `params` less the paging parameters
    params: dict[str, str]
    records: Guess
    pagination: Guess  # value: the pagination block as a dict
    external_id: Guess
    fields: list[Field]
    record_count: int
    notes: list[str] = field(default_factory=list)  # what could not be told


def jmespath_path(keys: Sequence[str | int]) -> str:
    """`a.b[0]."odd key"` for a list of keys; `@` for none."""
    parts: list[str] = []
    for key in keys:
        if isinstance(key, int):
            parts.append(f"[{key}]")
        else:
            text = key if _IDENTIFIER.match(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
            parts.append(("." if parts else "") + text)
    return "".join(parts) or "@"


def infer(body: Any, headers: httpx.Headers | Mapping[str, str], url: str) -> Inferred:
    """Read one decoded response body (with its headers and the URL that was asked)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    records_path, records, records_why = _records(body)
    objects = [r for r in records if isinstance(r, dict)]
    notes: list[str] = []
    if records_path is None:
        notes.append("no list of objects in the response: `records` is a guess that reads one object as one record")
    pagination, used = _pagination(body, headers, query, records_path or (), objects)
    if pagination.value == {"type": "none"}:
        notes.append(pagination.why)
    external_id = _external_id(objects)
    if external_id.why.startswith("could not"):
        notes.append(external_id.why)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    params = {k: v for k, v in query.items() if k not in used}
    records_guess = Guess(jmespath_path(records_path) if records_path is not None else "[@]", records_why)
    return Inferred(base, params, records_guess, pagination, external_id, _fields(objects), len(records), notes)


# --- records ----------------------------------------------------------------------------


def _records(body: Any) -> tuple[tuple[str | int, ...] | None, list[Any], str]:
    if isinstance(body, list):
        return (), body, f"guess: the body is a list ({len(body)} items)"
    lists = sorted(
        ((path, value) for path, value in _walk(body) if isinstance(value, list) and _objects(value)),
        key=lambda found: (-len(found[1]), len(found[0])),
    )
    if not lists:
        return None, [body] if isinstance(body, dict) else [], "guess: no list of objects in the body"
    path, value = lists[0]
    others = f"; also lists at {', '.join(jmespath_path(p) for p, _ in lists[1:3])}" if len(lists) > 1 else ""
    return tuple(path), value, f"guess: the largest list of objects in the body ({len(value)} items){others}"


def _objects(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(v, dict) for v in value)


def _walk(value: Any, path: tuple[str, ...] = (), depth: int = 0) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, value) under the objects of `value`, not inside lists, to MAX_DEPTH."""
    if not isinstance(value, dict) or depth > MAX_DEPTH:
        return
    for key, item in value.items():
        yield (*path, key), item
        yield from _walk(item, (*path, key), depth + 1)


# --- pagination -------------------------------------------------------------------------


def _pagination(
    body: Any, headers: httpx.Headers | Mapping[str, str], query: dict[str, str],
    records_path: tuple[str | int, ...], records: list[dict[str, Any]],
) -> tuple[Guess, set[str]]:
    """The paging style the response shows, and the query parameters it takes over."""
    link = httpx.Headers(headers).get("link", "")
    if re.search(r"""rel\s*=\s*"?next"?""", link):
        return Guess({"type": "link_header"}, 'guess: the Link header has rel="next"'), set()
    scalars = {p: v for p, v in _walk(body) if not isinstance(v, (dict, list))}  # the records list is not walked
    for path, value in scalars.items():
        if _NEXT_KEY.match(path[-1]) and isinstance(value, str) and _looks_like_url(value):
            why = f"guess: `{jmespath_path(path)}` holds the next page's URL"
            return Guess({"type": "next_url", "path": jmespath_path(path)}, why), set()
    cursor = _cursor(scalars, query, records_path, records)
    if cursor is not None:
        return cursor
    for guess in (_page(scalars, query, len(records)), _offset(scalars, query, len(records))):
        if guess is not None:
            return guess
    why = (
        "could not tell how this API pages (no Link header, next URL, cursor, or page or offset counts in the"
        " response): `none` reads this one page only; set `pagination` if the API has more pages"
    )
    return Guess({"type": "none"}, why), set()


def _looks_like_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "/", "?"))


def _cursor(
    scalars: dict[tuple[str, ...], Any], query: dict[str, str], records_path: tuple[str | int, ...],
    records: list[dict[str, Any]],
) -> tuple[Guess, set[str]] | None:
    flags = [p for p, v in scalars.items() if isinstance(v, bool) and _FLAG_KEY.match(p[-1])]
    tokens = [
        p for p, v in scalars.items()
        if isinstance(v, str) and v and _CURSOR_KEY.match(p[-1]) and not _looks_like_url(v)
    ]
    if not tokens and not (flags and records and "id" in records[-1]):
        return None
    if tokens:
        path = jmespath_path(tokens[0])
        param = next((k for k in query if _CURSOR_KEY.match(k) or k in ("after", "starting_after")), None)
        param = param or _cursor_param(tokens[0][-1])
        why = f"guess: `{path}` looks like the next page's cursor; check that the API takes it as `{param}`"
    else:  # Stripe: has_more and the last record's id
        path, param = f"{jmespath_path(records_path)}[-1].id", "starting_after"
        why = "guess: a has_more flag and no cursor field: the last record's id as `starting_after`, as Stripe does"
    block: dict[str, Any] = {"type": "cursor", "path": path, "param": param}
    if flags:
        flag = jmespath_path(flags[0])
        block["stop_when"] = f"!{flag}" if len(flags[0]) == 1 else f"!({flag})"
        why += f"; stops when `{flag}` is false"
    return Guess(block, why), {param}


def _cursor_param(key: str) -> str:
    """What a cursor field's name suggests the parameter is called (`next_cursor` -> `cursor`)."""
    if re.match(r"^end_?cursor$", key, re.IGNORECASE):
        return "after"
    stripped = re.sub(r"^next_?", "", key, flags=re.IGNORECASE)
    if not stripped:
        return "cursor"
    return stripped[0].lower() + stripped[1:]


def _page(scalars: dict[tuple[str, ...], Any], query: dict[str, str], count: int) -> tuple[Guess, set[str]] | None:
    totals = [p for p, v in scalars.items() if _is_int(v) and _TOTAL_PAGES_KEY.match(p[-1])]
    current = [p for p, v in scalars.items() if _is_int(v) and p[-1] in ("page", "current_page", "currentPage")]
    param = next((k for k in _PAGE_PARAMS if k in query), None)
    if not totals and not (current and param):
        return None
    param = param or (current[0][-1] if current and current[0][-1] == "page" else "page")
    block: dict[str, Any] = {"type": "page", "param": param}
    start = scalars.get(current[0]) if current else (int(query[param]) if query.get(param, "").isdigit() else 1)
    if start == 0:
        block["start"] = 0
    used = {param}
    size_param = next((k for k in _SIZE_PARAMS if k in query and query[k].isdigit()), None)
    in_body = next((p for p, v in scalars.items() if _is_int(v) and v > 0 and p[-1] in _SIZE_PARAMS), None)
    if size_param is not None:
        block["size_param"], block["size"] = size_param, int(query[size_param])
        used.add(size_param)
    elif in_body is not None:  # the body names its page size: asked for, a short page is the last
        block["size_param"], block["size"] = in_body[-1], int(scalars[in_body])
    why = "guess: numbered pages"
    if totals:
        block["total_pages"] = jmespath_path(totals[0])
        why += f", `{block['total_pages']}` counts them"
    return Guess(block, why), used


def _offset(scalars: dict[tuple[str, ...], Any], query: dict[str, str], count: int) -> tuple[Guess, set[str]] | None:
    totals = [p for p, v in scalars.items() if _is_int(v) and _TOTAL_KEY.match(p[-1])]
    in_query = next((k for k in _OFFSET_PARAMS if k in query), None)
    in_body = next((p for p, v in scalars.items() if _is_int(v) and p[-1] in _OFFSET_PARAMS), None)
    if not totals or (in_query is None and in_body is None):
        return None
    param = in_query or (in_body[-1] if in_body else "offset")
    limit_param = next((k for k in _SIZE_PARAMS if k in query and query[k].isdigit()), None)
    body_limit = next((p for p, v in scalars.items() if _is_int(v) and p[-1] in _SIZE_PARAMS), None)
    if limit_param is not None:
        limit = int(query[limit_param])
    elif body_limit is not None:
        limit_param, limit = body_limit[-1], int(scalars[body_limit])
    else:
        limit_param, limit = "limit", max(count, 1)
    total = jmespath_path(totals[0])
    block = {"type": "offset", "param": param, "limit_param": limit_param, "limit": limit, "total": total}
    why = f"guess: an offset and `{total}`, the number of records in all"
    return Guess(block, why), {param, limit_param}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- the external id and the fields ---------------------------------------------------------


def _external_id(records: list[dict[str, Any]]) -> Guess:
    if not records:
        return Guess("id", "could not tell the external id: the response has no records; `id` is a placeholder")
    keys = list(dict.fromkeys(k for r in records for k in r))
    named = [k for k in _ID_NAMES if k in keys]
    suffixed = [k for k in keys if re.search(r"(_id|Id|ID|_key|uuid|slug)$", k) and k not in named]
    for key in [*named, *suffixed]:
        values = [r.get(key) for r in records]
        if all(isinstance(v, (str, int)) and not isinstance(v, bool) and v != "" for v in values) and len(
            set(map(str, values))
        ) == len(values):
            path = jmespath_path([key])
            expression = f"to_string({path})" if any(isinstance(v, int) for v in values) else path
            return Guess(expression, f"guess: `{key}` is set and unique in all {len(records)} records of this page")
    why = (
        "could not tell the external id: no id-like field is set and unique on this page; `id` is a"
        " placeholder (a record without it fails, it is never written under a made-up key)"
    )
    return Guess("id", why)


def _fields(records: list[dict[str, Any]]) -> list[Field]:
    keys = list(dict.fromkeys(k for r in records for k in r))
    taken: set[str] = set()
    fields = []
    for key in keys:
        name = _field_name(key, taken)
        taken.add(name)
        kind, why = _type([r[key] for r in records if key in r], len(records))
        fields.append(Field(name, jmespath_path([key]), kind, why))
    return fields


def _field_name(key: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", key).strip("_") or "field"
    if name[0].isdigit():
        name = f"_{name}"
    if name == "external_id":
        name = "source_external_id"
    base, n = name, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def _type(values: list[Any], total: int) -> tuple[str, str]:
    missing = total - len(values)
    present = [v for v in values if v is not None]
    where = f" in {len(present)} of {total} records" if len(present) < total else " in every record"
    absent = f" ({missing} records lack it)" if missing else ""
    if not present:
        return "json", f"could not tell the type: always null on this page{absent}"
    kinds = {_kind(v) for v in present}
    if kinds == {"boolean"}:
        return "boolean", f"guess: boolean{where}{absent}"
    if kinds == {"integer"}:
        return "integer", f"guess: integer{where}{absent}"
    if kinds <= {"integer", "number"}:
        return "number", f"guess: number{where}{absent}"
    if kinds == {"date"}:
        return "date", f"guess: YYYY-MM-DD dates{where}{absent}"
    if kinds <= {"timestamp", "timestamp-naive"}:
        naive = " (some without an offset: read as UTC)" if "timestamp-naive" in kinds else ""
        return "timestamp", f"guess: ISO-8601 timestamps{where}{naive}{absent}"
    if kinds <= {"string", "date", "timestamp", "timestamp-naive"}:
        return "string", f"guess: text{where}{absent}"
    if kinds <= {"json"}:
        return "json", f"guess: lists or objects{where}{absent}"
    return "json", f"guess: mixed types ({', '.join(sorted(kinds))}): kept as JSON{absent}"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        if _DATE.match(value):
            return "date"
        match = _TIMESTAMP.match(value)
        if match:
            return "timestamp" if match.group("zone") else "timestamp-naive"
        return "string"
    return "json"
