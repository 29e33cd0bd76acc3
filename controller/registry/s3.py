"""Artifacts in an S3-compatible bucket, handed to devices as presigned GET URLs: a private bucket serves the fleet's
downloads (no public objects, no controller HTTP port in the path), and only whoever got a desired state can fetch,
until the URL expires. The controller puts each artifact at `{prefix}/{sha256}` the first time a desired state names
it; when the store fails, devices get the fallback URL (the controller's own endpoint, or none: MQTT) instead."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol.errors import EdgeError

if TYPE_CHECKING:
    from controller.registry.artifacts import ArtifactStore

log = logging.getLogger(__name__)

MAX_EXPIRY_S = 7 * 86400  # SigV4's limit on a presigned URL's lifetime
DEFAULT_EXPIRY_S = 6 * 3600  # a leaked URL is good for hours, not a week; a device offline longer fetches over MQTT
MAX_URL_CHARS = 2048  # a desired state's `url` (protocol/messages.py): longer URLs fall back
RETRY_AFTER_S = 60.0  # after the store failed, devices get the fallback URL this long before it is tried again
# A presigned URL is handed out again (one URL per fleet push) while younger than a tenth of its expiry and 10 minutes:
# signed with temporary credentials (an instance role), it dies with them, however long its expiry says.
REUSE_SHARE, REUSE_MAX_S = 0.1, 600.0


class S3ConfigError(EdgeError, ValueError):
    """The S3 settings cannot work; the message names the option and what to give instead."""

    code = "bad_s3_setting"


@dataclass(frozen=True)
class S3Location:
    """`s3://bucket/prefix`: objects are `prefix/sha256` (or `sha256` without a prefix)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        if not url.startswith("s3://"):
            raise S3ConfigError(f"--artifact-s3 {url!r}: expected s3://BUCKET or s3://BUCKET/PREFIX")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise S3ConfigError(f"--artifact-s3 {url!r} names no bucket: expected s3://BUCKET or s3://BUCKET/PREFIX")
        return cls(bucket, prefix.strip("/"))

    def key(self, sha256: str) -> str:
        return f"{self.prefix}/{sha256}" if self.prefix else sha256

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def check_s3_settings(
    artifact_s3: str | None, endpoint_url: str | None, expiry_s: int | None, artifact_base_url: str | None
) -> S3Location | None:
    """The bucket location, or None when S3 is not configured; S3ConfigError (one line) for settings that cannot
    work together."""
    if artifact_s3 is None:
        for option, value in (("--s3-endpoint-url", endpoint_url), ("--artifact-url-expiry", expiry_s)):
            if value is not None:
                raise S3ConfigError(f"{option} applies only with --artifact-s3 s3://BUCKET/PREFIX")
        return None
    if artifact_base_url:
        raise S3ConfigError(
            "--artifact-s3 and --artifact-base-url both say where devices download from: give one of them"
        )
    location = S3Location.parse(artifact_s3)
    if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
        raise S3ConfigError(f"--s3-endpoint-url {endpoint_url!r}: expected an http:// or https:// URL")
    if expiry_s is not None and not 1 <= expiry_s <= MAX_EXPIRY_S:
        raise S3ConfigError(
            f"--artifact-url-expiry {expiry_s}: a presigned URL lives 1 to {MAX_EXPIRY_S} seconds (7 days, SigV4's "
            "limit)"
        )
    return location


class S3Artifacts:
    """Puts artifacts in the bucket when first needed and presigns GET URLs for them. Thread-safe: desired states are
    built on API threads and on the MQTT thread at once."""

    def __init__(
        self,
        location: S3Location,
        store: ArtifactStore,
        *,
        endpoint_url: str | None = None,
        expiry_s: int = DEFAULT_EXPIRY_S,
    ) -> None:
        if importlib.util.find_spec("boto3") is None:
            raise S3ConfigError("--artifact-s3 needs boto3: pip install 'edgefleet[s3]'")
        self.location = location
        self.store = store
        self.endpoint_url = endpoint_url
        self.expiry_s = expiry_s
        self._client: Any = None
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}  # one upload per artifact at a time
        self._present: set[str] = set()  # in the bucket, checked or put by this process
        self._urls: dict[str, tuple[str, float]] = {}  # sha256 -> (presigned URL, monotonic time signed)
        self._failed: dict[str, float] = {}  # sha256 -> monotonic time before which it is not tried again
        self._down_until = 0.0  # the store itself failed (unreachable, credentials): nothing is tried before then

    @classmethod
    def from_settings(cls, settings: Any, store: ArtifactStore) -> S3Artifacts | None:
        """From the controller's settings (artifact_s3, s3_endpoint_url, artifact_url_expiry_s); None without S3."""
        location = check_s3_settings(
            settings.artifact_s3, settings.s3_endpoint_url, settings.artifact_url_expiry_s, settings.artifact_base_url
        )
        if location is None:
            return None
        expiry = settings.artifact_url_expiry_s or DEFAULT_EXPIRY_S
        return cls(location, store, endpoint_url=settings.s3_endpoint_url, expiry_s=expiry)

    def describe(self, fallback: str | None) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return (
            f"devices fetch artifacts from {self.location}{where} with presigned URLs valid {self.expiry_s}s "
            f"(when the bucket fails: {f'{fallback}/<sha256>' if fallback else 'MQTT'}; MQTT when they cannot)"
        )

    # -- what the fleet calls ------------------------------------------------------------------------------------

    def url(self, sha256: str, fallback: str | None) -> str | None:
        """A presigned GET URL for the artifact, put in the bucket first if it is not there; `fallback` when the
        store fails (the cause is logged as a warning)."""
        if not self._in_bucket(sha256, fallback):
            return fallback
        now = time.monotonic()
        cached = self._urls.get(sha256)
        if cached is not None and now - cached[1] < min(self.expiry_s * REUSE_SHARE, REUSE_MAX_S):
            return cached[0]
        try:
            url = self.client().generate_presigned_url(
                "get_object",
                Params={"Bucket": self.location.bucket, "Key": self.location.key(sha256)},
                ExpiresIn=self.expiry_s,
            )
        except Exception as exc:  # botocore: no credentials, a bad region or endpoint
            self._down_until = now + RETRY_AFTER_S
            self._warn(sha256, "presigning failed", exc, fallback)
            return fallback
        if len(url) > MAX_URL_CHARS:  # a temporary credential's session token rides in the query string
            self._down_until = now + RETRY_AFTER_S
            self._warn(sha256, "presigning failed", f"the URL has {len(url)} characters, over {MAX_URL_CHARS} "
                       "(temporary credentials' session token: use an access key)", fallback)  # fmt: skip
            return fallback
        self._urls[sha256] = (url, now)
        return url

    def prepare(self, digests: Iterable[str]) -> int:
        """Put every artifact the fleet's desired states name in the bucket now (at start, before the MQTT link is up
        and republishes them on its own thread); the number in the bucket."""
        return sum(self._in_bucket(sha256, None) for sha256 in sorted(set(digests)))

    # -- the bucket ----------------------------------------------------------------------------------------------

    def client(self) -> Any:
        """The boto3 S3 client, made on first use: credentials and region from boto3's standard chain."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    signature_version="s3v4",
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"} if self.endpoint_url else {},  # MinIO, Ceph: path style
                )
                session = boto3.session.Session()  # its own: the default session is not thread-safe
                self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
            return self._client

    def _in_bucket(self, sha256: str, fallback: str | None) -> bool:
        if sha256 in self._present:
            return True
        if time.monotonic() < max(self._down_until, self._failed.get(sha256, 0.0)):
            return False  # failed a moment ago: the warning said so then
        with self._lock:
            lock = self._locks.setdefault(sha256, threading.Lock())
        with lock:  # a second caller waits for the first one's upload instead of repeating it
            if sha256 in self._present:
                return True
            try:
                self._put(sha256)
            except OSError as exc:  # this artifact's file, not the store
                self._failed[sha256] = time.monotonic() + RETRY_AFTER_S
                self._warn(sha256, "cannot read it to upload", exc, fallback)
                return False
            except Exception as exc:  # botocore: unreachable, refused, no credentials
                self._down_until = time.monotonic() + RETRY_AFTER_S
                self._warn(sha256, "cannot put it in the bucket", exc, fallback)
                return False
            self._present.add(sha256)
            return True

    def _put(self, sha256: str) -> None:
        """Upload the artifact unless a HEAD finds an object of its size there already."""
        from botocore.exceptions import ClientError

        path = self.store.path(sha256)
        size = path.stat().st_size
        bucket, key = self.location.bucket, self.location.key(sha256)
        try:
            if self.client().head_object(Bucket=bucket, Key=key)["ContentLength"] == size:
                return
        except ClientError as exc:  # 403: no s3:ListBucket, so S3 cannot say "missing"; the PUT will tell
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied"):
                raise
        started = time.monotonic()
        self.client().upload_file(str(path), bucket, key, ExtraArgs={"ContentType": "application/octet-stream"})
        log.info("put artifact %s (%d bytes) in %s in %.1fs", sha256[:12], size, self.location,
                 time.monotonic() - started)  # fmt: skip

    def _warn(self, sha256: str, what: str, cause: object, fallback: str | None) -> None:
        instead = "the controller's endpoint" if fallback else "MQTT (no --public-url)"
        log.warning("artifact %s in %s: %s (%s); devices fetch it from %s, the bucket is tried again in %.0fs",
                    sha256[:12], self.location, what, _reason(cause), instead, RETRY_AFTER_S)  # fmt: skip


def _reason(cause: object) -> str:
    if isinstance(cause, BaseException):
        text = str(cause).splitlines()[0] if str(cause) else ""
        return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    return str(cause)
