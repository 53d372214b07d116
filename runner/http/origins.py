"""Which origins receive a run's credentials, and URL query editing that keeps a URL as given.

Credentials (the auth header, the auth query parameter, the OAuth2 access
token) go only to the client's home origin (scheme, host, port) and to the
origins listed in `auth.hosts`. The home origin is the one the caller names
(the http target: its `base_url`), else that of the first request the client
sends. A next URL, a Link header or a redirect to any other origin is
requested without them: an API that links to a CDN, or a hostile one, must
not collect them. The first request withheld from an origin logs
`auth.withheld` (a warning), once per origin per client. `Credentials` puts
an `Authenticator`'s headers and query parameters on a request when `Trust`
allows its origin, and decides them anew on every redirect hop.

The query helpers add or drop parameters by editing the raw query string,
so the rest of a URL (a next URL's `page=N`, its encoding) goes out exactly
as the API wrote it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

import httpx

from runner import log
from runner.http.auth import Authenticator

__all__ = ["Credentials", "Origin", "Trust", "origin_of", "show", "with_query", "without_params"]

Origin = tuple[str, str, int]
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str | httpx.URL) -> Origin:
    """(scheme, host, port) with the scheme's default port filled in: what a browser compares."""
    parsed = httpx.URL(url) if isinstance(url, str) else url
    scheme = parsed.scheme.lower()
    return scheme, parsed.host.lower(), parsed.port or DEFAULT_PORTS.get(scheme, 0)


def show(origin: Origin) -> str:
    """`https://host` or `http://host:8080`, as it is written in `auth.hosts`."""
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    return f"{scheme}://{host}" if DEFAULT_PORTS.get(scheme) == port else f"{scheme}://{host}:{port}"


class Trust:
    """The origins that get the credentials; thread-safe, shared by one client's threads."""

    def __init__(self, hosts: Iterable[str], *, home: str | None, logger: logging.Logger) -> None:
        self._extra = frozenset(origin_of(h) for h in hosts)
        self._home = origin_of(home) if home else None
        self._logger = logger
        self._lock = threading.Lock()
        self._warned: set[Origin] = set()

    def allows(self, url: httpx.URL) -> bool:
        """True when `url` may carry the credentials; else warn (once per origin) and say False."""
        origin = origin_of(url)
        with self._lock:
            if self._home is None:
                self._home = origin  # the first request names home: where the file pointed
            if origin == self._home or origin in self._extra:
                return True
            first = origin not in self._warned
            self._warned.add(origin)
        if first:
            log.event(
                self._logger, "auth.withheld", level=logging.WARNING, origin=show(origin),
                home=show(self._home), hint="list the origin in auth.hosts to send the credentials there",
            )
        return False


class Credentials:
    """An Authenticator applied only to the origins that a `Trust` allows."""

    def __init__(self, auth: Authenticator, trust: Trust) -> None:
        self.auth = auth
        self._trust = trust

    def add(self, url: httpx.URL, headers: dict[str, str]) -> httpx.URL:
        """Set the credentials in `headers` and return `url` with any auth parameter, if allowed."""
        if not self._trust.allows(url):
            return without_params(url, self.auth.param_names)  # a key the API echoed into a link
        params: dict[str, Any] = {}
        self.auth.apply(headers, params)
        return with_query(url, params)

    def redo(self, hop: httpx.Request) -> None:
        """Decide a redirect's credentials anew: httpx copied the previous hop's headers."""
        for name in self.auth.header_names:
            hop.headers.pop(name, None)
        headers: dict[str, str] = {}
        hop.url = self.add(hop.url, headers)
        hop.headers.update(headers)


def with_query(url: httpx.URL, params: Mapping[str, Any] | None) -> httpx.URL:
    """`url` with `params` set: same-named parameters replaced, every other one kept as written.

    httpx's `params=` replaces a URL's whole query, which lost a next URL's
    `page=N` when a query API key was added.
    """
    if not params:
        return url
    added = httpx.QueryParams(params)  # httpx's encoding of values: true, false, repeats for lists
    kept = _drop(url.query.decode("ascii"), set(added.keys()))
    return url.copy_with(query="&".join([*kept, str(added)]).encode("ascii"))


def without_params(url: httpx.URL, names: Collection[str]) -> httpx.URL:
    """`url` without the query parameters `names` (a key a server echoed into a link)."""
    if not names or not url.query:
        return url
    query = url.query.decode("ascii")
    kept = _drop(query, names)
    if len(kept) == len([part for part in query.split("&") if part]):
        return url
    return url.copy_with(query="&".join(kept).encode("ascii") or None)


def _drop(query: str, names: Collection[str]) -> list[str]:
    return [part for part in query.split("&") if part and unquote_plus(part.partition("=")[0]) not in names]
