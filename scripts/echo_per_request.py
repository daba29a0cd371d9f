"""Per-request costs of TCP echo on ErlangEventLoop against uvloop, the
loops alternating in one node (the workloads of
examples/benchmark_event_loop.py): req/s, the loop thread's CPU per
request (time.thread_time, and user/kernel from /proc/self/task/<tid>/stat),
the other threads' CPU per request, context switches; with ``--mode
strace`` a ``strace -f -c`` of the node per run (syscall counts), with
``--mode perf`` a ``perf record -e cpu-clock`` (PERF_ARGS in the
environment: its sampling options), files in ``--outdir``.

    bin/erlang-python scripts/echo_per_request.py [--mode plain|strace|perf]
        [--workload protocols10|protocols100|streams10|streams100]
        [--rounds 6] [--seconds 3] [--loops ErlangEventLoop,uvloop]

Counts (syscalls, CPU per request) are what a shared machine does not
move much; req/s is the loop thread's share of a core as much as its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench", f"{ROOT}/examples/benchmark_event_loop.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench
spec.loader.exec_module(bench)

PERF_ARGS = os.environ.get("PERF_ARGS", "-F 2000 -g").split()
TICK = os.sysconf("SC_CLK_TCK")


def thread_times(tid: int) -> tuple[float, float]:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def thread_switches(tid: int) -> tuple[int, int]:
    vol = invol = 0
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                vol = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches"):
                invol = int(line.split()[1])
    return vol, invol


def process_times() -> tuple[float, float]:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


WORKLOADS = {
    "protocols10": lambda lp, s: bench.tcp_protocols(lp, 10, s),
    "protocols100": lambda lp, s: bench.tcp_protocols(lp, 100, s),
    "streams10": lambda lp, s: bench.tcp_streams(lp, 10, s),
    "streams100": lambda lp, s: bench.tcp_streams(lp, 100, s),
}


class Tool:
    def __init__(self, mode: str, name: str, out: str) -> None:
        self.mode = mode
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = out
        self.name = name

    def start(self) -> None:
        pid = os.getpid()
        if self.mode == "strace":
            self.proc = subprocess.Popen(
                ["strace", "-f", "-c", "-p", str(pid), "-o", self.out],
                stderr=subprocess.PIPE,
            )
            # wait for attach messages
            time.sleep(1.0)
        elif self.mode == "perf":
            self.proc = subprocess.Popen(
                [
                    "perf",
                    "record",
                    "-q",
                    "-e",
                    "cpu-clock",
                    *PERF_ARGS,
                    "-p",
                    str(pid),
                    "-o",
                    self.out,
                ],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait()


def one_run(kind: str, workload: str, seconds: float, tool: Tool) -> dict[str, float]:
    gc.collect()
    loop = bench.FACTORIES[kind]()
    asyncio.set_event_loop(loop)
    tid = threading.get_native_id()
    try:
        tool.start()
        u0, s0 = thread_times(tid)
        pu0, ps0 = process_times()
        v0, i0 = thread_switches(tid)
        t0 = time.thread_time()
        result = WORKLOADS[workload](loop, seconds)
        t1 = time.thread_time()
        v1, i1 = thread_switches(tid)
        pu1, ps1 = process_times()
        u1, s1 = thread_times(tid)
        tool.stop()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    # req/s * elapsed: elapsed ~ seconds
    reqs = result["req/s"] * seconds
    return {
        "req/s": result["req/s"],
        "reqs": reqs,
        "thread us/req": (t1 - t0) / reqs * 1e6,
        "user us/req": (u1 - u0) / reqs * 1e6,
        "sys us/req": (s1 - s0) / reqs * 1e6,
        "proc us/req": ((pu1 - pu0) + (ps1 - ps0)) / reqs * 1e6,
        "other threads us/req": ((pu1 - pu0) + (ps1 - ps0) - (t1 - t0)) / reqs * 1e6,
        "vol cs/req": (v1 - v0) / reqs,
        "invol cs/req": (i1 - i0) / reqs,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="plain")
    p.add_argument("--workload", default="protocols10")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--loops", default="ErlangEventLoop,uvloop")
    p.add_argument("--outdir", default="/tmp/echo_per_request")
    a = p.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    kinds = a.loops.split(",")
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for r in range(a.rounds):
        order = kinds if r % 2 == 0 else kinds[::-1]
        for kind in order:
            out = f"{a.outdir}/{a.mode}-{a.workload}-{kind}-{r}"
            res = one_run(kind, a.workload, a.seconds, Tool(a.mode, kind, out))
            results[kind].append(res)
            print(r, kind, " ".join(f"{k}={v:.3f}" for k, v in res.items()), flush=True)
    print("medians:")
    for kind in kinds:
        keys = results[kind][0].keys()
        print(
            kind,
            " ".join(f"{k}={statistics.median(x[k] for x in results[kind]):.3f}" for k in keys),
        )
    if len(kinds) == 2:
        ratios = [
            results[kinds[0]][i]["req/s"] / results[kinds[1]][i]["req/s"] for i in range(a.rounds)
        ]
        print(
            "req/s ratio per round",
            [round(x, 3) for x in ratios],
            "median",
            round(statistics.median(ratios), 3),
        )
        ratios = [
            results[kinds[1]][i]["thread us/req"] / results[kinds[0]][i]["thread us/req"]
            for i in range(a.rounds)
        ]
        print(
            "thread cpu ratio (uv/ours) per round",
            [round(x, 3) for x in ratios],
            "median",
            round(statistics.median(ratios), 3),
        )


main()
