"""The native paths keep no Python object per operation: after a warm-up
round, more rounds of each workload leave the traced Python heap where it
was. A reference leaked per operation (a handle, a future, a bytes) would
keep tens of bytes per operation: hundreds of KiB over these rounds."""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import erlang_asyncio
from erlang_loop import ErlangEventLoop

ROUNDS = 5
# Room for what the interpreter keeps meanwhile: caches, free lists, and one
# more doubling of a table (asyncio's WeakSet of tasks reaches 64 KiB). The
# smallest leak per operation, one float a sleep, would keep 120 KiB.
ALLOWED = 96 * 1024


async def sleeps(sleep: Callable[[float], Coroutine[Any, Any, None]]) -> None:
    await asyncio.gather(*(sleep(0.0005) for _ in range(1000)))


async def callbacks() -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [5000]

    def callback() -> None:
        left[0] -= 1
        if left[0] == 0:
            done.set_result(None)

    for _ in range(5000):
        loop.call_soon(callback)
    await done


async def timers_fired() -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [2000]

    def fired(_: int) -> None:
        left[0] -= 1
        if left[0] == 0:
            done.set_result(None)

    for i in range(2000):
        loop.call_later(0.0001 * (i % 10), fired, i)
    await done


async def timers_cancelled() -> None:
    loop = asyncio.get_running_loop()
    handles = [loop.call_later(60, print, i) for i in range(5000)]
    for handle in handles:
        handle.cancel()
    await asyncio.sleep(0)


async def wait_fors() -> None:
    loop = asyncio.get_running_loop()
    for _ in range(2000):
        future = loop.create_future()
        loop.call_soon(future.set_result, 1)
        await asyncio.wait_for(future, 10)


async def stream_echo() -> None:
    a, b = socket.socketpair()
    reader_a, writer_a = await asyncio.open_connection(sock=a)
    reader_b, writer_b = await asyncio.open_connection(sock=b)
    for _ in range(1000):
        writer_a.write(b"x" * 100)
        await reader_b.readexactly(100)
        writer_b.write(b"y" * 100)
        await reader_a.readexactly(100)
    writer_a.close()
    writer_b.close()
    await writer_a.wait_closed()
    await writer_b.wait_closed()


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


class _Pinger(asyncio.DatagramProtocol):
    def __init__(self, done: asyncio.Future[None], count: int) -> None:
        self.transport: Any = None
        self.done = done
        self.left = count

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.sendto(b"ping")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.left -= 1
        if self.left:
            self.transport.sendto(b"ping")
        elif not self.done.done():
            self.done.set_result(None)


async def datagram_echo() -> None:
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    done = loop.create_future()
    client, _ = await loop.create_datagram_endpoint(
        lambda: _Pinger(done, 1000), remote_addr=server.get_extra_info("sockname")
    )
    await asyncio.wait_for(done, 30)
    client.close()
    server.close()
    await asyncio.sleep(0)


WORKLOADS: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
    "erlang_asyncio.sleep": lambda: sleeps(erlang_asyncio.sleep),
    "asyncio.sleep": lambda: sleeps(asyncio.sleep),
    "call_soon": callbacks,
    "call_later fired": timers_fired,
    "call_later cancelled": timers_cancelled,
    "wait_for": wait_fors,
    "stream echo": stream_echo,
    "datagram echo": datagram_echo,
}


def warm_up(loop: ErlangEventLoop, workload: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Runs rounds until one leaves the traced heap no larger (at most 20):
    caches and free lists fill, and tables reach their size (asyncio's
    WeakSet of all tasks grows its table over several rounds of 1000 tasks,
    as deleted entries accumulate, then stays)."""
    size = tracemalloc.get_traced_memory()[0]
    for _ in range(20):
        loop.run_until_complete(asyncio.wait_for(workload(), 60))
        gc.collect()
        size, previous = tracemalloc.get_traced_memory()[0], size
        if size <= previous:
            return


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_no_python_memory_kept_per_operation(name: str) -> None:
    # The native paths (debug mode runs asyncio's Python ones, and logs a
    # record per slow callback, which pytest keeps).
    loop = ErlangEventLoop()
    try:
        workload = WORKLOADS[name]
        # Traced from before the warm-up: a container that reallocates its
        # table during the rounds then counts the difference, not its size.
        tracemalloc.start()
        try:
            warm_up(loop, workload)
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(ROUNDS):
                loop.run_until_complete(asyncio.wait_for(workload(), 60))
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    finally:
        loop.close()
    assert grown < ALLOWED, f"{name}: {grown} bytes kept over {ROUNDS} rounds"


class _Big:
    """Something a loop holds (through its exception handler)."""


@pytest.mark.parametrize("debug", [False, True])
def test_a_closed_loop_is_freed_with_its_last_reference(debug: bool) -> None:
    """The loop and its native runner hold each other while the loop is
    open; closed, they let go, so that the loop and what it holds go with
    its last reference, as the stdlib's closed loop does, not at the next
    collection (tornado and anyio check that they do)."""

    async def main() -> tuple[weakref.ref[asyncio.AbstractEventLoop], weakref.ref[_Big]]:
        loop = asyncio.get_running_loop()
        loop.call_soon(print)  # the runner's ready queue was used
        await asyncio.sleep(0.001)  # and its wheel
        big = _Big()
        loop.set_exception_handler(lambda _loop, _context, big=big: None)
        return weakref.ref(loop), weakref.ref(big)

    gc.disable()
    try:
        loop_ref, big_ref = erlang_asyncio.run(main(), debug=debug)
        assert (loop_ref(), big_ref()) == (None, None)
        loop = ErlangEventLoop()
        create_future = loop.create_future  # kept from before the close
        loop.close()
        loop.set_debug(not debug)  # no native path goes back on a closed loop
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            loop.call_soon(print)
        # A closed loop still makes futures, as asyncio's does.
        assert create_future().get_loop() is loop
        ref = weakref.ref(loop)
        del loop
        assert ref() is None
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            create_future()  # its loop is gone
    finally:
        gc.enable()
