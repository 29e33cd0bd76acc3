"""The API token check: one ASGI middleware in front of every route but the open ones. Two roles: the admin token may
do anything, a read-only token (dashboards, Prometheus, scrapers) only GET and HEAD."""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from controller.errors import STATUS, error_body

OPEN_PATHS = frozenset({"/api/v1/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/"})
# devices fetch artifacts with device-bound URLs, not the token (controller/api/routes/artifacts.py checks them)
OPEN_PREFIXES = ("/static/", "/api/v1/artifacts/")
MISSING = (
    "this controller requires an API token: send the header 'Authorization: Bearer TOKEN' "
    "(edgectl: --token or EDGECTL_TOKEN)"
)
REJECTED = "the API token was not accepted: 'Authorization: Bearer TOKEN' does not match the controller's"
READ_ONLY = "this token is read-only (GET and HEAD); changing the fleet needs the controller's admin token"
READ_METHODS = frozenset({"GET", "HEAD"})


class TokenAuth:
    """ASGI middleware: every path but OPEN_PATHS and OPEN_PREFIXES needs `Authorization: Bearer TOKEN`; with the
    read-only token, GET and HEAD only."""

    def __init__(self, app: ASGIApp, token: str | None, read_token: str | None = None) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.read_token = read_token.encode() if read_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        given = given.strip()
        bearer = scheme.lower() == b"bearer"
        if bearer and self.token is not None and hmac.compare_digest(given, self.token):
            return await self.app(scope, receive, send)
        if bearer and self.read_token is not None and hmac.compare_digest(given, self.read_token):
            if scope["method"] in READ_METHODS:
                return await self.app(scope, receive, send)
            forbidden = JSONResponse(status_code=STATUS["forbidden"], content=error_body("forbidden", READ_ONLY))
            return await forbidden(scope, receive, send)
        body = error_body("unauthorized", REJECTED if header else MISSING)
        headers = {"WWW-Authenticate": "Bearer"}
        response = JSONResponse(status_code=STATUS["unauthorized"], content=body, headers=headers)
        await response(scope, receive, send)
