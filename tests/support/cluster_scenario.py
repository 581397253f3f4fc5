"""The gateway on a real multi-node Ray cluster (issue 12), run in a process of its own.

A process can ``ray.init`` once and the test session already holds the shared local Ray, so
tests/test_cluster.py runs this script with the virtualenv's Python and reads the JSON report it
prints last. ``ray.cluster_utils.Cluster`` starts a head (the gateway, no ``filter_worker``
capacity, as cluster.yaml has it); the gateway starts there with no filter node at all, then two
worker nodes offering one slot each join, every node on 127.0.0.1. The scenario:

1. placement: the node of every actor, from the GCS actor table, once the nodes joined;
2. one series end to end, delivered to DCMTK storescp and checked value by value;
3. a second series: one worker node removed while it is being filtered; only its filter
   reruns, on the other node, and the values are correct;
4. a third series with no filter node left: the reason it waits with, a new worker node
   joining, and the task finished with correct values.

The caller sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray 2.60 otherwise swaps 127.0.0.1 in the
head's address for the host's own, where nothing listens (actors/ray_loopback.py).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom

NODE_START_ATTEMPTS = 3
WAIT_S = 150.0
FILTER_SLOTS_PER_NODE = 1


def _log(message: str) -> None:
    print(f"[cluster-scenario {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _add_worker(cluster: Any) -> Any:
    """A worker node offering ``filter_worker``; patience, not flakiness, on a loaded machine."""
    from actors.names import FILTER_RESOURCE

    for attempt in range(1, NODE_START_ATTEMPTS + 1):
        try:
            node = cluster.add_node(
                num_cpus=1,
                resources={FILTER_RESOURCE: FILTER_SLOTS_PER_NODE},
                node_ip_address="127.0.0.1",
            )
            cluster.wait_for_nodes(timeout=60)
            return node
        except Exception as exc:  # Ray raises a variety of start-up errors
            _log(f"worker node start attempt {attempt} failed: {type(exc).__name__}: {exc}")
            if attempt == NODE_START_ATTEMPTS:
                raise
            time.sleep(2 * attempt)
    raise AssertionError("unreachable")


def _wait(
    condition: Callable[[], Any],
    what: str,
    timeout_s: float = WAIT_S,
    describe: Callable[[], Any] = lambda: "",
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}: {describe()}")


def _placement(roles: dict[str, str]) -> list[dict[str, str]]:
    from ray._private import state

    placed = []
    for info in state.actors().values():  # the cluster is this scenario's own: every actor
        if info.get("State") != "ALIVE":
            continue
        name = str(info.get("Name") or "")
        node = str((info.get("Address") or {}).get("NodeID") or "")
        placed.append(
            {
                "name": name or str(info.get("ActorClassName")),
                "class": str(info.get("ActorClassName")),
                "node": roles.get(node, node),
            }
        )
    return sorted(placed, key=lambda p: p["name"])


def _filter_workers() -> dict[str, str]:
    """FilterWorker name -> node id, from the GCS actor table."""
    from ray._private import state

    return {
        str(info["Name"]): str(info["Address"]["NodeID"])
        for info in state.actors().values()
        if info.get("State") == "ALIVE" and info.get("ActorClassName") == "FilterWorker"
    }


def _verify(site: dict[str, Any], task_id: str, study: list[Any], received: Path) -> list[str]:
    from petray.db.engine import unit_of_work
    from petray.demo.demo_check import group_by_series, verify_outputs
    from petray.service.archive import read_result_archive
    from petray.stages.records import Packed
    from petray.task_files import TaskFiles
    from petray.tasks import get_task

    settings = site["settings"]
    with unit_of_work(site["sessions"]) as session:
        task = get_task(task_id, session=session)
        packed = Packed.of(task)
    arrays = read_result_archive(
        TaskFiles.of(settings, task_id).result_archive,
        expected_shape=packed.shape,
        max_uncompressed_bytes=settings.max_result_bytes,
    )
    datasets = [pydicom.dcmread(p) for p in sorted(received.iterdir()) if p.is_file()]
    return verify_outputs(
        group_by_series(datasets),
        source=study,
        denoised=arrays.denoised,
        noise=arrays.noise,
        filters=site["filters"],
        spacing_zyx=packed.spacing_zyx,
    )


def run(workdir: Path, report: dict[str, Any]) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from actors.gateway import Gateway
    from actors.names import NAMESPACE
    from petray.db.engine import unit_of_work
    from petray.demo.synth import make_pet_series, write_series
    from petray.imaging.filters import FilterSpec
    from petray.tasks import list_tasks
    from serve.reference.main import running_reference
    from tests.support.gateway_site import prepare_site, site_settings
    from tests.support.peers import free_port, run_storescu, start_storescp

    started = time.monotonic()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    )
    gateway: Any = None
    try:
        head = cluster.head_node
        assert head is not None  # initialize_head=True
        roles = {head.node_id: "head"}
        ray.init(
            address=head.gcs_address,
            namespace=NAMESPACE,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        report["driver_node"] = roles.get(ray.get_runtime_context().get_node_id(), "?")

        # Slow enough that the removal below lands while the series is being filtered.
        filters = (
            FilterSpec(id=None, description="Gauss 200mm", series_number=801, fwhm_mm=200.0),
            FilterSpec(
                id=None, description="Gauss 300mm", series_number=802, fwhm_mm=300.0, noise_pct=25
            ),
        )
        reference_port = free_port()
        settings = site_settings(
            workdir / "home",
            remote_url=f"http://127.0.0.1:{reference_port}",
            sweep_interval_s=2.0,
        )
        with (
            running_reference(settings, port=reference_port),
            start_storescp(workdir / "dest") as dest,
        ):
            sessions = prepare_site(settings, destination=(dest.aet, dest.port), filters=filters)
            site = {"settings": settings, "sessions": sessions, "filters": filters}
            # The gateway starts before any filter node exists (it used to give up after
            # ~160 s); the nodes that join afterwards get their workers.
            gateway = Gateway(settings, log_to_driver=False).start()
            report["gateway_started_s"] = round(time.monotonic() - started, 1)
            report["filter_workers_at_start"] = len(_filter_workers())
            workers = [_add_worker(cluster), _add_worker(cluster)]
            roles.update({w.node_id: f"worker-{i}" for i, w in enumerate(workers)})
            report["nodes_up_s"] = round(time.monotonic() - started, 1)
            _wait(
                lambda: len(_filter_workers()) == 2,
                "a filter worker on each node that joined",
                timeout_s=90,
                describe=_filter_workers,
            )
            report["placement"] = _placement(roles)
            port = int(gateway.listener["port"])

            def tasks() -> list[Any]:
                with unit_of_work(sessions) as session:
                    return list_tasks(session=session)

            def task_of(series_uid: str) -> Any:
                return next((t for t in tasks() if t.series_instance_uid == series_uid), None)

            def send(seed: int, slices: int, size: int) -> tuple[list[Any], str]:
                study = make_pet_series(slices=slices, rows=size, cols=size, seed=seed)
                files = write_series(study, workdir / f"scanner-{seed}")
                result = run_storescu(files, port=port, called_ae="PETRAY")
                if result.returncode != 0:
                    raise RuntimeError(f"storescu failed: {result.stderr}")
                return study, str(study[0].SeriesInstanceUID)

            def finished(series_uid: str) -> Any:
                task = task_of(series_uid)
                return task if task and task.state in ("done", "failed") else None

            # 2. one series end to end
            study, uid = send(seed=11, slices=24, size=64)
            task = _wait(lambda: finished(uid), "the first task")
            report["first"] = {
                "state": task.state,
                "reason": task.reason,
                "sent": task.destinations[0]["sent"],
                "problems": _verify(site, task.id, study, dest.output_dir),
                "finished_s": round(time.monotonic() - started, 1),
            }
            shutil.rmtree(dest.output_dir)
            dest.output_dir.mkdir()

            # 3. one filter node lost mid-filter: only its filter reruns, on the other node
            survivor_name = next(
                name for name, node in _filter_workers().items() if node == workers[1].node_id
            )
            survivor = ray.get_actor(survivor_name, namespace=NAMESPACE)
            jobs_before = ray.get(survivor.jobs.remote(), timeout=60)
            study, uid = send(seed=12, slices=96, size=256)
            _wait(
                lambda: (t := task_of(uid)) is not None and t.stage == "unpacking",
                "the second task to reach unpacking",
            )
            time.sleep(0.3)  # the volume and templates are put; both filters are running
            at_removal = task_of(uid)
            cluster.remove_node(workers[0], allow_graceful=False)
            report["removed"] = {"stage": at_removal.stage, "state": at_removal.state}
            task = _wait(lambda: finished(uid), "the second task", describe=lambda: task_of(uid))
            report["second"] = {
                "state": task.state,
                "reason": task.reason,
                "sent": task.destinations[0]["sent"],
                "problems": _verify(site, task.id, study, dest.output_dir),
                "survivor_jobs": ray.get(survivor.jobs.remote(), timeout=60) - jobs_before,
            }
            shutil.rmtree(dest.output_dir)
            dest.output_dir.mkdir()

            # 4. no filter node left: the task waits with the reason; a new node joins
            cluster.remove_node(workers[1], allow_graceful=False)
            study, uid = send(seed=13, slices=24, size=64)
            waiting = _wait(
                lambda: (
                    (t := task_of(uid)) is not None
                    and t.state == "waiting"
                    and "no node offers" in (t.last_error or t.reason)
                    and t
                ),
                "the task to wait for filter capacity",
                timeout_s=90,
                describe=lambda: task_of(uid),
            )
            report["waiting_reason"] = waiting.last_error or waiting.reason
            joined = _add_worker(cluster)
            roles[joined.node_id] = "worker-new"
            task = _wait(
                lambda: finished(uid),
                "the third task after a node joined",
                describe=lambda: task_of(uid),
            )
            report["third"] = {
                "state": task.state,
                "reason": task.reason,
                "sent": task.destinations[0]["sent"],
                "problems": _verify(site, task.id, study, dest.output_dir),
            }
            report["placement_after"] = _placement(roles)
    finally:
        if gateway is not None:
            try:
                gateway.stop()
            except Exception as exc:
                _log(f"gateway stop: {type(exc).__name__}: {exc}")
        ray.shutdown()
        cluster.shutdown()
    report["total_s"] = round(time.monotonic() - started, 1)


def main() -> int:
    workdir = Path(sys.argv[1])
    report: dict[str, Any] = {}
    try:
        run(workdir, report)
    except Exception as exc:
        import traceback

        traceback.print_exc()
        report["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
