"""The gateway on a real multi-node Ray cluster (issue 12): head + 2 worker nodes.

The scenario runs in its own process (tests/support/cluster_scenario.py): this session already holds
the shared local Ray and a process can ``ray.init`` only once. One run (about a minute and a
half on 2 cores) checks placement, a task delivered with correct values, a filter node lost
mid-filter (only its filter reruns), and no filter node left until a new one joins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.peers]

REPO = Path(__file__).resolve().parents[1]
SCENARIO_TIMEOUT_S = 300
BUDGET_S = 180  # the whole scenario, nodes included, on a 2-core machine


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("cluster")
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Keeps 127.0.0.1 in the head's address (actors/ray_loopback.py): loopback only.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.cluster_scenario", str(workdir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT_S,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"no report; stderr:\n{result.stderr[-4000:]}"
    data: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in data, f"{data['error']}\nstderr:\n{result.stderr[-4000:]}"
    return data


def _nodes(placement: list[dict[str, str]], *, filter_workers: bool) -> dict[str, str]:
    return {
        p["name"]: p["node"] for p in placement if (p["class"] == "FilterWorker") == filter_workers
    }


def test_io_actors_serve_and_the_driver_stay_on_the_head(report: dict[str, Any]) -> None:
    assert report["driver_node"] == "head"
    io = _nodes(report["placement"], filter_workers=False)
    classes = {p["class"] for p in report["placement"]}
    # Every pipeline stage, Serve's controller, proxy and replica are in the report.
    for expected in (
        "StoreScpActor",
        "CompilatorActor",
        "ValidatorActor",
        "PackerActor",
        "UploaderActor",
        "DownloaderActor",
        "UnpackerActor",
        "StoreScuActor",
        "ProxyActor",
        "ServeController",
    ):
        assert expected in classes
    assert any(c.startswith("ServeReplica:petray") for c in classes)
    assert set(io.values()) == {"head"}, io


def test_one_filter_worker_per_slot_on_the_worker_nodes_none_on_the_head(
    report: dict[str, Any],
) -> None:
    # The gateway started without any filter capacity; the nodes joined afterwards.
    assert report["filter_workers_at_start"] == 0
    filters = _nodes(report["placement"], filter_workers=True)
    assert sorted(filters.values()) == ["worker-0", "worker-1"], filters


def test_a_task_is_delivered_with_correct_values(report: dict[str, Any]) -> None:
    first = report["first"]
    assert (first["state"], first["reason"]) == ("done", "")
    assert first["sent"] == 24 * 2  # two filters
    assert first["problems"] == []


def test_a_node_lost_mid_filter_costs_only_its_filter(report: dict[str, Any]) -> None:
    assert report["removed"] == {"stage": "unpacking", "state": "active"}
    second = report["second"]
    assert (second["state"], second["reason"]) == ("done", "")
    assert second["sent"] == 96 * 2
    assert second["problems"] == []
    # The surviving node ran its own filter and the lost node's, not the whole task again.
    assert second["survivor_jobs"] == 2


def test_without_filter_nodes_the_task_waits_then_finishes_on_a_new_node(
    report: dict[str, Any],
) -> None:
    assert "no node offers the filter_worker resource" in report["waiting_reason"]
    third = report["third"]
    assert (third["state"], third["reason"]) == ("done", "")
    assert third["sent"] == 24 * 2
    assert third["problems"] == []
    # The lost nodes' workers are gone; the new node got one; nothing else moved.
    after = report["placement_after"]
    assert sorted(_nodes(after, filter_workers=True).values()) == ["worker-new"]
    assert set(_nodes(after, filter_workers=False).values()) == {"head"}


def test_the_scenario_fits_its_budget(report: dict[str, Any]) -> None:
    assert report["total_s"] < BUDGET_S
