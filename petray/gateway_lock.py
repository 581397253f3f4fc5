"""One gateway per home and per database (issue 8): an exclusive lock held for the process life.

Two gateways on one ``PETRAY_HOME`` would build two pipelines on one database and resume the same
tasks twice. The home lock is ``flock`` on ``PETRAY_HOME/gateway.lock``: the kernel drops it when
the holder exits in any way, SIGKILL included, so a dead gateway never blocks the next one and no
stale-pid guessing is needed. A PostgreSQL database can be shared by gateways with different
homes, so it is locked as well: a session-level advisory lock on one dedicated connection, which
the server releases when that connection ends (the holder's exit closes its socket).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import IO

from sqlalchemy import Connection, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from petray.errors import PetrayError

logger = logging.getLogger(__name__)
LOCK_FILE = "gateway.lock"
# pg_try_advisory_lock(int4, int4): "petr", "gate". Advisory locks are scoped to one database,
# so gateways on other databases of the same server never see each other.
ADVISORY_LOCK_KEYS = (0x70657472, 0x67617465)
APPLICATION_NAME = "petray gateway"


class GatewayAlreadyRunning(PetrayError):
    """Another gateway holds this home or database; the message says which and what to do."""


class GatewayLock:
    """The held lock; release it with :meth:`release` or by leaving the ``with`` block."""

    def __init__(self, home: Path, file: IO[str], pg: Connection | None) -> None:
        self.home = home
        self._file: IO[str] | None = file
        self._pg = pg

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._pg is not None:
            try:
                self._pg.close()  # ending the session releases the advisory lock
            except Exception:
                logger.warning("closing the database lock connection failed", exc_info=True)
            self._pg = None
        if self._file is not None:
            # Closing the descriptor drops the flock; the file stays so its inode stays stable.
            self._file.close()
            self._file = None

    def __enter__(self) -> GatewayLock:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.release()


def acquire_gateway_lock(home: Path, database_url: str) -> GatewayLock:
    """Lock ``home`` (and a PostgreSQL ``database_url``) or raise :class:`GatewayAlreadyRunning`."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK_FILE
    # "a+" neither truncates (the holder's pid must stay readable) nor fails if absent; Python
    # opens it non-inheritable, so Ray's child processes never keep the lock alive.
    file = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = _describe_holder(file.read())
        file.close()
        raise GatewayAlreadyRunning(
            f"another gateway is running on {home}{holder}; stop it first"
        ) from None
    except BaseException:
        file.close()
        raise
    file.seek(0)
    file.truncate()
    file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
    file.flush()
    try:
        pg = _lock_database(database_url)
    except BaseException:
        file.close()
        raise
    return GatewayLock(home, file, pg)


def _describe_holder(content: str) -> str:
    try:
        holder = json.loads(content)
        pid, host = int(holder["pid"]), str(holder["host"])
    except (ValueError, KeyError, TypeError):
        return ""  # the holder has not written its pid yet
    return f" (pid {pid})" if host == socket.gethostname() else f" (pid {pid} on {host})"


def _lock_database(database_url: str) -> Connection | None:
    url = make_url(database_url)
    if not url.drivername.startswith("postgresql"):
        return None  # the embedded SQLite lives in the home (or is the operator's own file)
    name = f"{APPLICATION_NAME} pid {os.getpid()} on {socket.gethostname()}"
    # AUTOCOMMIT: the connection idles for days; an open transaction would pin old row
    # versions and could be cut by idle_in_transaction_session_timeout.
    engine = create_engine(
        url,
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"application_name": name[:63]},
    )
    conn = engine.connect()
    try:
        first, second = ADVISORY_LOCK_KEYS
        got = conn.execute(
            text("SELECT pg_try_advisory_lock(:first, :second)"),
            {"first": first, "second": second},
        ).scalar_one()
        if got:
            return conn
        holder = conn.execute(
            text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND l.classid = :first AND l.objid = :second AND l.objsubid = 2"
            ),
            {"first": first, "second": second},
        ).scalar()
    except BaseException:
        conn.close()
        engine.dispose()
        raise
    conn.close()
    engine.dispose()
    described = ""
    if holder:
        who = holder.removeprefix(APPLICATION_NAME).strip()
        described = f" ({who.removesuffix(f' on {socket.gethostname()}')})"
    raise GatewayAlreadyRunning(
        f"another gateway is running on database {url.render_as_string(hide_password=True)}"
        f"{described}; stop it first"
    )
