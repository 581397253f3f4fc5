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

import petray
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
    from petray.demo.synth import run_synth_command

    return run_synth_command(args)


def _cmd_reference_server(args: argparse.Namespace) -> int:
    from petray.bootstrap import run_reference_server

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


def _cmd_task(args: argparse.Namespace) -> int:
    from petray.commands.taskops import run_task

    return run_task(args)


def _cmd_wait(args: argparse.Namespace) -> int:
    from petray.commands.taskops import run_wait

    return run_wait(args)


def _cmd_radiopharm(args: argparse.Namespace) -> int:
    from petray.commands.siteconf import run_radiopharm

    return run_radiopharm(args)


def _cmd_config(args: argparse.Namespace) -> int:
    from petray.commands.siteconf import run_config

    return run_config(args)


def _cmd_user(args: argparse.Namespace) -> int:
    from petray.commands.users import run_user

    return run_user(args)


def _settings_epilog() -> str:
    """``petray start --help``: every PETRAY_* setting the gateway reads, with its default."""
    from petray.settings import Settings

    lines = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        secret = any(word in name for word in ("token", "secret", "password"))
        shown = "(development value)" if secret and default else default
        lines.append(f"  PETRAY_{name.upper():<30} {'' if shown is None else shown}")
    return (
        "Settings come from the environment (PETRAY_*); the site's run-time configuration\n"
        "(devices, filters, thresholds) lives in the database: see petray config show.\n"
        "Check a setup before starting with: petray check. README.md describes each setting.\n\n"
        + "\n".join(lines)
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


# Issue 15: a task held by the quantitative check is released (sent) or rejected (failed).
REVIEW_ACTIONS = (
    ("release", "send a task held for quantitative review"),
    ("reject", "fail a task held for quantitative review; its series are not sent"),
)


def _review_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], action: str, verb: str
) -> argparse.ArgumentParser:
    one = subparsers.add_parser(action, help=verb)
    one.add_argument("id", help="task id")
    if action == "reject":
        one.add_argument("--reason", default="", help="why, added to the task's reason")
    return one


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petray", description="DICOM gateway for PET imaging")
    parser.add_argument(
        "--version", action="version", version=f"petray {petray.__version__}", help="print it"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = sub.add_parser(
        "start",
        help="run the gateway in the foreground until Ctrl-C",
        description="Run the gateway (DICOM listener, pipeline, console) in the foreground "
        "until Ctrl-C or SIGTERM. Migrates the database first.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.set_defaults(func=_cmd_start)

    check = sub.add_parser("check", help="preflight: can a gateway run here? exit 0 if so")
    _add_json(check)
    check.set_defaults(func=_cmd_check)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to this version")
    migrate.set_defaults(func=_cmd_migrate)

    demo = sub.add_parser("demo", help="end-to-end run on embedded defaults; exit 0 if verified")
    demo.add_argument("--home", help="data directory (default: a fresh temporary one)")
    demo.add_argument("--slices", type=int, default=47, help="slices of the synthetic series")
    demo.add_argument("--size", type=int, default=128, help="rows and columns")
    demo.add_argument("--keep", action="store_true", help="keep the data directory")
    demo.set_defaults(func=_cmd_demo)

    synth = sub.add_parser("synth", help="write a synthetic PET series")
    synth.add_argument("outdir", help="directory for the DICOM files")
    synth.add_argument("--slices", type=int, default=47, help="number of slices (default 47)")
    synth.add_argument("--rows", type=int, default=128, help="image rows (default 128)")
    synth.add_argument("--cols", type=int, default=128, help="image columns (default 128)")
    synth.add_argument("--seed", type=int, default=0, help="random seed of the phantom")
    synth.add_argument("--patient-id", default="PETRAY0001", help="PatientID")
    synth.add_argument("--patient-name", default="Doe^Jane", help="PatientName (DICOM PN)")
    synth.add_argument(
        "--radiopharmaceutical", default="FDG", help="Radiopharmaceutical (default FDG)"
    )
    synth.add_argument(
        "--vendor", choices=["siemens", "ge", "philips"], default="siemens", help="header style"
    )
    synth.add_argument(
        "--units", choices=["BQML", "CNTS"], default="BQML", help="CNTS: Philips counts"
    )
    synth.add_argument(
        "--decay-correction",
        choices=["START", "ADMIN", "NONE"],
        default="START",
        help="what the pixels are decay corrected to (ADMIN: the injection, a GE option)",
    )
    synth.add_argument("--no-patient-weight", action="store_true", help="leave PatientWeight out")
    synth.add_argument(
        "--no-number-of-slices", action="store_true", help="leave NumberOfSlices out"
    )
    synth.add_argument(
        "--drop", default="", help="comma-separated 0-based slice indices to leave out"
    )
    synth.add_argument(
        "--transfer-syntax", default=None, help="transfer syntax UID (default Explicit VR LE)"
    )
    synth.set_defaults(func=_cmd_synth)

    ref = sub.add_parser("reference-server", help="the stand-in remote processing service")
    ref.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ref.add_argument("--port", type=int, default=8100, help="port to listen on (default 8100)")
    ref.add_argument("--licenses", help="JSON file with the licence table")
    # Test switches (also PETRAY_REFERENCE_* variables and POST /_control at run time).
    ref.add_argument("--slow", type=float, help="extra seconds per job")
    ref.add_argument("--delay", type=float, help="seconds before each answer")
    ref.add_argument("--fail-5xx", action="store_true", default=None, help="answer 503")
    ref.add_argument("--refuse", type=int, choices=[405, 406, 407], help="refuse check_model")
    ref.add_argument("--drop-callback", action="store_true", default=None, help="never call back")
    ref.add_argument(
        "--malicious",
        choices=["traversal", "wrong_shape", "nan", "oversized", "symlink", "wrong_dtype"],
        help="answer with a hostile result of this kind",
    )
    ref.set_defaults(func=_cmd_reference_server)

    device = sub.add_parser("device", help="DICOM sources and destinations")
    dsub = device.add_subparsers(dest="action", required=True, metavar="ACTION")
    dadd = dsub.add_parser("add", help="add a device")
    dadd.add_argument("name", help="a name for people (unique)")
    # A DICOM device has an AE title, host and port; a DICOMweb one a STOW-RS URL instead.
    dadd.add_argument("--ae-title", help="its AE title")
    dadd.add_argument("--host", help="its host name or IP address")
    dadd.add_argument("--port", type=int, help="its DICOM port")
    dadd.add_argument(
        "--stow-url",
        help="a DICOMweb destination: the STOW-RS service's base URL (petray posts to URL/studies)",
    )
    auth = dadd.add_mutually_exclusive_group()
    auth.add_argument("--token", help="STOW-RS bearer token ('-': read it from standard input)")
    auth.add_argument(
        "--basic", metavar="USER:PASS", help="STOW-RS HTTP Basic credentials ('-': from stdin)"
    )
    dadd.add_argument("--source", action="store_true", help="it may send to petray")
    dadd.add_argument("--destination", action="store_true", help="it receives the results")
    dadd.add_argument(
        "--match-ae-only",
        action="store_true",
        help="as a source, accept its AE title from any address (default: its host only)",
    )
    dadd.add_argument("--tls", action="store_true", help="send to it over DICOM TLS")
    dadd.add_argument(
        "--tls-ca",
        default="",
        help="CA file to verify it, DICOM TLS or https (default: system CAs)",
    )
    dadd.add_argument("--tls-cert", default="", help="client certificate, if it asks for one")
    dadd.add_argument("--tls-key", default="", help="key of the client certificate")
    _add_json(dsub.add_parser("list", help="list devices"))
    dsub.add_parser("remove", help="remove a device").add_argument("name", help="device name")
    dsub.add_parser("echo", help="C-ECHO a device; exit 1 if it does not answer").add_argument(
        "name", help="device name"
    )
    device.set_defaults(func=_cmd_device)

    filt = sub.add_parser("filter", help="Gaussian post-filters")
    fsub = filt.add_subparsers(dest="action", required=True, metavar="ACTION")
    fadd = fsub.add_parser("add", help="add a filter (one output series each)")
    fadd.add_argument("--description", required=True, help="series description of its output")
    fadd.add_argument("--fwhm", type=float, required=True, help="FWHM in mm (0 = none)")
    fadd.add_argument(
        "--series-number", type=int, required=True, help="series number of its output (unique)"
    )
    fadd.add_argument("--noise", type=float, default=0.0, help="noise blending percentage")
    fadd.add_argument(
        "--mode",
        choices=["append", "replace"],
        default="append",
        help="append the description to the original's, or replace it",
    )
    fadd.add_argument("--scanner-model", default="all", help="only for this scanner model")
    fadd.add_argument(
        "--radiopharmaceutical", default="all", help="only for this radiopharmaceutical"
    )
    fadd.add_argument("--disabled", action="store_true", help="add it switched off")
    _add_json(fsub.add_parser("list", help="list filters"))
    fsub.add_parser("remove", help="remove a filter").add_argument(
        "id", type=int, help="filter id (see filter list)"
    )
    filt.set_defaults(func=_cmd_filter)

    rp = sub.add_parser("radiopharm", help="the radiopharmaceutical table the Validator uses")
    rsub = rp.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_json(rsub.add_parser("list", help="list radiopharmaceuticals"))
    for action, verb in (("add", "add a radiopharmaceutical"), ("edit", "change one")):
        one = rsub.add_parser(action, help=verb)
        one.add_argument("name", help="its name (e.g. FDG)")
        needed = action == "add"
        if action == "edit":
            one.add_argument("--name", dest="new_name", help="rename it")
        one.add_argument("--nuclide", required=needed, help="radionuclide, e.g. F-18")
        one.add_argument("--half-life", type=float, required=needed, help="half-life in seconds")
        one.add_argument("--synonyms", help="comma-separated names a header may use")
        one.add_argument("--codes", help="comma-separated codes, e.g. SCT:35321007")
    rp.set_defaults(func=_cmd_radiopharm)

    config = sub.add_parser("config", help="the site configuration (as on the console)")
    csub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_json(csub.add_parser("show", help="print the configuration"))
    cset = csub.add_parser("set", help="change settings, e.g. min_images=20")
    cset.add_argument("pairs", nargs="+", metavar="KEY=VALUE", help="names as in config show")
    config.set_defaults(func=_cmd_config)

    tasks = sub.add_parser("tasks", help="list tasks, newest first")
    _add_json(tasks)
    tasks.add_argument("--limit", type=int, default=200, help="at most this many (default 200)")
    tasks.set_defaults(func=_cmd_tasks)
    # ``petray tasks release|reject ID``: the same as ``petray task release|reject ID``.
    review = tasks.add_subparsers(dest="action", required=False, metavar="[release|reject]")
    for action, verb in REVIEW_ACTIONS:
        _review_parser(review, action, verb).set_defaults(func=_cmd_task)

    task = sub.add_parser(
        "task", help="one task: show, retry, restart, cancel, delete, release or reject"
    )
    tsub = task.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, verb in (
        ("show", "print the task"),
        ("retry", "retry a failed or cancelled task from the stage where it stopped"),
        ("restart", "start a task again from validation"),
        ("cancel", "cancel a task"),
        ("delete", "delete a task with its files"),
    ):
        one = tsub.add_parser(action, help=verb)
        one.add_argument("id", help="task id")
        if action == "show":
            _add_json(one)
    for action, verb in REVIEW_ACTIONS:
        _review_parser(tsub, action, verb)
    task.set_defaults(func=_cmd_task)

    wait = sub.add_parser(
        "wait",
        help="wait for a task to end; exit 0 done, 1 failed, 3 cancelled, 4 timeout, 5 held",
        description="Print the task's stage as it moves and exit when it ends: 0 done, "
        "1 failed, 3 cancelled, 4 still running at --timeout, 5 held for quantitative review, "
        "2 unknown task.",
    )
    wait.add_argument("id", help="task id")
    wait.add_argument("--timeout", type=float, help="give up after this many seconds")
    wait.add_argument("--quiet", action="store_true", help="print nothing, only the exit code")
    wait.set_defaults(func=_cmd_wait)

    purge = sub.add_parser("purge", help="remove old tasks' files by the retention policy")
    purge.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    _add_json(purge)
    purge.set_defaults(func=_cmd_purge)

    user = sub.add_parser("user", help="console users")
    usub = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    uadd = usub.add_parser("add", help="add a user")
    uadd.add_argument("name", help="user name")
    role = uadd.add_mutually_exclusive_group(required=True)
    role.add_argument(
        "--admin", dest="role", action="store_const", const="admin", help="everything"
    )
    role.add_argument(
        "--operator",
        dest="role",
        action="store_const",
        const="operator",
        help="tasks, filters and C-ECHO",
    )
    role.add_argument(
        "--viewer", dest="role", action="store_const", const="viewer", help="read only"
    )
    uadd.add_argument("--password", help="default: read from PETRAY_PASSWORD or prompt")
    _add_json(usub.add_parser("list", help="list users"))
    user.set_defaults(func=_cmd_user)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Read before the settings, whose errors are themselves logged in this format.
    configure_logging(
        logging.DEBUG if args.verbose else logging.INFO,
        os.environ.get("PETRAY_LOG_FORMAT", "text").strip().lower(),
    )
    if not args.verbose:
        # The audit trail's copy of each change a command makes (it is in the database, and in
        # syslog when configured) is not the command's answer.
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: record.name != "petray.site.audit.trail")
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
