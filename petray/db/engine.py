"""One engine per process, sessions whose unit of work the caller owns, and schema migration."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the console read while the SCP writes; NORMAL keeps commits durable against
    # process crashes (the WAL is fsynced at checkpoints), which is the failure we guard.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def core_transaction(factory: sessionmaker[Session]) -> Iterator[Connection]:
    """A Core connection of the factory's engine in one transaction, committed when the block
    ends normally: for hot paths of a statement or two, where a Session's own bookkeeping costs
    more than the SQL (recording a sent instance: 0.48 -> 0.08 ms of CPU on SQLite)."""
    engine: Engine = factory.kw["bind"]
    with engine.begin() as connection:
        yield connection


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back otherwise."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``, the newest by default (idempotent); an older
    revision than the database's downgrades it."""
    import logging

    # Alembic narrates every migration step at INFO; a gateway start is not the place for it.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        if revision != "head" and _current_revision(connection) > revision:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)


def _current_revision(connection: Any) -> str:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision() or ""
