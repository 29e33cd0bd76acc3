"""Password authentication for the embedded broker (an amqtt plugin): the users of a Mosquitto password file
(`mosquitto_passwd`'s PBKDF2-SHA512 `$7$` hashes, or argon2), plus the controller's own credential made at start,
so the embedded broker refuses anonymous clients the same way a production Mosquitto does."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from amqtt.plugins.base import BaseAuthPlugin


class PasswordFileError(ValueError):
    """The password file cannot be used; the message says why."""


def load_password_file(path: Path) -> dict[str, str]:
    """user -> hash for each `user:hash` line (blank lines and # comments skipped)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PasswordFileError(f"cannot read the broker password file {path}: {exc.strerror}") from None
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not (hashed.startswith("$7$") or hashed.startswith("$argon2")):
            raise PasswordFileError(
                f"{path}:{number}: expected 'user:hash' with a mosquitto_passwd ($7$) or argon2 hash"
            )
        users[user] = hashed
    return users


def verify_password(password: str, hashed: str) -> bool:
    """Whether `password` matches a `$7$iterations$salt$digest` (PBKDF2-SHA512, base64) or argon2 hash."""
    if hashed.startswith("$7$"):
        try:
            _, _, iterations, salt, digest = hashed.split("$")
            salt_bytes, expected = base64.b64decode(salt), base64.b64decode(digest)
            computed = hashlib.pbkdf2_hmac("sha512", password.encode(), salt_bytes, int(iterations), len(expected))
        except (ValueError, binascii.Error):
            return False
        return hmac.compare_digest(computed, expected)
    if hashed.startswith("$argon2"):
        from pwdlib import PasswordHash
        from pwdlib.hashers.argon2 import Argon2Hasher

        try:
            return PasswordHash((Argon2Hasher(),)).verify(password, hashed)
        except Exception:
            return False
    return False


class PasswordFileAuth(BaseAuthPlugin):
    """amqtt auth plugin: a client must log in as a user of `password_file` or as the controller's internal user."""

    @dataclass
    class Config:
        password_file: str = ""
        internal_user: str = ""
        internal_password: str = ""

    def __init__(self, context) -> None:
        super().__init__(context)
        config = self.context.config
        self.users = load_password_file(Path(config.password_file))
        self.internal = (config.internal_user, config.internal_password)

    async def authenticate(self, *, session) -> bool:
        user, password = session.username or "", session.password or ""
        if not user:
            return False
        if self.internal[0] and user == self.internal[0]:
            return hmac.compare_digest(password.encode(), self.internal[1].encode())
        hashed = self.users.get(user)
        return hashed is not None and verify_password(password, hashed)
