"""Scale-out of the filter stage on simulated Ray nodes (issue 12).

    .venv/bin/python -m bench.scale [--series big|small] [--filters 4] [--nodes 1 2 4]
                                    [--skip-transport] [--json results.json]

Two measurements on the series cached by ``bench.ingest`` (645 x 440x440 by default):

* transport: what "no shared file system" costs one filter's series in one process: writing
  the files where they are made (the single-node fast path) against encoding them into one
  buffer, taking the buffer through pickle protocol 5 (Ray's serialisation) and writing them
  from it (what the gateway does with a worker's result).
* scaling: for each node count, a ``ray.cluster_utils.Cluster`` of a head (the gateway, no
  filter slot) and N worker nodes of one CPU and one ``filter_worker`` slot each, every node on
  127.0.0.1 with its own object store. The volume is put once on the head; the FilterWorkers
  that actors/filter_pool.py creates (one per slot) filter and encode ``--filters`` series; the
  head writes them. Timed from the first job submitted to the last series on disk; bytes per
  node are the volume pulled (once per node that ran a job) and the encoded series returned.

What a 2-core machine can show: at most two filters run at once however many nodes are
simulated, so 4 nodes cannot beat 2 here and the extra nodes only add transfers. The bytes per
node are exact (they are what would cross the network between machines); the transfer times are
loopback copies between object stores, far faster than a 1 or 10 Gb/s link, so the report also
gives the time those bytes would take on such links.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.ingest import SERIES, cached_series
from petray.imaging.derive import (
    EncodedSeries,
    SeriesJob,
    SliceTemplate,
    encode_series,
    prepare_templates,
    write_encoded,
    write_series,
)
from petray.imaging.filters import FilterSpec, apply_post_filter
from petray.imaging.volume import load_series_volume

UID_ROOT = "1.2.826.0.1.3680043.10.1299"
GBIT = 1e9 / 8  # bytes per second of a 1 Gb/s link
NODE_START_ATTEMPTS = 3
OBJECT_STORE_BYTES = 2 * 1024**3  # per simulated node: the volume and a few series


def _job(outdir: Path, index: int) -> SeriesJob:
    return SeriesJob(
        outdir=outdir,
        series_instance_uid=f"{UID_ROOT}.12.{index + 1}",
        series_number=801 + index,
        series_description=f"bench filter {index}",
        derivation_description="petray bench scale",
        uid_root=UID_ROOT,
    )


def _specs(count: int) -> list[FilterSpec]:
    return [
        FilterSpec(id=None, description=f"Gauss {4 + k}mm", series_number=801 + k, fwhm_mm=4.0 + k)
        for k in range(count)
    ]


def transport(
    volume: np.ndarray, templates: Sequence[SliceTemplate], outroot: Path
) -> dict[str, Any]:
    """Local write against encode + serialise + write elsewhere, for one series."""
    t0 = time.perf_counter()
    write_series(volume, templates, _job(outroot / "local", 0))
    local_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoded = encode_series(volume, templates, _job(outroot / "unused", 0))
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(encoded, protocol=5, buffer_callback=buffers.append)
    # What a reader of the object store gets: the buffer itself, not a copy of it.
    received = pickle.loads(header, buffers=[b.raw() for b in buffers])
    serialise_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_encoded(received, outroot / "gateway")
    write_s = time.perf_counter() - t0
    return {
        "series_bytes": encoded.nbytes,
        "write_local_s": round(local_s, 2),
        "encode_s": round(encode_s, 2),
        "serialise_s": round(serialise_s, 3),
        "write_from_buffer_s": round(write_s, 2),
        "extra_s": round(encode_s + serialise_s + write_s - local_s, 2),
        "at_1gbit_s": round(encoded.nbytes / GBIT, 2),
        "at_10gbit_s": round(encoded.nbytes / (10 * GBIT), 2),
    }


def _add_worker(cluster: Any) -> Any:
    from actors.names import FILTER_RESOURCE

    for attempt in range(1, NODE_START_ATTEMPTS + 1):
        try:
            node = cluster.add_node(
                num_cpus=1,
                resources={FILTER_RESOURCE: 1},
                node_ip_address="127.0.0.1",
                object_store_memory=OBJECT_STORE_BYTES,
            )
            cluster.wait_for_nodes(timeout=120)
            return node
        except Exception:
            if attempt == NODE_START_ATTEMPTS:
                raise
            time.sleep(2 * attempt)
    raise AssertionError("unreachable")


def scaling(
    nodes: int,
    volume: np.ndarray,
    templates: Sequence[SliceTemplate],
    spacing: tuple[float, float, float],
    filters: int,
    outroot: Path,
) -> dict[str, Any]:
    from ray.cluster_utils import Cluster

    from actors.ray_loopback import loopback_only

    # Nodes on loopback: Ray 2.60 swaps 127.0.0.1 for the host's address otherwise.
    with loopback_only():
        return _scaling(nodes, volume, templates, spacing, filters, outroot, Cluster)


def _scaling(
    nodes: int,
    volume: np.ndarray,
    templates: Sequence[SliceTemplate],
    spacing: tuple[float, float, float],
    filters: int,
    outroot: Path,
    cluster_class: Any,
) -> dict[str, Any]:
    import ray

    from actors.filter_pool import remove_pool, sync_pool
    from actors.names import NAMESPACE

    cluster = cluster_class(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            "object_store_memory": OBJECT_STORE_BYTES,
        },
    )
    try:
        head = cluster.head_node
        assert head is not None
        roles = {head.node_id: "head"}
        for index in range(nodes):
            roles[_add_worker(cluster).node_id] = f"worker-{index}"
        ray.init(
            address=head.gcs_address,
            namespace=NAMESPACE,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        pool = sync_pool()
        ray.get([w.handle.__ray_ready__.remote() for w in pool.workers], timeout=300)
        writer_node = ray.get_runtime_context().get_node_id()
        specs = _specs(filters)
        jobs = [_job(outroot / f"n{nodes}" / f"series-{k}", k) for k in range(filters)]
        started = time.perf_counter()
        volume_ref = ray.put(volume)
        templates_ref = ray.put(tuple(templates))
        pending = {}
        for k, spec in enumerate(specs):
            worker = pool.workers[k % len(pool.workers)]
            ref = worker.handle.filter_series.remote(
                volume_ref, None, templates_ref, spec, spacing, jobs[k], writer_node
            )
            pending[ref] = (k, worker.node_id)
        per_node: dict[str, dict[str, int]] = {}
        write_s = 0.0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            k, node_id = pending.pop(ready[0])
            result = ray.get(ready[0]).series
            moved = per_node.setdefault(roles[node_id], {"jobs": 0, "in": 0, "out": 0})
            moved["jobs"] += 1
            if isinstance(result, EncodedSeries):
                moved["out"] += result.nbytes
                t0 = time.perf_counter()
                write_encoded(result, jobs[k].outdir)
                write_s += time.perf_counter() - t0
        elapsed = time.perf_counter() - started
        # Each node that ran a job pulled the volume and the templates once.
        templates_bytes = len(pickle.dumps(tuple(templates), protocol=5))
        for moved in per_node.values():
            moved["in"] = int(volume.nbytes) + templates_bytes
        remove_pool()
        return {
            "nodes": nodes,
            "filters": filters,
            "filter_stage_s": round(elapsed, 1),
            "head_write_s": round(write_s, 1),
            "per_node": per_node,
            "max_node_bytes": max(m["in"] + m["out"] for m in per_node.values()),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", choices=sorted(SERIES), default="big")
    parser.add_argument("--filters", type=int, default=4)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-transport", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    cached = cached_series(args.series)
    loaded = load_series_volume(sorted(cached.directory.glob("*.dcm")))
    templates = prepare_templates(loaded.slice_paths)
    results: dict[str, Any] = {"shape": list(loaded.shape), "cpus": os.cpu_count()}
    outroot = Path(tempfile.mkdtemp(prefix="petray-bench-scale-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        filtered = apply_post_filter(loaded.data, None, _specs(1)[0], loaded.spacing_zyx)
        results["one_filter_s"] = round(time.perf_counter() - t0, 2)
        if not args.skip_transport:
            results["transport"] = transport(filtered, templates, outroot / "transport")
            print("transport:", json.dumps(results["transport"]))
        del filtered
        results["scaling"] = []
        for nodes in args.nodes:
            row = scaling(nodes, loaded.data, templates, loaded.spacing_zyx, args.filters, outroot)
            results["scaling"].append(row)
            print("scaling:", json.dumps(row))
            shutil.rmtree(outroot / f"n{nodes}", ignore_errors=True)
    finally:
        shutil.rmtree(outroot, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
