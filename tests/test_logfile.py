"""petray's own log file and reading it back for the log page (issue 11)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from petray.logfile import install_log_file, last_lines, log_path, tail


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Path]:
    handler = install_log_file(tmp_path)
    try:
        yield log_path(tmp_path)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def test_lines_are_written_without_patient_names(logged: Path) -> None:
    log = logging.getLogger("petray.test_logfile")
    log.info("task %s received from %s", "abc123", "SCANNER1")
    log.warning("refused %s", "Doe^Jane^M")
    try:
        raise ValueError("bad name Smith^John in header")
    except ValueError:
        log.exception("validation crashed")
    text = logged.read_text()
    assert "task abc123 received from SCANNER1" in text
    assert "Doe" not in text and "Jane" not in text and "Smith" not in text
    assert "refused [name]" in text
    assert " WARNING [" in text  # level and process id on every line


def test_install_is_idempotent(logged: Path, tmp_path: Path) -> None:
    before = len(logging.getLogger().handlers)
    install_log_file(tmp_path)
    assert len(logging.getLogger().handlers) == before


def test_tail_and_filters(tmp_path: Path) -> None:
    path = tmp_path / "petray.log"
    lines = [f"2026-12-02 10:00:{i % 60:02d},000 INFO [1] petray.x: line {i}" for i in range(5000)]
    lines[4990] = "2026-12-02 10:00:00,000 ERROR [1] petray.x: it broke"
    lines.insert(4991, "Traceback (most recent call last):")
    path.write_text("\n".join(lines) + "\n")
    assert tail(path, 3)[-1].endswith("line 4999")
    assert len(tail(path, 3)) == 3
    errors = last_lines(path, 50, level="ERROR")
    assert [x.text for x in errors] == [lines[4990], "Traceback (most recent call last):"]
    assert [x.level for x in errors] == ["ERROR", "ERROR"]
    found = last_lines(path, 10, text="LINE 4998")
    assert [x.text.rsplit(" ", 1)[-1] for x in found] == ["4998"]
    assert len(last_lines(path, 20)) == 20
    assert last_lines(tmp_path / "missing.log", 10) == []
