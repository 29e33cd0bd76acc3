"""What every HTTP request must show before the API reads it: a Host the controller answers to (DNS rebinding), no
foreign Origin on a state-changing call, the content type its route takes (a web page cannot upload a model or
trigger a rollback cross-site), and a body within its route's limit (checked as it streams, never buffered whole).

A browser always sends `Origin` with a cross-origin POST, and cross-site it can only send a body typed text/plain,
form-urlencoded or multipart without a preflight the controller never grants. So uploads take
`application/octet-stream`, every other call with a body `application/json`; a request without a Content-Type is
taken only from a client that sends no Origin (edgectl, curl, scripts)."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controller.errors import STATUS, error_body

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UPLOAD_ROUTES = (
    re.compile(r"^/api/v1/models/[^/]+$"),
    re.compile(r"^/api/v1/models/[^/]+/versions/[^/]+/(calibration|samples)$"),
)
JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")
DEFAULT_JSON_LIMIT = 1 << 20  # every JSON body but an inference request's
INFER_JSON_LIMIT = 8 << 20  # tensors in base64; the device's own RPC limit applies after
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether an HTTP bind host only listens on this machine."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names (lower case) the API answers to besides IP literals: localhost, the bind host when it is a name,
    this machine's names when bound to every interface, and `extra` (`--allowed-host`; `*` turns the check off)."""
    names = set(LOOPBACK_NAMES) | {h.strip().lower() for h in extra if h.strip()}
    host = bind_host.strip("[]").lower()
    if host in ("", "0.0.0.0", "::"):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    else:
        names.add(host)
    return frozenset(names)


def host_name(value: str) -> str:
    """The name of a Host header or an Origin's netloc, without its port, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _refuse(code: str, message: str):
    return JSONResponse(status_code=STATUS[code], content=error_body(code, message))


def upload_route(path: str) -> bool:
    return any(p.match(path) for p in UPLOAD_ROUTES)


def route_limit(path: str, upload_limits: dict[str, int]) -> int:
    """The most bytes a body of this route may hold; upload_limits: "model" | "calibration" | "samples" -> bytes."""
    if upload_route(path):
        kind = path.rsplit("/", 1)[1] if "/versions/" in path else "model"
        return upload_limits.get(kind, upload_limits["model"])
    return INFER_JSON_LIMIT if path.endswith("/infer") else DEFAULT_JSON_LIMIT


class RequestGuard:
    """ASGI middleware: Host allowlist, Origin and Content-Type checks, and a declared Content-Length over the
    route's limit answered 413 before a byte of the body is read."""

    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str], upload_limits: dict[str, int]) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.any_host = "*" in allowed_hosts
        self.upload_limits = upload_limits

    def limit(self, path: str) -> int:
        return route_limit(path, self.upload_limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        problem = self.check(scope["method"], scope["path"], headers)
        if problem is not None:
            return await _refuse(*problem)(scope, receive, send)
        return await self.app(scope, receive, send)

    def check(self, method: str, path: str, headers: dict[str, str]) -> tuple[str, str] | None:
        """(code, message) for a request the API must not read, else None."""
        host = headers.get("host", "")
        name = host_name(host)
        if not self.any_host and not _is_ip(name) and name not in self.allowed_hosts:
            return "bad_host", (
                f"this controller does not answer to Host {host[:100]!r}; add it with --allowed-host if it is a name "
                "of this controller"
            )
        if method not in UNSAFE:
            return None
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.strip().lower():
            return "cross_origin", f"refusing a {method} from the web page at {origin[:100]!r} (another origin)"
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit(path):
            limit = self.limit(path)
            return "too_large", f"a {method} {path} body takes at most {limit} bytes; this one declares {declared}"
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        upload = upload_route(path)
        if not kind:
            if origin is not None:
                return "unsupported_media_type", "a request from a web page must declare its Content-Type"
            return None
        if upload and kind != "application/octet-stream":
            return "unsupported_media_type", f"uploads take Content-Type application/octet-stream, not {kind!r}"
        if not upload and not JSON_TYPE.match(kind):
            return "unsupported_media_type", f"{method} {path} takes Content-Type application/json, not {kind!r}"
        return None


class JsonBodyLimit:
    """ASGI middleware: a JSON body read up to its route's limit before the route sees it (413 past it), so a
    200 MiB body never reaches the parser; uploads stream through untouched (their routes count as they write)."""

    def __init__(self, app: ASGIApp, upload_limits: dict[str, int]) -> None:
        self.app = app
        self.upload_limits = upload_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE or upload_route(scope["path"]):
            return await self.app(scope, receive, send)
        limit = route_limit(scope["path"], self.upload_limits)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                text = f"a {scope['method']} {scope['path']} body takes at most {limit} bytes"
                return await _refuse("too_large", text)(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
