"""Migrated databases for tests, made once and copied: a migration costs 0.2-0.5 s, a copy of
the SQLite file a millisecond and a PostgreSQL ``CREATE DATABASE ... TEMPLATE`` about 0.1 s.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from petray.db.engine import make_engine, migrate

_sqlite_template: Path | None = None


def _template() -> Path:
    global _sqlite_template
    if _sqlite_template is None:
        directory = Path(tempfile.mkdtemp(prefix="petray-test-template-"))
        atexit.register(shutil.rmtree, directory, True)
        template = directory / "petray.db"
        engine = make_engine(f"sqlite:///{template}")
        migrate(engine)
        # Closing the last connection checkpoints the WAL into the file: one file to copy.
        engine.dispose()
        _sqlite_template = template
    return _sqlite_template


def migrated_sqlite(path: Path) -> str:
    """A migrated SQLite database at ``path``, a copy of this session's template; its URL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), path)
    return f"sqlite:///{path}"
