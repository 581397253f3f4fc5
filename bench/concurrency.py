"""Concurrent ingest benchmark (issue 13): N storescu associations at once, each its own
300 x 192x192 series, into Orthanc, DCMTK storescp (``--fork``) and petray's real actors.

    python -m bench.concurrency [--associations 4 8] [--runs 3]

petray is its StoreScpActors and CompilatorActor in a private local Ray (as ``bench.ingest
--ray``), durable before each answer (fsync on): ``petray(ray)x1`` one SCP process,
``petray(ray)x2`` two sharing the port (SO_REUSEPORT, the gateway's default); a run counts
only when every series became exactly one task that left ``compiling``. The clock runs from
the first storescu's start to the last one's exit, the same for every receiver. Medians of
``--runs``, instances per second and the ratio to Orthanc in the same run; the load average is
printed beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.ingest import (
    CACHE_DIR,
    PETRAY_AE,
    RAY_START_TIMEOUT_S,
    SEND_TIMEOUT_S,
    SENDER_AE,
    STORESCP,
    STORESCU,
    local_ray,
    settle,
)
from bench.procs import cpu_seconds, descendants
from petray.db.engine import make_engine, make_sessionmaker, migrate
from petray.db.models import Instance, Task
from petray.demo.orthanc import LOOPBACK, free_port, peer_env, port_open, start_orthanc
from petray.demo.synth import make_pet_series, write_series
from petray.domain import Stage
from petray.settings import load_settings

SLICES, SIZE = 300, 192
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Series:
    directory: Path
    files: int


@dataclass(frozen=True)
class Run:
    receiver: str
    associations: int
    seconds: float
    files: int
    received: int
    # CPU seconds used during the send: by the receiver's processes (for petray its whole
    # private Ray: the Store SCPs, the Compilator, raylet, GCS...) and by the storescu senders.
    receiver_cpu_s: float = 0.0
    sender_cpu_s: float = 0.0

    @property
    def per_second(self) -> float:
        return self.files / self.seconds

    @property
    def receiver_ms_per_instance(self) -> float:
        return self.receiver_cpu_s / self.files * 1000

    @property
    def sender_ms_per_instance(self) -> float:
        return self.sender_cpu_s / self.files * 1000


def series_copies(count: int) -> list[Series]:
    """``count`` distinct series (own patient, study and UIDs), generated once and cached."""
    copies = []
    for index in range(count):
        directory = CACHE_DIR / f"concurrent-{index}-{SLICES}x{SIZE}x{SIZE}"
        marker = directory / ".complete"
        if not marker.exists():
            shutil.rmtree(directory, ignore_errors=True)
            series = make_pet_series(slices=SLICES, rows=SIZE, cols=SIZE, seed=100 + index)
            write_series(series, directory)
            marker.write_text("ok\n")
        copies.append(Series(directory, len(list(directory.glob("*.dcm")))))
    return copies


def send_all(copies: Sequence[Series], port: int, called_ae: str) -> float:
    """One storescu per series, all started at once once the machine is quiet (``settle``);
    seconds until the last one exits."""
    settle()
    started = time.perf_counter()
    command = [STORESCU, "-aet", SENDER_AE, "-aec", called_ae, "-R", "+sd", "-nh", LOOPBACK]
    senders = [
        subprocess.Popen(
            [*command, str(port), str(series.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=peer_env(),
        )
        for series in copies
    ]
    failures = []
    for sender in senders:
        _, err = sender.communicate(timeout=SEND_TIMEOUT_S)
        if sender.returncode != 0 or "Failed" in err:
            failures.append(err[-500:])
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} storescu failed: {failures[0]}")
    return elapsed


@contextmanager
def orthanc() -> Iterator[tuple[int, str, Callable[[], int]]]:
    with (
        tempfile.TemporaryDirectory(prefix="petray-bench-orthanc-") as tmp,
        start_orthanc(Path(tmp)) as peer,
    ):
        yield peer.dicom_port, peer.aet, lambda: len(peer.instances())


@contextmanager
def storescp() -> Iterator[tuple[int, str, Callable[[], int]]]:
    with tempfile.TemporaryDirectory(prefix="petray-bench-storescp-") as tmp:
        port = free_port()
        # --fork: one process per association, so that associations run in parallel.
        args = [STORESCP, "--fork", "-aet", "STORESCP", "+xa", "-pm", "-dhl", "-od", tmp]
        process = subprocess.Popen(
            [*args, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=peer_env(),
        )
        try:
            deadline = time.monotonic() + 20
            while not port_open(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("storescp did not start")
                time.sleep(0.05)
            yield port, "STORESCP", lambda: len(os.listdir(tmp))
        finally:
            process.terminate()
            process.wait(timeout=10)


@contextmanager
def petray_actors(processes: int) -> Iterator[tuple[int, str, Callable[[], int]]]:
    """``processes`` StoreScpActors sharing the port and the CompilatorActor in a private local
    Ray, on a fresh home, started as the gateway starts them (actors/pipeline.py)."""
    import ray

    from actors import names
    from actors.compilator import CompilatorActor
    from actors.store_scp import StoreScpActor

    with tempfile.TemporaryDirectory(prefix="petray-bench-concurrency-") as tmp, local_ray():
        settings = load_settings(
            home=Path(tmp),
            fsync=True,
            dicom_port=free_port(),
            ae_title=PETRAY_AE,
            database_url=os.environ.get("BENCH_DATABASE_URL") or None,
        )
        settings.ensure_dirs()
        engine = make_engine(settings.resolved_database_url)
        migrate(engine)
        sessions = make_sessionmaker(engine)
        compilator_class: Any = CompilatorActor
        scp_class: Any = StoreScpActor
        compilator = compilator_class.options(
            name=names.COMPILATOR, namespace=names.NAMESPACE
        ).remote(settings)
        ray.get(compilator.start.remote(), timeout=RAY_START_TIMEOUT_S)
        scps = [
            scp_class.options(name=names.store_scp_name(0), namespace=names.NAMESPACE).remote(
                settings, 0, processes
            )
        ]
        try:
            listener = ray.get(scps[0].start.remote(), timeout=RAY_START_TIMEOUT_S)
            for index in range(1, processes):
                name = names.store_scp_name(index)
                scps.append(
                    scp_class.options(name=name, namespace=names.NAMESPACE).remote(
                        settings, index, processes
                    )
                )
            ray.get([scp.start.remote() for scp in scps], timeout=RAY_START_TIMEOUT_S)

            def received() -> int:
                with sessions() as session:
                    return session.scalar(select(func.count()).select_from(Instance)) or 0

            yield int(listener["port"]), str(listener["ae_title"]), received
            # Every series must have become one task that left compiling.
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                with sessions() as session:
                    stages = session.scalars(select(Task.stage)).all()
                if (stages and Stage.COMPILING.value not in stages) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            print(f"    petray tasks: {len(stages)}, stages {sorted(set(stages))}")
        finally:
            ray.get([scp.stop.remote() for scp in scps], timeout=RAY_START_TIMEOUT_S)
            for scp in scps:
                ray.kill(scp, no_restart=True)
            ray.kill(compilator, no_restart=True)
            engine.dispose()


Receiver = Callable[[], AbstractContextManager[tuple[int, str, Callable[[], int]]]]


def receivers(processes: Sequence[int]) -> dict[str, Receiver]:
    """The peers, then petray with each number of Store SCP processes sharing the port."""
    chosen: dict[str, Receiver] = {"orthanc": orthanc, "storescp": storescp}
    for count in processes:
        chosen[f"petray(ray)x{count}"] = lambda count=count: petray_actors(count)  # type: ignore[misc]
    return chosen


def _cpu_of(pids: Sequence[int]) -> float:
    """CPU seconds of these processes and of the children they reaped (storescp --fork's)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # ended meanwhile
            total += cpu_seconds(pid, reaped_children=True)
    return total


def measure(receiver: Receiver, name: str, copies: Sequence[Series]) -> Run:
    with receiver() as (port, called_ae, received):
        # The receiver is every process below this one before the senders start.
        pids = descendants(os.getpid())
        receiver_cpu = _cpu_of(pids)
        senders_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = send_all(copies, port, called_ae)
        total = sum(series.files for series in copies)
        deadline = time.monotonic() + 10  # storescp writes each file after it answers
        while (count := received()) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        receiver_cpu = _cpu_of(pids) - receiver_cpu
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        sender_cpu = (after.ru_utime + after.ru_stime) - (
            senders_cpu.ru_utime + senders_cpu.ru_stime
        )
    return Run(name, len(copies), seconds, total, count, receiver_cpu, sender_cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--runs", type=int, default=3)
    # One Store SCP process (before issue 13) and the gateway's default of two sharing the port.
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2], help="Store SCP processes to compare"
    )
    parser.add_argument("--json", type=Path, help="also write the medians here (bench.summary)")
    args = parser.parse_args(argv)
    copies = series_copies(max(args.associations))
    runs: list[Run] = []
    chosen = receivers(args.processes)
    for count in args.associations:
        for run in range(1, args.runs + 1):
            for receiver, start in chosen.items():
                result = measure(start, receiver, copies[:count])
                runs.append(result)
                print(
                    f"{count} associations, run {run}, {receiver:<14} {result.seconds:6.2f} s "
                    f"{result.per_second:7.1f} inst/s  received {result.received}/{result.files}"
                    f"  CPU per instance: receiver {result.receiver_ms_per_instance:.2f} ms, "
                    f"senders {result.sender_ms_per_instance:.2f} ms",
                    flush=True,
                )
    print()
    print(
        f"{'associations':<13} {'receiver':<14} {'inst/s':>8} {'vs Orthanc':>10} "
        f"{'receiver CPU ms/inst':>21}"
    )
    table: dict[int, dict[str, float]] = {}
    cpu: dict[int, dict[str, float]] = {}
    for count in args.associations:

        def median(receiver: str, value: Callable[[Run], float], count: int = count) -> float:
            return statistics.median(
                value(r) for r in runs if r.receiver == receiver and r.associations == count
            )

        rates = {receiver: median(receiver, lambda r: r.per_second) for receiver in chosen}
        cpu[count] = {
            receiver: median(receiver, lambda r: r.receiver_ms_per_instance) for receiver in chosen
        }
        table[count] = rates
        for receiver, rate in rates.items():
            print(
                f"{count:<13} {receiver:<14} {rate:8.1f} {rate / rates['orthanc']:9.2f}x "
                f"{cpu[count][receiver]:21.2f}"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"inst_per_s": table, "receiver_cpu_ms_per_instance": cpu, "runs": args.runs},
                indent=2,
            )
        )
    print("load average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    incomplete = [r for r in runs if r.received < r.files]
    if incomplete:
        print(f"INCOMPLETE: {len(incomplete)} runs did not receive every instance")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
