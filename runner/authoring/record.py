"""`etl run FILE --record DIR`: the run as usual, and every source exchange written to DIR.

`RecordingTransport` wraps the transport the source's client sends through
(the engine's `source_transport` seam), so it sees each request as it goes on
the wire, after auth was applied, and each response as it was read. It keeps
no request header (the credentials travel there), masks the credential query
parameter, skips the OAuth2 token exchange altogether (a POST to the auth's
`token_url`, or any form that carries a `grant_type`), and scrubs every known
secret from what it writes (`fixtures.Scrubber`). The response body is passed
through as the client reads it, so the client's size cap and read deadline
still bound it; the exchange file is written when the client closes the
response, numbered in the order the requests were sent.

`record_run` also writes `env.json` (the variables the file uses outside
`auth` blocks, with their values at load time; null for one that was unset)
and `recording.json` (the time, the state the run started from, the masked
parameter names), which `etl test` replays.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from runner.authoring import fixtures
from runner.authoring.fixtures import ENV_FILE, MASK, META_FILE, Scrubber
from runner.config import yamlpos
from runner.config.interpolate import variable_names
from runner.errors import EtlError, StateError
from runner.http.transport import LazyTlsTransport
from runner.model import ApiKeyAuth, Auth, BasicAuth, Pipeline
from runner.result import RunResult
from runner.state import open_known

__all__ = ["Recorder", "RecordingTransport", "file_variables", "record_run", "state_keys"]

# keys under which a value is a credential: a variable used there is never written
SECRET_KEYS = frozenset({"auth", "dsn"})


def record_run(
    pipeline: Pipeline, directory: str | Path, *, env: Mapping[str, str] | None = None,
    env_file: str | Path | None = None, run: Callable[..., RunResult] | None = None, **options: Any,
) -> RunResult:
    """Run `pipeline` (options as `runner.engine.run` takes them) and record it into `directory`.

    The previous recording's exchange files are removed first; `expected.jsonl` is kept, so
    that `etl test` shows how the new recording's writes differ from it."""
    from runner import engine

    target = Path(directory)
    try:
        target.mkdir(parents=True, exist_ok=True)
        for old in fixtures.exchange_files(target):
            old.unlink()
    except OSError as exc:
        raise fixtures.FixtureError(f"--record {target}: {exc.strerror or exc}") from None
    recorder = Recorder(target, pipeline)
    recorder.write_env(_env_values(pipeline, env, env_file))
    recorder.write_meta(_state_at_start(pipeline, options))
    transport = RecordingTransport(recorder, options.pop("source_transport", None))
    runner = run or engine.run
    try:
        return runner(pipeline, source_transport=transport, **options)
    finally:
        transport.close_inner()


class Recorder:
    """Numbers and writes the exchanges of one run; thread-safe (pages are fetched concurrently)."""

    def __init__(self, directory: Path, pipeline: Pipeline) -> None:
        self.directory = directory
        self.pipeline = pipeline
        self.auths = _auths(pipeline)
        self.masked = sorted({a.name for a in self.auths if isinstance(a, ApiKeyAuth) and a.location == "query"})
        self.scrub = Scrubber(_secrets(pipeline, self.auths))
        self._token_urls = {_no_query(u) for a in self.auths if isinstance(u := getattr(a, "token_url", None), str)}
        self._lock = threading.Lock()
        self._count = 0
        self.recorded_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

    def number(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def is_token_request(self, request: httpx.Request) -> bool:
        """The OAuth2 token exchange: never recorded (it carries the client secret and the token)."""
        if request.method != "POST":
            return False
        if _no_query(str(request.url)) in self._token_urls:
            return True
        if "form-urlencoded" not in request.headers.get("content-type", ""):
            return False
        form = dict(parse_qsl(request.read().decode("utf-8", "replace"), keep_blank_values=True))
        return "grant_type" in form

    def write_exchange(
        self, number: int, request: httpx.Request, body: bytes, response: httpx.Response, raw: bytes, complete: bool,
    ) -> None:
        decoded = _decoded(response, raw)
        headers = {
            name.lower(): MASK if name.lower() in _CREDENTIAL_HEADERS else value
            for name, value in sorted(response.headers.multi_items())
            if name.lower() not in fixtures.DROPPED_HEADERS
        }
        document: dict[str, Any] = {
            "request": {
                "method": request.method,
                "url": fixtures.masked_url(str(request.url), self.masked, self.scrub),
                **fixtures.encode_body(body, request.headers.get("content-type", "")),
            },
            "response": {
                "status": response.status_code,
                "headers": _joined(headers),
                **fixtures.encode_body(decoded, response.headers.get("content-type", "")),
            },
        }
        if not complete:
            document["response"]["body_incomplete"] = True  # the client stopped reading (size cap, error excerpt)
        fixtures.write_json(self.directory / f"{number:04d}.json", document, self.scrub)

    def write_env(self, values: Mapping[str, str | None]) -> None:
        # a value that is also a credential is not written (the scrubber would only mask it)
        kept = {k: v for k, v in sorted(values.items()) if v is None or not self.scrub.holds(v)}
        fixtures.write_json(self.directory / ENV_FILE, kept, self.scrub)

    def write_meta(self, state: Mapping[str, Any]) -> None:
        meta = {
            "pipeline": self.pipeline.name,
            "recorded_at": self.recorded_at,
            "masked_params": self.masked,
            "state": state,
        }
        fixtures.write_json(self.directory / META_FILE, meta, self.scrub)


_CREDENTIAL_HEADERS = frozenset({"set-cookie", "cookie", "authorization", "proxy-authorization", "www-authenticate"})


class RecordingTransport(httpx.BaseTransport):
    """Sends through `inner` (the default transport when None) and records what passes."""

    def __init__(self, recorder: Recorder, inner: httpx.BaseTransport | None = None) -> None:
        self._recorder = recorder
        self._inner = inner if inner is not None else LazyTlsTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        recorder = self._recorder
        if recorder.is_token_request(request):
            return self._inner.handle_request(request)
        number = recorder.number()
        body = request.read()
        response = self._inner.handle_request(request)

        def done(raw: bytes, complete: bool) -> None:
            recorder.write_exchange(number, request, body, response, raw, complete)

        stream = _Tee(response.stream, done)
        return httpx.Response(
            response.status_code, headers=response.headers, stream=stream, extensions=response.extensions
        )

    def close(self) -> None:
        """Each client of the run closes its transport; the one wrapped here is shared by them
        all (a parent's and its children's), so `record_run` closes it once the run is over."""

    def close_inner(self) -> None:
        self._inner.close()


class _Tee(httpx.SyncByteStream):
    """Passes the body's bytes through and hands them all over once, when closed."""

    def __init__(self, inner: Any, done: Callable[[bytes, bool], None]) -> None:
        self._inner = inner
        self._done: Callable[[bytes, bool], None] | None = done
        self._chunks: list[bytes] = []
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._chunks.append(chunk)
            yield chunk
        self._complete = True

    def close(self) -> None:
        try:
            if hasattr(self._inner, "close"):
                self._inner.close()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done(b"".join(self._chunks), self._complete)


def _decoded(response: httpx.Response, raw: bytes) -> bytes:
    """The body as the client reads it: `Content-Encoding` (gzip, br...) undone."""
    copy = httpx.Response(response.status_code, headers=response.headers, stream=httpx.ByteStream(raw))
    try:
        return copy.read()
    except httpx.DecodingError:
        return raw  # cut short (the client stopped reading): kept as it came


def _joined(headers: Mapping[str, str] | list[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _no_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _auths(pipeline: Pipeline) -> list[Auth]:
    sources = [pipeline.source, *(r.source for r in getattr(pipeline, "resources", ()))]
    return [s.auth for s in sources if s.auth is not None]


def _secrets(pipeline: Pipeline, auths: list[Auth]) -> set[str]:
    """The file's secrets, and basic auth's `user:password` (whose base64 is the header)."""
    found = set(pipeline.secrets)
    for auth in auths:
        if isinstance(auth, BasicAuth):
            found.add(f"{auth.username}:{auth.password.reveal()}")
    return found


# --- env.json and the state at the start -------------------------------------------------------


def file_variables(file: str | Path) -> tuple[list[str], list[str]]:
    """The variables a pipeline file refers to: (outside `auth` and `dsn`, inside them), each
    once, in file order. A variable used in both places counts as a credential only."""
    text = Path(file).read_text(encoding="utf-8")
    doc, _ = yamlpos.parse(text, str(file))
    found = variable_names(doc.data if doc is not None else None)
    ordered = list(found.items())
    secret = list(dict.fromkeys(n for path, names in ordered if SECRET_KEYS & {str(k) for k in path} for n in names))
    plain = [n for path, names in ordered for n in names if n not in secret]
    return list(dict.fromkeys(plain)), secret


def _env_values(
    pipeline: Pipeline, env: Mapping[str, str] | None, env_file: str | Path | None
) -> dict[str, str | None]:
    """The values the loader saw for the file's variables outside `auth`: the environment over
    the .env file, as `runner.config` reads them."""
    if not pipeline.file:
        return {}
    plain, _ = file_variables(pipeline.file)
    values: dict[str, str | None] = {}
    dotenv = Path(env_file) if env_file is not None else Path.cwd() / ".env"
    if dotenv.is_file():
        from dotenv import dotenv_values

        values.update(dotenv_values(dotenv))
    values.update(os.environ if env is None else env)
    return {name: values.get(name) for name in plain}


def _state_at_start(pipeline: Pipeline, options: Mapping[str, Any]) -> dict[str, Any]:
    """The watermark and checkpoint this run starts from, per state key: `etl test` starts there."""
    keys = state_keys(pipeline)
    full_refresh, restart = bool(options.get("full_refresh")), bool(options.get("restart"))
    state: dict[str, Any] = {}
    try:
        store = open_known(pipeline.state, pipeline.name, read_only=True)
    except (StateError, EtlError):  # no state yet: the run starts from nothing
        return {key: {"watermark": None, "checkpoint": None} for key in keys}
    try:
        for key in keys:
            watermark = None if full_refresh else store.watermark(key)
            checkpoint = None if (full_refresh or restart) else store.checkpoint(key)
            state[key] = {"watermark": watermark, "checkpoint": checkpoint}
    finally:
        store.close()
    return state


def state_keys(pipeline: Pipeline) -> list[str]:
    """Where the state store keeps the pipeline's state: its name, and one key per resource."""
    resources = getattr(pipeline, "resources", ())
    return [pipeline.name, *(pipeline.state_key(r.name) for r in resources)] if resources else [pipeline.name]
