"""One base for every error the operator may see: a stable `code` for scripts, the status and edgectl, and a message
that says what to do. Callers branch on `code`, never on the exception's exact type."""

from __future__ import annotations


class EdgeError(Exception):
    """An error as a value: `code` (stable, snake_case) and the operator-facing message."""

    code = "error"

    def __init__(self, message: str = "", code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


def error_code(exc: BaseException, default: str = "error") -> str:
    """The code of any exception: an EdgeError's own, else `default`."""
    return exc.code if isinstance(exc, EdgeError) else default


class ProtocolError(EdgeError, ValueError):
    """A payload that does not follow this contract; the receiver logs it and drops the message."""

    code = "invalid_message"
