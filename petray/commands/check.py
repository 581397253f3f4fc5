"""``petray check`` (preflight, issue 10) and ``petray migrate`` (schema upgrades)."""

from __future__ import annotations

import argparse
import json

from petray.site.preflight import Check, Verdict, can_run, run_checks


def render(checks: list[Check]) -> str:
    return "\n".join(check.line() for check in checks)


def run_check(args: argparse.Namespace) -> int:
    checks = run_checks()
    ok = can_run(checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        print(render(checks))
        failed = sum(c.verdict == Verdict.FAIL for c in checks)
        warned = sum(c.verdict == Verdict.WARN for c in checks)
        print(
            "petray can run here" + (f" ({warned} warnings)" if warned else "")
            if ok
            else f"petray cannot run here: {failed} checks failed"
        )
    return 0 if ok else 1


def run_migrate(args: argparse.Namespace) -> int:
    """Upgrade the schema to the newest revision; the only command meant for upgrades."""
    from alembic.runtime.migration import MigrationContext

    from petray.db.engine import make_engine, migrate
    from petray.settings import load_settings

    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
        migrate(engine)
        with engine.connect() as connection:
            after = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if before == after:
        print(f"database already at revision {after}")
    else:
        print(f"database upgraded from revision {before or '(empty)'} to {after}")
    return 0
