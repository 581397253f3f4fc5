"""The ``petray`` command.

This module is the one place in ``petray/`` allowed to reach ``actors/`` and ``serve/``, and only
inside the command functions, so that ``petray synth`` or ``petray tasks`` never import Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from petray.errors import PetrayError
from petray.logformat import configure_logging

Command = Callable[[argparse.Namespace], int]


def _cmd_start(args: argparse.Namespace) -> int:
    from petray.commands.gateway import run_start

    return run_start(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from petray.commands.demo import run_demo

    return run_demo(args)


def _cmd_synth(args: argparse.Namespace) -> int:
    from petray.synth import run_synth_command

    return run_synth_command(args)


def _cmd_reference_server(args: argparse.Namespace) -> int:
    from serve.reference.main import run_reference_server

    return run_reference_server(args)


def _cmd_device(args: argparse.Namespace) -> int:
    from petray.commands.admin import run_device

    return run_device(args)


def _cmd_filter(args: argparse.Namespace) -> int:
    from petray.commands.admin import run_filter

    return run_filter(args)


def _cmd_tasks(args: argparse.Namespace) -> int:
    from petray.commands.admin import run_tasks

    return run_tasks(args)


def _cmd_check(args: argparse.Namespace) -> int:
    from petray.commands.check import run_check

    return run_check(args)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from petray.commands.check import run_migrate

    return run_migrate(args)


def _cmd_purge(args: argparse.Namespace) -> int:
    from petray.commands.purge import run_purge

    return run_purge(args)


def _cmd_user(args: argparse.Namespace) -> int:
    from petray.commands.users import run_user

    return run_user(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petray", description="DICOM gateway for PET imaging")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="run the gateway in the foreground until Ctrl-C")
    start.set_defaults(func=_cmd_start)

    check = sub.add_parser("check", help="preflight: can a gateway run here? exit 0 if so")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_cmd_check)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to this version")
    migrate.set_defaults(func=_cmd_migrate)

    demo = sub.add_parser("demo", help="end-to-end run on embedded defaults; exit 0 if verified")
    demo.add_argument("--home", help="data directory (default: a fresh temporary one)")
    demo.add_argument("--slices", type=int, default=47)
    demo.add_argument("--size", type=int, default=128, help="rows and columns")
    demo.add_argument("--keep", action="store_true", help="keep the data directory")
    demo.set_defaults(func=_cmd_demo)

    synth = sub.add_parser("synth", help="write a synthetic PET series")
    synth.add_argument("outdir")
    synth.add_argument("--slices", type=int, default=47)
    synth.add_argument("--rows", type=int, default=128)
    synth.add_argument("--cols", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--patient-id", default="PETRAY0001")
    synth.add_argument("--patient-name", default="Doe^Jane")
    synth.add_argument("--radiopharmaceutical", default="FDG")
    synth.add_argument("--vendor", choices=["siemens", "ge"], default="siemens")
    synth.add_argument("--no-number-of-slices", action="store_true")
    synth.add_argument(
        "--drop", default="", help="comma-separated 0-based slice indices to leave out"
    )
    synth.add_argument(
        "--transfer-syntax", default=None, help="transfer syntax UID (default Explicit VR LE)"
    )
    synth.set_defaults(func=_cmd_synth)

    ref = sub.add_parser("reference-server", help="the stand-in remote processing service")
    ref.add_argument("--host", default="127.0.0.1")
    ref.add_argument("--port", type=int, default=8100)
    ref.add_argument("--licenses", help="JSON file with the licence table")
    # Test switches (also PETRAY_REFERENCE_* variables and POST /_control at run time).
    ref.add_argument("--slow", type=float, help="extra seconds per job")
    ref.add_argument("--delay", type=float, help="seconds before each answer")
    ref.add_argument("--fail-5xx", action="store_true", default=None, help="answer 503")
    ref.add_argument("--refuse", type=int, choices=[405, 406, 407], help="refuse check_model")
    ref.add_argument("--drop-callback", action="store_true", default=None)
    ref.add_argument(
        "--malicious",
        choices=["traversal", "wrong_shape", "nan", "oversized", "symlink", "wrong_dtype"],
    )
    ref.set_defaults(func=_cmd_reference_server)

    device = sub.add_parser("device", help="DICOM sources and destinations")
    dsub = device.add_subparsers(dest="action", required=True)
    dadd = dsub.add_parser("add")
    dadd.add_argument("name")
    dadd.add_argument("--ae-title", required=True)
    dadd.add_argument("--host", required=True)
    dadd.add_argument("--port", type=int, required=True)
    dadd.add_argument("--source", action="store_true")
    dadd.add_argument("--destination", action="store_true")
    dadd.add_argument(
        "--match-ae-only",
        action="store_true",
        help="as a source, accept its AE title from any address (default: its host only)",
    )
    dadd.add_argument("--tls", action="store_true", help="send to it over DICOM TLS")
    dadd.add_argument("--tls-ca", default="", help="CA file to verify it (default: system CAs)")
    dadd.add_argument("--tls-cert", default="", help="client certificate, if it asks for one")
    dadd.add_argument("--tls-key", default="", help="key of the client certificate")
    dsub.add_parser("list").add_argument("--json", action="store_true")
    dsub.add_parser("remove").add_argument("name")
    device.set_defaults(func=_cmd_device)

    filt = sub.add_parser("filter", help="Gaussian post-filters")
    fsub = filt.add_subparsers(dest="action", required=True)
    fadd = fsub.add_parser("add")
    fadd.add_argument("--description", required=True)
    fadd.add_argument("--fwhm", type=float, required=True, help="FWHM in mm (0 = none)")
    fadd.add_argument("--series-number", type=int, required=True)
    fadd.add_argument("--noise", type=float, default=0.0, help="noise blending percentage")
    fadd.add_argument("--mode", choices=["append", "replace"], default="append")
    fadd.add_argument("--scanner-model", default="all")
    fadd.add_argument("--radiopharmaceutical", default="all")
    fadd.add_argument("--disabled", action="store_true")
    fsub.add_parser("list").add_argument("--json", action="store_true")
    fsub.add_parser("remove").add_argument("id", type=int)
    filt.set_defaults(func=_cmd_filter)

    tasks = sub.add_parser("tasks", help="list tasks")
    tasks.add_argument("--json", action="store_true")
    tasks.add_argument("--limit", type=int, default=200)
    tasks.set_defaults(func=_cmd_tasks)

    purge = sub.add_parser("purge", help="remove old tasks' files by the retention policy")
    purge.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    purge.add_argument("--json", action="store_true")
    purge.set_defaults(func=_cmd_purge)

    user = sub.add_parser("user", help="console users")
    usub = user.add_subparsers(dest="action", required=True)
    uadd = usub.add_parser("add")
    uadd.add_argument("name")
    role = uadd.add_mutually_exclusive_group(required=True)
    role.add_argument("--admin", dest="role", action="store_const", const="admin")
    role.add_argument("--operator", dest="role", action="store_const", const="operator")
    role.add_argument("--viewer", dest="role", action="store_const", const="viewer")
    uadd.add_argument("--password", help="default: read from PETRAY_PASSWORD or prompt")
    usub.add_parser("list")
    user.set_defaults(func=_cmd_user)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Read before the settings, whose errors are themselves logged in this format.
    configure_logging(
        logging.DEBUG if args.verbose else logging.INFO,
        os.environ.get("PETRAY_LOG_FORMAT", "text").strip().lower(),
    )
    # Libraries that narrate every request or PDU at INFO.
    for name in ("httpx", "pynetdicom", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
    except PetrayError as exc:
        print(f"petray: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
