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

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from controller.api.state import AppState
from controller.errors import error_body

log = logging.getLogger(__name__)

DEFAULT_MAX_STREAMS = 64  # artifact responses in flight at once; more are answered 503 with a Retry-After
PER_DEVICE_STREAMS = 2  # of them one device's at once (it fetches one artifact at a time); more are answered 429
STALL_S = 60.0  # a response whose next block the client has not taken for this long is cut, freeing its slot
RETRY_AFTER_S = (2, 10)  # the Retry-After of a 503, drawn at random: the waiting devices come back spread out
ARTIFACT_PATH = "/api/v1/artifacts/{sha256}"
CHUNK_BYTES = 1 << 20  # Starlette's FileResponse reads 64 KiB at a time; fewer, larger reads serve faster


class Streams:
    """Counts the artifact responses in flight, up to a limit in all and a smaller one per device, so connections
    that ask and never read cannot hold every slot."""

    def __init__(self, limit: int, per_device: int = PER_DEVICE_STREAMS) -> None:
        self.limit = limit
        self.per_device = per_device
        self.active = 0
        self._by_device: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, device: str) -> int:
        """200 when a slot was taken for `device`; 429 when the device holds its share, 503 when all are taken."""
        with self._lock:
            held = self._by_device.get(device, 0)
            if held >= self.per_device:
                return 429
            if self.active >= self.limit:
                return 503
            self.active += 1
            self._by_device[device] = held + 1
            return 200

    def give(self, device: str) -> None:
        with self._lock:
            self.active -= 1
            held = self._by_device.pop(device, 1) - 1
            if held:
                self._by_device[device] = held


class Stalled(Exception):
    """The client took no bytes for STALL_S: the response is cut."""


class ArtifactFile(FileResponse):
    """A FileResponse (Range, If-Range, HEAD: Starlette's) that frees its stream slot however the transfer ends, and
    cuts a transfer the client stops reading (a send that waits STALL_S for the client's window)."""

    chunk_size = CHUNK_BYTES

    def __init__(self, streams: Streams, device: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.streams = streams
        self.device = device

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed(message: Message) -> None:
            try:
                with anyio.fail_after(STALL_S):
                    await send(message)
            except TimeoutError:
                raise Stalled(self.device) from None

        try:
            await super().__call__(scope, receive, timed)
        except Stalled:  # the server closes the connection (the response never completed)
            log.warning("cut the artifact download of device %s: no bytes taken for %.0fs", self.device, STALL_S)
        finally:
            self.streams.give(self.device)


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
        taken = streams.take(device)
        if taken != 200:
            retry = random.randint(*RETRY_AFTER_S)
            if taken == 429:
                message = f"device {device} has {streams.per_device} artifact downloads running; retry in {retry}s"
                return _error(429, "too_many_downloads", message, {"Retry-After": str(retry)})
            message = f"{streams.limit} artifact downloads are running; retry in {retry}s"
            return _error(503, "artifacts_busy", message, {"Retry-After": str(retry)})
        log.info("artifact %s… to device %s at %s (%s)", sha256[:12], device, _client(request),
                 request.headers.get("range", "all"))  # fmt: skip
        headers = {"etag": f'"{sha256}"', "cache-control": "private, no-store"}
        return ArtifactFile(streams, device, path, headers=headers, media_type="application/octet-stream")

    # HEAD as its own operation: one route with both methods gives OpenAPI two operations with one id
    router.add_api_route(ARTIFACT_PATH, artifact, methods=["HEAD"], response_model=None, operation_id="artifact_head")
    return router


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(code, message), headers=headers)
