"""Database helpers shared by the state stores and the targets (SQLite, PostgreSQL).

This package's own module holds only the check that the PostgreSQL driver can
be imported: `runner.db.pg` imports psycopg (the optional `postgres` extra)
at module level, so the check must not import it, and one message names the
extra wherever a pipeline asks for PostgreSQL without the driver.
"""

from __future__ import annotations

import importlib.util

from runner.errors import ConfigError

INSTALL_POSTGRES = "pip install 'etl-runner[postgres]'"


def postgres_driver_installed() -> bool:
    """Whether psycopg can be imported; found without importing it (nor `runner.db.pg`)."""
    return importlib.util.find_spec("psycopg") is not None


def missing_postgres_driver(what: str) -> str | None:
    """The one-line message for `what` ("the postgres target") when psycopg is missing, else None."""
    if postgres_driver_installed():
        return None
    return f"{what} needs the PostgreSQL driver: {INSTALL_POSTGRES}"


def require_postgres_driver(what: str) -> None:
    """Raise ConfigError (exit 2) naming the extra when psycopg is missing, before anything imports it."""
    message = missing_postgres_driver(what)
    if message is None:
        return
    error = ConfigError(message)
    # the file is valid and no line of it is wrong: the message alone, with no `<config>:1:1:` place
    error.message = message
    raise error
