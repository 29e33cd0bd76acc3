"""Artifact download URLs bound to one device and an expiry, like presigned URLs: `{base}/{sha256}?device=ID&expires=T
&sig=HMAC`. The controller puts one in each device's desired state (which only that device may read: the broker's
ACL); the artifact route serves a request only when the HMAC holds, the URL has not expired and the device's desired
state still names the artifact. So a digest alone, a read-only API token, another device's URL or a recalled model's
old URL gets nothing. Replicas verify each other's URLs: the key is derived from the broker password they share, or
kept in the (shared) data directory."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

ROUTE = "/api/v1/artifacts"  # the controller's artifact route: URLs under any other base are the server's business
URL_TTL_S = 24 * 3600.0  # a URL older than this is refused (the agent then fetches over MQTT); a publish re-signs
KEY_FILE = "artifact-url.key"


class ArtifactUrls:
    """Signs and checks device-bound artifact URLs with one key."""

    def __init__(self, key: bytes, ttl_s: float = URL_TTL_S) -> None:
        self._key = key
        self.ttl_s = ttl_s

    def sign(self, base: str, sha256: str, device_id: str, now: float | None = None) -> str:
        """`{base}/{sha256}`, bound to the device when `base` is a controller's artifact route."""
        if not base.endswith(ROUTE):
            return f"{base}/{sha256}"
        expires = int((time.time() if now is None else now) + self.ttl_s)
        sig = self._mac(sha256, device_id, expires)
        return f"{base}/{sha256}?device={quote(device_id, safe='')}&expires={expires}&sig={sig}"

    def refusal(self, sha256: str, device_id: str, expires: int, sig: str) -> str | None:
        """Why a request may not have the artifact (one line), or None when its URL is genuine and current."""
        if not device_id or not sig:
            return "artifact downloads need the device-bound URL from the device's desired state (device, expires, sig)"
        if not hmac.compare_digest(sig, self._mac(sha256, device_id, expires)):
            return f"this URL was not issued to device {device_id} for this artifact"
        if expires < time.time():
            return "this artifact URL has expired; the device fetches over MQTT or gets a new desired state"
        return None

    def _mac(self, sha256: str, device_id: str, expires: int) -> str:
        message = f"{device_id}\n{sha256}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def url_key(broker_password: str | None, data_dir: Path) -> bytes:
    """The replicas' shared key: derived from the controller's broker password when it has one, else a random key
    kept (0600) in the data directory."""
    if broker_password:
        return hmac.new(broker_password.encode(), b"edgefleet artifact urls", hashlib.sha256).digest()
    path = data_dir / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another replica on the same data dir made it first
        time.sleep(0.1)
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as out:
        out.write(key.hex() + "\n")
    log.info("created %s (signs artifact URLs; replicas need the same file or a broker password)", path)
    return key
