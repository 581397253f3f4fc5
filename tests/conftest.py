"""Shared fixtures: settings in a temporary home, migrated databases (SQLite and PostgreSQL).

Ray, peer and CLI fixtures live in tests/support/ray_cluster.py, tests/support/peers.py and
tests/support/petray_cli.py (loaded as plugins).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import make_engine, make_sessionmaker, migrate
from petray.settings import Settings, load_settings
from petray.site import users
from tests.support.databases import migrated_sqlite

pytest_plugins = ["tests.support.peers", "tests.support.petray_cli", "tests.support.ray_cluster"]

# Ray 2.60 turns token auth on by default and reports usage: neither belongs in tests.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# argon2id at its RFC 9106 cost takes ~0.3 s a hash on this machine, and the console tests hash
# and verify thousands of times. Tests hash with the cheapest parameters instead: what is tested
# is the flow (hash, verify, rehash, lockout), not argon2's cost, and a hash carries its own
# parameters, so a gateway started by a test verifies them cheaply too. test_users checks the
# production parameters themselves.
PRODUCTION_HASHER = users._hasher
users._hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

POSTGRES_ADMIN_URL = os.environ.get(
    "PETRAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _weight(item: pytest.Item) -> int:
    if item.get_closest_marker("ray"):
        return 0
    if item.get_closest_marker("peers") or item.get_closest_marker("browser"):
        return 1
    return 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slowest modules first (Ray, then real peers and Chromium), each module kept together.

    The suite runs on two xdist workers, one module at a time each (``--dist loadfile``, see
    scripts/test.sh), handed out in this order: the minutes-long gateway modules start at once
    and the second-long unit modules fill the workers' last minutes instead of one worker
    finishing a gateway module alone. Every worker sorts the same collection the same way.
    """
    modules: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        modules[module] = min(modules.get(module, 2), _weight(item))
    order = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda item: (modules[item.nodeid.split("::", 1)[0]], order[id(item)]))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    value = load_settings(home=home, retry_base_s=0.2, retry_cap_s=1.0, fsync=False)
    value.ensure_dirs()
    return value


def _postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the test session, dropped afterwards."""
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}")
        pytest.skip("PostgreSQL is not reachable")
    name = f"petray_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_template(postgres_url: str) -> Iterator[str]:
    """A migrated PostgreSQL database, the template each test's database is created from."""
    name = postgres_url.rsplit("/", 1)[1] + "_template"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    migrate(engine)
    engine.dispose()  # a template must have no connections when it is copied
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database; each database test runs on the embedded SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield migrated_sqlite(tmp_path / "petray.db")
        return
    template: str = request.getfixturevalue("postgres_template")
    name = f"petray_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    value = make_engine(db_url)
    yield value
    value.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def sqlite_sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """SQLite only, for tests about something other than the database."""
    value = make_engine(migrated_sqlite(tmp_path / "petray.db"))
    yield make_sessionmaker(value)
    value.dispose()
