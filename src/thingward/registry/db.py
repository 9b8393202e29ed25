"""Engine, sessions and schema migrations of the registry database (SQLite by default, PostgreSQL too).

Writers take turns on both: SQLite's `BEGIN IMMEDIATE` takes the database's write lock up front; on
PostgreSQL every write session first takes one transaction-level advisory lock, so a check-then-write
(a name that must be free, the audit chain's head) sees every earlier writer's commit, as on SQLite.
Readers never wait for writers on either; PostgreSQL read sessions are READ ONLY transactions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from thingward.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key of the registry's writers: any constant of ours, the bytes of "thingwrd".
WRITER_LOCK_KEY = int.from_bytes(b"thingwrd", "big") & 0x7FFF_FFFF_FFFF_FFFF
WRITER_LOCK_TIMEOUT_MS = 10_000  # how long a writer waits for another, as SQLite's busy_timeout below
CONNECT_TIMEOUT_SECONDS = 10
SUPPORTED = "sqlite:///PATH or postgresql://USER@HOST[:PORT]/DATABASE"


def parse_database_url(url: str) -> URL:
    """A database URL thingward can use. `postgresql://` (and `postgres://`) mean psycopg 3, the driver shipped."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The URL is not echoed: it may hold a password.
        raise ConfigError(f"the database URL is not a URL; use {SUPPORTED}") from None
    if parsed.drivername in {"postgres", "postgresql", "postgresql+psycopg"}:
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in {"sqlite", "sqlite+pysqlite"}:
        return parsed
    raise ConfigError(f"unsupported database {parsed.drivername!r} in the database URL; use {SUPPORTED}")


def display_url(url: str | URL) -> str:
    """The URL for messages and logs: the password, if any, masked."""
    parsed = url if isinstance(url, URL) else parse_database_url(url)
    return parsed.render_as_string(hide_password=True)


def database_error(error: DBAPIError) -> str:
    """The driver's message of a database error on one line (libpq's messages never hold the password)."""
    return " ".join(str(error.orig).split())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # Without it, INSERT OR REPLACE deletes rows without firing the audit log's DELETE trigger.
    cursor.execute("PRAGMA recursive_triggers=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={WRITER_LOCK_TIMEOUT_MS}")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # pysqlite's deferred BEGIN lets two writers deadlock on the lock upgrade (SQLITE_BUSY at once);
    # an immediate BEGIN takes the write lock up front and waits its turn under busy_timeout.
    mode = "DEFERRED" if connection.get_execution_options().get("thingward_read_only") else "IMMEDIATE"
    connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str) -> Engine:
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "isolation_level": None})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        parsed,
        pool_pre_ping=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, "application_name": "thingward"},
    )


def alembic_config() -> Config:
    from alembic.config import Config  # imported here: most commands never migrate, and alembic is slow to load

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this thingward (revisions are numbered 0001, 0002, ...)."""
    numbers = [int(p.name[:4]) for p in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")]
    return f"{max(numbers):04d}"


def schema_revision(engine: Engine) -> str | None:
    """The revision the registry's schema is at, or None for a database no migration ran on."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def check_schema(engine: Engine) -> None:
    """Refuse a registry whose schema is not the one this thingward was built for, and say what to do."""
    current, head = schema_revision(engine), head_revision()
    if current == head:
        return
    if current is None:
        raise ConfigError("the registry database has no thingward schema: run 'thingward init' for a new data dir")
    if current > head:
        raise ConfigError(
            f"the registry schema is at {current}, newer than this thingward knows ({head}): upgrade thingward"
        )
    raise ConfigError(
        f"the registry schema is at {current} and this thingward needs {head}: back up the data dir, then run "
        "'thingward db upgrade'"
    )


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with the Alembic migrations shipped in the package."""
    from alembic import command

    cfg = alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


class Database:
    """One engine and its session factories. `audit_key` signs the audit log (see `audit_log`)."""

    def __init__(self, url: str, audit_key: bytes | None = None) -> None:
        self.url = url
        self.audit_key = audit_key
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        info = {"audit_key": audit_key}
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, info=info)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(thingward_read_only=True), expire_on_commit=False, info=info
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed at the end of the block, or rolled back on error.

        Write sessions take turns (see the module docstring): the block runs after every earlier writer
        committed or rolled back.
        """
        with self._sessions() as session, session.begin():
            if self.dialect == "postgresql":
                # As SQLite's busy_timeout: a writer stuck elsewhere makes us fail after a while, not hang.
                session.execute(
                    text("SELECT set_config('lock_timeout', :timeout, true)"),
                    {"timeout": f"{WRITER_LOCK_TIMEOUT_MS}ms"},
                )
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITER_LOCK_KEY})
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading only: it takes no write lock, so readers never wait for writers."""
        with self._read_sessions() as session, session.begin():
            if self.dialect == "postgresql":
                # For this transaction only: one statement, where a connection-level setting costs a
                # round trip to set and another to reset on every checkout.
                session.execute(text("SET TRANSACTION READ ONLY"))
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
