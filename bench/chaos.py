"""Power cuts at every point of the pipeline (issue 8): n/9 recovered, lost, duplicates.

For each kill point — mid-ingest and each of the eight stages — a fresh ``petray start`` (the
real command, in a session of its own, as a service manager runs it) receives a series from
DCMTK ``storescu`` and is SIGKILLed, its whole process group, when the task is in that stage;
every Ray process of its run must then be gone (the gateway's watchdog). The gateway is started
again on the same home and the task must finish. The destination is DCMTK ``storescp +uf``,
which keeps every received copy, so duplicates are counted from what really arrived.

    .venv/bin/python -m bench.chaos                  # the whole matrix
    .venv/bin/python -m bench.chaos --points sending processing

A point whose stage went by before the kill landed is reported as such (the kill happened in a
later stage), never counted as that stage.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom

from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.demo.orthanc import free_port, port_open
from petray.demo.synth import make_pet_series, write_series
from petray.imaging.filters import FilterSpec
from petray.ray_leftovers import find_run_processes, read_record, record_path
from petray.settings import Settings, load_settings
from petray.site.siteconfig import add_destination_and_filters, get_site_config
from petray.site.storage import prepare_storage
from petray.tasks import TaskSummary, list_tasks
from serve.reference.main import RunningServer, running_reference

STORESCU = Path("/usr/bin/storescu")
STORESCP = Path("/usr/bin/storescp")
START_TIMEOUT_S = 180
FINISH_TIMEOUT_S = 240
FILTERS = (
    FilterSpec(id=None, description="Gauss 4mm", series_number=901, fwhm_mm=4.0),
    FilterSpec(id=None, description="Gauss 6mm", series_number=902, fwhm_mm=6.0),
)
POINTS = (
    "ingest",
    "compiling",
    "validating",
    "packing",
    "uploading",
    "processing",
    "downloading",
    "unpacking",
    "sending",
)


def peer_env() -> dict[str, str]:
    # Debian's DCMTK leaves Nagle's algorithm on: ~45 ms per instance without this.
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Destination:
    aet: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def sop_uids(self) -> list[str]:
        files = sorted(p for p in self.directory.rglob("*") if p.is_file())
        return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


@contextmanager
def storescp(workdir: Path, *extra: str) -> Iterator[Destination]:
    """DCMTK storescp keeping every received copy (+uf: unique file names)."""
    directory = workdir / "received"
    directory.mkdir(parents=True)
    port = free_port()
    log = (workdir / "storescp.log").open("wb")
    args = [str(STORESCP), "-aet", "STORESCP", "+xa", "-pm", "-dhl", "+uf", "-od", str(directory)]
    process = subprocess.Popen(
        [*args, *extra, str(port)], stdout=log, stderr=subprocess.STDOUT, env=peer_env()
    )
    try:
        _wait(lambda: port_open(port), 20, "storescp to listen")
        yield Destination("STORESCP", port, directory, process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


class GatewayProcess:
    """``petray start`` in its own session; ``power_cut`` SIGKILLs its group, like a power cut."""

    def __init__(self, settings: Settings, env: dict[str, str], log_path: Path) -> None:
        self.settings = settings
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "petray.cli", "start"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        started = self.log_path.stat().st_size
        deadline = time.monotonic() + START_TIMEOUT_S
        while "petray running" not in self.log_path.read_text(errors="replace")[started:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[started:][-2000:]
                raise RuntimeError(f"petray start did not come up ({self.log_path}):\n{tail}")
            time.sleep(0.2)

    def power_cut(self) -> float:
        """SIGKILL the gateway's process group; returns seconds until its whole run was gone."""
        assert self.process is not None
        record = read_record(record_path(self.settings.home))
        cut = time.monotonic()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None
        if record is not None:
            _wait(lambda: not find_run_processes(record.run_id), 60, "the run's processes to go")
        return time.monotonic() - cut

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.process = None


@dataclass
class Site:
    settings: Settings
    gateway: GatewayProcess
    reference: RunningServer
    destination: Destination
    sessions: Any
    workdir: Path

    def tasks(self) -> list[TaskSummary]:
        with unit_of_work(self.sessions) as session:
            return list_tasks(session=session)

    def wait_for(
        self, condition: Callable[[list[TaskSummary]], bool], what: str, timeout_s: float
    ) -> list[TaskSummary]:
        found: list[TaskSummary] = []

        def check() -> bool:
            nonlocal found
            found = self.tasks()
            return bool(found) and condition(found)

        try:
            _wait(check, timeout_s, what)
        except TimeoutError:
            raise TimeoutError(
                f"timed out waiting for {what}: {[t.as_dict() for t in found]}"
            ) from None
        return found

    def control(self, **switches: Any) -> None:
        httpx.post(
            f"{self.reference.url}/_control",
            json=switches,
            headers={"Authorization": f"Bearer {self.settings.remote_token}"},
            timeout=10,
        ).raise_for_status()

    def send(self, files: Sequence[Path], *, background: bool = False) -> Any:
        args = [str(STORESCU), "-aet", "SCANNER", "-aec", "PETRAY", "-nh"]
        args += ["127.0.0.1", str(self.settings.dicom_port), *map(str, files)]
        if background:
            return subprocess.Popen(
                args, env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        result = subprocess.run(args, env=peer_env(), capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed: {result.stderr.decode(errors='replace')}")
        return result

    def received_count(self) -> int:
        from sqlalchemy import func, select

        from petray.db.models import Instance

        with unit_of_work(self.sessions) as session:
            return int(session.scalar(select(func.count(Instance.id))) or 0)


@contextmanager
def site(workdir: Path, *, storescp_args: Sequence[str] = ()) -> Iterator[Site]:
    home = workdir / "home"
    reference_port = free_port()
    values = {
        "home": home,
        "dicom_port": free_port(),
        "http_port": free_port(),
        "remote_url": f"http://127.0.0.1:{reference_port}",
        "dashboard": False,
        "retry_base_s": 0.2,
        "retry_cap_s": 1.0,
        "sweep_interval_s": 1.0,
        "fsync": True,
    }
    settings = load_settings(**values)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PETRAY_", "RAY_ADDRESS"))}
    env.update({f"PETRAY_{k.upper()}": str(v) for k, v in values.items()})
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    with ExitStack() as stack:
        destination = stack.enter_context(storescp(workdir / "dest", *storescp_args))
        prepare_storage(settings)
        engine = make_engine(settings.resolved_database_url)
        stack.callback(engine.dispose)
        sessions = make_sessionmaker(engine)
        with unit_of_work(sessions) as session:
            config = get_site_config(session=session)
            config.min_images = 5
            config.inactivity_wait_s = 3.0
            add_destination_and_filters(
                session=session,
                name="pacs",
                ae_title=destination.aet,
                host="127.0.0.1",
                port=destination.port,
                filters=FILTERS,
            )
        reference = stack.enter_context(running_reference(settings, port=reference_port))
        gateway = GatewayProcess(settings, env, workdir / "gateway.log")
        stack.callback(gateway.stop)
        yield Site(settings, gateway, reference, destination, sessions, workdir)


@dataclass(frozen=True)
class Outcome:
    point: str
    killed_in: str
    state: str
    tasks: int
    expected: int
    delivered: int
    duplicates: int
    lost: int
    run_gone_s: float
    reason: str = ""

    @property
    def recovered(self) -> bool:
        return self.state == "done" and self.tasks == 1 and self.lost == 0


def _slices(point: str) -> int:
    # Packing and unpacking must last long enough for the kill to land in them.
    return 160 if point in ("packing", "downloading", "unpacking") else 12


def run_point(point: str, workdir: Path) -> Outcome:
    """One power cut at ``point``, a restart, and what reached the destination."""
    slow_sending = ("--sleep-after", "1") if point == "sending" else ()
    with site(workdir, storescp_args=slow_sending) as s:
        files = write_series(
            make_pet_series(
                slices=_slices(point),
                rows=96,
                cols=96,
                seed=3,
                number_of_slices=point != "compiling",
            ),
            workdir / "series",
        )
        s.gateway.start()
        if point in ("validating", "uploading"):
            s.control(delay=4.0)
        if point == "processing":
            s.control(slow=20.0)  # longer than a gateway start
        if point == "ingest":
            s.send(files[: len(files) // 2])
            s.wait_for(lambda ts: ts[0].images == len(files) // 2, "half the series", 60)
        elif point == "uploading":
            s.control(delay=0.0)
            sender = s.send(files, background=True)
            s.wait_for(lambda ts: ts[0].stage == "packing", "packing", 120)
            s.control(delay=4.0)
            sender.wait(timeout=60)
        else:
            s.send(files)
        if point != "ingest":
            wanted = "sending" if point == "sending" else point
            s.wait_for(
                lambda ts: (
                    ts[0].stage == wanted
                    and (point != "sending" or ts[0].destinations[0]["sent"] >= 2)
                ),
                f"the task in {wanted}",
                180,
            )
        killed_in = "ingest" if point == "ingest" else s.tasks()[0].stage
        run_gone_s = s.gateway.power_cut()
        s.control(delay=0.0, slow=0.0)
        s.gateway.start()
        if point == "ingest":
            s.send(files[len(files) // 2 :])
        tasks = s.wait_for(
            lambda ts: all(t.state in ("done", "failed", "cancelled") for t in ts),
            "the tasks to finish",
            FINISH_TIMEOUT_S,
        )
        expected = len(files) * len(FILTERS)
        _wait(lambda: len(s.destination.sop_uids()) >= expected, 20, "the last files")
        uids = s.destination.sop_uids()
        return Outcome(
            point=point,
            killed_in=killed_in,
            state=tasks[0].state if len(tasks) == 1 else "+".join(t.state for t in tasks),
            tasks=len(tasks),
            expected=expected,
            delivered=len(uids),
            duplicates=len(uids) - len(set(uids)),
            lost=expected - len(set(uids)),
            run_gone_s=run_gone_s,
            reason="; ".join(t.reason for t in tasks if t.reason),
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="*", default=list(POINTS), choices=POINTS)
    args = parser.parse_args(argv)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="petray-chaos-") as tmp:
        for point in args.points:
            outcome = run_point(point, Path(tmp) / point)
            outcomes.append(outcome)
            print(
                f"{point:<12} killed in {outcome.killed_in:<12} -> {outcome.state:<6} "
                f"tasks {outcome.tasks}  delivered {outcome.delivered}/{outcome.expected}  "
                f"duplicates {outcome.duplicates}  lost {outcome.lost}  "
                f"run gone in {outcome.run_gone_s:.1f} s  {outcome.reason}",
                flush=True,
            )
    recovered = sum(o.recovered for o in outcomes)
    print(
        f"{recovered}/{len(outcomes)} recovered, lost {sum(o.lost for o in outcomes)}, "
        f"duplicates {sum(o.duplicates for o in outcomes)}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    return 0 if recovered == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
