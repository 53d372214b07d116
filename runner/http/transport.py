"""The default HTTP transport, with TLS set up only when an https:// request needs it.

httpx builds its default transport eagerly, and that loads the CA bundle into
an SSL context: about 30 ms of every run's start, which a source on plain
http:// (a local service, the demo API) never needs. This transport hands
http:// requests to a transport without certificates and builds the verifying
one on the first https:// request. Proxies from the environment are still
httpx's own mounts; only the default transport is replaced.
"""

from __future__ import annotations

import threading

import httpx


class LazyTlsTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plain: httpx.HTTPTransport | None = None
        self._tls: httpx.HTTPTransport | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._for(request.url.scheme).handle_request(request)

    def _for(self, scheme: str) -> httpx.HTTPTransport:
        tls = scheme != "http"
        transport = self._tls if tls else self._plain
        if transport is None:
            with self._lock:
                transport = self._tls if tls else self._plain
                if transport is None:
                    # plain http never negotiates TLS: no CA bundle to load for it
                    transport = httpx.HTTPTransport() if tls else httpx.HTTPTransport(verify=False)
                    if tls:
                        self._tls = transport
                    else:
                        self._plain = transport
        return transport

    def close(self) -> None:
        for transport in (self._plain, self._tls):
            if transport is not None:
                transport.close()
