"""``petray task retry|restart|cancel|delete|release|reject ID`` and ``petray wait ID``.

The same changes as the console's buttons, recorded in the audit trail as the OS user. The
gateway's stage actors take up a retried task at their next sweep (``PETRAY_SWEEP_INTERVAL_S``):
a shell has no handle on the running pipeline, and the database is the source of truth.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import time

from petray.commands.database import admin_database, admin_session, cli_audit
from petray.domain import State
from petray.errors import UnknownTask
from petray.site.activity import remove_files
from petray.stages.review import reject, release
from petray.task_files import TaskFiles
from petray.tasks import cancel, delete_task, get_task, retry, summarize

log = logging.getLogger(__name__)

# ``petray wait``'s exit codes, for scripts: 0 done, 2 usage or unknown task (as every command).
EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 3
EXIT_TIMEOUT = 4
EXIT_HELD = 5  # held for quantitative review (issue 15): a person must release or reject it
WAIT_POLL_S = 0.5


def run_task(args: argparse.Namespace) -> int:
    task_id: str = args.id
    target = f"task {task_id}"
    if args.action == "show":
        with admin_session(write=False) as session:
            summary = summarize(get_task(task_id, session=session))
        if args.json:
            print(json.dumps(summary.as_dict(), indent=2))
        else:
            for key, value in summary.as_dict().items():
                if value not in ("", None, [], 0) or key in ("stage", "state", "images"):
                    print(f"{key:<20} {value}")
        return 0
    if args.action == "delete":
        with admin_database(write=True) as (settings, session):
            files = TaskFiles.of(settings, task_id) if task_id.isalnum() else None
            paths = delete_task(task_id, session=session, files=files)
            cli_audit("task.delete", target, session=session)
        # Only after the commit: a rollback never leaves rows naming removed files.
        removed = remove_files(paths)
        print(f"deleted task {task_id} and its files ({removed.files} files)")
        return 0
    with admin_database(write=True) as (settings, session):
        before = get_task(task_id, session=session)
        was = f"{before.stage}/{before.state}"
        if args.action == "cancel":
            cancel(task_id, session=session)
        elif args.action == "release":
            release(task_id, session=session, by=getpass.getuser())
        elif args.action == "reject":
            reject(task_id, session=session, by=getpass.getuser(), note=args.reason)
        else:
            retry(task_id, session=session, from_start=args.action == "restart")
        task = get_task(task_id, session=session)
        now = f"{task.stage}/{task.state}"
        reason = task.reason
        extra = {"reason": reason} if args.action == "reject" else {}
        cli_audit(f"task.{args.action}", target, session=session, before=was, after=now, **extra)
        sweep = settings.sweep_interval_s
    if args.action == "cancel":
        print(f"cancelled task {task_id} (was {was})")
    elif args.action == "reject":
        print(f"rejected task {task_id}: {reason}")
    elif args.action == "release":
        print(f"released task {task_id}; the gateway sends it within {sweep:g} s")
    else:
        print(
            f"task {task_id} back to work in {task.stage} (was {was}); the gateway takes it up "
            f"within {sweep:g} s"
        )
    return 0


def run_wait(args: argparse.Namespace) -> int:
    """Follow a task until it ends: exit 0 done, 1 failed, 3 cancelled, 4 timed out."""
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    last = ""
    task_id: str = args.id
    with admin_database(write=False) as (_settings, session):
        while True:
            try:
                task = get_task(task_id, session=session)
            except UnknownTask:
                raise UnknownTask(f"unknown task {task_id} (deleted?)") from None
            where = f"{task.stage} {task.state}"
            if task.reason:
                where += f": {task.reason}"
            if where != last and not args.quiet:
                print(f"{task_id} {where}", flush=True)
            last = where
            state = State(task.state)
            if state == State.DONE:
                return EXIT_DONE
            if state == State.FAILED:
                return EXIT_FAILED
            if state == State.CANCELLED:
                return EXIT_CANCELLED
            if state == State.HELD:
                return EXIT_HELD
            # Each poll reads committed state in a fresh transaction (no snapshot held open).
            session.rollback()
            if deadline is not None and time.monotonic() >= deadline:
                if not args.quiet:
                    print(f"{task_id} still {task.stage} {task.state} after {args.timeout:g} s")
                return EXIT_TIMEOUT
            remaining = WAIT_POLL_S if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, min(WAIT_POLL_S, remaining)))
