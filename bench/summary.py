"""Issue 13's figures in one table: petray, Orthanc and DCMTK side by side, from the same run.

    python -m bench.summary [--runs 3] [--out DIR]

Runs, each in a process of its own (each starts and stops its own private Ray):

* ``bench.ingest --series both --ray``: one association, instances/s, medians of ``--runs``;
* ``bench.concurrency --associations 4 8``: simultaneous associations, medians;
* ``bench.pipeline`` ``--runs`` times: the gateway overhead for 645x440x440 with 3 filters to
  Orthanc, against Orthanc's own ingest of the same files in the same run (median ratio);

then prints one table with the targets of issue 13 and the load average before and after.
The JSON each benchmark wrote stays in ``--out`` (default: a new directory under /tmp).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _run(module: str, *args: str) -> None:
    command = [sys.executable, "-m", module, *args]
    print(f"$ {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def measure(runs: int, out: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"load_before": _load()}
    _run("bench.ingest", "--series", "both", "--runs", str(runs), "--ray",
         "--json", str(out / "ingest.json"))  # fmt: skip
    _run("bench.concurrency", "--associations", "4", "8", "--runs", str(runs),
         "--json", str(out / "concurrency.json"))  # fmt: skip
    for run in range(1, runs + 1):
        _run("bench.pipeline", "--json", str(out / f"pipeline-{run}.json"))
    figures["load_after"] = _load()
    figures["ingest"] = json.loads((out / "ingest.json").read_text())["inst_per_s"]
    figures["concurrency"] = json.loads((out / "concurrency.json").read_text())["inst_per_s"]
    figures["pipeline"] = [
        json.loads((out / f"pipeline-{run}.json").read_text()) for run in range(1, runs + 1)
    ]
    return figures


def table(figures: dict[str, Any], runs: int) -> str:
    rows: list[tuple[str, str, str, str, str, str]] = []
    for name, label in (("big", "645x440x440"), ("small", "300x192x192")):
        rates = figures["ingest"][name]
        rows.append((
            f"ingest {label}, 1 association (inst/s)",
            f"{rates['petray(ray)']:.0f}", f"{rates['orthanc']:.0f}",
            f"{rates['storescp']:.0f}", f"{rates['petray(ray)'] / rates['orthanc']:.2f}x",
            ">= 1.2x",
        ))  # fmt: skip
    for count, rates in figures["concurrency"].items():
        best = max(rates["petray(ray)x1"], rates["petray(ray)x2"])
        rows.append((
            f"ingest, {count} associations (inst/s; x1 / x2 SCP processes)",
            f"{rates['petray(ray)x1']:.0f} / {rates['petray(ray)x2']:.0f}",
            f"{rates['orthanc']:.0f}", f"{rates['storescp']:.0f}",
            f"{best / rates['orthanc']:.2f}x", ">= 1.0x",
        ))  # fmt: skip
    done = [p for p in figures["pipeline"] if "overhead_s" in p]
    if done:
        overhead = statistics.median(p["overhead_s"] for p in done)
        orthanc = statistics.median(p["orthanc_ingest_s"] for p in done)
        ratio = statistics.median(p["overhead_vs_orthanc"] for p in done)
        rows.append((
            "gateway overhead 645x440x440, 3 filters (s; Orthanc: its ingest)",
            f"{overhead:.1f}", f"{orthanc:.1f}", "-", f"{ratio:.1f}x", "<= 5x",
        ))  # fmt: skip
        rss = statistics.median(
            max(proc["rss_kb"] for proc in p["memory"]["processes"]) / 1024 for p in done
        )
        rows.append(("peak RSS of one process (MiB)", f"{rss:.0f}", "-", "-", "-", "<= 1536"))
    header = ("measure", "petray", "Orthanc", "DCMTK", "petray/Orthanc", "target")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(header))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.append(
        f"medians of {runs} runs; load average before {figures['load_before']}, "
        f"after {figures['load_after']} ({os.cpu_count()} CPUs)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="where the benchmarks' JSON goes")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="petray-bench-summary-", dir="/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    figures = measure(args.runs, out)
    (out / "summary.json").write_text(json.dumps(figures, indent=2))
    print()
    print(table(figures, args.runs))
    print(f"(figures in {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
