"""Reads an HTTP/1.1 request off a connection (line, headers, body) fast and within limits.

Headers without the stdlib's `email` parser; the body sized, chunked or compressed. The transport's handler mixes
it in."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

_MAX_HEADERS = 100
_MAX_LINE = 65536
_DRAIN_MAX = 4 << 20  # an unread request body up to this size is read and dropped to keep the connection; else close


class HTTPError(Exception):
    """An error answer: its status, message and any extra headers (e.g. Allow)."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class _Headers(dict[str, str]):
    """Request headers by lower-case name; repeated fields are joined with ", " as RFC 9110 allows."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


class RequestReader:
    """Mixed into a BaseHTTPRequestHandler: parse_request() replaces the stdlib's, read_body() reads the body once,
    and _drain_body() drops a body nobody read so the connection can carry the next request."""

    rfile: Any  # a buffered reader of the connection
    raw_requestline: bytes
    requestline: str
    request_version: str
    default_request_version: str
    command: str
    path: str
    headers: Any
    close_connection: bool
    server: Any  # has max_body_bytes
    _body_read = True  # whether the current request's body was consumed (or need not be)

    if TYPE_CHECKING:  # BaseHTTPRequestHandler's, which the handler also derives from

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None: ...

        def handle_expect_100(self) -> bool: ...

    def parse_request(self) -> bool:
        """The stdlib's request-line checks, with the headers read into a dict.

        The stdlib parses headers with the `email` package, which costs about 65 us a request: more than running a
        small model. Same limits (100 fields, 64 KiB lines) and the same Connection/Expect handling.
        """
        self.command = None  # type: ignore[assignment]
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if len(words) != 3:
            if words:
                self.send_error(400, f"Bad request syntax ({requestline!r})")
            return False
        command, path, version = words
        if not self._version(version):
            return False
        self.command = command
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        headers = self._read_headers()
        if headers is None:
            return False
        self.headers = headers
        connection = headers.get("connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        expect_continue = headers.get("expect", "").lower() == "100-continue" and self.request_version >= "HTTP/1.1"
        return self.handle_expect_100() if expect_continue else True

    def _version(self, version: str) -> bool:
        if version == "HTTP/1.1":
            self.close_connection = False
        elif version != "HTTP/1.0":
            major, _, minor = version.removeprefix("HTTP/").partition(".")
            if (
                not version.startswith("HTTP/")
                or not (major.isdigit() and minor.isdigit())
                or max(len(major), len(minor)) > 10
            ):
                self.send_error(400, f"Bad request version ({version!r})")
                return False
            if int(major) >= 2:
                self.send_error(505, f"Invalid HTTP version ({version})")
                return False
            self.close_connection = int(major) < 1 or int(minor) < 1
        self.request_version = version
        return True

    def _read_headers(self) -> _Headers | None:
        headers = _Headers()
        readline = self.rfile.readline
        for _ in range(_MAX_HEADERS + 1):
            line = readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                self.send_error(431, "Line too long")
                return None
            if line in (b"\r\n", b"\n", b""):
                return headers
            name, sep, value = line.partition(b":")
            key = name.decode("latin-1").lower()
            if not sep or not key or key != key.strip():  # no colon, empty name, space before colon, folded line
                self.send_error(400, f"Bad header line {line[:100]!r}")
                return None
            text = value.decode("latin-1").strip()
            previous = headers.get(key)
            headers[key] = text if previous is None else f"{previous}, {text}"
        self.send_error(431, "Too many headers")
        return None

    def read_body(self, json_limit: int | None = None) -> bytes:
        """The request body, de-chunked and decompressed; HTTPError for one that is missing, too large or broken.
        A body without binary tensors (no Inference-Header-Content-Length) is JSON: its cap is `json_limit` (the
        app's, e.g. derived from the model's input sizes) or the lower default, never over the body limit."""
        limits = self.server.limits
        binary = self.headers.get("Inference-Header-Content-Length") is not None
        json_cap = limits.max_json_bytes if json_limit is None else json_limit
        limit = limits.max_body_bytes if binary else min(json_cap, limits.max_body_bytes)
        if self.headers.get("Transfer-Encoding") is not None:
            body = self._read_chunked(limit)
        else:
            body = self._read_sized(limit)
        encoding = self.headers.get("Content-Encoding")
        if encoding is not None and encoding.lower() != "identity":
            body = decompress(body, encoding.lower(), limit)
        return body

    def _read_sized(self, limit: int) -> bytes:
        length = self._content_length()
        if length is None:
            self._body_read = True
            raise HTTPError(411, "the request needs a Content-Length header")
        if length > limit:
            raise HTTPError(413, f"request body of {length} bytes is over the limit of {limit} bytes")
        self._body_read = True
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise HTTPError(400, f"request body ended after {len(body)} of {length} bytes")
        return body

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        try:
            length = int(value)
            if length < 0:
                raise ValueError
        except ValueError:
            self._body_read = True
            self.close_connection = True
            raise HTTPError(400, f"invalid Content-Length {value!r}") from None
        return length

    def _read_chunked(self, limit: int) -> bytes:
        self._body_read = True
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        if encoding != "chunked":
            self.close_connection = True
            raise HTTPError(501, f"Transfer-Encoding {encoding!r} is not supported")
        chunks = []
        total = 0
        while (size := self._chunk_size()) != 0:
            total += size
            if total > limit:
                self.close_connection = True
                raise HTTPError(413, f"request body is over the limit of {limit} bytes")
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(3).strip():
                self.close_connection = True
                raise HTTPError(400, "malformed chunked request body")
            chunks.append(chunk)
        while self.rfile.readline(65537).strip():  # trailer fields, ignored
            pass
        return b"".join(chunks)

    def _chunk_size(self) -> int:
        line = self.rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise HTTPError(400, "malformed chunked request body") from None
        return size

    def _drain_body(self) -> None:
        """Consume a body the handler did not read, so the next request on this connection parses; or close."""
        self._body_read = True
        if self.close_connection:
            return
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            return
        try:
            length = self._content_length()
        except HTTPError:
            return
        if not length:
            return
        if length > _DRAIN_MAX:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise HTTPError(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or identity")
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HTTPError(400, f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise HTTPError(413, f"decompressed request body is over the limit of {limit} bytes")
    if not decompressor.eof:
        raise HTTPError(400, f"request body is truncated {encoding} data")
    return data
