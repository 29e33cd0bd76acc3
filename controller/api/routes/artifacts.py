"""`GET/HEAD /api/v1/artifacts/{sha256}?device=ID&expires=T&sig=HMAC`: devices download model files over HTTP with
Range, so the bytes of a fleet push do not go through the MQTT broker.

Devices hold no API token, so the API token does not apply here (controller/api/auth.py); the URL is the credential:
the controller issues it in the device's desired state, bound to that device and an expiry (controller/fleet/
artifact_urls.py), and serves it only while that device's desired state names the artifact. A digest alone, an API
token, another device's URL or an expired one gets 403; each download is logged. Nothing here may be kept by a shared
cache (a recalled model must stop being served). The ETag is the quoted sha256, so `If-Range` resumes only the same
bytes."""

from __future__ import annotations

import logging
import random
import threading

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from controller.api.state import AppState
from controller.errors import error_body

log = logging.getLogger(__name__)

DEFAULT_MAX_STREAMS = 64  # artifact responses in flight at once; more are answered 503 with a Retry-After
RETRY_AFTER_S = (2, 10)  # the Retry-After of a 503, drawn at random: the waiting devices come back spread out
ARTIFACT_PATH = "/api/v1/artifacts/{sha256}"
CHUNK_BYTES = 1 << 20  # Starlette's FileResponse reads 64 KiB at a time; fewer, larger reads serve faster


class Streams:
    """Counts the artifact responses in flight, up to a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.active -= 1


class ArtifactFile(FileResponse):
    """A FileResponse (Range, If-Range, HEAD: Starlette's) that frees its stream slot however the transfer ends."""

    chunk_size = CHUNK_BYTES

    def __init__(self, streams: Streams, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.streams.give()


def router(state: AppState, max_streams: int = DEFAULT_MAX_STREAMS) -> APIRouter:
    router = APIRouter()
    streams = Streams(max_streams)

    @router.get(ARTIFACT_PATH, response_model=None)
    def artifact(sha256: str, request: Request, device: str = "", expires: int = 0, sig: str = "") -> Response:
        """The raw bytes of an artifact for the device whose desired state's URL this is: Range and If-Range (ETag:
        the quoted sha256), HEAD; 403 without a current URL issued to the device; 503 with Retry-After while too many
        downloads run at once."""
        if not (len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)):
            return _error(404, "not_found", f"{sha256[:64]!r} is not a sha256")
        refusal = state.fleet.urls.refusal(sha256, device, expires, sig)
        if refusal is not None:
            log.warning("refused artifact %s… to %s: %s", sha256[:12], _client(request), refusal)
            return _error(403, "forbidden", refusal)
        if not state.fleet.allows(device, sha256):
            log.warning("refused artifact %s… to device %s: not in its desired state", sha256[:12], device)
            return _error(404, "not_deployed", f"artifact {sha256[:12]}… is not in device {device}'s desired state")
        path = state.artifacts.path(sha256)
        if not path.is_file():
            return _error(404, "not_found", f"artifact {sha256[:12]}… is deployed but missing from the store")
        if not streams.take():
            retry = random.randint(*RETRY_AFTER_S)
            message = f"{streams.limit} artifact downloads are running; retry in {retry}s"
            return _error(503, "artifacts_busy", message, {"Retry-After": str(retry)})
        log.info("artifact %s… to device %s at %s (%s)", sha256[:12], device, _client(request),
                 request.headers.get("range", "all"))  # fmt: skip
        headers = {"etag": f'"{sha256}"', "cache-control": "private, no-store"}
        return ArtifactFile(streams, path, headers=headers, media_type="application/octet-stream")

    # HEAD as its own operation: one route with both methods gives OpenAPI two operations with one id
    router.add_api_route(ARTIFACT_PATH, artifact, methods=["HEAD"], response_model=None, operation_id="artifact_head")
    return router


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(code, message), headers=headers)
