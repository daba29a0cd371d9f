"""ErlangEventLoop side by side with the stdlib's loop, uvloop and rloop, in one
run, inside the BEAM node.

    bin/erlang-python examples/benchmark_event_loop.py [--quick] [--only NAME ...]

Each workload runs on a fresh loop of each kind, the kinds taking turns in
this process: the same interpreter, the same machine load. Each workload
but memory and idle runs twice per loop, the loops taking turns in
alternating order, and keeps each loop's best run (the machine is shared),
all of a row's figures from that run; memory and ``wait_for`` run in a
fresh node per loop, so that no loop reuses a heap another one grew.
Every figure is printed with its ratio to the best other loop ("x1.20" =
ErlangEventLoop is 1.2 times better, whichever way better points), and a
Markdown table closes the run. ``--quick`` scales every
count down (seconds in all). Clients run on the same loop as their servers,
except wrk.

The workloads: call_soon dispatch (a million queued at once, and 100 in
flight), with the seconds each loop spent in Python's GC; timers firing with 10k and 1M pending;
schedule + cancel (90% cancelled); ``sleep(0)`` round trips; 10k tasks x 100
``sleep(1 ms)``; 1000 sequential ``sleep(1 ms)`` (early returns counted);
TCP echo (Protocols and streams, 10 and 100 connections, 1 KiB); UDP echo;
10k tasks in ``wait_for(fast_future, 30)``; memory per pending timer; idle CPU
and wake-ups with 10k timers an hour away; the sleep workloads also through
``erlang_asyncio.sleep`` on ErlangEventLoop, in the same rounds; and
uvicorn + Starlette under ``wrk`` (when ``wrk`` is installed:
``scripts/bench-deps.sh``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import erlang_asyncio
import erlang_loop
import rloop
import uvloop

HOST = "127.0.0.1"
ERLANG = "ErlangEventLoop"
STDLIB = "asyncio"
UVLOOP = "uvloop"
RLOOP = "rloop"

# How each kind of loop is made. asyncio.new_event_loop() would give an
# ErlangEventLoop inside the node (the policy), so the stdlib loop is named.
FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    ERLANG: erlang_loop.ErlangEventLoop,
    STDLIB: asyncio.SelectorEventLoop,
    UVLOOP: uvloop.new_event_loop,
    RLOOP: rloop.new_event_loop,
}
LOOPS = tuple(FACTORIES)

# ErlangEventLoop running the sleep workloads through erlang_asyncio.sleep:
# a contestant of its own in the same rounds as the loops (on asyncio.sleep).
ERLANG_ASYNCIO = "ErlangEventLoop+erlang_asyncio"
KINDS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    **FACTORIES,
    ERLANG_ASYNCIO: erlang_loop.ErlangEventLoop,
}


# ------------------------------------------------------------------ results


@dataclass
class Figure:
    """One measured quantity of one workload, for every loop."""

    workload: str
    metric: str
    # True when more is better (rates); False for times, latencies, memory.
    higher_is_better: bool
    values: dict[str, float] = field(default_factory=dict)
    # How to print a value.
    fmt: str = "{:,.0f}"
    # False for a figure the loops cannot be ranked by (printed, no ratio).
    compare: bool = True

    def ratio(self) -> float | None:
        """ErlangEventLoop against the best other loop; > 1 means better."""
        if not self.compare:
            return None
        ours = self.values.get(ERLANG)
        others = [v for k, v in self.values.items() if k != ERLANG and v is not None]
        if ours is None or not others:
            return None
        best = max(others) if self.higher_is_better else min(others)
        if not ours or not best:
            return None  # no ratio to a zero (a count of wake-ups, say)
        return ours / best if self.higher_is_better else best / ours

    def cell(self, loop: str) -> str:
        value = self.values.get(loop)
        return "n/a" if value is None else self.fmt.format(value)


FIGURES: list[Figure] = []


Values = dict[str, list[float]]


#: How each metric of a workload is judged and printed: metric -> (higher
#: is better, format). The first one is the workload's main metric.
Metrics = dict[str, tuple[bool, str]]


#: Figures printed for what they tell, not ranked: no ratio.
UNRANKED = {"GC s", "Python heap bytes/timer"}


def record(workload: str, metric: str, higher: bool, fmt: str, runs: Values) -> None:
    """Prints and keeps one figure: the best of each loop's runs (a single
    run per loop, as :func:`record_runs` picks them, is kept as it is)."""
    best = max if higher else min
    values = {loop: best(runs[loop]) for loop in LOOPS if loop in runs}
    figure = Figure(workload, metric, higher, values, fmt, metric not in UNRANKED)
    FIGURES.append(figure)
    ratio = figure.ratio()
    cells = "  ".join(f"{loop} {figure.cell(loop):>12}" for loop in values)
    shown = f"x{ratio:.2f}" if ratio is not None else ""
    print(f"  {metric:<28} {cells}   {shown}", flush=True)


def record_runs(
    workload: str, by_metric: dict[str, Values], metrics: Metrics, main: str | None = None
) -> None:
    """Records every metric of a workload from one run per loop: the run
    best by the main metric (``main``, or the first of ``metrics``), so that
    a row's figures (req/s and its latencies, say) all come from the same
    run."""
    main = main or next(iter(metrics))
    higher = metrics[main][0]
    pick = max if higher else min
    chosen = {
        loop: pick(range(len(samples)), key=samples.__getitem__)
        for loop, samples in by_metric[main].items()
    }
    for metric, (higher, fmt) in metrics.items():
        if metric in by_metric:
            runs = {loop: [by_metric[metric][loop][chosen[loop]]] for loop in chosen}
            record(workload, metric, higher, fmt, runs)


def markdown_table() -> str:
    head = ["workload", "metric", *LOOPS, f"{ERLANG} vs best other"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in FIGURES:
        ratio = f.ratio()
        cells = [f.workload, f.metric, *(f.cell(loop) for loop in LOOPS)]
        cells.append(f"x{ratio:.2f}" if ratio is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ helpers


def peak_rss_bytes() -> int:
    """This process image's peak RSS (VmHWM; ``ru_maxrss`` would carry the
    peak of the parent that spawned this node over fork and exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def on_each_loop(
    run: Callable[[asyncio.AbstractEventLoop], dict[str, float]],
    repeat: int = 1,
    loops: tuple[str, ...] = LOOPS,
) -> dict[str, Values]:
    """Runs ``run`` on a fresh loop of each kind (of ``loops``), the kinds
    taking turns ``repeat`` times, every other turn in reverse order so that
    a machine slowing down or speeding up meanwhile favours no loop (it is
    shared: the best run of each is kept); metric -> loop -> values."""
    return on_each_kind(lambda _, loop: run(loop), repeat, loops)


def on_each_kind(
    run: Callable[[str, asyncio.AbstractEventLoop], dict[str, float]],
    repeat: int,
    kinds: tuple[str, ...],
) -> dict[str, Values]:
    """:func:`on_each_loop` for ``run`` told which kind (a key of
    ``KINDS``) it runs as."""
    by_metric: dict[str, Values] = {}
    for turn in range(repeat):
        for name in kinds if turn % 2 == 0 else kinds[::-1]:
            gc.collect()
            loop = KINDS[name]()
            asyncio.set_event_loop(loop)
            try:
                for metric, value in run(name, loop).items():
                    by_metric.setdefault(metric, {}).setdefault(name, []).append(value)
            finally:
                asyncio.set_event_loop(None)
                loop.close()
    return by_metric


def complete(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    return loop.run_until_complete(coro)


class GcTime:
    """Seconds spent in Python's cyclic GC while the block runs (through
    ``gc.callbacks``): the share of a workload that is the collector walking
    what the loop keeps alive, not the loop's own work."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> GcTime:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


class Counter:
    """Counts calls and resolves ``done`` at the ``target``-th."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: int) -> None:
        self.count = 0
        self.target = target
        self.done = loop.create_future()

    def __call__(self) -> None:
        self.count += 1
        if self.count == self.target:
            self.done.set_result(None)


# ------------------------------------------------------------------ workloads


def bench_call_soon(n: int, repeat: int) -> None:
    def queued(loop: asyncio.AbstractEventLoop) -> dict[str, float]:
        counter = Counter(loop, n)

        async def main() -> float:
            start = time.perf_counter()
            call_soon = loop.call_soon
            for _ in range(n):
                call_soon(counter)
            await counter.done
            return time.perf_counter() - start

        with GcTime() as collecting:
            wall = complete(loop, main())
        return {"callbacks/s": n / wall, "GC s": collecting.seconds}

    def chained(loop: asyncio.AbstractEventLoop) -> dict[str, float]:
        done = loop.create_future()
        ran = 0
        call_soon = loop.call_soon

        def callback() -> None:
            nonlocal ran
            ran += 1
            if ran + IN_FLIGHT <= n:
                call_soon(callback)
            elif ran == n:
                done.set_result(None)

        async def main() -> float:
            start = time.perf_counter()
            for _ in range(IN_FLIGHT):
                call_soon(callback)
            await done
            return time.perf_counter() - start

        with GcTime() as collecting:
            wall = complete(loop, main())
        return {"callbacks/s": n / wall, "GC s": collecting.seconds}

    metrics: Metrics = {"callbacks/s": (True, "{:,.0f}"), "GC s": (False, "{:.2f}")}
    print(
        f"call_soon: schedule {n:,} callbacks, then dispatch them (all queued at once), "
        f"best of {repeat}"
    )
    record_runs(f"call_soon x {n:,}, all queued", on_each_loop(queued, repeat), metrics)
    print(
        f"call_soon: {n:,} callbacks, each scheduling the next ({IN_FLIGHT} in flight), "
        f"best of {repeat}"
    )
    record_runs(f"call_soon x {n:,}, {IN_FLIGHT} in flight", on_each_loop(chained, repeat), metrics)


#: Callbacks queued at a time in the steady-state call_soon workload: what
#: a busy server's loop has ready per iteration.
IN_FLIGHT = 100


def random_delays(n: int) -> list[float]:
    """``n`` delays spread over 0-100 ms, the same ones for every loop."""
    rng = random.Random(n)
    return [rng.random() * 0.1 for _ in range(n)]


def bench_timers(pending: int, repeat: int) -> None:
    delays = random_delays(pending)

    def run(loop: asyncio.AbstractEventLoop) -> dict[str, float]:
        counter = Counter(loop, pending)

        async def main() -> tuple[float, float]:
            cpu, start = time.process_time(), time.perf_counter()
            call_later = loop.call_later
            for delay in delays:
                call_later(delay, counter)
            await counter.done
            return time.perf_counter() - start, time.process_time() - cpu

        with GcTime() as collecting:
            wall, cpu = complete(loop, main())
        return {
            "timers/s": pending / wall,
            "CPU us/timer": cpu / pending * 1e6,
            "GC s": collecting.seconds,
        }

    print(f"timers: {pending:,} pending, random delays 0-100 ms, until all fired, best of {repeat}")
    metrics: Metrics = {
        "timers/s": (True, "{:,.0f}"),
        "CPU us/timer": (False, "{:.2f}"),
        "GC s": (False, "{:.2f}"),
    }
    # The wall clock is the 100 ms spread for small counts: the run is
    # chosen by its CPU.
    record_runs(f"{pending:,} timers pending", on_each_loop(run, repeat), metrics, "CPU us/timer")


def bench_cancel(n: int, repeat: int) -> None:
    delays = random_delays(n)

    def run(loop: asyncio.AbstractEventLoop) -> dict[str, float]:
        counter = Counter(loop, (n + 9) // 10)

        async def main() -> float:
            start = time.perf_counter()
            call_later = loop.call_later
            handles = [call_later(delay, counter) for delay in delays]
            for i, handle in enumerate(handles):
                if i % 10:
                    handle.cancel()
            del handles
            await counter.done
            return time.perf_counter() - start

        with GcTime() as collecting:
            wall = complete(loop, main())
        return {"timers/s": n / wall, "GC s": collecting.seconds}

    print(f"schedule {n:,} timers, cancel 90%, until the rest fired, best of {repeat}")
    metrics: Metrics = {"timers/s": (True, "{:,.0f}"), "GC s": (False, "{:.2f}")}
    record_runs(f"schedule+cancel x {n:,} (90% cancelled)", on_each_loop(run, repeat), metrics)


def bench_sleep0(n: int, repeat: int) -> None:
    def run(loop: asyncio.AbstractEventLoop) -> dict[str, float]:
        async def main() -> float:
            start = time.perf_counter()
            for _ in range(n):
                await asyncio.sleep(0)
            return time.perf_counter() - start

        return {"round trips/s": n / complete(loop, main())}

    print(f"sleep(0): {n:,} round trips through the loop, best of {repeat}")
    record_runs("sleep(0)", on_each_loop(run, repeat), {"round trips/s": (True, "{:,.0f}")})


SleepFn = Callable[[float], Awaitable[Any]]


def many_sleepers(
    loop: asyncio.AbstractEventLoop, sleep: SleepFn, tasks: int, rounds: int
) -> dict[str, float]:
    oversleep: list[float] = []

    async def sleeper() -> None:
        for _ in range(rounds):
            start = time.monotonic()
            await sleep(0.001)
            oversleep.append(time.monotonic() - start - 0.001)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(sleeper() for _ in range(tasks)))
        return time.perf_counter() - start

    wall = complete(loop, main())
    return {
        "wall s": wall,
        "oversleep p50 ms": percentile(oversleep, 0.5) * 1e3,
        "oversleep p99 ms": percentile(oversleep, 0.99) * 1e3,
    }


def sequential_sleeps(loop: asyncio.AbstractEventLoop, sleep: SleepFn, n: int) -> dict[str, float]:
    slept: list[float] = []

    async def main() -> None:
        for _ in range(n):
            start = time.monotonic()
            await sleep(0.001)
            slept.append(time.monotonic() - start)

    complete(loop, main())
    return {
        "mean ms": sum(slept) / n * 1e3,
        "p99 ms": percentile(slept, 0.99) * 1e3,
        "early returns": float(sum(1 for s in slept if s < 0.001)),
    }


MANY_SLEEPS_METRICS: Metrics = {
    "wall s": (False, "{:.2f}"),
    "oversleep p50 ms": (False, "{:.3f}"),
    "oversleep p99 ms": (False, "{:.3f}"),
}
SEQUENTIAL_SLEEPS_METRICS: Metrics = {
    "mean ms": (False, "{:.3f}"),
    "p99 ms": (False, "{:.3f}"),
}


def bench_sleeps(tasks: int, rounds: int, sequential: int, repeat: int) -> None:
    """The sleep workloads on every loop through asyncio.sleep and, in the
    same rounds, on ErlangEventLoop through erlang_asyncio.sleep (a bare
    wheel entry, no TimerHandle): that row sets it against the other loops'
    asyncio.sleep runs of those rounds (erlang_asyncio.sleep is
    asyncio.sleep on them)."""
    kinds = (*LOOPS, ERLANG_ASYNCIO)

    def sleep_of(kind: str) -> SleepFn:
        return erlang_asyncio.sleep if kind == ERLANG_ASYNCIO else asyncio.sleep

    def rows(label: str, by_metric: dict[str, Values], metrics: Metrics) -> None:
        plain = {
            m: {k: v for k, v in runs.items() if k != ERLANG_ASYNCIO}
            for m, runs in by_metric.items()
        }
        record_runs(label.format(sleep="sleep"), plain, metrics)
        ours = {
            m: {(ERLANG if k == ERLANG_ASYNCIO else k): v for k, v in runs.items() if k != ERLANG}
            for m, runs in by_metric.items()
        }
        print("  on ErlangEventLoop through erlang_asyncio.sleep (the others: asyncio.sleep)")
        record_runs(
            label.format(sleep="erlang_asyncio.sleep") + " (others: asyncio.sleep)",
            ours,
            metrics,
        )

    label = f"{tasks:,} tasks x {rounds} {{sleep}}(1 ms)"
    print(f"{label.format(sleep='sleep')}, and erlang_asyncio.sleep, best of {repeat}")
    runs = on_each_kind(
        lambda kind, loop: many_sleepers(loop, sleep_of(kind), tasks, rounds), repeat, kinds
    )
    rows(label, runs, MANY_SLEEPS_METRICS)

    label = f"{sequential:,} sequential {{sleep}}(1 ms)"
    print(f"{label.format(sleep='sleep')}, and erlang_asyncio.sleep, best of {repeat}")
    runs = on_each_kind(
        lambda kind, loop: sequential_sleeps(loop, sleep_of(kind), sequential), repeat, kinds
    )
    early = runs.pop("early returns")
    rows(label, runs, SEQUENTIAL_SLEEPS_METRICS)
    # Counted over every run, not only the best one.
    totals = {kind: [sum(counts)] for kind, counts in early.items()}
    rows(label + ", all runs", {"early returns": totals}, {"early returns": (False, "{:.0f}")})


# ---------------------------------------------------------------- TCP and UDP

MESSAGE = b"x" * 1024


class EchoServer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class PingClient(asyncio.Protocol):
    """Once started: sends MESSAGE, waits for all of it back, records the
    round trip, and again until ``stop_at``."""

    def __init__(self, rtts: list[float]) -> None:
        self.rtts = rtts
        self.done = asyncio.get_running_loop().create_future()
        self.received = 0
        self.stop_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def start(self, stop_at: float) -> None:
        self.stop_at = stop_at
        self.send()

    def send(self) -> None:
        self.received = 0
        self.sent_at = time.perf_counter()
        self.transport.write(MESSAGE)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received < len(MESSAGE):
            return
        now = time.perf_counter()
        self.rtts.append(now - self.sent_at)
        if now < self.stop_at:
            self.send()
        elif not self.done.done():
            self.done.set_result(None)


def echo_result(rtts: list[float], seconds: float, cpu_seconds: float) -> dict[str, float]:
    """``cpu_seconds``: the loop thread's CPU time over the ``seconds``
    (user and kernel: most of a request is its sends and receives). Per
    request it is what the loop costs, steady where req/s moves with the
    loop thread's share of a core on a busy machine."""
    return {
        "req/s": len(rtts) / seconds,
        "p50 us": percentile(rtts, 0.5) * 1e6,
        "p99 us": percentile(rtts, 0.99) * 1e6,
        "CPU us/req": cpu_seconds / max(len(rtts), 1) * 1e6,
    }


ECHO_METRICS: Metrics = {
    "req/s": (True, "{:,.0f}"),
    "p50 us": (False, "{:,.0f}"),
    "p99 us": (False, "{:,.0f}"),
    "CPU us/req": (False, "{:,.2f}"),
}


def tcp_protocols(loop: asyncio.AbstractEventLoop, conns: int, seconds: float) -> dict[str, float]:
    async def main() -> dict[str, float]:
        server = await loop.create_server(EchoServer, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        rtts: list[float] = []
        connected = await asyncio.gather(
            *(loop.create_connection(lambda: PingClient(rtts), HOST, port) for _ in range(conns))
        )
        clients = [client for _, client in connected]
        cpu = time.thread_time()
        start = time.perf_counter()
        for client in clients:
            client.start(start + seconds)
        await asyncio.gather(*(client.done for client in clients))
        elapsed = time.perf_counter() - start
        cpu = time.thread_time() - cpu
        for transport, _ in connected:
            transport.close()
        server.close()
        await server.wait_closed()
        return echo_result(rtts, elapsed, cpu)

    return complete(loop, main())


def tcp_streams(loop: asyncio.AbstractEventLoop, conns: int, seconds: float) -> dict[str, float]:
    size = len(MESSAGE)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.readexactly(size)
                writer.write(data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def client(
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        go: asyncio.Event,
        rtts: list[float],
        stop_at: list[float],
    ) -> None:
        reader, writer = streams
        await go.wait()
        while True:
            start = time.perf_counter()
            writer.write(MESSAGE)
            await writer.drain()
            await reader.readexactly(size)
            now = time.perf_counter()
            rtts.append(now - start)
            if now >= stop_at[0]:
                break
        writer.close()
        await writer.wait_closed()

    async def main() -> dict[str, float]:
        server = await asyncio.start_server(handle, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        connected = await asyncio.gather(
            *(asyncio.open_connection(HOST, port) for _ in range(conns))
        )
        rtts: list[float] = []
        go = asyncio.Event()
        stop_at = [0.0]
        clients = [asyncio.create_task(client(c, go, rtts, stop_at)) for c in connected]
        await asyncio.sleep(0)
        cpu = time.thread_time()
        start = time.perf_counter()
        stop_at[0] = start + seconds
        go.set()
        await asyncio.gather(*clients)
        elapsed = time.perf_counter() - start
        cpu = time.thread_time() - cpu
        server.close()
        await server.wait_closed()
        return echo_result(rtts, elapsed, cpu)

    return complete(loop, main())


class UdpEchoServer(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class UdpPingClient(asyncio.DatagramProtocol):
    def __init__(self, rtts: list[float]) -> None:
        self.rtts = rtts
        self.done = asyncio.get_running_loop().create_future()
        self.stop_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def start(self, stop_at: float) -> None:
        self.stop_at = stop_at
        self.send()

    def send(self) -> None:
        self.sent_at = time.perf_counter()
        self.transport.sendto(MESSAGE)  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = time.perf_counter()
        self.rtts.append(now - self.sent_at)
        if now < self.stop_at:
            self.send()
        elif not self.done.done():
            self.done.set_result(None)


def udp_echo(loop: asyncio.AbstractEventLoop, clients: int, seconds: float) -> dict[str, float]:
    async def main() -> dict[str, float]:
        server, _ = await loop.create_datagram_endpoint(UdpEchoServer, local_addr=(HOST, 0))
        addr = server.get_extra_info("sockname")
        rtts: list[float] = []
        pairs = [
            await loop.create_datagram_endpoint(lambda: UdpPingClient(rtts), remote_addr=addr)
            for _ in range(clients)
        ]
        cpu = time.thread_time()
        start = time.perf_counter()
        for _, client in pairs:
            client.start(start + seconds)
        # A lost datagram would stall its client: bound the wait.
        await asyncio.wait([client.done for _, client in pairs], timeout=seconds + 5)
        elapsed = time.perf_counter() - start
        cpu = time.thread_time() - cpu
        for transport, _ in pairs:
            transport.close()
        server.close()
        return echo_result(rtts, elapsed, cpu)

    return complete(loop, main())


def bench_echo(seconds: float, repeat: int) -> None:
    runs: list[tuple[str, Callable[[asyncio.AbstractEventLoop], dict[str, float]]]] = []
    for conns in (10, 100):
        runs.append(
            (
                f"TCP echo, Protocols, {conns} conns",
                lambda lp, c=conns: tcp_protocols(lp, c, seconds),
            )
        )
        runs.append(
            (f"TCP echo, streams, {conns} conns", lambda lp, c=conns: tcp_streams(lp, c, seconds))
        )
    runs.append(("UDP echo, 10 clients", lambda lp: udp_echo(lp, 10, seconds)))
    for label, run in runs:
        print(
            f"{label}: 1 KiB ping-pong for {seconds:g} s, clients on the same loop, "
            f"best of {repeat}"
        )
        record_runs(label, on_each_loop(run, repeat), ECHO_METRICS)


# ------------------------------------------------------- wait_for and memory


# Memory is measured in a fresh node per loop (``--probe``): in this process
# the heap keeps what earlier workloads freed, and a loop measured after
# another would reuse it.
CLI = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin", "erlang-python"
)


def in_fresh_node(probe: str, loop: str, *args: int) -> dict[str, float]:
    """Runs ``probe`` on a ``loop`` in a new node; its result (a JSON line)."""
    out = subprocess.run(
        [CLI, os.path.abspath(__file__), "--probe", probe, loop, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def probe_wait_for(loop: asyncio.AbstractEventLoop, tasks: int, rounds: int) -> dict[str, float]:
    async def waiter() -> None:
        for _ in range(rounds):
            future = loop.create_future()
            loop.call_soon(future.set_result, None)
            await asyncio.wait_for(future, 30)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(waiter() for _ in range(tasks)))
        return time.perf_counter() - start

    base = rss_bytes()
    wall = complete(loop, main())
    return {"ops/s": tasks * rounds / wall, "peak RSS MiB": max(0, peak_rss_bytes() - base) / 2**20}


def probe_timer_memory(loop: asyncio.AbstractEventLoop, n: int) -> dict[str, float]:
    """The process's RSS growth per pending timer: everything a timer costs,
    in Python's heap and in the loop's native structures."""

    def noop() -> None:
        pass

    gc.collect()
    before = rss_bytes()
    handles = [loop.call_later(3600, noop) for _ in range(n)]
    gc.collect()
    rss_per = (rss_bytes() - before) / n
    for handle in handles:
        handle.cancel()
    return {"RSS bytes/timer": rss_per}


def probe_timer_python_heap(loop: asyncio.AbstractEventLoop, n: int) -> dict[str, float]:
    """The Python heap's share of a pending timer, as tracemalloc sees it: it
    sees memory taken through Python's allocators (uvloop's libuv timers
    too), not the memory of Rust structures (ErlangEventLoop's wheel entry,
    rloop's timers). Not a ranking: printed beside the RSS figure."""

    def noop() -> None:
        pass

    tracemalloc.start()
    handles = [loop.call_later(3600, noop) for _ in range(n)]
    traced = tracemalloc.get_traced_memory()[0] / n
    tracemalloc.stop()
    for handle in handles:
        handle.cancel()
    return {"Python heap bytes/timer": traced}


PROBES: dict[str, Callable[..., dict[str, float]]] = {
    "wait_for": probe_wait_for,
    "timer_memory": probe_timer_memory,
    "timer_python_heap": probe_timer_python_heap,
}


def run_probe(probe: str, loop_name: str, args: list[str]) -> int:
    """The child side of :func:`in_fresh_node`."""
    loop = FACTORIES[loop_name]()
    asyncio.set_event_loop(loop)
    try:
        print(json.dumps(PROBES[probe](loop, *map(int, args))))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return 0


def on_each_loop_fresh(probe: str, *args: int, repeat: int = 1) -> dict[str, Values]:
    """Runs ``probe`` in a new node for each loop kind, the kinds taking
    turns ``repeat`` times as in :func:`on_each_loop`."""
    by_metric: dict[str, Values] = {}
    for turn in range(repeat):
        for name in LOOPS if turn % 2 == 0 else LOOPS[::-1]:
            for metric, value in in_fresh_node(probe, name, *args).items():
                by_metric.setdefault(metric, {}).setdefault(name, []).append(value)
    return by_metric


def bench_wait_for(tasks: int, rounds: int, repeat: int) -> None:
    label = f"{tasks:,} tasks x {rounds} wait_for(fast future, 30)"
    print(label + f" (a fresh node per loop and run, best of {repeat})")
    metrics: Metrics = {"ops/s": (True, "{:,.0f}"), "peak RSS MiB": (False, "{:.1f}")}
    record_runs(label, on_each_loop_fresh("wait_for", tasks, rounds, repeat=repeat), metrics)


def bench_timer_memory(n: int) -> None:
    label = f"memory per pending timer ({n:,} call_later)"
    print(label + " (a fresh node per loop and figure)")
    for metric, values in on_each_loop_fresh("timer_memory", n).items():
        record(label, metric, False, "{:.0f}", values)
    for metric, values in on_each_loop_fresh("timer_python_heap", n).items():
        record(label, metric, False, "{:.0f}", values)


def process_sleeps() -> int:
    """Times the threads of this process have blocked so far (Linux's
    voluntary context switches, summed over the threads alive now): each
    sleep of a loop's thread is one, and so is each wake-up of a BEAM
    thread its loop causes (a scheduler running the loop's worker)."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return total


def bench_idle(timers: int, seconds: float) -> None:
    def noop() -> None:
        pass

    def idle(wait: Callable[[], None]) -> tuple[float, int]:
        """Process CPU ms/s and wake-ups of all threads while ``wait`` runs."""
        cpu, start, before = time.process_time(), time.perf_counter(), process_sleeps()
        wait()
        sleeps = process_sleeps() - before
        used, wall = time.process_time() - cpu, time.perf_counter() - start
        return used / wall * 1e3, sleeps

    def run(loop: asyncio.AbstractEventLoop) -> dict[str, float]:
        for _ in range(timers):
            loop.call_later(3600, noop)
        cpu, sleeps = idle(lambda: complete(loop, asyncio.sleep(seconds)))
        # Never below none: the node alone may wake once more than a run.
        return {"process CPU ms/s": cpu, "wake-ups": float(max(0, sleeps - baseline_sleeps))}

    baseline_cpu, baseline_sleeps = idle(lambda: time.sleep(seconds))
    label = f"idle, {timers:,} timers an hour away"
    print(
        f"{label}, {seconds:g} s (the node alone, this thread in time.sleep: "
        f"{baseline_cpu:.2f} CPU ms/s, {baseline_sleeps} wake-ups of its threads, "
        "subtracted below)"
    )
    metrics = {"process CPU ms/s": (False, "{:.2f}"), "wake-ups": (False, "{:.0f}")}
    for metric, values in on_each_loop(run).items():
        record(label, metric, *metrics[metric], values)


# --------------------------------------------------------------------- ASGI


# uvicorn's loop setting for each kind: "none" asks asyncio, whose policy in
# the node gives ErlangEventLoop; rloop is named by its factory's import path.
UVICORN_LOOPS = {
    ERLANG: "none",
    STDLIB: "asyncio",
    UVLOOP: "uvloop",
    RLOOP: "rloop:new_event_loop",
}


def bench_asgi(seconds: float, connections: int, repeat: int) -> None:
    """uvicorn + examples/asgi_app.py on each loop, loaded by wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print("ASGI: wrk not installed (scripts/bench-deps.sh installs it); skipped")
        return
    import asgi_app  # examples/, next to this file

    for path in ("/json", "/sleep?ms=10", "/stream"):
        label = f"uvicorn+Starlette GET {path}, wrk -c{connections}"
        print(f"{label}, {seconds:g} s, best of {repeat}")
        values: dict[str, Values] = {}
        errors = {name: 0 for name in LOOPS}
        for turn in range(repeat):
            for name in LOOPS if turn % 2 == 0 else LOOPS[::-1]:
                gc.collect()
                served = asgi_app.serve_in_thread(UVICORN_LOOPS[name])
                with AppErrors() as app_errors, served as port:
                    figures = run_wrk(wrk, f"http://{HOST}:{port}{path}", seconds, connections)
                errors[name] += app_errors.count
                for metric, value in figures.items():
                    values.setdefault(metric, {}).setdefault(name, []).append(value)
        record_runs(label, values, ECHO_METRICS)
        # Summed over the runs, not the best of them.
        record(label, "app errors", False, "{:,.0f}", {k: [v] for k, v in errors.items()})


class AppErrors(logging.Filter):
    """Counts, and keeps out of the output, the errors uvicorn logs while the
    block runs (on rloop, under load, "Exception in ASGI application" with
    h11's LocalProtocolError "Can't send data when our state is ERROR": a
    connection h11 had already put in its error state; where that comes
    from is not measured here). uvicorn's logging setup at the server's
    start replaces a logger's handlers but keeps its filters."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.logger = logging.getLogger("uvicorn.error")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.count += 1
            return False
        return True

    def __enter__(self) -> AppErrors:
        self.logger.addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeFilter(self)


def run_wrk(wrk: str, url: str, seconds: float, connections: int) -> dict[str, float]:
    """req/s, p50 and p99 latency (us) of ``wrk`` against ``url``."""
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    figures: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            figures["req/s"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            figures["p50 us" if parts[0] == "50%" else "p99 us"] = wrk_duration_us(parts[1])
    return {k: figures[k] for k in ("req/s", "p50 us", "p99 us") if k in figures}


def wrk_duration_us(text: str) -> float:
    for suffix, scale in (("us", 1.0), ("ms", 1e3), ("s", 1e6), ("m", 60e6)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


# --------------------------------------------------------------------- main


@dataclass(frozen=True)
class Scale:
    call_soon: int
    timers_small: int
    timers_large: int
    cancel: int
    sleep0: int
    sleep_tasks: int
    sleep_rounds: int
    sequential: int
    echo_seconds: float
    wait_for_tasks: int
    wait_for_rounds: int
    memory_timers: int
    idle_timers: int
    idle_seconds: float
    asgi_seconds: float
    # Runs per loop of the short workloads (the best is kept).
    repeat: int


FULL = Scale(
    call_soon=1_000_000,
    timers_small=10_000,
    timers_large=1_000_000,
    cancel=1_000_000,
    sleep0=200_000,
    sleep_tasks=10_000,
    sleep_rounds=100,
    sequential=1000,
    echo_seconds=1.0,
    wait_for_tasks=10_000,
    wait_for_rounds=10,
    memory_timers=100_000,
    idle_timers=10_000,
    idle_seconds=3.0,
    asgi_seconds=2.0,
    repeat=2,
)
QUICK = Scale(
    call_soon=20_000,
    timers_small=1_000,
    timers_large=20_000,
    cancel=20_000,
    sleep0=5_000,
    sleep_tasks=200,
    sleep_rounds=10,
    sequential=50,
    echo_seconds=0.2,
    wait_for_tasks=500,
    wait_for_rounds=2,
    memory_timers=10_000,
    idle_timers=1_000,
    idle_seconds=0.3,
    asgi_seconds=1.0,
    repeat=1,
)


def workloads(s: Scale) -> dict[str, Callable[[], None]]:
    return {
        "call_soon": lambda: bench_call_soon(s.call_soon, s.repeat),
        "timers": lambda: (
            bench_timers(s.timers_small, s.repeat),
            bench_timers(s.timers_large, s.repeat),
        ),
        "cancel": lambda: bench_cancel(s.cancel, s.repeat),
        "sleep0": lambda: bench_sleep0(s.sleep0, s.repeat),
        "sleep": lambda: bench_sleeps(s.sleep_tasks, s.sleep_rounds, s.sequential, s.repeat),
        "echo": lambda: bench_echo(s.echo_seconds, s.repeat),
        "wait_for": lambda: bench_wait_for(s.wait_for_tasks, s.wait_for_rounds, s.repeat),
        "memory": lambda: bench_timer_memory(s.memory_timers),
        "idle": lambda: bench_idle(s.idle_timers, s.idle_seconds),
        "asgi": lambda: bench_asgi(s.asgi_seconds, 50, s.repeat),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmark_event_loop.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small counts: seconds in all")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these workloads")
    parser.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)  # PROBE LOOP ARGS...
    args = parser.parse_args(argv)
    if args.probe:
        return run_probe(args.probe[0], args.probe[1], args.probe[2:])
    table = workloads(QUICK if args.quick else FULL)
    names = args.only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(table)}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    print(
        f"Python {platform.python_version()} inside the BEAM, {os.cpu_count()} cores, "
        f"uvloop {uvloop.__version__}, rloop {rloop.__version__}"
        f"{' (--quick)' if args.quick else ''}"
    )
    print("ratio: ErlangEventLoop against the best other loop; > 1 = ErlangEventLoop is better")
    start = time.perf_counter()
    for name in names:
        table[name]()
    print(
        f"\n{len(FIGURES)} figures in {time.perf_counter() - start:.0f} s; "
        f"peak RSS {peak_rss_bytes() // 2**20} MiB\n"
    )
    print(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
