"""The real ``petray`` command in a subprocess, with a temporary PETRAY_HOME (embedded SQLite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy.orm import Session

from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.db.models import Patient, Series, Study
from petray.domain import Stage
from petray.tasks import create_task, fail, move_to

TASK_KEYS = {
    "id",
    "stage",
    "state",
    "images",
    "expected_images",
    "series_instance_uid",
    "reason",
    "created",
    "updated",
    "retry_attempts",
    "last_error",
    "next_attempt_at",
    "notes",
}
USAGE_ERROR = 2  # argparse and PetrayError both exit 2 with a message on stderr
_ENTRY_POINT = Path(sys.executable).with_name("petray")
PETRAY = [str(_ENTRY_POINT)] if _ENTRY_POINT.exists() else [sys.executable, "-m", "petray.cli"]


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home
        # Nothing from the developer's own PETRAY_* environment may leak into the run.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PETRAY_")}
        self.env["PETRAY_HOME"] = str(home)

    def __call__(self, *args: str, **env: str) -> Run:
        done = subprocess.run(
            [*PETRAY, *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, **env: str) -> Run:
        run = self(*args, **env)
        assert run.code == 0, f"petray {' '.join(args)} exited {run.code}: {run.err}"
        return run

    def refused(self, *args: str, message: str) -> Run:
        run = self(*args)
        assert run.code == USAGE_ERROR, f"exit {run.code}: {run.out} {run.err}"
        assert message in run.err
        # A clear message, not a traceback.
        assert "Traceback" not in run.err
        return run


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def test_device_add_list_remove(cli: Cli) -> None:
    added = cli.ok(
        "device",
        "add",
        "pacs",
        "--ae-title",
        "PACS",
        "--host",
        "127.0.0.1",
        "--port",
        "4242",
        "--destination",
    )
    assert "added device pacs: PACS@127.0.0.1:4242" in added.out
    cli.ok(
        "device",
        "add",
        "scanner",
        "--ae-title",
        "PETCT",
        "--host",
        "127.0.0.1",
        "--port",
        "104",
        "--source",
    )
    cli.refused(
        "device",
        "add",
        "pacs",
        "--ae-title",
        "OTHER",
        "--host",
        "127.0.0.1",
        "--port",
        "4243",
        "--destination",
        message="a device named 'pacs' already exists",
    )
    cli.refused(
        "device",
        "add",
        "bad",
        "--ae-title",
        "BAD",
        "--host",
        "127.0.0.1",
        "--port",
        "70000",
        "--destination",
        message="port 70000 out of range",
    )
    cli.refused(
        "device",
        "add",
        "toolong",
        "--ae-title",
        "A" * 17,
        "--host",
        "127.0.0.1",
        "--port",
        "1",
        "--source",
        message="AE title must be 1-16 characters",
    )
    assert cli.ok("device", "list", "--json").json() == [
        {
            "name": "pacs",
            "ae_title": "PACS",
            "host": "127.0.0.1",
            "port": 4242,
            "source": False,
            "destination": True,
            "tls": False,
            "match_ae_only": False,
            "stow_url": "",
            "stow_auth": "",
        },
        {
            "name": "scanner",
            "ae_title": "PETCT",
            "host": "127.0.0.1",
            "port": 104,
            "source": True,
            "destination": False,
            "tls": False,
            "match_ae_only": False,
            "stow_url": "",
            "stow_auth": "",
        },
    ]
    assert "removed device pacs" in cli.ok("device", "remove", "pacs").out
    cli.refused("device", "remove", "pacs", message="no device named 'pacs'")
    listing = cli.ok("device", "list").out.splitlines()
    assert len(listing) == 1
    assert listing[0].split()[:2] == ["scanner", "PETCT"]
    assert listing[0].rstrip().endswith("source")


def test_bad_arguments_exit_2(cli: Cli) -> None:
    run = cli("device", "add", "x", "--ae-title", "X", "--host", "h", "--port", "not-a-number")
    assert run.code == USAGE_ERROR
    assert "invalid int value" in run.err


def test_filter_add_list_remove(cli: Cli) -> None:
    added = cli.ok(
        "filter",
        "add",
        "--description",
        "Gauss 4 mm",
        "--fwhm",
        "4",
        "--series-number",
        "501",
        "--noise",
        "10",
        "--mode",
        "replace",
    )
    assert "added filter 1: Gauss 4 mm (FWHM 4 mm)" in added.out
    cli.refused(
        "filter",
        "add",
        "--description",
        "Broken",
        "--fwhm",
        "-1",
        "--series-number",
        "502",
        message="FWHM must be a finite number of millimetres >= 0",
    )
    assert cli.ok("filter", "list", "--json").json() == [
        {
            "id": 1,
            "description": "Gauss 4 mm",
            "series_number": 501,
            "fwhm_mm": 4.0,
            "noise_pct": 10.0,
            "mode": "replace",
            "scanner_model": "all",
            "radiopharmaceutical": "all",
            "enabled": True,
        },
    ]
    assert "removed filter 1" in cli.ok("filter", "remove", "1").out
    cli.refused("filter", "remove", "1", message="no filter with id 1")


def add_tasks(database: Path) -> list[str]:
    """Two tasks written straight into the database the CLI created."""
    engine = make_engine(f"sqlite:///{database}")
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            return [_task(session, 1, failed=False), _task(session, 2, failed=True)]
    finally:
        engine.dispose()


def _task(session: Session, n: int, *, failed: bool) -> str:
    patient = Patient(patient_id=f"P{n}")
    study = Study(study_instance_uid=f"1.2.826.0.9.{n}", patient=patient)
    series = Series(series_instance_uid=f"1.2.826.0.9.{n}.1", study=study, modality="PT")
    session.add_all([patient, study, series])
    session.flush()
    task = create_task(
        session=session,
        series_pk=series.id,
        calling_ae="SCANNER",
        peer_host="127.0.0.1",
        expected=47,
    )
    task.images = 47 if failed else 12
    move_to(task, Stage.VALIDATING if failed else Stage.PACKING, session=session)
    if failed:
        fail(task, "no DICOM destination is configured", session=session)
    session.flush()
    return task.id


def test_tasks_json_lists_tasks_with_every_field(cli: Cli) -> None:
    cli.ok("migrate")  # listings never migrate (issue 11)
    assert cli.ok("tasks", "--json").json() == []
    packing, failed = add_tasks(cli.home / "petray.db")
    rows = cli.ok("tasks", "--json").json()
    assert isinstance(rows, list)
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {packing, failed}
    for row in rows:
        assert set(row) >= TASK_KEYS
    assert by_id[failed]["stage"] == "validating"
    assert by_id[failed]["state"] == "failed"
    assert by_id[failed]["reason"] == "no DICOM destination is configured"
    assert (by_id[packing]["images"], by_id[packing]["expected_images"]) == (12, 47)
    assert by_id[packing]["series_instance_uid"] == "1.2.826.0.9.1.1"
    text = cli.ok("tasks").out
    assert f"{failed}  validating  failed" in text
    assert "47/47 images  no DICOM destination is configured" in text


def test_synth_writes_the_requested_series(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "series"
    cli.ok("synth", str(out), "--slices", "5", "--rows", "16", "--cols", "16")
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 5
    datasets = [dcmread(f) for f in files]
    assert {(ds.Rows, ds.Columns, ds.Modality) for ds in datasets} == {(16, 16, "PT")}
    assert len({ds.SOPInstanceUID for ds in datasets}) == 5
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    # Named by instance number and UID, never by patient fields.
    assert all("Doe" not in f.name for f in files)


def test_synth_refuses_a_bad_spec(cli: Cli, tmp_path: Path) -> None:
    cli.refused(
        "synth", str(tmp_path / "x"), "--slices", "5", "--drop", "7", message="drop indices"
    )
    assert not list((tmp_path / "x").glob("*.dcm"))


def test_user_add_reads_the_password_from_the_environment(cli: Cli) -> None:
    created = cli.ok("user", "add", "alice", "--admin", PETRAY_PASSWORD="correct horse battery")
    assert "user alice created with role admin" in created.out
    short = cli("user", "add", "bob", "--viewer", PETRAY_PASSWORD="short")
    assert short.code == USAGE_ERROR
    assert "at least" in short.err
    users = cli.ok("user", "list").out.splitlines()
    assert [line.split("\t")[:2] for line in users] == [["alice", "admin"]]
