"""The benchmark script (``make bench``) runs: a quick run of every
workload but the ASGI one (which needs wrk) in a fresh node prints a figure
for each loop and workload. Speed itself is the benchmark's business, not
a test's; never-early sleeps are behaviour, so they are checked here."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = [
    "call_soon",
    "timers",
    "cancel",
    "sleep0",
    "sleep",
    "echo",
    "wait_for",
    "memory",
    "idle",
]


def test_a_quick_run_measures_every_workload_on_every_loop() -> None:
    done = subprocess.run(
        [
            str(ROOT / "bin" / "erlang-python"),
            str(ROOT / "examples" / "benchmark_event_loop.py"),
            "--quick",
            "--only",
            *WORKLOADS,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    header, figures = rows[0], rows[1:]
    assert [cell.strip() for cell in header[2:6]] == [
        "ErlangEventLoop",
        "asyncio",
        "uvloop",
        "rloop",
    ]
    workloads = {cells[0].strip() for cells in figures}
    for expected in (
        "call_soon",
        "timers pending",
        "cancelled",
        "sleep(0)",
        "TCP echo",
        "UDP echo",
        "wait_for",
        "memory per pending timer",
        "idle",
        "erlang_asyncio.sleep",
    ):
        assert any(expected in name for name in workloads), (expected, sorted(workloads))
    for cells in figures:
        # Every figure was measured on our loop.
        assert cells[2].strip() not in ("", "n/a"), cells
    early = [cells for cells in figures if cells[1].strip() == "early returns"]
    assert early and all(cells[2].strip() == "0" for cells in early), early
