"""``petray device add --stow-url`` (issue 15): the real command, its checks and its listing."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.petray_cli import PETRAY, Cli

URL = "https://vna.example.org:8443/dicom-web"


def test_a_stow_destination_is_added_and_listed_without_its_secret(cli: Cli) -> None:
    added = cli.ok(
        "device",
        "add",
        "vna",
        "--stow-url",
        URL + "/",
        "--basic",
        "petray:s3cret-pw",
        "--destination",
    )
    assert f"added device vna: STOW-RS {URL} (basic petray:****)" in added.out
    cli.ok(
        "device",
        "add",
        "cloud",
        "--stow-url",
        "http://127.0.0.1:8042/dicom-web",
        "--token",
        "t0k3n-s3cret",
    )
    listing = cli.ok("device", "list")
    assert "s3cret" not in listing.out
    lines = {line.split()[0]: line for line in listing.out.splitlines()}
    assert "STOW-RS" in lines["vna"] and f"{URL} (basic petray:****)" in lines["vna"]
    assert "(bearer ****)" in lines["cloud"] and lines["cloud"].rstrip().endswith("destination")
    rows = {row["name"]: row for row in cli.ok("device", "list", "--json").json()}
    assert (rows["vna"]["stow_url"], rows["vna"]["stow_auth"], rows["vna"]["tls"]) == (
        URL,
        "basic petray:****",
        True,
    )
    assert rows["cloud"]["destination"] and not rows["cloud"]["source"]
    assert "s3cret" not in str(rows)
    cli.refused("device", "echo", "vna", message="C-ECHO is DICOM only")


def test_the_token_can_come_from_standard_input(cli: Cli) -> None:
    done = subprocess.run(
        [*PETRAY, "device", "add", "vna", "--stow-url", URL, "--token", "-"],
        input="from-stdin-token\n",
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "(bearer ****)" in done.stdout and "from-stdin" not in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stow-url", URL, "--ae-title", "PACS"], "--stow-url replaces --ae-title"),
        (["--stow-url", URL, "--host", "h", "--port", "1"], "--stow-url replaces --host, --port"),
        (["--stow-url", URL, "--source"], "destination only"),
        (["--stow-url", URL, "--tls"], "uses TLS with https://"),
        (["--stow-url", "ftp://vna/dicom-web"], "http:// or https://"),
        (["--stow-url", "https://u:p@vna/dicom-web"], "must not carry user:password"),
        (["--stow-url", URL + "/studies"], "appends /studies"),
        (["--stow-url", URL, "--basic", "no-colon"], "user:password"),
        (["--ae-title", "PACS", "--host", "h", "--port", "1", "--token", "t"], "for a STOW-RS"),
        (["--ae-title", "PACS", "--destination"], "needs --host, --port (or give --stow-url"),
    ],
)
def test_mixed_or_bad_arguments_are_refused_clearly(
    cli: Cli, args: list[str], message: str
) -> None:
    cli.refused("device", "add", "vna", *args, message=message)


def test_token_and_basic_exclude_each_other(cli: Cli) -> None:
    run = cli("device", "add", "vna", "--stow-url", URL, "--token", "t", "--basic", "a:b")
    assert run.code == 2 and "not allowed with argument" in run.err
