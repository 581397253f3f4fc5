"""End-to-end gateway benchmark (issue 4): overhead, per-stage times, Ray worker memory, zero-copy.

    python -m bench.pipeline [--slices 645 --size 440 --filters 3] [--json PATH] [--keep]

One run on this machine, everything on loopback: a fresh PETRAY_HOME under /tmp, the reference
processing service in a thread of this process, Orthanc as the destination, N Gaussian
post-filters, and the real gateway (``actors.gateway.Gateway``: its own local Ray, the actors,
Ray Serve). DCMTK ``storescu`` sends the synthetic series (cached under /tmp/petray-bench, shared
with bench/ingest.py) over one association.

* overhead = (task done, i.e. the last instance acknowledged by Orthanc and committed) - (storescu
  started) - the reference service's own job time (its ``GET /_jobs`` ``seconds``);
* Orthanc's own ingest of the same files (a second private Orthanc, the same storescu, timed
  before the gateway starts) and the overhead as a multiple of it (issue 13: at most 5x);
* per-stage times from the task's events (as ``petray.timings.stage_timings``);
* peak memory of every process of this Ray session (RSS, split into private ``RssAnon`` and
  shared ``RssShmem``: plasma pages a worker reads count as shared), sampled every 0.2 s, and the
  object store usage sampled every 0.5 s;
* zero-copy: a volume of the task's shape is put once; every FilterWorker ``describe``s what it
  received, and the driver's ``ray.get`` is compared: read-only views at the same offset of the
  same plasma file, and no growth of the workers' private memory.

Starts its own local Ray (``RAY_ADDRESS`` is ignored) and shuts only that down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import select

from bench.ingest import CACHE_DIR, SERIES, Cached, cached_series, send
from bench.procs import cpu_seconds, descendants
from bench.procs import label as process_label
from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.db.models import TaskEvent
from petray.demo.orthanc import free_port, start_orthanc
from petray.demo.synth import make_pet_series, write_series
from petray.domain import FINAL_STATES, State
from petray.imaging.filters import FilterSpec
from petray.settings import Settings, load_settings
from petray.site.siteconfig import add_destination_and_filters, get_site_config
from petray.site.storage import prepare_storage
from petray.tasks import TaskSummary, list_tasks

logger = logging.getLogger(__name__)

PETRAY_AE = "PETRAY"
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
TASK_TIMEOUT_S = 1800.0
POLL_S = 0.25
RSS_INTERVAL_S = 0.2
PLASMA_EVERY = 3  # plasma stats every third RSS sample (~0.6 s): it asks every worker
ORTHANC_WAIT_S = 60.0
# FWHM in mm; the second blends noise back so the noise volume is exercised too.
FILTER_TABLE = (
    FilterSpec(id=None, description="Gauss 4mm", series_number=901, fwhm_mm=4.0),
    FilterSpec(
        id=None, description="Gauss 6mm noise 20%", series_number=902, fwhm_mm=6.0, noise_pct=20
    ),
    FilterSpec(id=None, description="Gauss 8mm", series_number=903, fwhm_mm=8.0),
    FilterSpec(id=None, description="Gauss 10mm", series_number=904, fwhm_mm=10.0),
)
MIB = 1024 * 1024


# -- the series ---------------------------------------------------------------------------------


def series_files(slices: int, size: int) -> Cached:
    """The ingest benchmark's cached series when the size matches, else one cached here."""
    for name, spec in SERIES.items():
        if spec == (slices, size):
            return cached_series(name)
    directory = CACHE_DIR / f"pipeline-{slices}x{size}x{size}"
    marker = directory / ".complete"
    if not marker.exists():
        shutil.rmtree(directory, ignore_errors=True)
        write_series(make_pet_series(slices=slices, rows=size, cols=size, seed=7), directory)
        marker.write_text("ok\n")
    files = sorted(directory.glob("*.dcm"))
    return Cached(directory.name, directory, len(files), sum(f.stat().st_size for f in files))


# -- memory sampling ----------------------------------------------------------------------------


@dataclass
class ProcessPeak:
    """Highest memory seen for one process (kB figures from /proc/<pid>/status)."""

    pid: int
    label: str
    rss_kb: int = 0
    anon_kb: int = 0
    shmem_kb: int = 0
    cpu_start_s: float | None = None
    cpu_s: float = 0.0  # CPU time used while sampled (user + system)


def _status_kb(pid: int) -> dict[str, int]:
    """VmRSS / RssAnon / RssShmem of a process, cheaply (no smaps walk)."""
    wanted = ("VmRSS", "RssAnon", "RssShmem")
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in wanted:
                values[key] = int(rest.split()[0])
    return values


@dataclass
class MemorySampler:
    """Samples every process descended from this one (this Ray session, Orthanc) in a thread."""

    gcs_address: str | None
    peaks: dict[int, ProcessPeak] = field(default_factory=dict)
    plasma_peak_bytes: int = 0
    plasma_peak_objects: int = 0
    plasma_capacity_bytes: int = 0
    plasma_error: str = ""
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        state = self._plasma_state()
        while not self._stop.wait(RSS_INTERVAL_S):
            self.sample_processes()
            if state is not None and self.samples % PLASMA_EVERY == 0:
                self._sample_plasma(state)

    def sample_processes(self) -> None:
        self.samples += 1
        for pid in descendants(os.getpid()):
            try:
                label = process_label(pid)
                kb = _status_kb(pid)
                cpu_s = cpu_seconds(pid)
            except OSError:
                continue  # exited between listing and reading
            peak = self.peaks.setdefault(pid, ProcessPeak(pid, label))
            if label != "IDLE":
                # A pooled worker is IDLE until it becomes an actor: keep the actor's name.
                peak.label = label
            peak.rss_kb = max(peak.rss_kb, kb.get("VmRSS", 0))
            peak.anon_kb = max(peak.anon_kb, kb.get("RssAnon", 0))
            peak.shmem_kb = max(peak.shmem_kb, kb.get("RssShmem", 0))
            if peak.cpu_start_s is None:
                peak.cpu_start_s = cpu_s
            peak.cpu_s = round(cpu_s - peak.cpu_start_s, 2)

    def _plasma_state(self) -> Any:
        # Ray's own `ray memory` plumbing; private, so the benchmark degrades to "unavailable".
        try:
            from ray._private.internal_api import get_state_from_address

            return get_state_from_address(self.gcs_address)
        except Exception as exc:
            self.plasma_error = f"{type(exc).__name__}: {exc}"
            return None

    def _sample_plasma(self, state: Any) -> None:
        try:
            from ray._private.internal_api import get_memory_info_reply

            stats = get_memory_info_reply(state, timeout_seconds=5.0).store_stats
        except Exception as exc:
            self.plasma_error = f"{type(exc).__name__}: {exc}"
            return
        self.plasma_capacity_bytes = int(stats.object_store_bytes_avail)
        if stats.object_store_bytes_used > self.plasma_peak_bytes:
            self.plasma_peak_bytes = int(stats.object_store_bytes_used)
        self.plasma_peak_objects = max(self.plasma_peak_objects, int(stats.num_local_objects))


# -- zero-copy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where an array's buffer lies in a process: which mapped file, at which file offset."""

    who: str
    pid: int
    writeable: bool
    owndata: bool
    base_type: str
    mapping: str
    inode: str
    file_offset: int


def _placement(pid: int, address: int) -> tuple[str, str, int]:
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            parts = line.split()
            low, high = (int(v, 16) for v in parts[0].split("-"))
            if low <= address < high:
                path = parts[5] if len(parts) > 5 else "[anonymous]"
                return path, parts[4], address - low + int(parts[2], 16)
    return "[not mapped]", "0", 0


def zero_copy_proof(shape: tuple[int, ...], filter_workers: int) -> dict[str, Any]:
    """Put one volume of ``shape``; each FilterWorker and the driver locate what they got."""
    import ray

    from actors.filter_pool import pool_names
    from actors.names import NAMESPACE

    workers = [ray.get_actor(name, namespace=NAMESPACE) for name in pool_names()[:filter_workers]]
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    nbytes = int(volume.nbytes)
    ref = ray.put(volume)
    del volume
    anon_before: dict[int, int] = {}
    for worker in workers:
        probe: Any = ray.get(worker.describe.remote(np.zeros(1, np.float32)), timeout=60)
        pid = int(probe["pid"])
        anon_before[pid] = _status_kb(pid).get("RssAnon", 0)
    reports: list[dict[str, Any]] = ray.get([w.describe.remote(ref) for w in workers], timeout=300)
    placements: list[Placement] = []
    for index, report in enumerate(reports):
        path, inode, offset = _placement(report["pid"], report["address"])
        placements.append(
            Placement(
                f"FilterWorker {index}",
                report["pid"],
                report["writeable"],
                report["owndata"],
                report["base_type"],
                path,
                inode,
                offset,
            )
        )
    local = ray.get(ref, timeout=300)
    address = int(local.__array_interface__["data"][0])
    path, inode, offset = _placement(os.getpid(), address)
    base = local.base
    placements.append(
        Placement(
            "driver ray.get",
            os.getpid(),
            bool(local.flags.writeable),
            bool(local.flags.owndata),
            f"{type(base).__module__}.{type(base).__qualname__}",
            path,
            inode,
            offset,
        )
    )
    anon_growth_kb = {
        pid: _status_kb(pid).get("RssAnon", 0) - before for pid, before in anon_before.items()
    }
    del local, ref
    same_bytes = len({(p.mapping, p.inode, p.file_offset) for p in placements}) == 1
    return {
        "nbytes": nbytes,
        "placements": [asdict(p) for p in placements],
        "all_read_only": not any(p.writeable for p in placements),
        "none_own_data": not any(p.owndata for p in placements),
        "in_plasma": all("plasma" in p.mapping for p in placements),
        "same_file_and_offset": same_bytes,
        "worker_private_growth_kb": anon_growth_kb,
        "proved": same_bytes
        and all("plasma" in p.mapping and not p.writeable for p in placements)
        and all(kb * 1024 < nbytes // 10 for kb in anon_growth_kb.values()),
    }


# -- the run ------------------------------------------------------------------------------------


@contextmanager
def _home(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="petray-bench-pipeline-", dir="/tmp"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _configure(settings: Settings, orthanc: Any, filters: tuple[FilterSpec, ...], n: int) -> None:
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
    with unit_of_work(sessions) as session:
        config = get_site_config(session=session)
        config.min_images = min(config.min_images, n)
        add_destination_and_filters(
            session=session,
            name="bench-orthanc",
            ae_title=orthanc.aet,
            host=orthanc.host,
            port=orthanc.dicom_port,
            filters=filters,
        )


def _wait_for_task(sessions: Any, timeout_s: float) -> TaskSummary:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with unit_of_work(sessions) as session:
            tasks = list_tasks(session=session, limit=5)
        if tasks and State(tasks[0].state) in FINAL_STATES:
            return tasks[0]
        time.sleep(POLL_S)
    raise TimeoutError(f"the task did not finish within {timeout_s:.0f} s")


def _entered(sessions: Any, task_id: str) -> list[tuple[str, float]]:
    """(stage, epoch seconds) when the task entered each stage, in order."""
    with unit_of_work(sessions) as session:
        events = session.scalars(
            select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
        ).all()
        entered: list[tuple[str, float]] = []
        for event in events:
            if not entered or entered[-1][0] != event.stage:
                entered.append((event.stage, event.at.timestamp()))
    return entered


def _service_seconds(settings: Settings, task_id: str) -> float:
    response = httpx.get(
        f"{settings.remote_url}/_jobs",
        headers={"Authorization": f"Bearer {settings.remote_token}"},
        timeout=10.0,
    )
    response.raise_for_status()
    jobs = [j for j in response.json()["jobs"] if j["task_id"] == task_id]
    return float(sum(j["seconds"] or 0.0 for j in jobs))


def _orthanc_counts(orthanc: Any, expected: int) -> tuple[int, list[int]]:
    """Instances at Orthanc (waiting briefly for its index) and instances per series."""
    deadline = time.monotonic() + ORTHANC_WAIT_S
    while time.monotonic() < deadline:
        count = int(orthanc.client.get("/statistics").json()["CountInstances"])
        if count >= expected:
            break
        time.sleep(0.5)
    series = sorted(len(s["Instances"]) for s in orthanc.series())
    return count, series


def run(args: argparse.Namespace) -> dict[str, Any]:
    from serve.reference.main import running_reference

    filters = FILTER_TABLE[: args.filters]
    cached = series_files(args.slices, args.size)
    result: dict[str, Any] = {
        "series": {"slices": args.slices, "size": args.size, "bytes": cached.bytes},
        "filters": [asdict(f) for f in filters],
        "load_before": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    os.environ.update(RAY_ENV)
    os.environ.pop("RAY_ADDRESS", None)  # the bench measures its own local Ray
    with _home(args.keep) as home, ExitStack() as stack:
        overrides: dict[str, Any] = {"home": home, "dashboard": False}
        if args.filter_workers:
            overrides["filter_workers"] = args.filter_workers
        reference_port = free_port()
        settings = load_settings(
            dicom_port=free_port(),
            http_port=free_port(),
            remote_url=f"http://127.0.0.1:{reference_port}",
            **overrides,
        )
        prepare_storage(settings)
        stack.enter_context(running_reference(settings, port=reference_port))
        # Issue 13's yardstick: Orthanc's own ingest of the same files, same storescu, same run.
        with start_orthanc(home / "orthanc-ingest", aet="INGEST") as reference_pacs:
            result["orthanc_ingest_s"] = round(
                send(cached, reference_pacs.dicom_port, reference_pacs.aet), 3
            )
        orthanc = stack.enter_context(start_orthanc(home / "orthanc", aet="BENCHPACS"))
        _configure(settings, orthanc, filters, cached.files)
        from actors.gateway import Gateway

        started = time.monotonic()
        gateway = Gateway(settings, log_to_driver=False).start()
        stack.callback(gateway.stop)
        result["gateway_start_s"] = round(time.monotonic() - started, 2)
        result["filter_workers"] = settings.filter_workers
        import ray

        sampler = MemorySampler(ray.get_runtime_context().gcs_address).start()
        driver_cpu = time.process_time()
        stack.callback(sampler.stop)
        port = int(gateway.listener["port"])
        print(f"gateway up in {result['gateway_start_s']} s; sending {cached.files} slices")

        sent_at = time.time()
        ingest_s = send(cached, port, PETRAY_AE)
        sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
        task = _wait_for_task(sessions, TASK_TIMEOUT_S)
        sampler.stop()
        driver_cpu = time.process_time() - driver_cpu
        entered = _entered(sessions, task.id)
        result["task"] = {"id": task.id, "state": task.state, "reason": task.reason}
        if task.state != State.DONE:
            return result
        done_at = dict(entered)["done"]
        service_s = _service_seconds(settings, task.id)
        wall_s = done_at - sent_at
        stage_times = {
            stage: round(following - at, 3) for (stage, at), (_next, following) in pairwise(entered)
        }
        result.update(
            ingest_s=round(ingest_s, 3),
            # The task opens at its first instance; compiling ends when it is provably complete.
            compile_after_last_slice_s=round(dict(entered)["validating"] - (sent_at + ingest_s), 3),
            stages=stage_times,
            service_s=round(service_s, 3),
            processing_minus_service_s=round(stage_times.get("processing", 0.0) - service_s, 3),
            wall_s=round(wall_s, 3),
            overhead_s=round(wall_s - service_s, 3),
            overhead_vs_orthanc=round((wall_s - service_s) / result["orthanc_ingest_s"], 2),
        )
        expected = len(filters) * cached.files
        count, per_series = _orthanc_counts(orthanc, expected)
        result["orthanc"] = {"instances": count, "expected": expected, "per_series": per_series}
        result["memory"] = {
            "processes": [
                asdict(p) for p in sorted(sampler.peaks.values(), key=lambda p: -p.rss_kb)
            ],
            "samples": sampler.samples,
            "driver_cpu_s": round(driver_cpu, 2),
            "plasma_peak_bytes": sampler.plasma_peak_bytes,
            "plasma_peak_objects": sampler.plasma_peak_objects,
            "plasma_capacity_bytes": sampler.plasma_capacity_bytes,
            "plasma_error": sampler.plasma_error,
        }
        shape = (cached.files, args.size, args.size)
        result["zero_copy"] = zero_copy_proof(shape, settings.filter_workers)
        result["load_after"] = os.getloadavg()
    return result


# -- the report ---------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    lines: list[str] = []
    series = result["series"]
    load = " ".join(f"{v:.2f}" for v in result["load_before"])
    lines.append(
        f"series {series['slices']} x {series['size']}x{series['size']} "
        f"({series['bytes'] / 1e6:.0f} MB), {len(result['filters'])} filters, "
        f"{result.get('filter_workers')} filter workers, {result['cpus']} CPUs, "
        f"load before {load}"
    )
    task = result["task"]
    if task["state"] != State.DONE:
        lines.append(f"task {task['id']} ended {task['state']}: {task['reason']}")
        return "\n".join(lines)
    lines.append(f"gateway start (not counted): {result['gateway_start_s']:.1f} s")
    lines.append(f"ingest (storescu, one association): {result['ingest_s']:8.2f} s")
    lines.append(
        f"compiling after the last slice:     {result['compile_after_last_slice_s']:8.2f} s"
    )
    lines.append("per-stage times (from the task's events; compiling starts at the first slice):")
    for stage, seconds in result["stages"].items():
        extra = ""
        if stage == "processing":
            extra = (
                f"   (service's own job {result['service_s']:.2f} s, "
                f"rest {result['processing_minus_service_s']:.2f} s)"
            )
        lines.append(f"  {stage:<12} {seconds:8.2f} s{extra}")
    lines.append(
        f"first slice sent -> last instance acknowledged by Orthanc: {result['wall_s']:.2f} s"
    )
    lines.append(
        f"gateway overhead (minus the service's {result['service_s']:.2f} s): "
        f"{result['overhead_s']:.2f} s"
    )
    lines.append(
        f"Orthanc's own ingest of the same files (storescu): {result['orthanc_ingest_s']:.2f} s; "
        f"overhead = {result['overhead_vs_orthanc']:.1f}x Orthanc's ingest"
    )
    orthanc = result["orthanc"]
    lines.append(
        f"Orthanc: {orthanc['instances']}/{orthanc['expected']} instances, "
        f"series sizes {orthanc['per_series']}"
    )
    memory = result["memory"]
    lines.append(
        f"peak memory per process ({memory['samples']} samples, every {RSS_INTERVAL_S} s; "
        "MiB; shmem = plasma pages mapped, shared) and CPU time used during the run:"
    )
    lines.append(
        f"  {'process':<34} {'pid':>7} {'RSS':>7} {'private':>8} {'shmem':>7} {'CPU s':>7}"
    )
    for proc in memory["processes"]:
        if proc["rss_kb"] < 50 * 1024 and proc["cpu_s"] < 1.0:
            continue
        lines.append(
            f"  {proc['label'][:34]:<34} {proc['pid']:>7} {proc['rss_kb'] / 1024:7.0f} "
            f"{proc['anon_kb'] / 1024:8.0f} {proc['shmem_kb'] / 1024:7.0f} {proc['cpu_s']:7.1f}"
        )
    lines.append(f"  driver (reference service, bench): CPU {memory['driver_cpu_s']:.1f} s")
    if memory["plasma_error"]:
        lines.append(f"object store: unavailable ({memory['plasma_error']})")
    else:
        lines.append(
            f"object store peak: {memory['plasma_peak_bytes'] / MIB:.0f} MiB in "
            f"{memory['plasma_peak_objects']} objects "
            f"(capacity {memory['plasma_capacity_bytes'] / MIB:.0f} MiB)"
        )
    proof = result["zero_copy"]
    lines.append(f"zero-copy check, one {proof['nbytes'] / MIB:.0f} MiB volume put once:")
    for p in proof["placements"]:
        lines.append(
            f"  {p['who']:<15} pid {p['pid']:>7} writeable={p['writeable']!s:<5} "
            f"owndata={p['owndata']!s:<5} base={p['base_type']} "
            f"{p['mapping']} inode {p['inode']} offset {p['file_offset']}"
        )
    growth = ", ".join(f"{kb / 1024:.1f}" for kb in proof["worker_private_growth_kb"].values())
    lines.append(f"  FilterWorker private memory growth on receipt: {growth} MiB")
    lines.append(f"  zero-copy proved: {proof['proved']}")
    load = " ".join(f"{v:.2f}" for v in result["load_after"])
    lines.append(f"load after {load}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("--slices", type=int, default=645)
    parser.add_argument("--size", type=int, default=440)
    parser.add_argument("--filters", type=int, default=3, choices=range(1, len(FILTER_TABLE) + 1))
    parser.add_argument("--filter-workers", type=int, default=0, help="default: the settings'")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary PETRAY_HOME")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if result["task"]["state"] != State.DONE:
        return 1
    delivered = result["orthanc"]["instances"] == result["orthanc"]["expected"]
    return 0 if delivered and result["zero_copy"]["proved"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
