"""The inference API's HTTP/1.1 transport, hand-written for speed (bench/e2e.py's v2 latency table).

One thread per connection (at most Limits.max_connections), keep-alive, a read timeout.
The interface is one function, `app(request) -> Response`: a request has
`method`, `path`, `headers` (get by any case) and `read_body()`; raise HTTPError for an error answer. Errors are
`{"error": "..."}` JSON."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

from agent.api.http_request import HTTPError, RequestReader

if TYPE_CHECKING:  # typing.Self is 3.11+: annotations only
    from typing_extensions import Self

logger = logging.getLogger(__name__)

JSON = b"application/json"
BINARY = b"application/octet-stream"
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_SINGLE_WRITE = 1 << 16  # responses up to this size go out in one send
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


@dataclass
class Response:
    status: int
    parts: list[bytes | memoryview]  # memoryviews of result arrays go out without a copy
    content_type: bytes = JSON
    headers: list[tuple[str, str]] | None = None


def error_response(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, [json.dumps({"error": message}, separators=(",", ":")).encode()], JSON, headers)


class Request(Protocol):
    """What the app sees of a request (the connection's handler is one)."""

    method: str
    path: str
    headers: Any  # a mapping; get() takes any case

    def read_body(self, json_limit: int | None = None) -> bytes: ...


App = Callable[[Request], Response]

_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The Date header value, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


@dataclass(frozen=True)
class Limits:
    """What one client can take of the agent: connections served at once (one thread each; more get 503 at once),
    seconds to send a request or to stay idle between keep-alive requests, and body sizes (JSON parses to several
    times its size, so its cap is lower than that of binary tensors)."""

    max_connections: int = 64
    read_timeout_s: float = 30.0
    max_body_bytes: int = 64 << 20
    max_json_bytes: int = 8 << 20


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App, limits: Limits, server_header: str) -> None:
        self.app = app
        self.limits = limits
        self.max_body_bytes = limits.max_body_bytes
        self.server_header = server_header.encode()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection while there is a slot; else 503 and close, without a thread."""
        if not self._slots.acquire(blocking=False):
            body = json.dumps({"error": f"{self.limits.max_connections} connections are open; retry"}).encode()
            with contextlib.suppress(OSError):
                request.sendall(_BUSY % (len(body), body))
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds without DNS; we never use it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("HTTP: connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self) -> None:
        """Wake every connection thread waiting for its next request, so it ends; a request in flight still answers."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(RequestReader, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server
    method = ""

    # -- connection bookkeeping ------------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.limits.read_timeout_s)  # a half-sent request or idle connection ends
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("HTTP %s: " + format, self.address_string(), *args)

    # -- methods ---------------------------------------------------------------------------------------------------

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the stdlib detects itself (bad request line, headers, unknown method) as JSON too."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        self._body_read = True  # the connection closes, nothing to drain
        try:
            text = message or HTTPStatus(code).phrase
        except ValueError:
            text = "error"
        self._send(error_response(code, text))

    def _dispatch(self) -> None:
        self.method = self.command
        self._body_read = False
        try:
            try:
                response = self.server.app(self)
            except HTTPError as exc:
                response = error_response(exc.status, exc.message, exc.headers)
            except (ConnectionError, TimeoutError):
                raise
            except Exception as exc:  # never let a request take the connection thread down without an answer
                logger.exception("HTTP: %s %s failed", self.command, self.path)
                response = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
            self._send(response)
        except (ConnectionError, TimeoutError) as exc:
            logger.debug("HTTP: connection from %s lost: %s", self.address_string(), exc)
            self.close_connection = True

    # -- response --------------------------------------------------------------------------------------------------

    def _send(self, response: Response) -> None:
        if not self._body_read:
            self._drain_body()
        parts, status = response.parts, response.status
        length = sum(map(len, parts))
        head = b"%sServer: %s\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode(),
            self.server.server_header,
            _http_date(),
            response.content_type,
            length,
        )
        if response.headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in response.headers).encode("latin-1")
        if self.close_connection:
            head += b"Connection: close\r\n"
        elif self.request_version == "HTTP/1.0":
            head += b"Connection: keep-alive\r\n"
        head += b"\r\n"
        if self.command == "HEAD":
            parts = []
        if length <= _SINGLE_WRITE:
            self.wfile.write(b"".join([head, *parts]))
        else:  # large binary outputs: no copy into one buffer (Nagle is off, so separate sends do not stall)
            self.wfile.write(head)
            for part in parts:
                self.wfile.write(part)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug('HTTP %s: "%s" %d %d', self.address_string(), self.requestline, status, length)


for _method in _METHODS:  # do_GET, do_POST, ...: every method goes to the app, which answers 405 where it must
    setattr(_Handler, f"do_{_method}", _Handler._dispatch)


class HttpServer:
    """`app` served from a daemon thread on host:port (port 0: any free one), one thread per connection."""

    def __init__(
        self, app: App, host: str, port: int, *, limits: Limits, server_header: str, name: str = "HTTP server"
    ) -> None:
        self.app = app
        self.host = host
        self._port = port
        self.limits = limits
        self.server_header = server_header
        self.name = name
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (the one picked, for port=0); the configured one before."""
        return self._httpd.server_port if self._httpd is not None else self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def alive(self) -> bool:
        """False once the serving thread died (not before start, not after stop)."""
        return self._thread is None or self._thread.is_alive()

    def start(self) -> None:
        """Bind and serve in a daemon thread; OSError says which address could not be bound."""
        if self._httpd is not None:
            raise RuntimeError(f"{self.name} already serving on {self.url}")
        server_class = _Server6 if ":" in self.host else _Server
        try:
            httpd = server_class((self.host, self._port), self.app, self.limits, self.server_header)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"{self.name} port {self.host}:{self._port} is already in use") from exc
            raise OSError(exc.errno, f"{self.name} cannot listen on {self.host}:{self._port}: {exc}") from exc
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.25}, name="inference-api", daemon=True
        )
        self._thread.start()
        logger.info("%s serving on %s", self.name, self.url)

    def stop(self) -> None:
        """Stop accepting, close the listening socket and end idle keep-alive connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        logger.info("%s stopped", self.name)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
