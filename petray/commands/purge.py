"""``petray purge [--dry-run] [--json]``: apply the retention policy now (issue 10).

The gateway does the same every ``PETRAY_RETENTION_INTERVAL_S``; this is for an administrator
who wants space back now, or wants to see what the policy would remove.
"""

from __future__ import annotations

import argparse
import getpass
import json
import shutil
from datetime import UTC, datetime

from petray.db.engine import make_engine, make_sessionmaker, migrate, unit_of_work
from petray.settings import load_settings
from petray.site import audit, retention
from petray.site.retention import RetentionPolicy
from petray.task_files import TaskFiles


def run_purge(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    audit.configure_syslog(settings.audit_syslog)
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        sessions = make_sessionmaker(engine)
        with unit_of_work(sessions) as session:
            policy = RetentionPolicy.load(settings, session=session)
        report = retention.run(
            sessions,
            policy,
            lambda task_id: TaskFiles.of(settings, task_id),
            now=datetime.now(UTC),
            free_bytes=lambda: shutil.disk_usage(settings.home).free,
            dry_run=args.dry_run,
            actor=getpass.getuser(),
            source="cli",
        )
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    for task in report.tasks:
        print(
            f"{task.task_id}  {task.state:<9} finished {task.finished:%Y-%m-%d %H:%M}  "
            f"({task.reason})  {task.files} files, {retention.format_bytes(task.bytes)}"
        )
    headroom = retention.format_bytes(policy.wanted_free_bytes)
    print(
        f"{report.summary()} (done after {policy.done_days} days, failed after "
        f"{policy.failed_days} days, purging for space below {headroom} free)"
    )
    return 0
