"""Plumbing shared by the local servers (the demo API, the fake CRM) on 127.0.0.1.

It owns the lifecycle of a stdlib `ThreadingHTTPServer` on loopback: `start()`
serves from a daemon thread and returns the base URL, `stop()` also closes the
idle keep-alive connections that `shutdown()` alone would leave open, and a
`with` block does both. Its `Handler` speaks HTTP/1.1 with Nagle off and
writes each answer in one send, so that no reply waits on a delayed ACK
between its head and its body.

A server subclasses `LocalServer`, names its `Handler` subclass (which maps
the HTTP methods it answers to `Handler.dispatch`) and implements `handle`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, TypeVar

__all__ = ["Handler", "LocalServer"]

HOST = "127.0.0.1"
_S = TypeVar("_S", bound="LocalServer")


class Handler(BaseHTTPRequestHandler):
    """One connection: keep-alive (HTTP/1.1), tracked so that `stop()` can close it."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else head and body as two segments wait on delayed ACKs
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def dispatch(self) -> None:
        """Hand the request to the server's owner; subclasses bind `do_<METHOD>` to this."""
        self.server.owner.handle(self)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_reply(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Write the status line, the headers and `body` in one send."""
        head = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        head.append(f"Content-Type: {content_type}")
        head.append(f"Content-Length: {len(body)}")
        head.extend(f"{k}: {v}" for k, v in headers)
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def drop(self) -> None:
        """Close the connection with no answer: the client sees it end."""
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:  # `format`: the stdlib's parameter name
        pass  # quiet: the servers keep their own request logs


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: LocalServer, handler: type[Handler]) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        super().__init__(address, handler)


class LocalServer:
    """A loopback HTTP server run from a daemon thread; `start()` returns its base URL."""

    handler_class: ClassVar[type[Handler]] = Handler
    thread_name: ClassVar[str] = "local-server"

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def handle(self, handler: Handler) -> None:
        """Answer the request `handler` has read the head of (with `send_reply` or `drop`)."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> str:
        self._server = _Server((HOST, self.port), self, self.handler_class)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"{self.thread_name}-{self.port}",
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            for conn in list(server.connections):  # idle keep-alive connections end now
                with contextlib.suppress(OSError):  # the client may have closed it first
                    conn.shutdown(socket.SHUT_RDWR)
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
