"""The agent API's one bearer-token check, so the HTTP and gRPC fronts agree on what a token admits; each front
reads its own header (HTTP `Authorization`, gRPC metadata `authorization`) and refuses in its own way."""

from __future__ import annotations

import hmac


def expected(token: str | None) -> bytes | None:
    """What an `Authorization` value must be for `token` (`Bearer <token>`); None when no token is set: open."""
    return f"Bearer {token}".encode() if token else None


def admits(given: str | bytes | None, bearer: bytes | None) -> bool:
    """Whether an `Authorization` value (None: absent) carries the token `bearer` (from `expected`), compared in
    constant time; always true when `bearer` is None (no token set)."""
    if bearer is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(given.encode() if isinstance(given, str) else given, bearer)
