"""The controller's settings checked before anything starts: a bad data dir, database URL or broker URL is one line
that names the option and what to give it, never a traceback or a driver's message without its setting."""

from __future__ import annotations

import os
from pathlib import Path

DB_HINT = "expected sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB"
BROKER_HINT = "expected 'embedded', 'embedded:PORT' or mqtt[s]://[USER@]HOST[:PORT]"


class SettingError(ValueError):
    """A setting the controller cannot start with; the message names the option."""


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def check_data_dir(data_dir: Path) -> None:
    """The data dir exists (created if missing) and is writable."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingError(
            f"--data-dir {data_dir}: cannot create it ({exc.strerror}); give a writable directory"
        ) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise SettingError(f"--data-dir {data_dir}: not writable by this user; give a writable directory")


def shown_db(url: str) -> str:
    """The database URL with its password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def check_db_url(url: str | None) -> None:
    """A database URL SQLAlchemy can parse, of a kind the controller supports, with its driver installed."""
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SettingError(f"--db {url!r} is not a database URL; {DB_HINT}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise SettingError(f"--db {shown_db(url)}: unsupported database {backend!r}; {DB_HINT}")
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise SettingError(f"--db {shown_db(url)}: unknown driver {parsed.drivername!r}; {DB_HINT}") from None


def check_broker_url(broker: str) -> None:
    from controller.service import parse_embedded
    from protocol.link import BrokerAddress

    try:
        if parse_embedded(broker) is None:
            BrokerAddress.parse(broker)
    except ValueError as exc:
        raise SettingError(f"--broker {broker!r}: {first_line(str(exc))}; {BROKER_HINT}") from None


def check_settings(data_dir: Path, db: str | None, broker: str) -> None:
    """SettingError naming the first option the controller cannot start with."""
    check_data_dir(data_dir)
    check_db_url(db)
    check_broker_url(broker)


def describe_start_error(exc: BaseException, db: str | None) -> str:
    """A failure while starting as one line naming the setting at fault where it can be told."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    if isinstance(exc, DBAPIError):
        cause = first_line(str(exc.orig)) if exc.orig is not None else first_line(str(exc))
        where = f"--db {shown_db(db)}" if db else "the database in --data-dir"
        return f"{where}: cannot use the database ({cause}); check that it runs and the URL's host, user and name"
    if isinstance(exc, SQLAlchemyError):
        return f"--db: {first_line(str(exc))}; {DB_HINT}"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot start: {exc.filename}: {exc.strerror} (check --data-dir and the files given to options)"
    return f"cannot start: {first_line(str(exc)) or type(exc).__name__} (EDGE_DEBUG=1 shows the traceback)"
