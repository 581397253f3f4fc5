"""The ``petray`` command for tests: ``petray.cli.main`` in this process (a subprocess costs a
Python start and Ray-free imports, about a second and a half a call), or the installed entry
point in a subprocess where the process itself is what is tested.

In-process, a call sees only its own environment (no PETRAY_* of the developer's, its
PETRAY_HOME), an empty standard input, and its own stdout and stderr; the root logger is put
back as it was afterwards, since ``main`` configures logging for the process.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from petray.cli import main
from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.db.models import Patient, Series, Study
from petray.domain import Stage
from petray.tasks import create_task, fail, move_to

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


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _root_logging_kept() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


class Cli:
    """``petray`` with a temporary PETRAY_HOME (embedded SQLite)."""

    def __init__(self, home: Path, *, subprocess: bool = False) -> None:
        self.home = home
        self.subprocess = subprocess
        # Nothing from the developer's own PETRAY_* environment may leak into the run.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PETRAY_")}
        self.env["PETRAY_HOME"] = str(home)

    def __call__(self, *args: str, **env: str) -> Run:
        if self.subprocess:
            done = subprocess.run(
                [*PETRAY, *args],
                env={**self.env, **env},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            return Run(done.returncode, done.stdout, done.stderr)
        out, err = io.StringIO(), io.StringIO()
        with (
            _environment({**self.env, **env}),
            _root_logging_kept(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            stdin, sys.stdin = sys.stdin, io.StringIO("")
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: usage errors and --help
                code = _exit_code(exc)
            finally:
                sys.stdin = stdin
        return Run(code, out.getvalue(), err.getvalue())

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


@pytest.fixture
def migrated(cli: Cli) -> Cli:
    assert "upgraded" in cli.ok("migrate").out
    return cli


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
