"""The agent's local inference API: Open Inference Protocol v2 (KServe v2 / Triton HTTP) on the stdlib HTTP server.

Deliberately no FastAPI/uvicorn, so the agent stays small, and no numpy at import: numpy is imported by the first
request that carries tensors. JSON goes through orjson when it is installed, the stdlib `json` otherwise.

Endpoints (each model route also in its `/versions/{version}` form, as tritonclient sends it):

    GET  /v2                              server metadata
    GET  /v2/health/live                  200
    GET  /v2/health/ready                 200 when ready, else 503
    GET  /v2/models/{name}                model metadata
    GET  /v2/models/{name}/ready          200, or 404 for a model not served
    POST /v2/models/{name}/infer          JSON tensors, or the binary tensor extension

Errors are `{"error": "..."}` with 400 (the request does not match the model), 404, 405, 411, 413, 415 or 500.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
import socketserver
import threading
import time
import zlib
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import agent
from agent.serving import LoadedModel, ModelTable
from protocol.tensors import NUMPY_TO_V2, V2_TO_NUMPY, InputError
from targets.base import BackendError

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _dumps: Callable[[Any], bytes] = orjson.dumps
except ImportError:  # pragma: no cover - orjson is optional
    import json

    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


logger = logging.getLogger(__name__)

SERVER_NAME = "edge-agent"
_SUPPORTED = ", ".join(V2_TO_NUMPY)
_ITEMSIZE = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
}
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_SINGLE_WRITE = 1 << 16  # responses up to this size go out in one send
_DRAIN_MAX = 4 << 20  # an unread request body up to this size is read and dropped to keep the connection; else close

_MAX_HEADERS = 100
_MAX_LINE = 65536

_numpy: Any = None
_V2_BY_DTYPE: dict[Any, str] = {}  # numpy dtype -> v2 datatype (dtype.name is a slow Python-level property)


def _np() -> Any:
    """numpy, imported on first use so that an idle agent never loads it."""
    global _numpy
    if _numpy is None:
        import numpy

        _V2_BY_DTYPE.update({numpy.dtype(name): v2 for name, v2 in NUMPY_TO_V2.items()})
        _numpy = numpy
    return _numpy


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The Date header value, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


class _Headers(dict[str, str]):
    """Request headers by lower-case name; repeated fields are joined with ", " as RFC 9110 allows."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _bad(message: str) -> _HTTPError:
    return _HTTPError(400, message)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        table: ModelTable,
        ready: Callable[[], bool],
        max_body_bytes: int,
    ) -> None:
        self.table = table
        self.ready = ready
        self.max_body_bytes = max_body_bytes
        self.metadata = _dumps(
            {"name": SERVER_NAME, "version": agent.__version__, "extensions": ["binary_tensor_data"]}
        )
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds without DNS; we never use it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("inference API: connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self) -> None:
        """Wake every connection thread waiting for its next request, so it ends; a request in flight still answers."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"{SERVER_NAME}/{agent.__version__}"
    _server_header = server_version.encode()
    disable_nagle_algorithm = True
    server: _Server
    _body_read = True  # whether the current request's body was consumed (or need not be)

    # -- connection bookkeeping ------------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

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
        if version == "HTTP/1.1":
            self.close_connection = False
        elif version != "HTTP/1.0":
            major, _, minor = version.removeprefix("HTTP/").partition(".")
            if (
                not version.startswith("HTTP/")
                or not (major.isdigit() and minor.isdigit())
                or len(major) > 10
                or len(minor) > 10
            ):
                self.send_error(400, f"Bad request version ({version!r})")
                return False
            if int(major) >= 2:
                self.send_error(505, f"Invalid HTTP version ({version})")
                return False
            self.close_connection = int(major) < 1 or int(minor) < 1
        self.request_version = version
        self.command = command
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path

        headers = _Headers()
        readline = self.rfile.readline
        for _ in range(_MAX_HEADERS + 1):
            line = readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                self.send_error(431, "Line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = line.partition(b":")
            key = name.decode("latin-1").lower()
            if not sep or not key or key != key.strip():  # no colon, empty name, space before colon, folded line
                self.send_error(400, f"Bad header line {line[:100]!r}")
                return False
            text = value.decode("latin-1").strip()
            previous = headers.get(key)
            headers[key] = text if previous is None else f"{previous}, {text}"
        else:
            self.send_error(431, "Too many headers")
            return False
        self.headers = headers  # type: ignore[assignment]

        connection = headers.get("connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        expect_continue = headers.get("expect", "").lower() == "100-continue" and self.request_version >= "HTTP/1.1"
        return self.handle_expect_100() if expect_continue else True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("inference API %s: " + format, self.address_string(), *args)

    # -- methods ---------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the stdlib detects itself (bad request line, headers, unknown method) as JSON too."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        self._body_read = True  # the connection closes, nothing to drain
        try:
            text = message or HTTPStatus(code).phrase
        except ValueError:
            text = "error"
        self._send(code, [_dumps({"error": text})], _JSON)

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        try:
            try:
                status, parts, content_type, headers = self._route(method)
            except _HTTPError as exc:
                status, parts, content_type, headers = exc.status, [_dumps({"error": exc.message})], _JSON, exc.headers
            except (ConnectionError, TimeoutError):
                raise
            except Exception as exc:  # never let a request take the connection thread down without an answer
                logger.exception("inference API: %s %s failed", self.command, self.path)
                status, parts, content_type, headers = (
                    500,
                    [_dumps({"error": f"internal error: {type(exc).__name__}: {exc}"})],
                    _JSON,
                    None,
                )
            self._send(status, parts, content_type, headers)
        except (ConnectionError, TimeoutError) as exc:
            logger.debug("inference API: connection from %s lost: %s", self.address_string(), exc)
            self.close_connection = True

    # -- routing ---------------------------------------------------------------------------------------------------

    def _route(self, method: str) -> tuple[int, list[bytes], bytes, list[tuple[str, str]] | None]:
        path = self.path
        query = path.find("?")
        if query >= 0:
            path = path[:query]
        parts = path.strip("/").split("/")
        n = len(parts)
        if parts[0] == "v2":
            if n == 1:
                _allow(method, "GET")
                return 200, [self.server.metadata], _JSON, None
            if parts[1] == "health" and n == 3:
                if parts[2] == "live":
                    _allow(method, "GET")
                    return 200, [], _JSON, None
                if parts[2] == "ready":
                    _allow(method, "GET")
                    return self._health_ready()
            elif parts[1] == "models" and n >= 3:
                name = _segment(parts[2])
                rest = parts[3:]
                version = None
                if len(rest) >= 2 and rest[0] == "versions":
                    version = _segment(rest[1])
                    rest = rest[2:]
                if not rest:
                    _allow(method, "GET")
                    return 200, [_dumps(_model_metadata(self._model(name, version)))], _JSON, None
                if len(rest) == 1:
                    if rest[0] == "ready":
                        _allow(method, "GET")
                        self._model(name, version)
                        return 200, [], _JSON, None
                    if rest[0] == "infer":
                        _allow(method, "POST")
                        return self._infer(self._model(name, version))
        raise _HTTPError(404, f"no such endpoint: {path}")

    def _model(self, name: str, version: str | None) -> LoadedModel:
        table = self.server.table
        model = table.get(name)
        if model is None:
            names = table.names()
            served = f"serving: {', '.join(names)}" if names else "no models are being served"
            raise _HTTPError(404, f"unknown model {name!r}; {served}")
        if version is not None and version != model.version:
            raise _HTTPError(404, f"model {name!r} has no version {version!r}; serving version {model.version!r}")
        return model

    def _health_ready(self) -> tuple[int, list[bytes], bytes, None]:
        try:
            ready = bool(self.server.ready())
        except Exception as exc:
            logger.warning("inference API: readiness check failed: %s", exc)
            return 503, [_dumps({"error": f"not ready: readiness check failed: {exc}"})], _JSON, None
        if ready:
            return 200, [], _JSON, None
        return 503, [_dumps({"error": "not ready"})], _JSON, None

    # -- inference -------------------------------------------------------------------------------------------------

    def _infer(self, model: LoadedModel) -> tuple[int, list[bytes], bytes, list[tuple[str, str]] | None]:
        body = self._read_body()
        header_length = self.headers.get("Inference-Header-Content-Length")
        binary: memoryview | None = None
        if header_length is None:
            header = body
        else:
            try:
                hlen = int(header_length)
            except ValueError:
                raise _bad(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
            if not 0 <= hlen <= len(body):
                raise _bad(f"Inference-Header-Content-Length {hlen} does not fit a body of {len(body)} bytes")
            header = body[:hlen]
            binary = memoryview(body)[hlen:]
        try:
            request = _loads(header)
        except ValueError as exc:
            raise _bad(f"malformed JSON in the request body: {exc}") from None
        if type(request) is not dict:
            raise _bad("the request body must be a JSON object with 'inputs'")

        arrays = _decode_inputs(request.get("inputs"), binary)
        wanted, binary_default = _requested_outputs(request, model)
        try:
            results = model.infer(arrays)
        except InputError as exc:
            raise _bad(str(exc)) from None
        except BackendError as exc:
            raise _HTTPError(500, str(exc)) from None

        outputs = []
        blobs: list[bytes] = []
        for name, as_binary in wanted or [(name, binary_default) for name in results]:
            array = results[name]
            datatype = _V2_BY_DTYPE.get(array.dtype)
            if datatype is None:
                raise _HTTPError(500, f"output {name!r} has dtype {array.dtype.name}, which the protocol cannot carry")
            if as_binary:
                raw = array.tobytes()
                outputs.append(
                    {
                        "name": name,
                        "datatype": datatype,
                        "shape": list(array.shape),
                        "parameters": {"binary_data_size": len(raw)},
                    }
                )
                blobs.append(raw)
            else:
                outputs.append(
                    {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}
                )
        response: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
        if "id" in request:
            response["id"] = request["id"]
        response["outputs"] = outputs
        head = _dumps(response)
        if blobs:
            return 200, [head, *blobs], _BINARY, [("Inference-Header-Content-Length", str(len(head)))]
        return 200, [head], _JSON, None

    # -- body ------------------------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        limit = self.server.max_body_bytes
        if self.headers.get("Transfer-Encoding") is not None:
            body = self._read_chunked(limit)
        else:
            length = self._content_length()
            if length is None:
                self._body_read = True
                raise _HTTPError(411, "the request needs a Content-Length header")
            if length > limit:
                raise _HTTPError(413, f"request body of {length} bytes is over the limit of {limit} bytes")
            self._body_read = True
            body = self.rfile.read(length)
            if len(body) != length:
                self.close_connection = True
                raise _bad(f"request body ended after {len(body)} of {length} bytes")
        encoding = self.headers.get("Content-Encoding")
        if encoding is not None and encoding.lower() != "identity":
            body = _decompress(body, encoding.lower(), limit)
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
            raise _bad(f"invalid Content-Length {value!r}") from None
        return length

    def _read_chunked(self, limit: int) -> bytes:
        self._body_read = True
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        if encoding != "chunked":
            self.close_connection = True
            raise _HTTPError(501, f"Transfer-Encoding {encoding!r} is not supported")
        chunks = []
        total = 0
        rfile = self.rfile
        while True:
            line = rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True
                raise _bad("malformed chunked request body") from None
            if size == 0:
                break
            total += size
            if total > limit:
                self.close_connection = True
                raise _HTTPError(413, f"request body is over the limit of {limit} bytes")
            chunk = rfile.read(size)
            if len(chunk) != size or rfile.readline(3).strip():
                self.close_connection = True
                raise _bad("malformed chunked request body")
            chunks.append(chunk)
        while rfile.readline(65537).strip():  # trailer fields, ignored
            pass
        return b"".join(chunks)

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
        except _HTTPError:
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

    # -- response --------------------------------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        parts: list[bytes],
        content_type: bytes,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        if not self._body_read:
            self._drain_body()
        length = sum(map(len, parts))
        head = b"%sServer: %s\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode(),
            self._server_header,
            _http_date(),
            content_type,
            length,
        )
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")
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
            logger.debug('inference API %s: "%s" %d %d', self.address_string(), self.requestline, status, length)


def _allow(method: str, allowed: str) -> None:
    if method != allowed and not (method == "HEAD" and allowed == "GET"):
        allow = "GET, HEAD" if allowed == "GET" else allowed
        raise _HTTPError(405, f"method {method} not allowed here; use {allowed}", [("Allow", allow)])


def _segment(text: str) -> str:
    return unquote(text) if "%" in text else text


def _model_metadata(model: LoadedModel) -> dict[str, Any]:
    backend = model.backend
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": backend.label,
        "inputs": [spec.as_dict() for spec in backend.inputs],
        "outputs": [spec.as_dict() for spec in backend.outputs],
        "parameters": {"precision": backend.precision, **backend.metadata},
    }


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise _HTTPError(415, f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or identity")
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _bad(f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise _HTTPError(413, f"decompressed request body is over the limit of {limit} bytes")
    if not decompressor.eof:
        raise _bad(f"request body is truncated {encoding} data")
    return data


def _decode_inputs(inputs: Any, binary: memoryview | None) -> dict[str, Any]:
    """The request's input tensors as numpy arrays (JSON `data`, or bytes from the binary section)."""
    if type(inputs) is not list or not inputs:
        raise _bad("the request needs 'inputs': a non-empty list of tensors")
    np = _np()
    arrays: dict[str, Any] = {}
    offset = 0
    for item in inputs:
        if type(item) is not dict or type(item.get("name")) is not str:
            raise _bad("each input must be an object with a string 'name', 'datatype', 'shape' and 'data'")
        name = item["name"]
        if name in arrays:
            raise _bad(f"input {name!r} is given twice")
        datatype = item.get("datatype")
        dtype = V2_TO_NUMPY.get(datatype)  # type: ignore[arg-type]
        if dtype is None:
            if datatype == "BYTES":
                raise _bad(f"input {name!r}: datatype BYTES is not supported; supported: {_SUPPORTED}")
            raise _bad(f"input {name!r}: unknown datatype {datatype!r}; supported: {_SUPPORTED}")
        shape = item.get("shape")
        if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
            raise _bad(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
        count = math.prod(shape)
        parameters = item.get("parameters")
        size = parameters.get("binary_data_size") if type(parameters) is dict else None
        if size is not None:
            if binary is None:
                raise _bad(
                    f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length"
                )
            if type(size) is not int or size < 0:
                raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
            expected = count * _ITEMSIZE[datatype]
            if size != expected:
                raise _bad(
                    f"input {name!r}: {size} bytes of binary data for {datatype} shape {shape}, expected {expected}"
                )
            if offset + size > len(binary):
                raise _bad(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left)"
                )
            if count:
                array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
                if not array.flags.aligned:
                    array = array.copy()
            else:
                array = np.empty(shape, dtype=dtype)
            offset += size
        else:
            data = item.get("data")
            if data is None:
                raise _bad(f"input {name!r} has no 'data' (nor parameters.binary_data_size)")
            try:
                array = np.asarray(data, dtype=dtype)
            except (ValueError, TypeError, OverflowError) as exc:
                raise _bad(f"input {name!r}: 'data' is not a valid {datatype} tensor: {exc}") from None
            if array.size != count:
                raise _bad(f"input {name!r}: {array.size} values in 'data' for shape {shape}, expected {count}")
            array = array.reshape(shape)
        arrays[name] = array
    if binary is not None and offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes of binary data beyond what the inputs' binary_data_size declare")
    return arrays


def _requested_outputs(request: dict[str, Any], model: LoadedModel) -> tuple[list[tuple[str, bool]] | None, bool]:
    """The outputs asked for, each with whether it goes as binary (None: all), and the request-wide binary default."""
    parameters = request.get("parameters")
    binary_default = type(parameters) is dict and bool(parameters.get("binary_data_output"))
    requested = request.get("outputs")
    if requested is None:
        return None, binary_default
    if type(requested) is not list:
        raise _bad("'outputs' must be a list of {'name': ...} objects")
    known = [spec.name for spec in model.backend.outputs]
    wanted = []
    for item in requested:
        if type(item) is not dict or type(item.get("name")) is not str:
            raise _bad("each requested output must be an object with a string 'name'")
        name = item["name"]
        if name not in known:
            raise _bad(f"unknown output {name!r}; the model produces {known}")
        as_binary = binary_default
        parameters = item.get("parameters")
        if type(parameters) is dict:
            if parameters.get("classification"):
                raise _bad(f"output {name!r}: the classification extension is not supported")
            if "binary_data" in parameters:
                as_binary = bool(parameters["binary_data"])
        wanted.append((name, as_binary))
    return wanted or None, binary_default


class InferenceServer:
    """The v2 inference API over a ModelTable, served from a daemon thread (one thread per connection)."""

    def __init__(
        self,
        table: ModelTable,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        ready: Callable[[], bool] | None = None,
        max_body_bytes: int = 64 << 20,
    ) -> None:
        self.table = table
        self.host = host
        self._port = port
        self._ready = ready if ready is not None else (lambda: len(table) > 0)
        self.max_body_bytes = max_body_bytes
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

    def start(self) -> None:
        """Bind and serve in a daemon thread; OSError says which address could not be bound."""
        if self._httpd is not None:
            raise RuntimeError(f"inference API already serving on {self.url}")
        server_class = _Server6 if ":" in self.host else _Server
        try:
            httpd = server_class((self.host, self._port), self.table, self._ready, self.max_body_bytes)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"inference API port {self.host}:{self._port} is already in use") from exc
            raise OSError(exc.errno, f"inference API cannot listen on {self.host}:{self._port}: {exc}") from exc
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.25}, name="inference-api", daemon=True
        )
        self._thread.start()
        logger.info("inference API serving on %s", self.url)

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
        logger.info("inference API stopped")

    def __enter__(self) -> InferenceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
