"""``petray demo`` as a user runs it (issue 11): progress while the gateway starts, the
verdict, and nothing of Ray's own output on the terminal."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from tests.support.petray_cli import PETRAY

# Everything the demo itself prints; any other line is noise that leaked.
OWN_LINES = re.compile(
    r"^(petray demo in |reference processing service: |destination: |  gateway: |gateway up in "
    r"|sent \d+ PET slices|  task [0-9a-f]{8}: |per-stage timings:|  [a-z]+ +\d+\.\d\d s$"
    r"|quantitative check \(|  received: SUVmax |  #\d+ .*: SUVmax |  check: off$|verified: )"
)


def test_demo_prints_progress_and_no_ray_noise(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETRAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    home = tmp_path / "demo"
    started = time.monotonic()
    done = subprocess.run(
        [*PETRAY, "demo", "--slices", "12", "--size", "32", "--home", str(home)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if not OWN_LINES.match(line)] == []
    assert any(line.startswith("  gateway: starting Ray") for line in lines)
    assert any(line.startswith("  gateway: starting the pipeline") for line in lines)
    assert lines[-1].startswith("verified: 2 series x 12 instances")
    # The quantitative check of both derived series, with SUV (the synthetic header is complete).
    assert sum(bool(re.match(r"  #\d+ .*: SUVmax .* total ", line)) for line in lines) == 2
    assert done.stderr == ""
    # Ray's and the gateway's own lines went to a file instead.
    captured = (home / "logs" / "demo-output.log").read_text()
    assert "serve" in captured
    # petray's own log file, written by the actor processes and the Serve replica (issue 11).
    own = (home / "logs" / "petray.log").read_text()
    assert " INFO [" in own and " actors." in own  # level, pid, an actor module
    assert "Doe^" not in own
    assert time.monotonic() - started < 600
