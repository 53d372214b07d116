"""`etl init NAME --url URL`: one GET, then a commented pipeline file that validates.

The request goes through the run's own client (timeouts, retries, errors
worded as every run words them). What the response says comes from
`runner.authoring.infer`; this module turns it into YAML, line by line, so
that each guess carries its comment. A credential given with `--header`
(`Authorization`, or a key-like header such as `X-Api-Key`) or in the URL's
query (`api_key=...`) becomes the `auth` block with a `${NAME_TOKEN}`-style
variable; its value is never written. The file is checked as `etl validate`
checks it before it is reported written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from runner import log
from runner.authoring.infer import Inferred, infer
from runner.config import check_file
from runner.errors import EtlError, Problem
from runner.extract.reader import decode
from runner.http.client import HttpClient
from runner.model import Retry, Timeout

__all__ = ["InitError", "Written", "init_pipeline"]

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_KEY_LIKE = re.compile(r"api[-_]?key|apikey|token|secret|password|passwd|signature|session|auth", re.IGNORECASE)
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_YAML_WORDS = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"})


class InitError(EtlError):
    """`etl init` was asked for something it cannot do (a usage error: exit 2)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Written:
    """The file `etl init` wrote, the variables to set before a run, and what it could not tell."""

    path: Path
    text: str
    variables: tuple[str, ...]
    notes: tuple[str, ...]
    records: int
    problems: tuple[Problem, ...] = field(default=())  # `etl validate`'s errors: none, unless a bug


def init_pipeline(
    name: str, url: str, *, headers: Sequence[str] = (), out: str | Path | None = None, force: bool = False,
    transport: httpx.BaseTransport | None = None,
) -> Written:
    """GET `url` with `headers` ('Name: value'), infer the pipeline, write it to `out`
    (default `pipelines/NAME.yaml`) and check it."""
    if not NAME.match(name):
        raise InitError(
            f"NAME {name!r}: a pipeline name is lowercase letters, digits, '_' and '-' ([a-z0-9][a-z0-9_-]*)"
        )
    if not url.startswith(("http://", "https://")):
        raise InitError(f"--url {url!r}: give an absolute http:// or https:// URL")
    path = Path(out) if out is not None else Path("pipelines") / f"{name}.yaml"
    if path.exists() and not force:
        raise InitError(f"{path} exists; give another --out, or --force to replace it")
    given = _parse_headers(headers)
    credentials = _Credentials(name, given, url)
    body, response = _fetch(url, given, transport)
    inferred = infer(body, response.headers, url)
    text = _render(name, url, inferred, credentials)
    problems = _write_checked(path, text, credentials.variables)
    return Written(
        path, text, tuple(credentials.variables), tuple(inferred.notes + credentials.notes), inferred.record_count,
        tuple(problems),
    )


def _parse_headers(headers: Sequence[str]) -> list[tuple[str, str]]:
    parsed = []
    for text in headers:
        name, colon, value = text.partition(":")
        if not colon or not name.strip() or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name.strip()):
            raise InitError(f"--header {name.strip()!r}...: write it as 'Name: value'")
        parsed.append((name.strip(), value.strip()))
        if _credential_header(name.strip()):  # an error message never shows a credential's value
            log.add_secrets([value.strip(), value.strip().rpartition(" ")[2]])
    return parsed


def _credential_header(name: str) -> bool:
    """`Authorization`, or a key-like name: the headers whose values become variables. Only
    these are secrets: masking `Accept: application/json` would mask that text in every log."""
    return name.lower() == "authorization" or _KEY_LIKE.search(name) is not None


def _fetch(
    url: str, headers: list[tuple[str, str]], transport: httpx.BaseTransport | None
) -> tuple[Any, httpx.Response]:
    for key, value in parse_qsl(urlsplit(url).query):
        if log.is_secret_param(key):
            log.add_secrets([value])
    with HttpClient(
        timeout=Timeout(), retry=Retry(max_attempts=3), headers=dict(headers), transport=transport,
    ) as client:
        response = client.send("GET", url)
    return decode(response, method="GET"), response


def _write_checked(path: Path, text: str, variables: Sequence[str]) -> list[Problem]:
    """Write the file and check it as `etl validate` does (its variables set, as a user will)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InitError(f"{path}: cannot write it: {exc.strerror or exc}") from None
    env = {name: "set-by-the-user" for name in variables}
    return [p for p in check_file(path, env=env) if p.severity == "error"]


# --- credentials -------------------------------------------------------------------------------


class _Credentials:
    """Where each given credential goes: the auth block (a variable, never the value) or a plain header."""

    def __init__(self, name: str, headers: list[tuple[str, str]], url: str) -> None:
        self.prefix = re.sub(r"[^A-Za-z0-9]", "_", name).upper()
        self.auth: dict[str, Any] | None = None
        self.auth_why = ""
        self.auth_given = ""
        self.headers: dict[str, str] = {}
        self.variables: list[str] = []
        self.notes: list[str] = []
        self.query_names: set[str] = set()  # query parameters that carry the credential
        for key, value in headers:
            self._header(key, value)
        for key, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True):
            if log.is_secret_param(key):
                self._query(key)

    def _variable(self, suffix: str) -> str:
        name = f"{self.prefix}_{suffix}"
        self.variables.append(name)
        return f"${{{name}}}"

    def _header(self, key: str, value: str) -> None:
        if key.lower() == "authorization":
            scheme, _, _ = value.partition(" ")
            if scheme.lower() == "bearer":
                self._set_auth({"type": "bearer", "token": self._variable("TOKEN")}, "Authorization: Bearer")
            elif scheme.lower() == "basic":
                auth = {"type": "basic", "username": self._variable("USERNAME"), "password": self._variable("PASSWORD")}
                self._set_auth(auth, "Authorization: Basic")
            else:
                written = f"{scheme} {self._variable('TOKEN')}" if " " in value else self._variable("TOKEN")
                self._set_auth({"type": "api_key", "name": key, "value": written}, "Authorization")
        elif _KEY_LIKE.search(key):
            suffix = "API_KEY" if re.search(r"key", key, re.IGNORECASE) else "TOKEN"
            self._set_auth({"type": "api_key", "name": key, "value": self._variable(suffix)}, key)
        else:
            self.headers[key] = value

    def _query(self, key: str) -> None:
        self._set_auth(
            {"type": "api_key", "name": key, "value": self._variable("API_KEY"), "in": "query"}, f"?{key}="
        )
        self.query_names.add(key)

    def _set_auth(self, block: dict[str, Any], given: str) -> None:
        if self.auth is None:
            self.auth, self.auth_given = block, given
            self.auth_why = f"from the {given} you gave; its value is not written"
            return
        # one auth block per source: a second credential is refused rather than written in plain
        raise InitError(
            f"two credentials ({self.auth_given} and {given}): a source has one `auth` block;"
            " give one, and add the other to the file by hand"
        )


# --- the file ---------------------------------------------------------------------------------


def _render(name: str, url: str, inferred: Inferred, credentials: _Credentials) -> str:
    shown_url = log.mask_query(url)
    lines = [
        f"# {name}: written by `etl init` from one GET of {shown_url}",
        f"# ({inferred.record_count} records on that page). Each line marked \"guess\" is one, made from that",
        "# single response: check it against the API's documentation.",
    ]
    if credentials.variables:
        lines.append(f"# Before `etl run`: set {', '.join(credentials.variables)} (in the environment or .env).")
    lines += [f"# {note[:1].upper()}{note[1:]}" for note in inferred.notes + credentials.notes]
    lines += ["version: 1", f"name: {name}", "", "source:", f"  url: {_scalar(inferred.url)}"]
    params = {k: v for k, v in inferred.params.items() if k not in credentials.query_names}
    if params:
        lines.append("  params:")
        lines += [f"    {_key(k)}: {_scalar(v)}" for k, v in params.items()]
    if credentials.headers:
        lines.append("  headers:")
        lines += [f"    {_key(k)}: {_scalar(v)}" for k, v in credentials.headers.items()]
    if credentials.auth is not None:
        lines.append(_commented(f"  auth: {_flow(credentials.auth)}", credentials.auth_why))
    lines.append(_commented(f"  records: {_scalar(inferred.records.value)}", inferred.records.why))
    lines.append(_commented(f"  pagination: {_flow(inferred.pagination.value)}", inferred.pagination.why))
    external_id = _commented(f"  external_id: {_scalar(inferred.external_id.value)}", inferred.external_id.why)
    lines += ["", "mapping:", external_id]
    lines.append("  fields:")
    for f in inferred.fields:
        lines.append(_commented(f"    {f.name}: {_flow({'path': f.path, 'type': f.type})}", f.why))
    if not inferred.fields:
        lines.append("    raw: '@'                   # the response had no records to read fields from")
    table = re.sub(r"[^A-Za-z0-9_]", "_", name)
    table = table if re.match(r"^[A-Za-z_]", table) else f"t_{table}"
    lines += ["", "target:", "  type: sqlite", f"  path: data/{name}.db", f"  table: {table}", ""]
    return "\n".join(lines)


def _commented(line: str, why: str) -> str:
    return f"{line}   # {why}" if why else line


def _flow(block: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{_key(k)}: {_scalar(v)}" for k, v in block.items()) + "}"


def _key(key: str) -> str:
    return key if _PLAIN.match(key) and key.lower() not in _YAML_WORDS else json.dumps(key)


def _scalar(value: Any) -> str:
    """A YAML scalar: plain when nothing in it could be read otherwise, else a JSON string
    (which YAML reads as a double-quoted scalar); `${` written as `$${` unless it is ours."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if "${" in text and not re.fullmatch(r"(\w+ )?\$\{[A-Z0-9_]+\}", text):
        text = text.replace("${", "$${")
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS and not re.fullmatch(r"[0-9._-]+", text):
        return text
    return json.dumps(text, ensure_ascii=False)
