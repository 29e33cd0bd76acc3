"""Downloads one artifact over HTTP(S) with Range into the partial file the MQTT path uses too, so a cut, a restart or
a fall back to MQTT continues where the bytes stop. The standard library only: the agent stays small.

Any server will do (the controller, nginx, S3): a 206 must start where asked; a 200 (a server that ignores Range, or
an If-Range that no longer matches) is read from the start and the bytes already here are skipped. The caller hashes
what is written and checks the sha256 at the end, as for MQTT. HttpUnavailable means: use MQTT instead."""

from __future__ import annotations

import http.client
import logging
import queue
import random
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

from protocol.errors import EdgeError

log = logging.getLogger(__name__)

BLOCK_BYTES = 1 << 20
MAX_REDIRECTS = 5
DEFAULT_RETRY_AFTER_S = 5.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class HttpUnavailable(EdgeError, RuntimeError):
    """HTTP cannot supply the artifact now (unreachable, refused, wrong size, no progress): fetch it over MQTT.
    `unreachable`: the server could not be reached at all (worth not trying again for a while)."""

    code = "http_unavailable"

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class HttpCancelled(EdgeError, RuntimeError):
    code = "fetch_cancelled"


class _Busy(Exception):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after


class _WriteFailed(Exception):
    """The disk, not the network: no retry (the caller gets the OSError, as on the MQTT path)."""

    def __init__(self, error: OSError) -> None:
        self.error = error


class _Refused(Exception):
    """An answer that no retry will change (404, 403, a file of another size)."""


@dataclass
class HttpSettings:
    timeout_s: float = 15.0  # connecting, and waiting for the next bytes
    attempts: int = 3  # attempts in a row without a new byte before giving up (falling back to MQTT)
    busy_s: float = 600.0  # how long 503/429 answers (with their Retry-After) are waited out
    ca_file: str | None = None  # trusted besides the system's CAs (e.g. the fleet's private CA)


Progress = Callable[[int, int], None]


class HttpDownload:
    """One artifact from `url`, `size` bytes, appended to `out` from `offset`; `hasher` sees exactly what is written."""

    def __init__(self, url: str, size: int, settings: HttpSettings, cancel: threading.Event) -> None:
        self.url = url
        self.size = size
        self.settings = settings
        self.cancel = cancel
        self.etag: str | None = None  # a strong ETag seen: later attempts resume only the same bytes (If-Range)
        self.requests = 0
        self.cut: str = "the connection closed"  # why the last response ended early

    def run(self, out: BinaryIO, offset: int, hasher: Any, progress: Progress, wrote: Callable[[int], None]) -> int:
        """Download to the end or raise HttpUnavailable / HttpCancelled; returns the bytes fetched over HTTP. Either
        way `hasher` has seen every byte written to `out` when it returns."""
        pipe = HashPipe(hasher)
        try:
            return self._run(out, offset, pipe, progress, wrote)
        finally:
            pipe.close()

    def _run(self, out: BinaryIO, offset: int, hasher: HashPipe, progress: Progress, wrote: Callable[[int], None]):
        fetched, stalled, start = 0, 0, offset
        busy_until = time.monotonic() + self.settings.busy_s
        progress(offset, self.size)
        while offset < self.size:
            if self.cancel.is_set():
                raise HttpCancelled("download cancelled")
            before = offset
            try:
                offset = self._attempt(out, offset, hasher, progress, wrote)
            except _Busy as busy:
                if time.monotonic() + busy.retry_after > busy_until:
                    raise HttpUnavailable(f"{self._where()} stayed busy for {self.settings.busy_s:.0f}s") from None
                self._pause(busy.retry_after * random.uniform(1.0, 1.5))  # jitter: waiting devices come back spread
                continue
            except _Refused as exc:
                raise HttpUnavailable(str(exc)) from None
            except _WriteFailed as failed:
                raise failed.error from None
            except (OSError, http.client.HTTPException) as exc:  # before the body: refused, timed out, 5xx
                stalled += 1
                if stalled >= self.settings.attempts:
                    raise HttpUnavailable(f"{self._where()}: {_reason(exc)}", unreachable=self.requests == 0) from None
                log.info("HTTP download of %s failed (%s); trying again", self._where(), _reason(exc))
                self._pause(min(8.0, 0.5 * 2**stalled) * random.uniform(0.5, 1.0))
                continue
            fetched += offset - before
            if offset < self.size:
                stalled = 0 if offset > before else stalled + 1
                if stalled >= self.settings.attempts:
                    raise HttpUnavailable(f"{self._where()} sends no more than {offset} of {self.size} bytes")
                log.info("HTTP download of %s cut at %d of %d bytes (%s); resuming", self._where(), offset,
                         self.size, self.cut)  # fmt: skip
        out.flush()
        log.info("fetched %d bytes over HTTP from %s (from byte %d, %d request(s))", fetched, self._where(), start,
                 self.requests)  # fmt: skip
        return fetched

    def _pause(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise HttpCancelled("download cancelled")

    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"  # never the query: a presigned URL's is a credential

    def _attempt(self, out: BinaryIO, offset: int, hasher: HashPipe, progress: Progress, wrote: Callable[[int], None]):
        """One request; the new offset (cut short: the connection ended early; raises on errors before the body)."""
        conn, response = self._open(offset)
        try:
            skip = self._check(response, offset)
            if skip:
                log.info("%s ignored the Range; skipping the %d bytes already here", self._where(), skip)
            return self._stream(response, out, offset, skip, hasher, progress, wrote)
        finally:
            conn.close()

    def _read(self, response: http.client.HTTPResponse, into: memoryview) -> int:
        """Bytes read into `into`; 0 at the end of the body or when the connection broke (`self.cut` says why)."""
        try:
            n = response.readinto(into)
        except (OSError, http.client.HTTPException) as exc:
            self.cut = _reason(exc)
            return 0
        if not n:
            self.cut = "the connection closed"
        return n

    def _open(self, offset: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            conn = self._connection(parts.scheme, parts.hostname or "", parts.port)
            headers = {"User-Agent": "edge-agent", "Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                if self.etag:
                    headers["If-Range"] = self.etag
            target = parts.path or "/"
            conn.request("GET", f"{target}?{parts.query}" if parts.query else target, headers=headers)
            self.requests += 1
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                target_url = urljoin(url, response.getheader("Location", ""))
                conn.close()
                if parts.scheme == "https" and urlsplit(target_url).scheme != "https":
                    raise _Refused(f"{self._where()} redirects from https to {urlsplit(target_url).scheme}: refused")
                url = target_url
                continue
            return conn, response
        raise _Refused(f"{self._where()} redirects more than {MAX_REDIRECTS} times")

    def _connection(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        if scheme == "https":
            context = ssl.create_default_context()
            if self.settings.ca_file:
                context.load_verify_locations(self.settings.ca_file)
            return http.client.HTTPSConnection(host, port, timeout=self.settings.timeout_s, context=context)
        if scheme != "http":
            raise _Refused(f"{self._where()}: not an http:// or https:// URL")
        return http.client.HTTPConnection(host, port, timeout=self.settings.timeout_s)

    def _check(self, response: http.client.HTTPResponse, offset: int) -> int:
        """The bytes at the start of the body that are here already (0 for a 206), or raise for a useless answer."""
        status = response.status
        if status in (429, 503):
            retry = response.getheader("Retry-After", "")
            raise _Busy(float(retry) if retry.isdigit() else DEFAULT_RETRY_AFTER_S)
        if status >= 500:
            raise http.client.HTTPException(f"{status} {response.reason}")
        if status not in (200, 206):
            raise _Refused(f"{self._where()} answered {status} {response.reason}")
        etag = response.getheader("ETag")
        self.etag = etag if etag and not etag.startswith("W/") else None
        if status == 206:
            found = _CONTENT_RANGE.match(response.getheader("Content-Range", ""))
            if found is None or int(found.group(1)) != offset:
                raise _Refused(
                    f"{self._where()} answered a Range from {offset} with {response.getheader('Content-Range')}"
                )
            if found.group(3) != "*" and int(found.group(3)) != self.size:
                raise _Refused(f"{self._where()} holds {found.group(3)} bytes; the desired state says {self.size}")
            return 0
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) != self.size:
            raise _Refused(f"{self._where()} holds {length} bytes; the desired state says {self.size}")
        return offset

    def _stream(self, response, out: BinaryIO, offset: int, skip: int, hasher: HashPipe, progress: Progress, wrote):
        """Copy the body to `out` from `offset` (dropping its first `skip` bytes); the offset reached, short of the
        size when the connection ended early (`self.cut` says why)."""
        if skip:
            scratch = memoryview(bytearray(BLOCK_BYTES))
            while skip:
                n = self._read(response, scratch[: min(BLOCK_BYTES, skip)])
                if not n:
                    return offset
                skip -= n
        while offset < self.size:
            if self.cancel.is_set():
                raise HttpCancelled("download cancelled")
            buffer = hasher.buffer()
            n = self._read(response, memoryview(buffer)[: min(BLOCK_BYTES, self.size - offset)])
            if not n:
                hasher.give_back(buffer)
                break
            try:
                out.write(memoryview(buffer)[:n])
            except OSError as exc:
                hasher.give_back(buffer)
                raise _WriteFailed(exc) from exc
            hasher.submit(buffer, n)
            offset += n
            try:
                wrote(n)
            except OSError as exc:
                raise _WriteFailed(exc) from exc
            progress(offset, self.size)
        return offset


class HashPipe:
    """Hashes the written blocks, in order, on a thread of its own (hashlib lets go of the GIL), so hashing overlaps
    the network instead of adding to it: sha256 runs at about the speed of a fast link on small CPUs."""

    def __init__(self, hasher: Any, buffers: int = 4) -> None:
        self.hasher = hasher
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(buffers):
            self._free.put(bytearray(BLOCK_BYTES))
        self._full: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="hash", daemon=True)
        self._thread.start()

    def buffer(self) -> bytearray:
        """A buffer to read the next block into (waits while all are being hashed)."""
        return self._free.get()

    def give_back(self, buffer: bytearray) -> None:
        self._free.put(buffer)

    def submit(self, buffer: bytearray, n: int) -> None:
        """Hash the first n bytes of `buffer` after everything submitted before; the buffer comes back once done."""
        self._full.put((buffer, n))

    def close(self) -> None:
        """Wait until everything submitted is hashed."""
        self._full.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, n = item
            self.hasher.update(memoryview(buffer)[:n])
            self._free.put(buffer)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
