"""Pulls one artifact over HTTP(S) where the desired state gives a URL (agent/fetch/over_http.py), else (or when HTTP
fails) over MQTT in pipelined chunks; either way appending in order to one resumable partial file and hashing as it
goes, so verification costs nothing extra and a restart, or the other path, continues where the last run stopped."""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.fetch.over_http import HttpCancelled, HttpDownload, HttpSettings, HttpUnavailable
from agent.fetch.store import ModelStore, VerifyError
from protocol import QOS, ArtifactRequest, ChunkHeader, Encoding, ProtocolError, Topics, Transfer, decode_frame
from protocol.errors import EdgeError

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int], object]
Progress = Callable[[int, int], None]


# Write the download back to disk while it arrives, every this many bytes, so that the fsync in ModelStore.commit
# finds almost nothing left to do instead of the whole artifact (about 0.15 s for 50 MB on a cloud disk).
WRITEBACK_BYTES = 8 << 20
HTTP_DOWN_S = 300.0  # a server that could not be reached at all is not tried again for this long (MQTT meanwhile)


class FetchError(EdgeError, RuntimeError):
    """The controller could not supply the artifact; the message is its reason, `code` the controller's own (or
    size_mismatch for a chunk that does not fit the announced size)."""

    code = "fetch_failed"


class FetchCancelled(EdgeError, RuntimeError):
    """The download was superseded (a newer deployment) or the agent is stopping."""

    code = "fetch_cancelled"


def can_decompress() -> bool:
    """zstandard is in the agent extra, but an agent without it still works: it asks for raw bytes."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class _Transfer:
    sha256: str
    size: int  # bytes on the wire: the compressed size for zstd
    encoding: Encoding = "identity"
    inbox: queue.Queue[tuple[ChunkHeader, memoryview]] = field(default_factory=queue.Queue)
    pending: dict[int, str] = field(default_factory=dict)  # offset -> request id


class ArtifactFetcher:
    """One transfer at a time (the agent deploys serially); chunks for anything else are ignored."""

    def __init__(
        self,
        publish: Publish,
        topics: Topics,
        device_id: str,
        store: ModelStore,
        *,
        connected: threading.Event,
        chunk_bytes: int,
        window: int,
        request_timeout: float,
        http: HttpSettings | None = None,
    ) -> None:
        self.http = http  # None: MQTT only
        self._http_down: dict[str, float] = {}  # scheme://host:port -> monotonic time to try it again
        self.publish = publish
        self.store = store
        self.connected = connected
        self.chunk_bytes = chunk_bytes
        self.window = window
        self.request_timeout = request_timeout
        self.request_topic = topics.device(device_id, "artifact/request")
        self.reply_topic = topics.device(device_id, "artifact/chunk")
        self._active: _Transfer | None = None
        self._resend = threading.Event()

    def handle_chunk(self, payload: bytes) -> None:
        """MQTT thread: hand a chunk to the running transfer."""
        try:
            header, data = decode_frame(payload)
        except ProtocolError as exc:
            log.warning("dropped artifact chunk: %s", exc)
            return
        active = self._active
        if active is None or header.sha256 != active.sha256:
            return
        active.inbox.put((header, data))  # a view of the payload: no copy

    def on_reconnect(self) -> None:
        """Requests in flight during a disconnect are lost with the session: ask again at once."""
        self._resend.set()

    def fetch(
        self,
        sha256: str,
        size: int,
        progress: Progress,
        cancel: threading.Event,
        offer: Transfer | None = None,
        url: str | None = None,
        spread_s: float = 0.0,
    ) -> None:
        """Download into the store (verified) or raise FetchError / VerifyError / FetchCancelled. From `url` over HTTP
        first (after a random wait of up to `spread_s`); over MQTT without one or when HTTP fails. Over MQTT with a
        zstd `offer` (and zstandard installed) the compressed bytes travel and are decompressed while verifying."""
        if url and self.http is not None and self._fetch_http(sha256, size, url, spread_s, progress, cancel):
            return
        if offer is not None and offer.encoding == "zstd" and can_decompress():
            try:
                self._download(_Transfer(sha256, offer.size, "zstd"), progress, cancel)
            except FetchError as exc:
                if exc.code != "no_encoding":
                    raise
                log.warning("controller has no zstd copy of %s… any more; fetching it raw", sha256[:12])
            else:
                self.store.commit_compressed(sha256, size)
                return
        hasher = self._download(_Transfer(sha256, size), progress, cancel)
        self.store.commit(sha256, hasher.hexdigest())

    def _fetch_http(
        self, sha256: str, size: int, url: str, spread_s: float, progress: Progress, cancel: threading.Event
    ) -> bool:
        """Whether the artifact is now in the store, fetched over HTTP; False: fetch it over MQTT instead."""
        assert self.http is not None
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if self._http_down.get(origin, 0.0) > time.monotonic():
            log.info("%s was unreachable a moment ago; fetching %s… over MQTT", origin, sha256[:12])
            return False
        if spread_s > 0 and cancel.wait(random.uniform(0, spread_s)):  # a fleet push must not stampede the server
            raise FetchCancelled("download cancelled")
        offset, hasher = self.store.resume_point(sha256, self.chunk_bytes)
        if offset > size:
            self.store.partial_path(sha256).unlink()
            offset, hasher = self.store.resume_point(sha256, self.chunk_bytes)
        if offset:
            log.info("resuming download of %s… at %d of %d bytes (http)", sha256[:12], offset, size)
        download = HttpDownload(url, size, self.http, cancel)
        try:
            with open(self.store.partial_path(sha256), "ab") as out, _Writeback(out.fileno()) as writeback:
                download.run(out, offset, hasher, progress, writeback.wrote)
        except HttpCancelled:
            raise FetchCancelled("download cancelled") from None
        except HttpUnavailable as exc:
            if exc.unreachable:
                self._http_down[origin] = time.monotonic() + HTTP_DOWN_S
            log.warning("cannot fetch %s… over HTTP (%s); falling back to MQTT", sha256[:12], exc)
            return False
        try:
            self.store.commit(sha256, hasher.hexdigest())
        except VerifyError as exc:  # the controller's own copy decides
            log.warning("the HTTP copy of %s… is not the artifact (%s); fetching it over MQTT", sha256[:12], exc)
            return False
        return True

    def _download(self, transfer: _Transfer, progress: Progress, cancel: threading.Event):
        """Fetch the transfer's bytes into its partial file, resuming what is there; returns their running hash."""
        sha256, size, encoding = transfer.sha256, transfer.size, transfer.encoding
        offset, hasher = self.store.resume_point(sha256, self.chunk_bytes, encoding)
        if offset > size:
            self.store.partial_path(sha256, encoding).unlink()
            offset, hasher = self.store.resume_point(sha256, self.chunk_bytes, encoding)
        if offset:
            log.info("resuming download of %s… at %d of %d bytes (%s)", sha256[:12], offset, size, encoding)
        self._active = transfer
        try:
            path = self.store.partial_path(sha256, encoding)
            with open(path, "ab") as out, _Writeback(out.fileno()) as writeback:
                self._pump(transfer, out, offset, size, hasher, progress, cancel, writeback)
        finally:
            self._active = None
        return hasher

    def _pump(
        self, t: _Transfer, out, offset: int, size: int, hasher, progress: Progress, cancel, writeback: _Writeback
    ) -> None:
        received: dict[int, memoryview] = {}
        next_offset = offset
        progress(offset, size)
        while offset < size:
            if cancel.is_set():
                raise FetchCancelled("download cancelled")
            if not self.connected.is_set():
                self.connected.wait(0.5)
                continue
            if self._resend.is_set():
                self._resend.clear()
                self._request_again(t)
            while len(t.pending) + len(received) < self.window and next_offset < size:
                self._request(t, next_offset)
                next_offset += self.chunk_bytes
            try:
                header, data = t.inbox.get(timeout=self.request_timeout)
            except queue.Empty:
                log.warning("no chunk for %.0fs; asking again for %d chunk(s)", self.request_timeout, len(t.pending))
                self._request_again(t)
                continue
            if header.error is not None:
                raise FetchError(f"controller: {header.error.message}", header.error.code)
            if t.pending.get(header.offset) != header.request_id:
                continue  # duplicate or stale answer
            if header.total != t.size or not data:  # else the download would wait for bytes that never come
                raise FetchError(
                    f"controller sent {len(data)} bytes at offset {header.offset} of a {header.total}-byte "
                    f"{t.encoding} artifact; the desired state announced {t.size} bytes",
                    "size_mismatch",
                )
            del t.pending[header.offset]
            received[header.offset] = data
            while offset in received:
                block = received.pop(offset)
                out.write(block)
                hasher.update(block)
                offset += len(block)
                writeback.wrote(len(block))
                progress(offset, size)
        out.flush()

    def _request(self, t: _Transfer, offset: int) -> None:
        request_id = uuid.uuid4().hex[:16]
        t.pending[offset] = request_id
        length = min(self.chunk_bytes, t.size - offset)
        req = ArtifactRequest(
            request_id=request_id,
            reply_to=self.reply_topic,
            sha256=t.sha256,
            offset=offset,
            length=length,
            encoding=t.encoding,
        )
        self.publish(self.request_topic, req.encode(), QOS["artifact/request"])

    def _request_again(self, t: _Transfer) -> None:
        for offset in sorted(t.pending):
            self._request(t, offset)


class _Writeback:
    """fdatasync on a helper thread after every WRITEBACK_BYTES written: the disk writes while the network delivers,
    and no download thread waits for it. A write-back error fails the download: the kernel reports it only once, to
    this descriptor, so the fsync in ModelStore.commit would not see it."""

    def __init__(self, fd: int, every: int = WRITEBACK_BYTES) -> None:
        self.fd = fd
        self.every = every
        self.error: OSError | None = None
        self._unsynced = 0
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)

    def __enter__(self) -> _Writeback:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join()  # before the file is closed: never sync a descriptor number that was reused
        if self.error is not None and exc_type is None:
            raise self.error

    def wrote(self, n: int) -> None:
        if self.error is not None:
            raise self.error
        self._unsynced += n
        if self._unsynced >= self.every:
            self._unsynced = 0
            self._wake.set()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                sync(self.fd)
            except OSError as exc:
                self.error = exc
                return
