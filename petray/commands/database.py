"""The database as the administration commands open it (issue 11).

Read-only commands (listings, ``petray wait``, ``config show``) never migrate: upgrading the
schema takes PostgreSQL's migration lock and imports Alembic's whole machinery, which made
``petray tasks`` take seconds under load. They compare the schema's revision with this
version's and say to run ``petray migrate`` when the two differ. Commands that change
something bring the schema up first, as before, so a fresh install can add its first user or
device without an extra step.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, inspect, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from petray.db.engine import MIGRATIONS_DIR, make_engine, make_sessionmaker, migrate, unit_of_work
from petray.errors import ConfigurationError
from petray.settings import Settings, load_settings
from petray.site import audit


def head_revision() -> str:
    """The newest migration's revision, read from the file names (``0005_...py``).

    Alembic's ScriptDirectory would parse every migration module to find the head; the files
    are numbered in order, so the highest number is the head.
    """
    numbers = [p.name.split("_", 1)[0] for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py")]
    return max(numbers)


def current_revision(engine: Engine) -> str | None:
    """The schema's revision, or None for an empty database (no ``alembic_version`` table)."""
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigurationError(f"the database is unreachable: {reason}") from None


def require_current_schema(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        state = "empty" if current is None else f"at revision {current}"
        raise ConfigurationError(
            f"the database is {state}, this petray needs revision {head}: run petray migrate"
        )


@contextmanager
def admin_session(*, write: bool) -> Iterator[Session]:
    """One unit of work on the site's database; ``write`` commands may migrate first."""
    with admin_database(write=write) as (_settings, session):
        yield session


@contextmanager
def admin_database(*, write: bool) -> Iterator[tuple[Settings, Session]]:
    settings = load_settings()
    if write:
        settings.home.mkdir(parents=True, exist_ok=True)
        audit.configure_syslog(settings.audit_syslog)
    url = make_url(settings.resolved_database_url)
    sqlite_file = url.database if url.get_backend_name() == "sqlite" else None
    if not write and sqlite_file and not Path(sqlite_file).is_file():
        raise ConfigurationError(
            f"there is no database at {url.database} yet: run petray migrate (or start)"
        )
    engine = make_engine(settings.resolved_database_url)
    try:
        if write and current_revision(engine) != head_revision():
            migrate(engine)
        else:
            require_current_schema(engine)
        with unit_of_work(make_sessionmaker(engine)) as session:
            yield settings, session
    finally:
        engine.dispose()


def cli_audit(action: str, target: str, *, session: Session, **detail: object) -> None:
    """A change made from a shell: the operating-system user is the actor."""
    audit.record(
        action,
        session=session,
        actor=getpass.getuser(),
        source="cli",
        target=target,
        detail={"via": "cli", **detail},
    )
