"""``petray user add|list``: console users; the first admin is created here (issue 5).

There is no default password anywhere: it comes from ``--password``, ``PETRAY_PASSWORD`` or a
prompt on a terminal, and is refused when too short.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from petray.db.engine import make_engine, make_sessionmaker, migrate, unit_of_work
from petray.errors import ConfigurationError
from petray.settings import load_settings
from petray.users import create_user, list_users

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
    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        factory = make_sessionmaker(engine)
        if args.action == "add":
            password = _read_password(args)
            with unit_of_work(factory) as session:
                user = create_user(
                    session=session, name=args.name, password=password, role=args.role
                )
                print(f"user {user.name} created with role {user.role}")
            return 0
        if args.action == "list":
            with unit_of_work(factory) as session:
                for user in list_users(session=session):
                    print(f"{user.name}\t{user.role}\t{user.created:%Y-%m-%d %H:%M}")
            return 0
        raise ConfigurationError(f"unknown action {args.action!r}")
    finally:
        engine.dispose()
