"""``petray demo``: the whole chain on one machine, verified end to end.

Gateway, reference processing service and a real DICOM destination (Orthanc when installed,
else petray's own receiving SCP) on loopback; a synthetic PET study goes in over DICOM and the
processed series must come out at the destination with the right identity and values.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.demo.demo_check import DestinationSeries, verify_outputs
from petray.demo.destination_peer import start_destination
from petray.demo.synth import make_pet_series, write_series
from petray.dicom.scu import DicomNode, send_instances
from petray.domain import FINAL_STATES, State
from petray.gateway_lock import acquire_gateway_lock
from petray.imaging.filters import FilterSpec
from petray.service.archive import read_result_archive
from petray.settings import Settings, load_settings
from petray.site.siteconfig import add_destination_and_filters
from petray.site.storage import prepare_storage
from petray.stages.records import Packed, Quant
from petray.stages.review import summary_lines
from petray.task_files import TaskFiles
from petray.tasks import get_task, list_tasks
from petray.timings import stage_timings

logger = logging.getLogger(__name__)
DEMO_TIMEOUT_S = 600
POLL_S = 0.5
DEMO_FILTERS = (
    FilterSpec(id=None, description="Gauss 4mm", series_number=901, fwhm_mm=4.0),
    FilterSpec(
        id=None, description="Gauss 6mm noise 20%", series_number=902, fwhm_mm=6.0, noise_pct=20
    ),
)


def _port_or_free(preferred: int) -> int:
    """The documented default port when it is free, else any free loopback port."""
    for candidate in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free TCP port on loopback")


Say = Callable[[str], None]


def _say(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def _output_to_file(log_file: Path) -> Iterator[Say]:
    """Everything written to this process's stdout and stderr goes to ``log_file``; yields a
    ``say`` that still reaches the terminal (issue 11: the demo prints its progress, not Ray's).

    At the file-descriptor level, because Ray prints from its own threads (Serve's INFO lines,
    "(raylet) ... graceful_shutdown failed" at shutdown) and its child processes inherit the
    descriptors; logging handlers keep writing to the same descriptors.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1)

    def say(message: str) -> None:
        terminal.write(message + "\n")
        terminal.flush()

    with log_file.open("ab") as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield say
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            terminal.close()


@contextlib.contextmanager
def _home(args: argparse.Namespace) -> Iterator[Path]:
    if args.home:
        path = Path(args.home)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="petray-demo-"))
    try:
        yield path
    finally:
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)


def _demo_settings(home: Path) -> Settings:
    http_port = _port_or_free(8000)
    return load_settings(
        home=home,
        dicom_port=_port_or_free(11112),
        http_port=http_port,
        remote_url=f"http://127.0.0.1:{_port_or_free(8100)}",
        dashboard=True,
    )


def _configure_site(settings: Settings, destination: DicomNode) -> None:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with unit_of_work(sessions) as session:
        add_destination_and_filters(
            session=session,
            name="demo-pacs",
            ae_title=destination.ae_title,
            host=destination.host,
            port=destination.port,
            filters=DEMO_FILTERS,
        )


def _wait_for_task(settings: Settings, timeout_s: float, say: Say) -> str:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        with unit_of_work(sessions) as session:
            tasks = list_tasks(session=session, limit=5)
        if tasks:
            task = tasks[0]
            progress = f"{task.stage}/{task.state}"
            sending = [d for d in task.destinations if d["total"]]
            if sending:
                progress += " " + ", ".join(
                    f"{d['name']} {d['sent']}/{d['total']}" for d in sending
                )
            if task.reason:
                progress += f" ({task.reason})"
            if progress != last:
                say(f"  task {task.id[:8]}: {progress}")
                last = progress
            # A task held for quantitative review (issue 15) waits for a person: not the demo's.
            if State(task.state) in FINAL_STATES or task.state == State.HELD:
                return task.id
        time.sleep(POLL_S)
    raise TimeoutError(f"the task did not finish within {timeout_s:.0f} s")


def run_demo(args: argparse.Namespace) -> int:
    from petray.bootstrap import running_reference

    with _home(args) as home:
        settings = _demo_settings(home)
        log_file = home / "logs" / "demo-output.log"
        # The demo runs a gateway: like `petray start`, never two on one home (issue 8).
        lock = acquire_gateway_lock(settings.home, settings.resolved_database_url)
        with lock, contextlib.ExitStack() as stack:
            prepare_storage(settings)
            _say(f"petray demo in {home}")
            say = _say if args.verbose else stack.enter_context(_output_to_file(log_file))
            port = int(settings.remote_url.rsplit(":", 1)[1])
            reference = stack.enter_context(running_reference(settings, port=port))
            say(f"reference processing service: {reference.url}")
            destination = stack.enter_context(start_destination(home / "destination"))
            say(f"destination: {destination.describe()}")
            _configure_site(settings, destination.node)
            from petray.bootstrap import Gateway

            started = time.monotonic()

            def progress(step: str) -> None:
                say(f"  gateway: {step} ({time.monotonic() - started:.1f} s)")

            # Actor logs stay in Ray's session logs; the demo prints its own progress.
            gateway = Gateway(settings, log_to_driver=False, lock=lock, progress=progress).start()
            stack.callback(gateway.stop)
            listener = gateway.listener
            say(
                f"gateway up in {time.monotonic() - started:.1f} s: DICOM "
                f"{listener['ae_title']}@127.0.0.1:{listener['port']}, console "
                f"http://{settings.http_host}:{settings.http_port}/, Ray dashboard "
                f"{gateway.dashboard_url}"
            )
            study = make_pet_series(slices=args.slices, rows=args.size, cols=args.size, seed=7)
            files = write_series(study, home / "scanner")
            node = DicomNode(listener["ae_title"], "127.0.0.1", int(listener["port"]))
            report = send_instances(node, files, calling_ae="DEMO_SCANNER")
            say(f"sent {report.sent} PET slices over DICOM in {report.elapsed_s:.2f} s")
            task_id = _wait_for_task(settings, DEMO_TIMEOUT_S, say)
            code = _report(settings, task_id, study, destination, say)
            if code and not args.verbose:
                say(f"the gateway's and Ray's output is in {log_file} (keep it with --keep)")
            return code
    return 1


def _report(settings: Settings, task_id: str, study: list[Any], destination: Any, say: Say) -> int:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session)
        state, reason = task.state, task.reason
        packed = Packed.find(task.details)
        timings = stage_timings(task_id, session=session)
        quant = Quant.find(task.details)
    say("per-stage timings:")
    for stage, seconds in timings:
        say(f"  {stage:<12} {seconds:7.2f} s")
    if quant:
        say("quantitative check (received vs each derived series):")
        for line in summary_lines(quant):
            say(f"  {line}")
    if state != State.DONE or packed is None:
        say(f"FAILED: task ended {state}: {reason}")
        return 1
    result = read_result_archive(
        TaskFiles.of(settings, task_id).result_archive,
        expected_shape=packed.shape,
        max_uncompressed_bytes=settings.max_result_bytes,
    )
    received: list[DestinationSeries] = destination.series_of(str(study[0].StudyInstanceUID))
    problems = verify_outputs(
        received,
        source=study,
        denoised=result.denoised,
        noise=result.noise,
        filters=DEMO_FILTERS,
        spacing_zyx=packed.spacing_zyx,
    )
    if problems:
        say("FAILED verification:")
        for problem in problems:
            say(f"  - {problem}")
        return 1
    say(
        f"verified: {len(received)} series x {len(study)} instances at {destination.describe()}, "
        "same patient and study, new series UIDs, values match the service's result "
        "filtered with scipy"
    )
    return 0
