"""Which processes belong to the local Ray a gateway started, and how to be rid of them.

Ray starts each actor in its own process group (issue 8: a SIGKILL of the gateway's group left
13 actors alive; one finished a download after the "power cut"). A gateway that starts a local
Ray therefore records that run in ``PETRAY_HOME/gateway.json`` and tags it: every process Ray
starts inherits the ``PETRAY_GATEWAY_RUN`` variable the gateway sets around ``ray.init`` (GCS,
raylet, dashboard, every worker and actor). Ray's agents get an environment of their own, so a
process also belongs to the run when it is a descendant of a tagged one, or a Ray process holding
a file in the run's session directory. Nothing else is ever touched: other Ray clusters on the
same machine carry no tag, or another one.

Linux only (``/proc``), like the gateway itself; elsewhere nothing is found.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)
RUN_MARKER = "PETRAY_GATEWAY_RUN"
RECORD_FILE = "gateway.json"
PROC = Path("/proc")
KILL_TIMEOUT_S = 10.0
KILL_POLL_S = 0.1


@dataclass(frozen=True)
class GatewayRecord:
    """What a gateway started, written before ``ray.init`` and again once its session exists."""

    pid: int
    host: str
    run_id: str
    started_at: float
    session_dir: str | None = None


def new_record(*, pid: int | None = None) -> GatewayRecord:
    return GatewayRecord(
        pid=os.getpid() if pid is None else pid,
        host=socket.gethostname(),
        run_id=uuid.uuid4().hex,
        started_at=time.time(),
    )


def record_path(home: Path) -> Path:
    return home / RECORD_FILE


def write_record(path: Path, record: GatewayRecord) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(asdict(record)) + "\n", encoding="utf-8")
    os.replace(temporary, path)  # a reader never sees half a record


def read_record(path: Path) -> GatewayRecord | None:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return GatewayRecord(**values)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        logger.warning("ignoring an unreadable gateway record %s", path)
        return None


@dataclass(frozen=True)
class _Process:
    pid: int
    ppid: int
    argv: tuple[str, ...]
    tagged: bool

    def is_ray(self, session: str) -> bool:
        """A Ray process: a worker or agent by its title, or a program or script of the ray
        package (``petray`` also contains "ray"; an operator's ``tail`` of a session log is not).
        """
        if self.argv and self.argv[0].startswith(("ray::", "ray-dashboard-")):
            return True
        return any("/ray/" in arg and not arg.startswith(session) for arg in self.argv[:3])


def _read_process(pid: int, marker: bytes) -> _Process | None:
    base = PROC / str(pid)
    try:
        stat = (base / "stat").read_text()
        # The command name in parentheses may itself hold spaces or parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            return None  # already dead, only waiting to be reaped
        argv = tuple((base / "cmdline").read_bytes().decode(errors="replace").split("\0"))
        try:
            tagged = marker in (base / "environ").read_bytes().split(b"\0")
        except PermissionError:
            tagged = False  # another user's process: never ours
        return _Process(pid=pid, ppid=int(fields[1]), argv=argv, tagged=tagged)
    except (OSError, ValueError, IndexError):
        return None  # gone while we looked, or not readable


def _holds_file_under(pid: int, directory: str) -> bool:
    fd_dir = PROC / str(pid) / "fd"
    try:
        for entry in fd_dir.iterdir():
            try:
                if os.readlink(entry).startswith(directory):
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


def find_run_processes(run_id: str, session_dir: str | None = None) -> list[int]:
    """Pids of every live process of this gateway run (never the calling process)."""
    marker = f"{RUN_MARKER}={run_id}".encode()
    own = os.getpid()
    processes: dict[int, _Process] = {}
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if entry.name.isdigit() and int(entry.name) != own:
            found = _read_process(int(entry.name), marker)
            if found is not None:
                processes[found.pid] = found
    session = session_dir.rstrip("/") + "/" if session_dir else None
    members = {
        p.pid
        for p in processes.values()
        if p.tagged
        or (
            session is not None
            and p.is_ray(session)
            and (any(session in arg for arg in p.argv) or _holds_file_under(p.pid, session))
        )
    }
    # Descendants: Ray's agents are started by the raylet with an environment of their own.
    grew = True
    while grew:
        children = {p.pid for p in processes.values() if p.ppid in members} - members
        members |= children
        grew = bool(children)
    return sorted(members)


def kill_processes(pids: Iterable[int]) -> list[int]:
    """SIGKILL each pid; returns those that existed."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except PermissionError:
            logger.warning("not allowed to stop process %d", pid)
            continue
        killed.append(pid)
    return killed


def kill_run(
    run_id: str, session_dir: str | None = None, *, timeout_s: float = KILL_TIMEOUT_S
) -> list[int]:
    """SIGKILL every process of the run until none is left (a raylet may still spawn workers
    between two sweeps). Returns every pid killed; those still alive at the deadline are logged.
    """
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = find_run_processes(run_id, session_dir)
        if not remaining:
            return killed
        if time.monotonic() >= deadline:
            logger.error("processes of gateway run %s still alive: %s", run_id, remaining)
            return killed
        killed.extend(pid for pid in kill_processes(remaining) if pid not in killed)
        time.sleep(KILL_POLL_S)


def reap_previous_run(home: Path) -> list[int]:
    """Kill what the previous gateway on ``home`` left running. Call it holding the home lock:
    the previous gateway is then dead, and its run's processes are leftovers.
    """
    record = read_record(record_path(home))
    if record is None or record.host != socket.gethostname():
        return []
    killed = kill_run(record.run_id, record.session_dir)
    if killed:
        logger.warning(
            "the previous gateway (pid %d) left %d Ray processes running; stopped them",
            record.pid,
            len(killed),
        )
    return killed
