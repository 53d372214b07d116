"""Pipeline files in, frozen `Pipeline` out: the only module that reads YAML.

One pass over a file finds every problem at once, each with its line and
column: YAML syntax and duplicate keys (`yamlpos`), `${VAR}` references
(`interpolate`), the JSON Schema (`schemacheck` words its errors), JMESPath
syntax and function names, and `http` target path placeholders.
`check_file` returns those problems; `load_pipeline` raises them as a
ConfigError, or builds the dataclasses of `runner.model`.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jmespath
from jmespath.exceptions import (
    EmptyExpressionError,
    IncompleteExpressionError,
    JMESPathError,
    LexerError,
    ParseError,
)
from jmespath.parser import ParsedResult

from runner import model

from runner.transform import functions

from runner.config import resources, templates, yamlpos
from runner.errors import ConfigError, Problem
from runner.config.interpolate import interpolate
from runner.config.lint import lint
from runner.config.schemacheck import SECRET_KEYS, load_schema, schema_findings, suggest
from runner.config.yamlpos import Document, KeyPath, dotted
from runner.db import missing_postgres_driver
from runner.http.jwtgrant import missing_jwt_library

__all__ = ["check_file", "expand_paths", "load_pipeline", "load_schema"]

PathLike = str | os.PathLike[str]
Severity = Literal["error", "warning"]

SECRET_BLOCKS: tuple[KeyPath, ...] = (
    ("source", "auth"),
    ("target", "auth"),
    ("target", "dsn"),
    ("state", "dsn"),
)
EXPRESSIONS: tuple[KeyPath, ...] = (
    ("source", "records"),
    ("source", "retry_when"),
    ("source", "error_when"),
    ("source", "pagination", "path"),
    ("source", "pagination", "stop_when"),
    ("source", "pagination", "total_pages"),
    ("source", "pagination", "total"),
    ("source", "incremental", "cursor_field"),
    ("source", "incremental", "token"),
    ("source", "incremental", "reset_when"),
    ("mapping", "external_id"),
    ("mapping", "filter"),
    ("mapping", "deleted"),
    ("target", "create", "id_path"),
    ("target", "batch", "body"),
    ("target", "batch", "results"),
    ("target", "batch", "id_path"),
)
PLACEHOLDERS = {
    "upsert": {"external_id"}, "create": {"external_id"}, "update": {"external_id", "target_id"},
    "delete": {"external_id", "target_id"},
}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


# --- public API ----------------------------------------------------------------


def load_pipeline(
    path: PathLike, *, env: Mapping[str, str] | None = None, env_file: PathLike | None = None
) -> model.Pipeline:
    """Read, check and build one pipeline; raise ConfigError listing every error in it."""
    found = _analyse(path, env=env, env_file=env_file, strict=True)
    errors = [p for p in found.problems if p.severity == "error"]
    if errors:
        raise ConfigError(errors, file=found.file)
    return _Builder(found).pipeline()


def check_file(
    path: PathLike, *, env: Mapping[str, str] | None = None, env_file: PathLike | None = None
) -> list[Problem]:
    """Every error and warning of one pipeline file; an unset variable is only a warning."""
    return _analyse(path, env=env, env_file=env_file, strict=False).problems


def expand_paths(paths: Iterable[str], *, problems: list[Problem] | None = None) -> list[Path]:
    """Files, directories (their *.yaml/*.yml, sorted) and globs, in order, without repeats.

    A path that matches nothing is reported: appended to `problems` when a list
    is given, otherwise raised as a ConfigError once every path was looked at.
    """
    found: list[Path] = []
    missing: list[Problem] = []
    for text in paths:
        matched = _expand_one(text)
        if not matched:
            missing.append(Problem(text, 1, 1, "", _nothing_message(text)))
        found.extend(p for p in matched if p not in found)
    if problems is not None:
        problems.extend(missing)
    elif missing:
        raise ConfigError(missing)
    return found


# --- paths -----------------------------------------------------------------------


def _expand_one(text: str) -> list[Path]:
    if glob.has_magic(text):
        matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
    else:
        matches = [Path(text)] if Path(text).exists() else []
    return [f for m in matches for f in (_yaml_files(m) if m.is_dir() else [m])]


def _yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _nothing_message(text: str) -> str:
    if Path(text).is_dir():
        return "no .yaml or .yml file in this directory"
    return "no file matches this pattern" if glob.has_magic(text) else "no such file"


# --- one pass over a file -----------------------------------------------------------


@dataclass
class _Report:
    """The problems of one file, placed by key path."""

    file: str
    doc: Document = field(default_factory=Document)
    problems: list[Problem] = field(default_factory=list)

    def add(self, path: KeyPath, message: str, *, key: bool = False, severity: Severity = "error") -> None:
        line, column = self.doc.where(path, key=key)
        self.problems.append(Problem(self.file, line, column, dotted(path), message, severity))


@dataclass
class _ViewReport(_Report):
    """A resource's problems, found in its simple-form document, placed where the file says it."""

    view: resources.View | None = None

    def add(self, path: KeyPath, message: str, *, key: bool = False, severity: Severity = "error") -> None:
        super().add(self.view.where(path) if self.view is not None else path, message, key=key, severity=severity)


@dataclass
class _Analysis:
    file: str
    problems: list[Problem]
    data: Any = None
    compiled: dict[KeyPath, ParsedResult] = field(default_factory=dict)
    env_values: dict[KeyPath, list[str]] = field(default_factory=dict)
    templates: list[templates.Template] = field(default_factory=list)
    views: dict[str, _Analysis] = field(default_factory=dict)  # the resources form: one per resource


def _analyse(
    path: PathLike, *, env: Mapping[str, str] | None, env_file: PathLike | None, strict: bool
) -> _Analysis:
    file = os.fspath(path)
    report = _Report(file)
    text = _read(file, report)
    doc, found = yamlpos.parse(text, file) if text is not None else (None, [])
    report.problems.extend(found)
    if doc is None or doc.data is None:
        return _Analysis(file, report.problems)
    report.doc = doc
    variables = _variables(env, env_file, report)
    values = interpolate(doc.data, variables, plain=doc.plain)
    _env_problems(values.missing, values.malformed, report, strict)
    unchecked = set(values.missing) | set(values.malformed) | _non_finite(values.data, report) | doc.unreadable
    views: dict[str, _Analysis] = {}
    if resources.in_use(values.data):
        compiled, found_templates = _resource_checks(doc.data, values.data, variables, report, unchecked, views)
    else:
        for key_path, message, key in schema_findings(values.data, skip=unchecked):
            report.add(key_path, message, key=key)
        compiled, found_templates = _document_checks(doc.data, values.data, variables, report, unchecked)
        _parent_problems(found_templates, report, "a file in the simple form has no parent")
    report.problems.sort(key=lambda p: (p.file != file, p.line, p.column))
    return _Analysis(file, _unique(report.problems), values.data, compiled, values.used, found_templates, views)


def _document_checks(
    raw: Any, data: Any, variables: Mapping[str, str], report: _Report, unchecked: Container[KeyPath]
) -> tuple[dict[KeyPath, ParsedResult], list[templates.Template]]:
    """Every check past the schema of one simple-form document (`raw`: before `${VAR}`):
    its compiled expressions and templates."""
    compiled = _expressions(data, report, unchecked)
    for key_path, parsed in compiled.items():
        for message in lint(key_path, str(_get(data, key_path)), parsed.parsed):
            report.add(key_path, message, severity="warning")
    _placeholder_problems(data, report)
    _batch_problems(data, report)
    _delete_problems(data, report)
    _driver_problems(data, report)
    _state_file_problems(data, report)
    _source_problems(data, report)
    found_templates, broken = _templates(raw, data, variables, report, unchecked)
    sends = broken or any(t.uses("watermark") for t in found_templates)
    _incremental_problems(data, report, watermark_in_templates=sends)
    return compiled, found_templates


def _parent_problems(found: list[templates.Template], report: _Report, why: str) -> None:
    """`_parent` in a template of a resource that has none would be null in every request."""
    for template in found:
        if template.uses("_parent"):
            report.add(("source", *template.where), f"'_parent' is a child resource's parent record, and {why}; "
                       "add 'parent: NAME' to the resource, or remove the template")


_VIEWED = ("source", "target", "mapping")  # in the resources form, checked per resource


def _viewed(path: KeyPath) -> bool:
    return path[:1] in [(k,) for k in _VIEWED] or (path[:1] == ("resources",) and path[2:3] in [(k,) for k in _VIEWED])


def _resource_checks(
    raw: dict[str, Any], data: dict[str, Any], variables: Mapping[str, str], report: _Report,
    unchecked: set[KeyPath], views: dict[str, _Analysis],
) -> tuple[dict[KeyPath, ParsedResult], list[templates.Template]]:
    """The resources form: the file's own keys against the schema, then each resource as a
    simple-form document (the defaults laid in) whose problems are placed back in the file."""
    for key_path, message, key in schema_findings(data, skip=unchecked):
        if not _viewed(key_path):  # the views below report those, with the defaults laid in
            report.add(key_path, message, key=key)
    resources.form_problems(data, report.add)
    compiled: dict[KeyPath, ParsedResult] = {}
    raw_views = {view.name: view for view in resources.views(raw)}
    for view in resources.views(data):
        sub = _ViewReport(report.file, report.doc, report.problems, view=view)
        hidden = resources.Unchecked(unchecked, view)
        for key_path, message, key in schema_findings(view.data, skip=hidden):
            if _viewed(key_path) or not key_path:
                sub.add(key_path, message, key=key)
        raw_view = raw_views.get(view.name, view).data
        view_compiled, view_templates = _document_checks(raw_view, view.data, variables, sub, hidden)
        resources.view_problems(view, sub.add)
        if view.own.get("parent") is None:
            _parent_problems(view_templates, sub, f"resource {view.name!r} has no 'parent'")
        from_parent = view.own.get("from_parent")
        place: KeyPath = ("resources", view.name, "from_parent")
        if isinstance(from_parent, str) and from_parent and place not in unchecked:
            parsed = _compile(from_parent, place, report)
            if parsed is not None:
                compiled[place] = parsed
        views[view.name] = _Analysis(report.file, [], view.data, view_compiled, {}, view_templates)
    return compiled, []


def _read(file: str, report: _Report) -> str | None:
    try:
        return Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        report.problems.append(Problem(file, 1, 1, "", f"cannot read the file: {reason}"))
        return None


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def _non_finite(data: Any, report: _Report) -> set[KeyPath]:
    """Report `.inf` and `.nan` (YAML reads them as floats) and return where they are.

    The schema cannot refuse them (NaN passes every bound), and no timeout, rate or
    limit means anything with one. Walked with a stack, not recursion: any depth is safe.
    """
    found: set[KeyPath] = set()
    stack: list[tuple[KeyPath, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            written = ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
            report.add(path, f"numbers must be finite, got {written}")
            found.add(path)
        elif isinstance(value, dict):
            stack.extend(((*path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))
    return found


# --- environment ------------------------------------------------------------------------


def _variables(env: Mapping[str, str] | None, env_file: PathLike | None, report: _Report) -> dict[str, str]:
    """The environment over the `.env` file (or `env_file`): the real environment wins."""
    real = os.environ if env is None else env
    dotenv = Path(env_file) if env_file is not None else Path.cwd() / ".env"
    if env_file is not None and not dotenv.is_file():
        report.problems.append(Problem(os.fspath(env_file), 1, 1, "", "env file not found"))
    from_file = _read_dotenv(dotenv) if dotenv.is_file() else {}
    return {**{k: v for k, v in from_file.items() if v is not None}, **real}


def _env_problems(
    missing: dict[KeyPath, list[str]], malformed: dict[KeyPath, list[str]], report: _Report, strict: bool
) -> None:
    severity: Severity = "error" if strict else "warning"
    for path, names in missing.items():
        for name in names:
            hint = " (set it, or add it to .env)" if strict else ""
            report.add(path, f"environment variable {name} is not set{hint}", severity=severity)
    for path, messages in malformed.items():
        for message in messages:
            report.add(path, message)


# --- expressions and placeholders ------------------------------------------------------------


def _expressions(data: Any, report: _Report, unchecked: Container[KeyPath]) -> dict[KeyPath, ParsedResult]:
    compiled: dict[KeyPath, ParsedResult] = {}
    for path in _expression_paths(data):
        text = _get(data, path)
        if isinstance(text, str) and text and path not in unchecked:  # '' is the schema's to report
            parsed = _compile(text, path, report)
            if parsed is not None:
                compiled[path] = parsed
    return compiled


def _expression_paths(data: Any) -> list[KeyPath]:
    fields = _get(data, ("mapping", "fields"))
    names = list(fields) if isinstance(fields, dict) else []
    return [*EXPRESSIONS, *(_field_path(name, fields[name]) for name in names)]


def _field_path(name: str, value: Any) -> KeyPath:
    """Where a field's JMESPath stands: the field's value, or the long form's `path`."""
    return ("mapping", "fields", name, "path") if isinstance(value, dict) else ("mapping", "fields", name)


def _compile(text: str, path: KeyPath, report: _Report) -> ParsedResult | None:
    try:
        parsed = jmespath.compile(text)
    except JMESPathError as exc:
        report.add(path, _jmespath_message(text, exc))
        return None
    known = functions.FUNCTIONS.FUNCTION_TABLE
    unknown = [name for name in _function_names(parsed.parsed) if name not in known]
    for name in dict.fromkeys(unknown):
        hint = suggest(name, sorted(known), "known functions")
        report.add(path, f"unknown JMESPath function '{name}()' in {text!r}{hint}")
    return None if unknown else parsed


def _jmespath_message(text: str, exc: JMESPathError) -> str:
    prefix = f"invalid JMESPath {text!r}"
    if isinstance(exc, EmptyExpressionError):
        return "empty JMESPath expression"
    if isinstance(exc, LexerError):
        return f"{prefix}: {exc.message[:1].lower()}{exc.message[1:]} at character {exc.lexer_position + 1}"
    if isinstance(exc, IncompleteExpressionError):
        return f"{prefix}: the expression is incomplete"
    if isinstance(exc, ParseError) and exc.token_value is not None:
        return f"{prefix}: unexpected {exc.token_value!r} at character {exc.lex_position + 1}"
    return f"{prefix}: {getattr(exc, 'msg', 'syntax error')}"


def _function_names(node: Any) -> Iterable[str]:
    if not isinstance(node, dict):
        return
    if node.get("type") == "function_expression":
        yield node["value"]
    for child in node.get("children", []):
        yield from _function_names(child)


def _templates(
    raw: Any, data: Any, variables: Mapping[str, str], report: _Report, unchecked: Container[KeyPath]
) -> tuple[list[templates.Template], bool]:
    """Every `{{ EXPR }}` string, compiled; and whether one was broken. Walked with a stack.

    Templates are found in the file's text (`raw`), before `${VAR}`: an environment
    value is data, so a `{{` inside one is written as it is, never evaluated.
    """
    found: list[templates.Template] = []
    broken = False
    stack: list[tuple[KeyPath, Any]] = [((), raw)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(((*path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))
        elif isinstance(value, str) and templates.OPEN in value and path not in unchecked:
            if not _template_place(path):
                report.add(path, f"templates are filled only in {templates.PLACES}")
                continue
            template = _template(value, path, variables, report, _get(data, ("source", "base_url")))
            broken = broken or template is None
            found.extend([template] if template is not None else [])
    return sorted(found, key=lambda t: (t.line, t.column)), broken


def _template_place(path: KeyPath) -> bool:
    if path[:1] != ("source",) or len(path) < 2 or path[1] not in templates.BLOCKS:
        return False
    if path[1] in templates.URL_BLOCKS:
        return len(path) == 2
    return path[1] == "json" or len(path) == 3


def _template(
    text: str, path: KeyPath, variables: Mapping[str, str], report: _Report, base_url: Any
) -> templates.Template | None:
    """The template of one string of the file; `${VAR}` filled in each piece on its own.
    A `path` template starts with `base_url`, joined as `_joined` joins them."""
    try:
        pieces = templates.split(text)
    except templates.TemplateSyntaxError as exc:
        report.add(path, f"{exc} in {text!r}")
        return None
    parts: list[str | model.Expr] = []
    for is_expression, piece in pieces:
        piece = interpolate(piece, variables).data
        parsed = _compile(piece, path, report) if is_expression else None
        if is_expression and parsed is None:
            return None
        parts.append(model.Expr(piece, parsed, key=dotted(path)) if parsed is not None else piece)
    if path[1:] == ("path",) and isinstance(base_url, str):
        first = parts[0].lstrip("/") if parts and isinstance(parts[0], str) else None
        parts = [_joined(base_url, ""), *([first] if first else []), *parts[first is not None:]]
    line, column = report.doc.where(path)
    return templates.Template(path[1:], tuple(parts), line, column)


def _placeholder_problems(data: Any, report: _Report) -> None:
    for operation, allowed in PLACEHOLDERS.items():
        path = ("target", operation, "path")
        text = _get(data, path)
        if not isinstance(text, str):
            continue
        for name in _PLACEHOLDER.findall(text):
            if name not in allowed:
                valid = ", ".join(f"{{{a}}}" for a in sorted(allowed))
                report.add(path, f"unknown placeholder '{{{name}}}' in {operation} path; valid: {valid}")


def _batch_problems(data: Any, report: _Report) -> None:
    """`batch` carries every create and update, so `upsert`, `create` and `update` beside it
    would be a second way to send the same write; `id_path` reads entries of `results`; and
    a batch holds many keys, so its path has no placeholder to fill."""
    batch = _get(data, ("target", "batch"))
    target = _get(data, ("target",))
    if not isinstance(batch, dict) or not isinstance(target, dict):
        return
    for other in ("upsert", "create", "update"):
        if other in target:
            report.add(
                ("target", other), f"'batch' sends every create and update; remove '{other}' "
                "(or 'batch' to send one request per record)", key=True,
            )
    if "id_path" in batch and "results" not in batch:
        report.add(
            ("target", "batch", "id_path"), "id_path reads each entry of 'results'; add 'results' "
            "(a JMESPath to the response's list of per-record entries) or remove id_path", key=True,
        )
    path = batch.get("path")
    for name in _PLACEHOLDER.findall(path) if isinstance(path, str) else ():
        report.add(
            ("target", "batch", "path"),
            f"placeholder '{{{name}}}' in batch path: a batch holds many keys, so its path takes none",
        )


def _delete_problems(data: Any, report: _Report) -> None:
    """Deletes the target cannot carry out: an http target without a `delete` operation, a
    soft delete where there is no row to mark, a `{target_id}` that no create stores, and a
    field in the way of the soft delete's `_deleted_at` column."""
    target = _get(data, ("target",))
    if not isinstance(target, dict):
        return
    deletes = target.get("deletes")
    fields = _get(data, ("mapping", "fields"))
    soft = isinstance(deletes, dict) and deletes.get("mode") == "soft"
    if soft and isinstance(fields, dict) and "_deleted_at" in fields:
        report.add(
            ("mapping", "fields", "_deleted_at"),
            "`_deleted_at` is the column a soft delete sets (target.deletes.mode: soft); name this field differently",
            key=True,
        )
    if target.get("type") != "http":
        return
    wants = [path for path in (("target", "deletes"), ("mapping", "deleted")) if _get(data, path) is not None]
    if "delete" not in target:
        for path in wants:
            report.add(path, f"{dotted(path)} needs a `delete: {{method, path}}` operation in the http target")
    if isinstance(deletes, dict) and deletes.get("mode") == "soft":
        report.add(
            ("target", "deletes", "mode"),
            "an http target has no row to mark deleted: use `mode: hard` (its `delete` request)",
        )
    path = _get(data, ("target", "delete", "path"))
    stores_ids = "create" in target or _get(data, ("target", "batch", "id_path")) is not None
    if isinstance(path, str) and "{target_id}" in path and not stores_ids:
        report.add(
            ("target", "delete", "path"),
            "{target_id} is the id a `create` (with id_path) or a `batch` with id_path stored; without "
            "either use {external_id}",
        )


def _driver_problems(data: Any, report: _Report) -> None:
    """A warning where the file asks for PostgreSQL while psycopg (an optional extra) is
    not installed: the file is valid, but `etl run` would refuse it."""
    uses = (
        (("target", "type"), _get(data, ("target", "type")) == "postgres", "the postgres target"),
        (("state", "dsn"), _get(data, ("state", "dsn")) is not None, "the postgres state store"),
    )
    for path, used, what in uses:
        message = missing_postgres_driver(what) if used else None
        if message is not None:
            report.add(path, message, key=True, severity="warning")
    for block in (("source", "auth"), ("target", "auth")):  # PyJWT, the `jwt` extra, likewise
        if _get(data, (*block, "type")) == "oauth2_jwt_bearer" and (message := missing_jwt_library()):
            report.add((*block, "type"), message, severity="warning")


def _source_problems(data: Any, report: _Report) -> None:
    """Key combinations the schema leaves to us: `url` or `base_url` + `path` (one form, not
    none), a cursor's `path` or `header`, and `in: body`, which only a POST has."""
    source = _get(data, ("source",))
    if not isinstance(source, dict):
        return
    if "url" not in source and "base_url" not in source:
        report.add(("source",), "missing required key 'url' in source (or 'base_url' and 'path')", key=True)
    paging = source.get("pagination")
    if not isinstance(paging, dict):
        return
    if paging.get("type") == "cursor" and "path" not in paging and "header" not in paging:
        report.add(
            ("source", "pagination"), "missing required key 'path' in source.pagination for type 'cursor' "
            "(or 'header': the response header that holds the cursor)", key=True,
        )
    if paging.get("in") == "body" and source.get("method", "GET") != "POST":
        report.add(
            ("source", "pagination", "in"),
            "'in: body' puts the paging parameter in the JSON body, which only a POST sends; "
            "set 'method: POST' in source, or use 'in: query'",
        )


# keys that only one form of `incremental` has; the schema's `not` rule refuses both forms at once
_WATERMARK_ONLY = ("initial_value", "lookback", "order")
_TOKEN_ONLY = ("as_url", "reset_on", "reset_when")


def _incremental_problems(data: Any, report: _Report, *, watermark_in_templates: bool) -> None:
    """`incremental` is one of two forms: a record field (`cursor_field` + `param` or a
    `{{ watermark }}` template) or a sync token (`token` + `param` or `as_url: true`); each
    form's own keys only with it."""
    spec = _get(data, ("source", "incremental"))
    if not isinstance(spec, dict) or ("cursor_field" in spec and "token" in spec):
        return
    base: KeyPath = ("source", "incremental")
    if "token" not in spec:
        if "cursor_field" not in spec:
            report.add(
                base, "missing required key 'cursor_field' in source.incremental (a record field), "
                "or 'token' (a sync token in each page's body)", key=True,
            )
        for key in (k for k in _TOKEN_ONLY if k in spec):
            report.add((*base, key), f"'{key}' belongs to the sync-token form; add 'token' instead of 'cursor_field', "
                       "or remove it", key=True)
        if "cursor_field" in spec and "param" not in spec and not watermark_in_templates:
            report.add(
                base, "missing required key 'param' in source.incremental, and no template in params, headers "
                "or json reads '{{ watermark }}': the watermark is never sent", key=True,
            )
        return
    for key in (k for k in _WATERMARK_ONLY if k in spec):
        report.add((*base, key), f"'{key}' belongs to the record-field form (cursor_field); a sync token is "
                   "sent as the API gave it: remove it", key=True)
    as_url = spec.get("as_url") is True
    if as_url and "param" in spec:
        report.add((*base, "as_url"), "'as_url: true' requests the saved URL as it is; remove 'param' "
                   "(or 'as_url' to send the token as that query parameter)", key=True)
    elif not as_url and "param" not in spec:
        report.add(
            base, "missing required key 'param' in source.incremental for 'token' "
            "(the query parameter that sends it), or 'as_url: true' (the token is a URL to request)", key=True,
        )


def _state_file_problems(data: Any, report: _Report) -> None:
    """A sqlite target in the SQLite state store's own file would add its columns to the
    state's tables (a target table named `keys` breaks every pipeline of that store)."""
    target, state = _get(data, ("target", "path")), _get(data, ("state", "path"))
    if _get(data, ("target", "type")) != "sqlite" or not isinstance(target, str) or _get(data, ("state", "dsn")):
        return
    try:
        ours = _resolve(state if isinstance(state, str) else ".etl/state.db").resolve()
        theirs = _resolve(target).resolve()
        same = theirs == ours or (theirs.exists() and ours.exists() and os.path.samefile(theirs, ours))
    except (OSError, ValueError):  # a path the OS refuses: opening it will say so
        return
    if same:
        report.add(("target", "path"), "the target's path is the state store's own file; give the target another file")


def _get(data: Any, path: KeyPath) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


# --- building the dataclasses --------------------------------------------------------------


PAGINATIONS: dict[str, type] = {
    "none": model.NoPagination,
    "next_url": model.NextUrlPagination,
    "link_header": model.LinkHeaderPagination,
    "cursor": model.CursorPagination,
    "page": model.PagePagination,
    "offset": model.OffsetPagination,
}


class _Builder:
    """Turns a checked document into `runner.model` objects; it sees no invalid input."""

    def __init__(self, found: _Analysis) -> None:
        self.found = found
        self.data: dict[str, Any] = found.data

    def pipeline(self) -> model.Pipeline:
        if self.found.views:
            return self.resource_pipeline()
        return model.Pipeline(
            name=self.data["name"],
            description=self.data.get("description", ""),
            source=self.source(self.data["source"]),
            mapping=self.mapping(),
            target=self.target(self.data["target"]),
            state=self.state(self.data.get("state", {})),
            file=self.found.file,
            secrets=self.secrets(),
        )

    def resource_pipeline(self) -> model.Pipeline:
        """The resources form: each resource built from its view (the defaults laid in); the
        pipeline's own source, mapping and target are the first resource's."""
        built: dict[str, model.Resource] = {}
        secrets = set(self.secrets())
        for name, view in self.found.views.items():
            builder = _Builder(view)
            own = self.data["resources"][name]
            parent = own.get("parent")
            parent_name = parent.get("resource") if isinstance(parent, dict) else parent
            from_parent = self.expr(("resources", name, "from_parent"))
            source = builder.source(view.data["source"]) if from_parent is None else built[str(parent_name)].source
            built[name] = model.Resource(
                name=name, source=source, mapping=builder.mapping(), target=builder.target(view.data["target"]),
                parent=parent_name, changed_only=bool(isinstance(parent, dict) and parent.get("changed_only")),
                from_parent=from_parent,
            )
            secrets.update(builder.secrets())
        first = next(iter(built.values()))
        return model.Pipeline(
            name=self.data["name"], description=self.data.get("description", ""), source=first.source,
            mapping=first.mapping, target=first.target, state=self.state(self.data.get("state", {})),
            file=self.found.file, secrets=frozenset(secrets), resources=tuple(built.values()),
        )

    def expr(self, path: KeyPath) -> model.Expr | None:
        text = _get(self.data, path)
        if text is None:
            return None
        return model.Expr(text, self.found.compiled[path], key=dotted(path))

    def required_expr(self, path: KeyPath) -> model.Expr:
        expr = self.expr(path)
        assert expr is not None, "the schema requires this expression"
        return expr

    def source(self, d: dict[str, Any]) -> model.Source:
        return model.Source(
            url=d["url"] if "url" in d else _joined(d["base_url"], d["path"]),
            method=d.get("method", "GET"),
            params=model.frozen_map(d.get("params")),
            headers=_headers(d.get("headers")),
            json=d.get("json"),
            auth=_auth(d.get("auth")),
            records=self.expr(("source", "records")),
            retry_when=self.expr(("source", "retry_when")),
            error_when=self.expr(("source", "error_when")),
            pagination=self.pagination(d.get("pagination", {"type": "none"})),
            **_http_behaviour(d),
            limits=_numbers(model.Limits, d.get("limits", {}), floats={"max_seconds"}),
            incremental=self.incremental(d.get("incremental")),
            **{k: d[k] for k in ("concurrency", "max_response_bytes") if k in d},
            templates=tuple(self.found.templates),
        )

    def pagination(self, d: dict[str, Any]) -> model.Pagination:
        base = ("source", "pagination")
        kwargs = {k: (self.expr((*base, k)) if (*base, k) in EXPRESSIONS else v) for k, v in d.items()}
        kwargs.pop("type")
        if "in" in kwargs:
            kwargs["location"] = kwargs.pop("in")
        return PAGINATIONS[d["type"]](**kwargs)  # type: ignore[no-any-return]

    def incremental(self, d: dict[str, Any] | None) -> model.Incremental | model.IncrementalToken | None:
        if d is None:
            return None
        if "token" in d:
            return model.IncrementalToken(
                self.required_expr(("source", "incremental", "token")), d.get("param"),
                as_url=d.get("as_url", False), reset_on=frozenset(d.get("reset_on", (410,))),
                reset_when=self.expr(("source", "incremental", "reset_when")),
            )
        cursor_field = self.required_expr(("source", "incremental", "cursor_field"))
        return model.Incremental(
            cursor_field, d.get("param"), d.get("initial_value"),
            lookback=d.get("lookback") or None, order=d.get("order"),
        )

    def mapping(self) -> model.MappingSpec:
        fields: dict[str, Any] = self.data["mapping"]["fields"]
        long_form = {name: value for name, value in fields.items() if isinstance(value, dict)}
        return model.MappingSpec(
            external_id=self.required_expr(("mapping", "external_id")),
            fields=tuple((name, self.required_expr(_field_path(name, value))) for name, value in fields.items()),
            filter=self.expr(("mapping", "filter")),
            types=tuple((name, value["type"]) for name, value in long_form.items() if "type" in value),
            required=frozenset(name for name, value in long_form.items() if value.get("required")),
            deleted=self.expr(("mapping", "deleted")),
        )

    def target(self, d: dict[str, Any]) -> model.TargetConfig:
        kind, deletes = d["type"], _deletes(d.get("deletes"))
        if kind == "sqlite":
            return model.SqliteTargetConfig(path=_resolve(d["path"]), table=d["table"], deletes=deletes)
        if kind == "postgres":
            return model.PostgresTargetConfig(
                dsn=model.Secret(d["dsn"]), table=d["table"], schema=d.get("schema"), deletes=deletes
            )
        if kind == "jsonl":
            path = d["path"] if d["path"] == "-" else str(_resolve(d["path"]))
            return model.JsonlTargetConfig(path=path, deletes=deletes)
        return self.http_target(d)

    def http_target(self, d: dict[str, Any]) -> model.HttpTargetConfig:
        return model.HttpTargetConfig(
            base_url=d["base_url"],
            upsert=_operation(d.get("upsert")),
            create=_operation(d.get("create"), self.expr(("target", "create", "id_path"))),
            update=_operation(d.get("update")),
            delete=_operation(d.get("delete") and {"method": "DELETE", **d["delete"]}),
            auth=_auth(d.get("auth")),
            headers=_headers(d.get("headers")),
            **_http_behaviour(d),
            idempotency_key=d.get("idempotency_key", True),
            deletes=_deletes(d.get("deletes")),
            concurrency=d.get("concurrency", 4),
            batch=self.batch(d.get("batch")),
        )

    def batch(self, d: dict[str, Any] | None) -> model.HttpBatch | None:
        if d is None:
            return None
        base = ("target", "batch")
        return model.HttpBatch(
            path=d["path"], method=d.get("method", "POST"), size=d.get("size", 100),
            body=self.expr((*base, "body")), results=self.expr((*base, "results")),
            id_path=self.expr((*base, "id_path")),
        )

    def state(self, d: dict[str, Any]) -> model.StateConfig:
        dsn = model.Secret(d["dsn"]) if "dsn" in d else None
        return model.StateConfig(path=_resolve(d.get("path", ".etl/state.db")), dsn=dsn)

    def secrets(self) -> frozenset[str]:
        values = [v for path in _secret_paths(self.data) if isinstance(v := _get(self.data, path), str)]
        env_values = self.found.env_values.items()
        from_env = [v for path, used in env_values if _in_secret_block(path) for v in used]
        return frozenset(v for v in [*values, *from_env] if v)


def _in_secret_block(path: KeyPath) -> bool:
    """Whether a place of the file is inside a block whose values are secrets: a source's
    or target's auth, a DSN; in the resources form, a resource's own blocks too."""
    return path[:2] in SECRET_BLOCKS or (path[:1] == ("resources",) and path[2:4] in SECRET_BLOCKS)


def _secret_paths(data: Any) -> list[KeyPath]:
    paths: list[KeyPath] = [("target", "dsn"), ("state", "dsn")]
    for block in (("source", "auth"), ("target", "auth")):
        auth = _get(data, block)
        if isinstance(auth, dict):
            paths.extend((*block, key) for key in auth if key in SECRET_KEYS)
    return paths


def _auth(d: dict[str, Any] | None) -> model.Auth | None:
    if d is None:
        return None
    kind = d["type"]
    hosts = tuple(d.get("hosts", ()))
    if kind == "bearer":
        return model.BearerAuth(token=model.Secret(d["token"]), hosts=hosts)
    if kind == "basic":
        return model.BasicAuth(username=d["username"], password=model.Secret(d["password"]), hosts=hosts)
    if kind == "api_key":
        location = d.get("in", "header")
        return model.ApiKeyAuth(name=d["name"], value=model.Secret(d["value"]), location=location, hosts=hosts)
    return _oauth2(d, hosts)


def _oauth2(d: dict[str, Any], hosts: tuple[str, ...]) -> model.OAuth2:
    kind, scopes = d["type"], tuple(d.get("scopes", ()))
    if kind == "oauth2_jwt_bearer":
        key = d.get("private_key")
        return model.OAuth2JwtBearer(
            credentials_file=str(_resolve(d["credentials_file"])) if "credentials_file" in d else None,
            client_email=d.get("client_email"),
            private_key=model.Secret(key) if key is not None else None,
            token_url=d.get("token_url"),
            scopes=scopes,
            subject=d.get("subject"),
            hosts=hosts,
        )
    common: dict[str, Any] = {
        "token_url": d["token_url"],
        "client_id": d["client_id"],
        "client_secret": model.Secret(d["client_secret"]),
        "scopes": scopes,
        "hosts": hosts,
        "client_auth": d.get("client_auth", "body"),
        "params": model.frozen_map({k: _text(v) for k, v in d.get("params", {}).items()}),
    }
    if kind == "oauth2_refresh_token":
        return model.OAuth2RefreshToken(refresh_token=model.Secret(d["refresh_token"]), **common)
    return model.OAuth2ClientCredentials(grant_type=d.get("grant_type", "client_credentials"), **common)


def _http_behaviour(d: dict[str, Any]) -> dict[str, Any]:
    """timeout, retry and rate_limit: shared by the source and the http target."""
    retry = dict(d.get("retry", {}))
    if "also_on" in retry:
        retry["also_on"] = frozenset(retry["also_on"])
    rate = d.get("rate_limit")
    return {
        "timeout": _numbers(model.Timeout, d.get("timeout", {}), floats={"connect", "read"}),
        "retry": _numbers(model.Retry, retry, floats={"backoff_initial", "backoff_max", "max_elapsed"}),
        "rate_limit": model.RateLimit(float(rate["requests_per_second"])) if rate else None,
    }


def _numbers(cls: Callable[..., Any], d: Mapping[str, Any], *, floats: set[str]) -> Any:
    return cls(**{k: float(v) if k in floats else v for k, v in d.items()})


def _joined(base_url: str, path: str) -> str:
    """`base_url` and `path` as the http target joins them: one slash between the two."""
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


def _operation(d: dict[str, Any] | None, id_path: model.Expr | None = None) -> model.HttpOperation | None:
    return model.HttpOperation(method=d["method"], path=d["path"], id_path=id_path) if d else None


def _deletes(d: dict[str, Any] | None) -> model.Deletes:
    d = d or {}
    return model.Deletes(
        missing=d.get("missing", False), mode=d.get("mode", "hard"), max_fraction=float(d.get("max_fraction", 0.5))
    )


def _headers(d: Mapping[str, Any] | None) -> Mapping[str, str]:
    return model.frozen_map({k: _text(v) for k, v in (d or {}).items()})


def _text(value: Any) -> str:
    """A scalar as it goes in a header or a form field: YAML's `true` is `true`, not `True`."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _resolve(path: str) -> Path:
    """Relative paths resolve against the working directory."""
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else Path.cwd() / resolved


def _read_dotenv(path: Path) -> dict[str, str | None]:
    from dotenv import dotenv_values  # imported only when there is a .env: most runs have none

    return dotenv_values(path)
