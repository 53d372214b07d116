"""Tests of runner.http.transport: TLS is set up only for https:// requests."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from runner.http.transport import LazyTlsTransport


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_plain_http_never_builds_the_verifying_transport(demo_api: Any) -> None:
    """A run against http:// sends its requests without loading a CA bundle."""
    api = demo_api(10)
    transport = LazyTlsTransport()
    with httpx.Client(transport=transport) as client:
        assert client.get(f"{api.base_url}/items/page").status_code == 200
    assert transport._plain is not None and transport._tls is None


def test_https_builds_a_verifying_transport_once() -> None:
    """The first https:// request builds the TLS transport (verify on); the next reuses it."""
    transport = LazyTlsTransport()
    url = f"https://127.0.0.1:{closed_port()}/"
    with httpx.Client(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            client.get(url)
        built = transport._tls
        with pytest.raises(httpx.ConnectError):
            client.get(url)
    assert built is not None and transport._tls is built and transport._plain is None
    assert built._pool._ssl_context.verify_mode.name == "CERT_REQUIRED"
