"""Gateway start benchmark (issue 13): seconds from ``petray start`` to the DICOM port answering
a C-ECHO, and to "petray running" (console up), beside Orthanc's start in the same run.

    python -m bench.start [--runs 3]

Each run starts a gateway on a fresh home (the first start: it also creates the database) with
free loopback ports and no dashboard, then stops it with SIGTERM. Orthanc is timed from its
launch to its DICOM port answering a C-ECHO. Medians of ``--runs``; the load average is printed
beside them.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from petray.demo.orthanc import LOOPBACK, free_port, start_orthanc

TIMEOUT_S = 180.0


def echo_answers(port: int, called_ae: str) -> bool:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def time_petray_start() -> tuple[float, float]:
    """(seconds to the DICOM port answering, seconds to "petray running")."""
    with tempfile.TemporaryDirectory(prefix="petray-bench-start-") as tmp:
        dicom_port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PETRAY_", "RAY_ADDRESS"))},
            "PETRAY_HOME": str(Path(tmp) / "home"),
            "PETRAY_DICOM_PORT": str(dicom_port),
            "PETRAY_HTTP_PORT": str(free_port()),
            "PETRAY_DASHBOARD": "false",
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        log = Path(tmp) / "start.log"
        started = time.perf_counter()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "petray.cli", "start"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            listening = running = None
            while running is None:
                if process.poll() is not None or time.perf_counter() - started > TIMEOUT_S:
                    raise RuntimeError(f"petray start did not come up:\n{log.read_text()}")
                if listening is None and echo_answers(dicom_port, "PETRAY"):
                    listening = time.perf_counter() - started
                if "petray running" in log.read_text():
                    running = time.perf_counter() - started
                    if listening is None:
                        listening = running
                time.sleep(0.05)
            return listening, running
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)


def time_orthanc_start() -> float:
    with tempfile.TemporaryDirectory(prefix="petray-bench-start-orthanc-") as tmp:
        started = time.perf_counter()
        with start_orthanc(Path(tmp)) as peer:
            while not echo_answers(peer.dicom_port, peer.aet):
                time.sleep(0.05)
            return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    petray = [time_petray_start() for _ in range(args.runs)]
    orthanc = [time_orthanc_start() for _ in range(args.runs)]
    port = statistics.median(p for p, _ in petray)
    running = statistics.median(r for _, r in petray)
    reference = statistics.median(orthanc)
    print(f"{'start (median of ' + str(args.runs) + ')':<32}{'s':>8}{'vs Orthanc':>12}")
    print(f"{'Orthanc: DICOM port answers':<32}{reference:>8.1f}{1:>11.1f}x")
    print(f"{'petray: DICOM port answers':<32}{port:>8.1f}{port / reference:>11.1f}x")
    print(f"{'petray: running (console up)':<32}{running:>8.1f}{running / reference:>11.1f}x")
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
