"""Delivery benchmark (issue 4): petray.dicom.scu.send_instances vs DCMTK storescu, same files.

    python -m bench.scu [--receivers orthanc,storescp] [--runs 2] [--associations 3] [--profile]

The files are a 645 x 440x440 derived series written by petray.imaging.derive.write_derived_series
(Explicit VR Little Endian with file meta, as the StoreSCU actor sends them), generated once
under /tmp/petray-bench. Each sender sends every file to a fresh receiver:

* storescu       DCMTK storescu (TCP_NODELAY=1), one association;
* petray-1       send_instances, one association, no progress recording;
* petray-1+db    the same with on_sent = record_sent committed per instance on SQLite (WAL), as
                 the StoreSCU actor does;
* petray-N+db    send_instances with N associations (only when the API has ``associations``).

Receivers: Orthanc (petray.demo.orthanc.start_orthanc, private storage) and DCMTK storescp
(``--fork`` so that parallel associations are served in parallel, as a PACS does).
It also times record_sent alone (one short transaction per instance) on SQLite.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import pstats
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from sqlalchemy.orm import Session, sessionmaker

from bench.ingest import CACHE_DIR, cached_series
from petray.db.engine import (
    core_transaction,
    make_engine,
    make_sessionmaker,
    migrate,
    unit_of_work,
)
from petray.db.models import Patient, Series, Study, Task, TaskDestination
from petray.demo.orthanc import LOOPBACK, free_port, peer_env, port_open, start_orthanc
from petray.dicom.scu import DicomNode, send_instances
from petray.domain import Stage, State
from petray.imaging.derive import write_derived_series
from petray.stages.delivery import record_sent

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
SENDER_AE = "PETRAY"
SEND_TIMEOUT_S = 600.0
DERIVED_UID_ROOT = "1.2.826.0.1.3680043.10.1234"
DERIVED_SERIES_UID = f"{DERIVED_UID_ROOT}.645.1"


@dataclass(frozen=True)
class Files:
    paths: list[Path]
    bytes: int


@dataclass
class Result:
    receiver: str
    sender: str
    run: int
    seconds: float
    files: int
    received: int
    # CPU seconds of this process (every thread) during the send: the petray senders' own cost;
    # storescu runs in its own process, so for it this is only the waiting.
    cpu_s: float = 0.0

    @property
    def cpu_note(self) -> str:
        if self.sender == "storescu":
            return ""
        return f"  sender CPU {self.cpu_s / self.files * 1000:.2f} ms/instance"

    @property
    def per_second(self) -> float:
        return self.files / self.seconds

    @property
    def ms_per_instance(self) -> float:
        return self.seconds / self.files * 1000


def derived_files() -> Files:
    """The big synthetic series rebuilt as a derived series once (same seed, same bytes)."""
    source = cached_series("big")
    directory = CACHE_DIR / "derived-645x440x440"
    marker = directory / ".complete"
    if not marker.exists():
        shutil.rmtree(directory, ignore_errors=True)
        started = time.perf_counter()
        sources = sorted(source.directory.glob("*.dcm"))
        first = pydicom.dcmread(sources[0], stop_before_pixels=True)
        shape = (len(sources), int(first.Rows), int(first.Columns))
        rng = np.random.default_rng(7)
        volume = rng.gamma(2.0, 2500.0, size=shape).astype(np.float32)
        write_derived_series(
            volume,
            sources,
            directory,
            series_instance_uid=DERIVED_SERIES_UID,
            series_number=801,
            series_description="bench derived",
            derivation_description="petray bench",
            uid_root=DERIVED_UID_ROOT,
        )
        marker.write_text("ok\n")
        print(f"generated derived series in {time.perf_counter() - started:.1f} s")
    paths = sorted(directory.glob("*.dcm"))
    return Files(paths, sum(p.stat().st_size for p in paths))


# -- progress database ------------------------------------------------------------------------


@contextmanager
def progress_db() -> Iterator[tuple[sessionmaker[Session], int]]:
    """A fresh SQLite database (the embedded default) with one task destination row."""
    with tempfile.TemporaryDirectory(prefix="petray-bench-db-") as tmp:
        engine = make_engine(f"sqlite:///{tmp}/petray.db")
        migrate(engine)
        sessions = make_sessionmaker(engine)
        with unit_of_work(sessions) as session:
            patient = Patient(patient_id="BENCH")
            study = Study(study_instance_uid="1.2.826.0.3.9", patient=patient)
            series = Series(series_instance_uid="1.2.826.0.3.9.1", study=study)
            task = Task(
                id="b" * 32, series=series, stage=Stage.SENDING, state=State.ACTIVE, calling_ae="X"
            )
            row = TaskDestination(task=task, name="bench", ae_title="X", host=LOOPBACK, port=1)
            session.add_all([patient, study, series, task, row])
            session.flush()
            pk = row.id
        try:
            yield sessions, pk
        finally:
            engine.dispose()


def recorder(sessions: sessionmaker[Session], pk: int) -> Callable[[str], None]:
    def on_sent(sop_uid: str) -> None:
        # The StoreScuActor's on_sent: one short transaction per acknowledged instance.
        with core_transaction(sessions) as connection:
            record_sent(pk, sop_uid, session=connection)

    return on_sent


def time_record_sent(count: int) -> float:
    """Milliseconds per record_sent transaction on SQLite, alone."""
    with progress_db() as (sessions, pk):
        on_sent = recorder(sessions, pk)
        started = time.perf_counter()
        for index in range(count):
            on_sent(f"1.2.826.0.3.9.2.{index}")
        return (time.perf_counter() - started) / count * 1000


# -- receivers --------------------------------------------------------------------------------


@contextmanager
def storescp_receiver() -> Iterator[tuple[DicomNode, Callable[[], int]]]:
    with tempfile.TemporaryDirectory(prefix="petray-bench-scp-") as tmp:
        port = free_port()
        args = [STORESCP, "-aet", "STORESCP", "+xa", "-pm", "-dhl", "--fork"]
        args += ["-od", tmp, str(port)]
        process = subprocess.Popen(args, env=peer_env(), stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not port_open(port):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("storescp did not start")
                time.sleep(0.05)
            yield DicomNode("STORESCP", LOOPBACK, port), lambda: len(list(Path(tmp).iterdir()))
        finally:
            process.terminate()
            process.wait(timeout=10)


@contextmanager
def orthanc_receiver() -> Iterator[tuple[DicomNode, Callable[[], int]]]:
    with (
        tempfile.TemporaryDirectory(prefix="petray-bench-orthanc-") as tmp,
        start_orthanc(Path(tmp)) as peer,
    ):
        yield DicomNode(peer.aet, LOOPBACK, peer.dicom_port), lambda: len(peer.instances())


RECEIVERS = {"orthanc": orthanc_receiver, "storescp": storescp_receiver}


# -- senders ----------------------------------------------------------------------------------


def storescu(node: DicomNode, files: Files) -> float:
    args = [STORESCU, "-aet", SENDER_AE, "-aec", node.ae_title, "-R", "-nh"]
    args += [node.host, str(node.port), *map(str, files.paths)]
    started = time.perf_counter()
    result = subprocess.run(
        args, capture_output=True, text=True, env=peer_env(), timeout=SEND_TIMEOUT_S, check=False
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


def petray(node: DicomNode, files: Files, *, associations: int, record: bool) -> float:
    kwargs: dict[str, Any] = {}
    if "associations" in inspect.signature(send_instances).parameters:
        kwargs["associations"] = associations
    elif associations != 1:
        raise RuntimeError("this send_instances has no parallel associations")
    with progress_db() as (sessions, pk):
        on_sent = recorder(sessions, pk) if record else None
        started = time.perf_counter()
        report = send_instances(
            node, files.paths, calling_ae=SENDER_AE, on_sent=on_sent, timeout_s=60, **kwargs
        )
        elapsed = time.perf_counter() - started
    if report.sent != len(files.paths):
        raise RuntimeError(f"sent {report.sent} of {len(files.paths)}")
    return elapsed


def _wait_received(count: Callable[[], int], expected: int) -> int:
    # storescp writes each file after answering and Orthanc indexes asynchronously.
    deadline = time.monotonic() + 30
    while (received := count()) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return received


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scu", description=__doc__)
    parser.add_argument("--receivers", default="orthanc,storescp")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--associations", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="send only the first N files")
    parser.add_argument("--profile", action="store_true", help="profile petray-1 once")
    args = parser.parse_args(argv)

    files = derived_files()
    if args.limit:
        files = Files(files.paths[: args.limit], sum(p.stat().st_size for p in files.paths))
    count = len(files.paths)
    print(f"{count} files, {files.bytes / 1e6:.0f} MB")
    print(f"record_sent alone: {time_record_sent(count):.2f} ms per instance (SQLite WAL)")

    senders: dict[str, Callable[[DicomNode], float]] = {
        "storescu": lambda node: storescu(node, files),
        "petray-1": lambda node: petray(node, files, associations=1, record=False),
        "petray-1+db": lambda node: petray(node, files, associations=1, record=True),
    }
    if "associations" in inspect.signature(send_instances).parameters:
        n = args.associations
        senders[f"petray-{n}+db"] = lambda node: petray(node, files, associations=n, record=True)

    if args.profile:
        with RECEIVERS[args.receivers.split(",")[0]]() as (node, _count):
            profiler = cProfile.Profile()
            profiler.runcall(petray, node, files, associations=1, record=False)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())

    results: list[Result] = []
    for receiver in args.receivers.split(","):
        for run in range(1, args.runs + 1):
            for sender, send in senders.items():
                with RECEIVERS[receiver]() as (node, received_count):
                    cpu = time.process_time()
                    seconds = send(node)
                    cpu = time.process_time() - cpu
                    received = _wait_received(received_count, count)
                result = Result(receiver, sender, run, seconds, count, received, cpu)
                results.append(result)
                print(
                    f"{receiver:9} {sender:12} run {run}: {seconds:6.2f} s "
                    f"{result.per_second:6.0f}/s {result.ms_per_instance:5.2f} ms/instance "
                    f"received {received}{result.cpu_note}",
                    flush=True,
                )
    print("\nbest of runs (instances/s):")
    for receiver in args.receivers.split(","):
        line = [f"{receiver:9}"]
        for sender in senders:
            best = min(
                (r for r in results if r.receiver == receiver and r.sender == sender),
                key=lambda r: r.seconds,
            )
            line.append(f"{sender} {best.per_second:.0f}")
        print("  ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
