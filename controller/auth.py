"""The API token check: one ASGI middleware in front of every route but the open ones."""

from __future__ import annotations

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from controller.errors import STATUS, error_body

OPEN_PATHS = frozenset({"/api/v1/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/"})
MISSING = (
    "this controller requires an API token: send the header 'Authorization: Bearer TOKEN' "
    "(edgectl: --token or EDGECTL_TOKEN)"
)
REJECTED = "the API token was not accepted: 'Authorization: Bearer TOKEN' does not match the controller's"


class TokenAuth:
    """ASGI middleware: every path but OPEN_PATHS and /static/ needs `Authorization: Bearer TOKEN`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith("/static/"):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return await self.app(scope, receive, send)
        body = error_body("unauthorized", REJECTED if header else MISSING)
        headers = {"WWW-Authenticate": "Bearer"}
        response = JSONResponse(status_code=STATUS["unauthorized"], content=body, headers=headers)
        await response(scope, receive, send)
