"""Ingest benchmark (issue 2): DCMTK storescu -> petray / Orthanc / DCMTK storescp, side by side.

    python -m bench.ingest [--series big|small|both] [--runs 3] [--profile] [--ray]

For each series (cached under /tmp/petray-bench), one storescu process (TCP_NODELAY=1, one
association, every file) sends to each receiver in turn; the time is storescu's wall time from
start to exit, the same clock for every receiver:

* petray   petray.dicom.scp.StoreService with the real InstanceStore and SQLite (WAL) under a
temporary
           PETRAY_HOME, fsync on as in production; and once more with fsync off;
* orthanc  Debian's Orthanc started on loopback with a private storage (petray.demo.orthanc);
* storescp DCMTK storescp -od <tmp> (+xa -pm -dhl, no verbose logging).

It also measures the delay from the last slice received to the task leaving ``compiling``, two
ways, both without Ray (the actor path with Ray messaging is measured elsewhere):

* pure:   petray.stages.compilator.Compilation + CompilatorConfig fed by each on_instance
          message in the association thread; delay = READY decided - last message handed over;
* mirror: a consumer thread fed through a queue, batching as actors/compilator.py does, each
          batch taken by the actor's own rules (petray.stages.compile.Compiler: route, claim,
          decide, commit the move to validating) on the same SQLite database while ingest runs;
          delay = that commit - last message handed over (its backlog included).

``--ray`` adds the real thing: petray's StoreScpActor and CompilatorActor in a private local Ray
(``ray.init(address="local")``, shut down afterwards), storescu sending to the actor's listener.
The delay is then the task's move to ``validating`` (TaskEvent.at) minus the last
Instance.received, both from the database.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import queue
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom.config
from sqlalchemy import func, select

from actors.compilator import BATCH_WINDOW_S
from petray.db.engine import make_engine, make_sessionmaker, migrate, unit_of_work
from petray.db.models import Instance, TaskEvent
from petray.demo.orthanc import LOOPBACK, free_port, peer_env, start_orthanc
from petray.demo.synth import make_pet_series, write_series
from petray.dicom.ingest import InstanceStore, ReceivedInstance
from petray.dicom.scp import StoreService
from petray.domain import Stage
from petray.settings import load_settings
from petray.site.siteconfig import Listener
from petray.stages.assemblies import load_config
from petray.stages.compilator import Compilation, CompilatorConfig, SeriesAssembly, Verdict
from petray.stages.compile import Compiler

logger = logging.getLogger(__name__)

CACHE_DIR = Path("/tmp/petray-bench")
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
PETRAY_AE = "PETRAY"
SENDER_AE = "BENCH"
SEND_TIMEOUT_S = 600.0
START_TIMEOUT_S = 20.0
RAY_START_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 30.0
# The two series: a whole-body 645x440x440 and a smaller 300x192x192.
SERIES = {"big": (645, 440), "small": (300, 192)}
# The site defaults (petray.site.siteconfig.get_site_config); NumberOfSlices is present in both
# series.
COMPILATOR = CompilatorConfig(
    min_images=10, slice_gap_tolerance=1.5, inactivity_wait_s=5.0, abort_timeout_s=600.0
)


@dataclass(frozen=True)
class Cached:
    name: str
    directory: Path
    files: int
    bytes: int


@dataclass
class Result:
    series: str
    receiver: str
    run: int
    seconds: float
    files: int
    bytes: int
    received: int

    @property
    def per_second(self) -> float:
        return self.files / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6


def cached_series(name: str) -> Cached:
    """Generate the series once (same seed, same bytes) and reuse it on later runs."""
    slices, size = SERIES[name]
    directory = CACHE_DIR / f"{name}-{slices}x{size}x{size}"
    marker = directory / ".complete"
    if not marker.exists():
        shutil.rmtree(directory, ignore_errors=True)
        started = time.perf_counter()
        write_series(make_pet_series(slices=slices, rows=size, cols=size, seed=7), directory)
        marker.write_text("ok\n")
        print(
            f"generated {name}: {slices} x {size}x{size} in {time.perf_counter() - started:.1f} s"
        )
    files = sorted(directory.glob("*.dcm"))
    return Cached(name, directory, len(files), sum(f.stat().st_size for f in files))


# Before each send, at most this long, wait for the CPUs to be this idle: a receiver just
# started (Ray starting its idle workers, Orthanc indexing) would otherwise take CPU from the
# first seconds of the series; a gateway a scanner sends to has long been up.
SETTLE_MAX_S = 5.0
SETTLE_IDLE = 0.75
SETTLE_WINDOW_S = 0.2


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


def settle() -> float:
    """Wait until the machine is quiet (or SETTLE_MAX_S passed); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_MAX_S:
        idle_before, total_before = _cpu_times()
        time.sleep(SETTLE_WINDOW_S)
        idle_after, total_after = _cpu_times()
        if (idle_after - idle_before) >= SETTLE_IDLE * max(total_after - total_before, 1):
            break
    return time.monotonic() - started


def send(cached: Cached, port: int, called_ae: str) -> float:
    """storescu wall time for the whole series over one association, once the machine is
    quiet (``settle``)."""
    settle()
    args = [STORESCU, "-aet", SENDER_AE, "-aec", called_ae, "-R", "+sd", "-nh"]
    args += [LOOPBACK, str(port), str(cached.directory)]
    started = time.perf_counter()
    result = subprocess.run(
        args, capture_output=True, text=True, env=peer_env(), timeout=SEND_TIMEOUT_S, check=False
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or "Failed" in result.stderr:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


# -- receivers ----------------------------------------------------------------------------------


@dataclass
class CompilationProbe:
    """Pure Compilation fed in the association thread; records when the task became ready."""

    compilation: Compilation
    last_message: float = 0.0
    ready_at: float = 0.0

    def __call__(self, message: ReceivedInstance) -> None:
        now = time.perf_counter()
        self.last_message = now
        assembly = self.compilation.route(message)
        if assembly is None:
            assembly = SeriesAssembly(
                task_id=f"t{len(self.compilation)}",
                series_pk=message.series_pk,
                calling_ae=message.calling_ae,
                peer_host=message.peer_host,
                last_activity=time.time(),
            )
            self.compilation.open(assembly)
        assembly.add(message, time.time())
        if assembly.decide(COMPILATOR, time.time()).verdict == Verdict.READY:
            self.compilation.close(assembly.task_id)
            self.ready_at = time.perf_counter()


class CompilatorMirror:
    """The CompilatorActor's batching and its Compiler, in a thread fed through a queue."""

    def __init__(self, sessions: Callable[[], object]) -> None:
        self._sessions = sessions
        self._queue: queue.SimpleQueue[ReceivedInstance | None] = queue.SimpleQueue()
        self._compiler = Compiler()
        self.last_message = 0.0
        self.ready_at = 0.0
        self._thread = threading.Thread(target=self._run, name="compilator-mirror", daemon=True)
        self._thread.start()

    def __call__(self, message: ReceivedInstance) -> None:
        self.last_message = time.perf_counter()
        self._queue.put(message)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        # As actors/compilator.py: messages collected for BATCH_WINDOW_S, then routed, assigned
        # and decided in one transaction, with the site thresholds read once.
        sessions = self._sessions
        with unit_of_work(sessions) as session:  # type: ignore[arg-type]
            config = load_config(session=session)
        while (first := self._queue.get()) is not None:
            batch = [first]
            deadline = time.monotonic() + BATCH_WINDOW_S
            stop = False
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if message is None:
                    stop = True
                    break
                batch.append(message)
            with unit_of_work(sessions) as session:  # type: ignore[arg-type]
                outcome = self._compiler.take(
                    batch, session=session, config=config, now=time.time()
                )
            if any(failure == "" for _, failure in outcome.closed):
                self.ready_at = time.perf_counter()
            if stop:
                return


@dataclass
class PetrayRun:
    seconds: float
    received: int
    pure_delay_s: float
    mirror_delay_s: float | None


def run_petray(
    cached: Cached, *, fsync: bool, mirror: bool = False, profile: Path | None = None
) -> PetrayRun:
    with tempfile.TemporaryDirectory(prefix="petray-bench-home-") as tmp:
        settings = load_settings(home=Path(tmp), fsync=fsync)
        settings.ensure_dirs()
        engine = make_engine(settings.resolved_database_url)
        migrate(engine)
        sessions = make_sessionmaker(engine)
        store = InstanceStore(
            settings.instances_dir,
            sessions,
            min_free_bytes=settings.min_free_disk_mb * 2**20,
            fsync=settings.fsync,
        )
        probe = CompilationProbe(Compilation())
        consumer = CompilatorMirror(sessions) if mirror else None
        count = [0]

        def on_instance(message: ReceivedInstance) -> None:
            count[0] += 1
            probe(message)
            if consumer is not None:
                consumer(message)

        service = StoreService(store, sessions, on_instance=on_instance)
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            _profile_handler(service, profiler)
        server = service.start(Listener(ae_title=PETRAY_AE, port=free_port(), bind=LOOPBACK))
        try:
            seconds = send(cached, server.server_address[1], PETRAY_AE)
        finally:
            server.shutdown()
        mirror_delay = None
        if consumer is not None:
            deadline = time.monotonic() + 60
            while not consumer.ready_at and time.monotonic() < deadline:
                time.sleep(0.01)
            consumer.stop()
            mirror_delay = consumer.ready_at - consumer.last_message if consumer.ready_at else None
        if profiler is not None and profile is not None:
            profiler.dump_stats(profile)
        engine.dispose()
        return PetrayRun(
            seconds=seconds,
            received=count[0],
            pure_delay_s=probe.ready_at - probe.last_message if probe.ready_at else float("nan"),
            mirror_delay_s=mirror_delay,
        )


def _profile_handler(service: StoreService, profiler: cProfile.Profile) -> None:
    """Profile the storing of each C-STORE in its association thread (cProfile is per thread);
    the direct path and pynetdicom's both call ``store_request``."""
    original = service.store_request
    lock = threading.Lock()

    def profiled(assoc: Any, request: Any) -> Any:
        with lock:
            return profiler.runcall(original, assoc, request)

    service.store_request = profiled  # type: ignore[method-assign]


def run_orthanc(cached: Cached) -> tuple[float, int]:
    with (
        tempfile.TemporaryDirectory(prefix="petray-bench-orthanc-") as tmp,
        start_orthanc(Path(tmp)) as orthanc,
    ):
        seconds = send(cached, orthanc.dicom_port, orthanc.aet)
        received = len(orthanc.instances())
    return seconds, received


@contextmanager
def storescp(output: Path) -> Iterator[int]:
    port = free_port()
    args = [STORESCP, "-aet", "STORESCP", "+xa", "-pm", "-dhl", "-od", str(output), str(port)]
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=peer_env()
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with socket.socket() as sock:
                if sock.connect_ex((LOOPBACK, port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("storescp did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_storescp(cached: Cached) -> tuple[float, int]:
    with (
        tempfile.TemporaryDirectory(prefix="petray-bench-storescp-") as tmp,
        storescp(Path(tmp)) as port,
    ):
        seconds = send(cached, port, "STORESCP")
        # storescp writes each file after answering; wait for the last ones.
        deadline = time.monotonic() + 10
        while (n := len(os.listdir(tmp))) < cached.files and time.monotonic() < deadline:
            time.sleep(0.05)
    return seconds, n


@dataclass
class RayRun:
    seconds: float
    received: int
    delay_s: float | None  # last Instance.received -> TaskEvent(validating); None: never left


@contextmanager
def local_ray() -> Iterator[None]:
    """A private local Ray for the actor runs, shut down afterwards (never `ray stop`)."""
    import ray

    from actors import names

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # address="local": always a new cluster of our own, never one another process started.
    ray.init(
        address="local",
        namespace=names.NAMESPACE,
        include_dashboard=False,
        resources={names.FILTER_RESOURCE: 1},
        logging_level=logging.WARNING,
        _node_ip_address=LOOPBACK,
    )
    try:
        yield
    finally:
        ray.shutdown()


def run_ray(cached: Cached) -> RayRun:
    """StoreScpActor + CompilatorActor (inside ``local_ray``) with a fresh PETRAY_HOME."""
    with tempfile.TemporaryDirectory(prefix="petray-bench-ray-") as tmp:
        return _ray_run(cached, Path(tmp))


def _ray_run(cached: Cached, home: Path) -> RayRun:
    import ray

    from actors import names
    from actors.compilator import CompilatorActor
    from actors.store_scp import StoreScpActor

    settings = load_settings(home=home, fsync=True, dicom_port=free_port(), ae_title=PETRAY_AE)
    settings.ensure_dirs()
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    # Ray's decorator hides .options() from mypy, as in actors/pipeline.py.
    compilator_class: Any = CompilatorActor
    scp_class: Any = StoreScpActor
    compilator = compilator_class.options(name=names.COMPILATOR, namespace=names.NAMESPACE).remote(
        settings
    )
    ray.get(compilator.start.remote(), timeout=RAY_START_TIMEOUT_S)
    scp = scp_class.options(name=names.STORE_SCP, namespace=names.NAMESPACE).remote(settings)
    try:
        listener = ray.get(scp.start.remote(), timeout=RAY_START_TIMEOUT_S)
        seconds = send(cached, int(listener["port"]), str(listener["ae_title"]))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            with sessions() as session:
                left = session.scalar(
                    select(func.min(TaskEvent.at)).where(TaskEvent.stage == Stage.VALIDATING.value)
                )
                last = session.scalar(select(func.max(Instance.received)))
                received = session.scalar(select(func.count()).select_from(Instance)) or 0
            if left is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        ray.get(scp.stop.remote(), timeout=RAY_START_TIMEOUT_S)
        ray.kill(scp, no_restart=True)
        ray.kill(compilator, no_restart=True)
        engine.dispose()
    delay = (left - last).total_seconds() if left is not None and last is not None else None
    return RayRun(seconds=seconds, received=int(received), delay_s=delay)


# -- report -------------------------------------------------------------------------------------


def _table(results: list[Result]) -> str:
    lines = [
        f"{'series':<8} {'receiver':<16} {'run':>3} {'seconds':>8} {'inst/s':>8} {'MB/s':>7} "
        f"{'recv':>5}"
    ]
    for r in results:
        lines.append(
            f"{r.series:<8} {r.receiver:<16} {r.run:>3} {r.seconds:>8.2f} {r.per_second:>8.1f} "
            f"{r.mb_per_second:>7.1f} {r.received:>5}"
        )
    return "\n".join(lines)


def _median_rate(results: list[Result], series: str, receiver: str) -> float:
    rates = [r.per_second for r in results if r.series == series and r.receiver == receiver]
    return statistics.median(rates) if rates else float("nan")


def _best(results: list[Result], series: str, receiver: str) -> Result:
    return min(
        (r for r in results if r.series == series and r.receiver == receiver),
        key=lambda r: r.seconds,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--series", choices=["big", "small", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--profile", action="store_true", help="cProfile petray's C-STORE handler (extra run)"
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="also run petray's StoreScpActor + CompilatorActor in a private local Ray",
    )
    parser.add_argument("--json", type=Path, help="also write the medians here (bench.summary)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # As in actors/store_scp.py: pydicom's validation warnings would quote header values.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    names = ["big", "small"] if args.series == "both" else [args.series]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)

    with local_ray() if args.ray else contextlib.nullcontext():
        results, delays, ray_runs = _run_all(args, names)
    _report(args, names, results, delays, ray_runs)
    if args.json:
        receivers = sorted({r.receiver for r in results})
        medians = {
            name: {receiver: _median_rate(results, name, receiver) for receiver in receivers}
            for name in names
        }
        args.json.write_text(json.dumps({"inst_per_s": medians, "runs": args.runs}, indent=2))
    return 0


def _run_all(
    args: argparse.Namespace, names: list[str]
) -> tuple[list[Result], list[str], dict[str, list[RayRun]]]:
    results: list[Result] = []
    delays: list[str] = []
    ray_runs: dict[str, list[RayRun]] = {}
    for name in names:
        cached = cached_series(name)
        print(f"{name}: {cached.files} files, {cached.bytes / 1e6:.1f} MB", flush=True)
        for run in range(1, args.runs + 1):
            for fsync in (True, False):
                outcome = run_petray(cached, fsync=fsync)
                label = "petray" if fsync else "petray(no fsync)"
                results.append(
                    Result(
                        name,
                        label,
                        run,
                        outcome.seconds,
                        cached.files,
                        cached.bytes,
                        outcome.received,
                    )
                )
                if fsync:
                    delays.append(
                        f"{name} run {run}: pure Compilation, last slice -> READY "
                        f"{outcome.pure_delay_s * 1000:.2f} ms"
                    )
            if args.ray:
                ray_outcome = run_ray(cached)
                ray_runs.setdefault(name, []).append(ray_outcome)
                results.append(
                    Result(
                        name,
                        "petray(ray)",
                        run,
                        ray_outcome.seconds,
                        cached.files,
                        cached.bytes,
                        ray_outcome.received,
                    )
                )
            seconds, received = run_orthanc(cached)
            results.append(
                Result(name, "orthanc", run, seconds, cached.files, cached.bytes, received)
            )
            seconds, received = run_storescp(cached)
            results.append(
                Result(name, "storescp", run, seconds, cached.files, cached.bytes, received)
            )
            print(_table(results[-(5 if args.ray else 4) :]).split("\n", 1)[1], flush=True)
        outcome = run_petray(cached, fsync=True, mirror=True)
        results.append(
            Result(
                name,
                "petray+compilator",
                1,
                outcome.seconds,
                cached.files,
                cached.bytes,
                outcome.received,
            )
        )
        mirror = (
            f"{outcome.mirror_delay_s * 1000:.1f} ms"
            if outcome.mirror_delay_s is not None
            else "task never left compiling"
        )
        delays.append(
            f"{name}: compilator mirror (db work as the actor, concurrent with ingest), "
            f"last slice -> committed VALIDATING {mirror}"
        )
        if args.profile:
            target = CACHE_DIR / f"{name}.prof"
            run_petray(cached, fsync=True, profile=target)
            stream = io.StringIO()
            pstats.Stats(str(target), stream=stream).sort_stats("cumulative").print_stats(25)
            print(stream.getvalue())

    return results, delays, ray_runs


def _report(
    args: argparse.Namespace,
    names: list[str],
    results: list[Result],
    delays: list[str],
    ray_runs: dict[str, list[RayRun]],
) -> None:
    print()
    print(_table(results))
    print()
    for name in names:
        medians = {
            receiver: _median_rate(results, name, receiver)
            for receiver in ("petray", "petray(no fsync)", "orthanc", "storescp", "petray(ray)")
        }
        orthanc = medians["orthanc"]
        line = (
            f"{name}: median of {args.runs}: petray {medians['petray']:.0f} inst/s "
            f"(no fsync {medians['petray(no fsync)']:.0f}), orthanc {orthanc:.0f}, "
            f"storescp {medians['storescp']:.0f}; "
            f"petray/orthanc = {medians['petray'] / orthanc:.2f} "
            f"(no fsync {medians['petray(no fsync)'] / orthanc:.2f})"
        )
        if args.ray:
            line += f"; with Ray actors {medians['petray(ray)']:.0f} inst/s, "
            line += f"/orthanc = {medians['petray(ray)'] / orthanc:.2f}"
        print(line)
        petray_best = _best(results, name, "petray")
        orthanc_best = _best(results, name, "orthanc")
        print(
            f"{name}: best of {args.runs}: petray {petray_best.per_second:.0f}, "
            f"orthanc {orthanc_best.per_second:.0f}, "
            f"petray/orthanc = {petray_best.per_second / orthanc_best.per_second:.2f}"
        )
    print()
    print("delay from last slice received to task leaving compiling (no Ray):")
    for line in delays:
        print("  " + line)
    if args.ray:
        print("delay from last slice received to task leaving compiling (Ray actors):")
        for name, outcomes in ray_runs.items():
            for run, ray_outcome in enumerate(outcomes, start=1):
                delay = (
                    f"{ray_outcome.delay_s * 1000:.0f} ms"
                    if ray_outcome.delay_s is not None
                    else "task never left compiling"
                )
                print(f"  {name} run {run}: {delay} ({ray_outcome.received} instances stored)")


if __name__ == "__main__":
    raise SystemExit(main())
