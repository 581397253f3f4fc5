"""The gateway's watchdog: when ``petray start`` dies, the local Ray it started dies with it.

A small process in a session of its own (a kill of the gateway's process group does not reach
it) that waits on a pipe from the gateway. End of file without a "stop" line means the gateway
died (the kernel closes the pipe on SIGKILL too): the watchdog then SIGKILLs every process of
the gateway's Ray run (see :mod:`petray.ray_leftovers`) and exits. A gateway that stops cleanly
writes "stop" first; the watchdog then only waits for Ray to finish exiting and removes
stragglers quietly.

Run as ``python -m petray.watchdog --gateway-pid PID --run-id ID --record PATH`` with the pipe
as stdin; the gateway uses :class:`Watchdog`.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from petray.ray_leftovers import RUN_MARKER, find_run_processes, kill_run, read_record

logger = logging.getLogger(__name__)
POLL_S = 0.5
STOP = b"stop\n"
CLEAN_EXIT_GRACE_S = 10.0


class Watchdog:
    """The gateway's handle on its watchdog process."""

    def __init__(self, process: subprocess.Popen[bytes], pipe: int) -> None:
        self.process = process
        self._pipe: int | None = pipe

    @classmethod
    def start(cls, *, run_id: str, record: Path) -> Watchdog:
        read_end, write_end = os.pipe()  # both non-inheritable: no Ray process keeps it open
        env = {k: v for k, v in os.environ.items() if k != RUN_MARKER}
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "petray.watchdog", "--gateway-pid", str(os.getpid())),
                    *("--run-id", run_id, "--record", str(record)),
                ],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        return cls(process, write_end)

    def stop(self) -> None:
        """The gateway stops cleanly: tell the watchdog not to kill anything."""
        if self._pipe is None:
            return
        try:
            os.write(self._pipe, STOP)
        except BrokenPipeError:
            logger.warning("the gateway watchdog (pid %d) had exited", self.process.pid)
        finally:
            os.close(self._pipe)
            self._pipe = None


def wait_for_gateway(stdin_fd: int, gateway_pid: int) -> bool:
    """Block until the gateway stops; True when it said so, False when it died."""
    while True:
        readable, _, _ = select.select([stdin_fd], [], [], POLL_S)
        if readable:
            data = os.read(stdin_fd, len(STOP))
            return data == STOP
        # Belt and braces should the pipe's write end have leaked into a living process: our
        # parent is the gateway, and a dead parent's children are handed to another process.
        if os.getppid() != gateway_pid:
            return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m petray.watchdog")
    parser.add_argument("--gateway-pid", type=int, required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--record", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s petray watchdog: %(message)s"
    )
    gateway_pid = args.gateway_pid
    clean = wait_for_gateway(sys.stdin.fileno(), gateway_pid)
    # The session directory is known only once Ray runs: read it from the record now.
    record = read_record(args.record)
    session_dir = record.session_dir if record and record.run_id == args.run_id else None
    if clean:
        # ray.shutdown() stopped the raylet; its workers notice within a second or two.
        deadline = time.monotonic() + CLEAN_EXIT_GRACE_S
        while find_run_processes(args.run_id, session_dir) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        kill_run(args.run_id, session_dir)
        return 0
    killed = kill_run(args.run_id, session_dir)
    logger.warning(
        "the gateway (pid %d) died; stopped %d processes of the Ray it had started",
        gateway_pid,
        len(killed),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
