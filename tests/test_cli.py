"""The ``petray`` command with a temporary PETRAY_HOME (embedded SQLite): its parsing, checks and
answers in-process; the installed entry point itself in a subprocess (the last tests)."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from tests.support.petray_cli import USAGE_ERROR, Cli, add_tasks

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


def test_the_installed_command_runs_as_its_own_process(tmp_path: Path) -> None:
    # Everything above runs petray.cli.main in-process; this is the entry point a user types.
    cli = Cli(tmp_path / "home", subprocess=True)
    device = ["--ae-title", "PACS", "--host", "127.0.0.1", "--destination"]
    cli.ok("device", "add", "pacs", *device, "--port", "4242")
    assert cli.ok("device", "list").out.split()[:2] == ["pacs", "PACS"]
    cli.refused("device", "add", "x", *device, "--port", "99999", message="out of range")
