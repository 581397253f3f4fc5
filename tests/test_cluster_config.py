"""cluster.yaml passes Ray's own validator and says what issue 12 needs (Ray-free)."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return loaded


def test_ray_validates_the_config(config: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does: defaults filled in, then Ray's JSON schema and its own checks.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_every_listed_worker_is_started(config: dict[str, Any]) -> None:
    assert config["max_workers"] == len(config["provider"]["worker_ips"])


def _flags(command: str) -> dict[str, str]:
    flags = {}
    for word in shlex.split(command.replace("$(nproc)", "4")):
        if word.startswith("--") and "=" in word:
            key, value = word[2:].split("=", 1)
            flags[key] = value
    return flags


def _start(config: dict[str, Any], key: str) -> dict[str, str]:
    (command,) = [c for c in config[key] if "ray start" in c]
    return _flags(command)


def test_the_head_offers_no_filter_slot_and_the_workers_do(config: dict[str, Any]) -> None:
    head = _start(config, "head_start_ray_commands")
    worker = _start(config, "worker_start_ray_commands")
    assert "filter_worker" not in head.get("resources", "")
    assert '"filter_worker": 4' in worker["resources"]  # one slot per core


def test_the_dashboard_listens_on_the_heads_loopback(config: dict[str, Any]) -> None:
    assert _start(config, "head_start_ray_commands")["dashboard-host"] == "127.0.0.1"


def test_every_ray_port_is_fixed_and_admitted_only_from_the_cluster(
    config: dict[str, Any],
) -> None:
    (rules,) = config["initialization_commands"]
    assert "ufw default deny incoming" in rules
    network = re.search(r"CLUSTER_NET=(\S+);", rules)
    assert network is not None
    allowed = [
        (int(low), int(high or low))
        for low, high in re.findall(r"from \$CLUSTER_NET to any port (\d+)(?::(\d+))?", rules)
    ]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        flags = _start(config, key)
        ports = [int(v) for k, v in flags.items() if k.endswith("port") and k != "dashboard-port"]
        ports += [int(flags["min-worker-port"]), int(flags["max-worker-port"])]
        assert len(ports) >= 8, flags
        for port in ports:
            assert any(low <= port <= high for low, high in allowed), (key, port)
    # The dashboard binds loopback; only SSH, DICOM and HTTP are open to everyone.
    assert " 8265" not in rules
    opened = re.findall(r"ufw allow (\d+)/tcp", " ".join(config["head_setup_commands"]))
    assert sorted(opened) == ["11112", "8000"]


def test_every_node_installs_the_wheel_built_from_this_repository(config: dict[str, Any]) -> None:
    assert config["file_mounts"] == {"~/petray-dist": "./dist"}
    setup = " ".join(config["setup_commands"])
    assert "~/petray-dist/petray-*.whl" in setup
    assert not re.search(r"pip install( -q)? petray\b", setup)  # not from a package index


def test_the_wheel_carries_the_actors_and_the_web_console(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = tmp_path.glob("petray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "actors/filter_worker.py",
        "actors/filter_pool.py",
        "actors/placement.py",
        "petray/imaging/derive.py",
        "actors/http.py",
        "petray/db/migrations/env.py",
    ):
        assert required in names
    assert any(n.startswith("serve/templates/") and n.endswith(".html") for n in names)
