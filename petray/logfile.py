"""petray's own log file, PETRAY_HOME/logs/petray.log, and reading it back (issue 11).

Every actor process, the Serve replica and ``petray start`` append to one file, so the
console's log page shows the gateway's lines without Ray's session directories. Lines are plain
text in one format whatever PETRAY_LOG_FORMAT says for the terminal, so the page can filter by
level. The file is reopened when logrotate moves it (WatchedFileHandler).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LOG_DIR_NAME = "logs"
LOG_FILE_NAME = "petray.log"
FILE_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_TAIL_LINES = 10_000
OWN_LOGGERS = ("petray", "actors", "serve")
_TAIL_BLOCK = 64 * 1024
# A DICOM person name (family^given...): log lines avoid patient data, and this catches one
# that slipped into an exception's text before it reaches the file.
_PERSON_NAME = re.compile(r"[^\s\^=\\'\"(),:;]+\^[^\s=\\'\"(),:;]*")
_LINE = re.compile(r"^\S+ \S+ (?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def log_path(home: Path) -> Path:
    return home / LOG_DIR_NAME / LOG_FILE_NAME


def redact(text: str) -> str:
    """``text`` with anything shaped like a DICOM person name replaced by ``[name]``."""
    return _PERSON_NAME.sub("[name]", text)


class NoPersonNames(logging.Formatter):
    """The file's format, redacted as a whole: messages, exception texts and tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def install_log_file(home: Path, level: int = logging.INFO) -> logging.Handler:
    """Add the log file to the root logger of this process (once); returns its handler."""
    path = log_path(home)
    root = logging.getLogger()
    for handler in root.handlers:
        if (
            isinstance(handler, logging.handlers.WatchedFileHandler)
            and Path(handler.baseFilename) == path.resolve()
        ):
            return handler
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8", delay=True)
    handler.setLevel(level)
    handler.setFormatter(NoPersonNames(FILE_FORMAT))
    root.addHandler(handler)
    # A process whose root logger stays at WARNING (the Serve replica) still records petray's
    # own INFO lines; other libraries keep their levels.
    for name in OWN_LOGGERS:
        own = logging.getLogger(name)
        if own.getEffectiveLevel() > level:
            own.setLevel(level)
    os.chmod(path.parent, 0o750)  # operational detail (hosts, AE titles): not for everyone
    return handler


@dataclass(frozen=True)
class LogLine:
    text: str
    level: str  # "" for a continuation line (a traceback) of the line before


def _level_of(line: str, previous: str) -> str:
    match = _LINE.match(line)
    return match.group("level") if match else previous


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` (none when it does not exist), read from the end."""
    lines = max(1, min(lines, MAX_TAIL_LINES))
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            data = b""
            while end > 0 and data.count(b"\n") <= lines:
                start = max(0, end - _TAIL_BLOCK)
                handle.seek(start)
                data = handle.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def filtered(lines: Iterable[str], *, level: str = "", text: str = "") -> list[LogLine]:
    """Lines at ``level`` or above containing ``text`` (case-insensitive); a traceback's lines
    follow the line they belong to."""
    floor = LEVELS.index(level) if level in LEVELS else 0
    needle = text.strip().lower()
    kept: list[LogLine] = []
    current = ""
    for line in lines:
        current = _level_of(line, current)
        if current and LEVELS.index(current) < floor:
            continue
        if not current and floor:
            continue
        if needle and needle not in line.lower():
            continue
        kept.append(LogLine(text=line, level=current))
    return kept


def last_lines(path: Path, count: int, *, level: str = "", text: str = "") -> list[LogLine]:
    """The newest ``count`` matching lines, searched in the last MAX_TAIL_LINES of the file."""
    source = tail(path, MAX_TAIL_LINES if (level or text) else count)
    return list(deque(filtered(source, level=level, text=text), maxlen=max(1, count)))
