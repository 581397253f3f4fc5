"""The ``petray`` command for daily use (issue 11) on its own PETRAY_HOME and the embedded
SQLite database (``petray.cli.main`` in-process: see tests/support/petray_cli.py)."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from sqlalchemy import inspect, select

import petray
from petray.cli import build_parser
from petray.commands.database import head_revision
from petray.db.engine import MIGRATIONS_DIR, make_engine, make_sessionmaker, unit_of_work
from petray.db.models import AuditEvent
from petray.domain import Stage
from petray.tasks import complete, get_task, move_to
from tests.support.peers import free_port, start_storescp
from tests.support.petray_cli import USAGE_ERROR, Cli, add_tasks


def _db(cli: Cli) -> Path:
    return cli.home / "petray.db"


def _audit(cli: Cli, action: str) -> list[AuditEvent]:
    engine = make_engine(f"sqlite:///{_db(cli)}")
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action))
            for row in (found := list(rows)):
                session.expunge(row)
            return found
    finally:
        engine.dispose()


def _set_state(cli: Cli, task_id: str, change: str) -> None:
    engine = make_engine(f"sqlite:///{_db(cli)}")
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            task = get_task(task_id, session=session)
            if change == "done":
                complete(task, session=session)
            elif change == "sending":
                move_to(task, Stage.SENDING, session=session)
    finally:
        engine.dispose()


def _actions(parser: argparse.ArgumentParser, path: str = "petray") -> list[tuple[str, str]]:
    """(command path, option) for every option and positional lacking a help text."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                missing += _actions(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append((path, action.dest))
    return missing


def test_every_option_has_help_and_version_prints(cli: Cli) -> None:
    assert _actions(build_parser()) == []
    assert cli.ok("--version").out.strip() == f"petray {petray.__version__}"
    start = cli.ok("start", "--help").out
    # A pointer to the settings, each with its default.
    assert "PETRAY_HOME" in start and "PETRAY_DATABASE_URL" in start
    assert "PETRAY_DICOM_PORT" in start and "11112" in start
    assert "petray check" in start


def test_head_revision_matches_alembic() -> None:
    from alembic.script import ScriptDirectory

    assert head_revision() == ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def test_read_only_commands_never_migrate(cli: Cli) -> None:
    refused = cli("tasks")
    assert refused.code == USAGE_ERROR
    assert "there is no database" in refused.err and "run petray migrate" in refused.err
    assert not _db(cli).exists()
    cli.home.mkdir()
    _db(cli).touch()  # an empty database: no schema yet
    refused = cli("device", "list")
    assert "the database is empty" in refused.err and "run petray migrate" in refused.err
    engine = make_engine(f"sqlite:///{_db(cli)}")
    try:
        with engine.connect() as connection:
            # Nothing was created: no schema, no alembic_version.
            assert inspect(connection).get_table_names() == []
    finally:
        engine.dispose()
    assert "upgraded from revision (empty)" in cli.ok("migrate").out
    for args, empty in (
        (("tasks",), "no tasks"),
        (("device", "list"), "no devices"),
        (("filter", "list"), "no filters"),
        (("user", "list"), "no users"),
        (("radiopharm", "list"), "no radiopharmaceuticals"),
    ):
        assert cli.ok(*args).out.startswith(empty), args
        assert cli.ok(*args, "--json").json() == [], args


def test_task_retry_cancel_delete_and_show(migrated: Cli) -> None:
    cli = migrated
    packing, failed = add_tasks(_db(cli))
    shown = cli.ok("task", "show", failed, "--json").json()
    assert isinstance(shown, dict) and shown["state"] == "failed"
    retried = cli.ok("task", "retry", failed).out
    assert f"task {failed} back to work in validating (was validating/failed)" in retried
    assert cli.ok("task", "show", failed, "--json").json()["state"] == "active"  # type: ignore[index]
    assert "cancelled task" in cli.ok("task", "cancel", failed).out
    cli.refused("task", "cancel", failed, message="already cancelled")
    cli.refused("task", "retry", packing, message="only failed tasks are retried")
    assert f"deleted task {packing}" in cli.ok("task", "delete", packing).out
    cli.refused("task", "show", packing, message=f"unknown task {packing}")
    actions = {
        e.action: (e.actor, e.source, e.detail)
        for action in ("task.retry", "task.cancel", "task.delete")
        for e in _audit(cli, action)
    }
    assert set(actions) == {"task.retry", "task.cancel", "task.delete"}
    assert all(source == "cli" and actor for actor, source, _ in actions.values())
    assert actions["task.retry"][2]["after"] == "validating/active"


def test_wait_exits_with_the_final_state(migrated: Cli) -> None:
    cli = migrated
    packing, failed = add_tasks(_db(cli))
    assert cli("wait", failed).code == 1
    started = time.monotonic()
    timed_out = cli("wait", packing, "--timeout", "1")
    assert timed_out.code == 4
    assert "still packing active after 1 s" in timed_out.out
    assert time.monotonic() - started < 60

    # The task moves on while ``wait`` follows it: each move is printed, then exit 0.
    def move_on() -> None:
        _set_state(cli, packing, "sending")
        time.sleep(2.0)  # a second move, seen by a later poll (0.5 s apart)
        _set_state(cli, packing, "done")

    mover = threading.Timer(2.0, move_on)
    mover.start()
    try:
        done = cli("wait", packing, "--timeout", "60")
    finally:
        mover.join()
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert lines[0] == f"{packing} packing active"
    assert f"{packing} sending active" in lines
    assert lines[-1] == f"{packing} done done"
    assert cli("wait", packing, "--quiet").out == ""
    unknown = cli("wait", "0" * 32)
    assert unknown.code == USAGE_ERROR and "unknown task" in unknown.err


def test_wait_on_a_cancelled_task_exits_3(migrated: Cli) -> None:
    cli = migrated
    packing, _failed = add_tasks(_db(cli))
    cli.ok("task", "cancel", packing)
    assert cli("wait", packing, "--quiet").code == 3


def test_radiopharm_and_config_from_the_shell(migrated: Cli) -> None:
    cli = migrated
    cli.ok(
        "radiopharm",
        "add",
        "FDG",
        "--nuclide",
        "F-18",
        "--half-life",
        "6586.2",
        "--synonyms",
        "fludeoxyglucose, 18F-FDG",
        "--codes",
        "SCT:35321007",
    )
    cli.refused(
        "radiopharm",
        "add",
        "FDG",
        "--nuclide",
        "F-18",
        "--half-life",
        "1",
        message="named 'FDG' exists",
    )
    cli.refused(
        "radiopharm", "add", "X", "--nuclide", "F-18", "--half-life", "-1", message="half_life_s"
    )
    assert "half_life_s" in cli.ok("radiopharm", "edit", "FDG", "--half-life", "6586").out
    cli.refused("radiopharm", "edit", "NOPE", "--half-life", "1", message="no radiopharmaceutical")
    rows = cli.ok("radiopharm", "list", "--json").json()
    assert rows == [
        {
            "id": 1,
            "name": "FDG",
            "nuclide": "F-18",
            "half_life_s": 6586.0,
            "synonyms": ["fludeoxyglucose", "18F-FDG"],
            "codes": ["SCT:35321007"],
        }
    ]
    changed = cli.ok("config", "set", "min_images=20", "reply_to_sender=true").out
    assert "min_images: 10 -> 20" in changed and "reply_to_sender: False -> True" in changed
    assert cli.ok("config", "set", "min_images=20").out.strip() == "nothing changed"
    cli.refused("config", "set", "min_images=0", message="min_images")
    cli.refused("config", "set", "colour=blue", message="unknown setting colour")
    cli.refused("config", "set", "min_images", message="expected KEY=VALUE")
    client = cli.ok("config", "set", "client_id=hospital-a").out
    assert client.strip() == "client_id: petray-site -> hospital-a"
    cli.refused("config", "set", "client_id=has space", message="client_id")
    shown = cli.ok("config", "show", "--json").json()
    assert isinstance(shown, dict)
    assert (shown["min_images"], shown["reply_to_sender"]) == (20, True)
    assert shown["client_id"] == "hospital-a"
    assert "min_images             20" in cli.ok("config", "show").out
    update, _client = _audit(cli, "config.update")
    assert update.source == "cli"
    assert update.detail["changed"]["min_images"] == {"from": 10, "to": 20}
    assert [e.action for e in _audit(cli, "radiopharmaceutical.update")] == [
        "radiopharmaceutical.update"
    ]


def test_devices_and_filters_are_checked_when_entered(migrated: Cli) -> None:
    cli = migrated
    cli.refused(
        "device",
        "add",
        "pacs",
        "--ae-title",
        "PACS",
        "--host",
        "not a host!!",
        "--port",
        "104",
        "--destination",
        message="'not a host!!' is not a host name",
    )
    common = ("filter", "add", "--fwhm", "4", "--series-number", "501")
    cli.ok(*common, "--description", "Gauss 4")
    cli.refused(
        *common,
        "--description",
        "Gauss 4 again",
        message="series number 501 is already used by filter 'Gauss 4'",
    )


def test_device_echo(migrated: Cli, tmp_path: Path) -> None:
    cli = migrated
    with start_storescp(tmp_path) as scp:
        cli.ok(
            "device",
            "add",
            "pacs",
            "--ae-title",
            scp.aet,
            "--host",
            "127.0.0.1",
            "--port",
            str(scp.port),
            "--destination",
        )
        answered = cli.ok("device", "echo", "pacs")
        assert answered.out.startswith("echo ok:")
    cli.ok(
        "device",
        "add",
        "gone",
        "--ae-title",
        "GONE",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--destination",
    )
    silent = cli("device", "echo", "gone")
    assert silent.code == 1 and silent.out.startswith("echo failed:")
    cli.refused("device", "echo", "nope", message="no device named 'nope'")
    outcomes = sorted(e.detail["outcome"] for e in _audit(cli, "device.echo"))
    assert outcomes == ["failed", "ok"]
