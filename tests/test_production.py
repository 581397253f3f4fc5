"""Production mode refuses development secrets, before Ray starts (issue 9)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from petray.ray_leftovers import read_record, record_path
from petray.settings import Settings
from petray.site.production import production_problems
from tests.support.app import build_harness

GOOD = {
    "secret_key": "s" * 8 + "0123456789abcdef0123456789abcdef",
    "callback_token": "c" * 8 + "0123456789abcdef0123456789abcdef",
    "remote_token": "r" * 8 + "0123456789abcdef0123456789abcdef",
}
# Exits before Ray: well under Ray's own start-up (~4 s) plus the interpreter's.
FAST_S = 15.0


def settings(tmp_path: Path, **overrides: str | None) -> Settings:
    values = {**GOOD, **overrides}
    return Settings(home=tmp_path, production=True, **values)  # type: ignore[arg-type]


def test_good_secrets_pass(tmp_path: Path) -> None:
    assert production_problems(settings(tmp_path)) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"secret_key": None}, ["PETRAY_SECRET_KEY is not set"]),
        ({"callback_token": "petray-dev-callback-token"}, ["PETRAY_CALLBACK_TOKEN is a dev"]),
        ({"remote_token": "petray-dev-remote-token"}, ["PETRAY_REMOTE_TOKEN is a dev"]),
        ({"remote_token": "   "}, ["PETRAY_REMOTE_TOKEN is not set"]),
        ({"secret_key": "CHANGEME"}, ["PETRAY_SECRET_KEY is a dev"]),
        ({"callback_token": "x" * 31}, ["PETRAY_CALLBACK_TOKEN has 31 characters"]),
        (
            {
                "secret_key": "",
                "callback_token": "short",
                "remote_token": "petray-dev-remote-token",
            },
            [
                "PETRAY_SECRET_KEY is not set",
                "PETRAY_CALLBACK_TOKEN has 5 characters",
                "PETRAY_REMOTE_TOKEN is a dev",
            ],
        ),
    ],
)
def test_each_problem_is_one_line(
    tmp_path: Path, overrides: dict[str, str | None], expected: list[str]
) -> None:
    problems = production_problems(settings(tmp_path, **overrides))
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem
        assert "\n" not in problem
    # A secret is never echoed back.
    for value in overrides.values():
        if value and value.strip():
            assert all(value not in problem for problem in problems)


def start_env(home: Path, **secrets: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PETRAY_", "RAY_ADDRESS"))}
    env.update(
        {
            "PETRAY_HOME": str(home),
            "PETRAY_PRODUCTION": "true",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    env.update({f"PETRAY_{name.upper()}": value for name, value in secrets.items()})
    return env


@pytest.mark.parametrize(
    ("secrets", "lines"),
    [
        (
            {},
            [
                "petray: PETRAY_SECRET_KEY is not set",
                "petray: PETRAY_CALLBACK_TOKEN is a development default",
                "petray: PETRAY_REMOTE_TOKEN is a development default",
            ],
        ),
        (
            {
                "secret_key": GOOD["secret_key"],
                "callback_token": "petray-dev-callback-token",
                "remote_token": "too-short-token",
            },
            [
                "petray: PETRAY_CALLBACK_TOKEN is a development default",
                "petray: PETRAY_REMOTE_TOKEN has 15 characters",
            ],
        ),
        ({**GOOD, "secret_key": "secret"}, ["petray: PETRAY_SECRET_KEY is a development default"]),
    ],
    ids=["nothing-set", "dev-and-short", "guessable-secret"],
)
def test_start_refuses_development_secrets_before_ray(
    tmp_path: Path, secrets: dict[str, str], lines: list[str]
) -> None:
    home = tmp_path / "home"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "petray.cli", "start"],
        env=start_env(home, **secrets),
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(lines), result.stderr
    for line, start in zip(errors, lines, strict=True):
        assert line.startswith(start), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    # No Ray: no run was recorded, nothing was even created in the home.
    assert read_record(record_path(home)) is None
    assert not home.exists()
    assert elapsed < FAST_S


def test_callback_refuses_the_development_token_in_production(tmp_path: Path) -> None:
    """Even if an app were built with the default token, production never accepts it."""
    for harness in build_harness(
        tmp_path,
        production=True,
        secret_key=GOOD["secret_key"],
        callback_token="petray-dev-callback-token",
    ):
        response = harness.client.post(
            "/process_ready",
            json={"task_id": "0" * 32},
            headers={"Authorization": "Bearer petray-dev-callback-token"},
        )
        assert response.status_code == 401
        assert response.json() == {"detail": "invalid or missing callback token"}
        assert harness.pipeline.calls == []


def test_callback_accepts_a_production_token(tmp_path: Path) -> None:
    for harness in build_harness(
        tmp_path,
        production=True,
        secret_key=GOOD["secret_key"],
        callback_token=GOOD["callback_token"],
    ):
        response = harness.client.post(
            "/process_ready",
            json={"task_id": "0" * 32},
            headers={"Authorization": f"Bearer {GOOD['callback_token']}"},
        )
        assert response.status_code == 404  # authenticated; the task is unknown
