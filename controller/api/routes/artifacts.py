"""`GET/HEAD /api/v1/artifacts/{sha256}`: devices download model files over HTTP with Range, so the bytes of a fleet
push do not go through the MQTT broker.

Devices hold no API token, so this route is open (controller/api/auth.py): the sha256 is the capability. It serves only
artifacts that some device's desired state names (anything else is 404, whether it exists or not), and an artifact
is content-addressed: whoever can name its 256-bit digest already knows which bytes they want, and the agent checks
the digest of what it received. The ETag is the quoted sha256, so `If-Range` resumes only the same bytes."""

from __future__ import annotations

import random
import threading

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from controller.api.state import AppState
from controller.errors import error_body

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
    def artifact(sha256: str, request: Request) -> Response:
        """The raw bytes of an artifact some device is to fetch: Range and If-Range (ETag: the quoted sha256), HEAD;
        503 with Retry-After while too many downloads run at once."""
        if not (len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)) or not state.fleet.serves(sha256):
            return _error(404, "not_deployed", f"artifact {sha256[:12]}… is not in any device's desired state")
        path = state.artifacts.path(sha256)
        if not path.is_file():
            return _error(404, "not_found", f"artifact {sha256[:12]}… is deployed but missing from the store")
        if not streams.take():
            retry = random.randint(*RETRY_AFTER_S)
            message = f"{streams.limit} artifact downloads are running; retry in {retry}s"
            return _error(503, "artifacts_busy", message, {"Retry-After": str(retry)})
        headers = {"etag": f'"{sha256}"', "cache-control": "public, max-age=31536000, immutable"}
        return ArtifactFile(streams, path, headers=headers, media_type="application/octet-stream")

    # HEAD as its own operation: one route with both methods gives OpenAPI two operations with one id
    router.add_api_route(ARTIFACT_PATH, artifact, methods=["HEAD"], response_model=None, operation_id="artifact_head")
    return router


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(code, message), headers=headers)
