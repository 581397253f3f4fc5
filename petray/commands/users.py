"""``petray user add|list``: console users; the first admin is created here (issue 5).

There is no default password anywhere: it comes from ``--password``, ``PETRAY_PASSWORD`` or a
prompt on a terminal, and is refused when too short.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from petray.commands.admin import print_rows
from petray.commands.database import admin_session, cli_audit
from petray.errors import ConfigurationError
from petray.site.users import create_user, list_users

PASSWORD_ENV = "PETRAY_PASSWORD"


def _read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password", None):
        return str(args.password)
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise ConfigurationError(f"no password: pass --password, set {PASSWORD_ENV} or use a tty")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise ConfigurationError("the passwords do not match")
    return first


def run_user(args: argparse.Namespace) -> int:
    if args.action == "add":
        # Read before the database is opened: a refused password changes nothing.
        password = _read_password(args)
        with admin_session(write=True) as session:
            user = create_user(session=session, name=args.name, password=password, role=args.role)
            cli_audit("user.create", f"User {user.name}", session=session, role=user.role)
            print(f"user {user.name} created with role {user.role}")
        return 0
    if args.action == "list":
        with admin_session(write=False) as session:
            rows = [
                {"name": u.name, "role": u.role, "created": u.created.isoformat()}
                for u in list_users(session=session)
            ]
        print_rows(
            rows,
            as_json=args.json,
            empty="no users (add the first admin with: petray user add NAME --admin)",
            line="{name}\t{role}\t{when}",
            shown=lambda r: {**r, "when": r["created"][:16].replace("T", " ")},
        )
        return 0
    raise ConfigurationError(f"unknown action {args.action!r}")
