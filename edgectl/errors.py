"""The one place a failure becomes one line on stderr and a non-zero exit: every command runs inside `one_line`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import typer
from typer.exceptions import TyperException

from edgectl.output import errors
from protocol.errors import EdgeError

F = TypeVar("F", bound=Callable[..., Any])


class CommandFailed(EdgeError):
    """What a command found wrong (an unreadable file, a device that did not get there): the message says what."""

    code = "command_failed"


# EdgeError: the controller's answers (ApiError), bad inputs, conversions, signatures; OSError: files that cannot be
# read; httpx.HTTPError: a connection the client did not already turn into an ApiError.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (EdgeError, OSError, httpx.HTTPError)
DEBUG_ENV = "EDGECTL_DEBUG"  # set to 1: an unexpected error shows its traceback instead of one line


def cannot_read(what: str, path: Path) -> str:
    """`cannot read model file X: no such file` (or `it is a directory`, `permission denied`): what to fix."""
    if not path.exists():
        why = "no such file" if path.parent.is_dir() else f"no such directory {path.parent}"
    elif path.is_dir():
        why = "it is a directory"
    elif not os.access(path, os.R_OK):
        why = "permission denied"
    else:
        why = "not a regular file"
    return f"cannot read {what} file {path}: {why}"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr; the Exit to raise with the exit code."""
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def one_line(command: F) -> F:
    """The command, with every known error reported as one line on stderr and exit status 1 (no traceback); an
    unexpected one (a bug) is one line too, naming its type, unless EDGECTL_DEBUG=1 asks for the traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except KNOWN_ERRORS as exc:
            if debugging():
                raise
            raise fail(" ".join(str(exc).split()) or type(exc).__name__) from None
        except Exception as exc:
            if debugging():
                raise
            detail = " ".join(str(exc).split())
            raise fail(f"internal error {type(exc).__name__}: {detail} (EDGECTL_DEBUG=1 shows the traceback)") from None

    return run  # type: ignore[return-value]
