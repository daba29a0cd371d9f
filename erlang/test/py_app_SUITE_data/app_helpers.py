"""Python side of py_app_SUITE: loops that hold fds and run a while."""

from __future__ import annotations

import asyncio
import socket
import time

from erlang_loop import ErlangEventLoop

# How many `_hold`s have their socket in their loop now.
_holding = 0


def holding() -> int:
    return _holding


async def _hold(secs: float) -> int:
    # A connected socket in the loop's poll set for the whole run.
    global _holding
    a, b = socket.socketpair()
    _reader, writer = await asyncio.open_connection(sock=a)
    _holding += 1
    ticks = 0
    end = time.monotonic() + secs
    try:
        while time.monotonic() < end:
            await asyncio.sleep(0.01)
            ticks += 1
    finally:
        _holding -= 1
        writer.close()
        b.close()
    return ticks


def default_loop(secs: float) -> int:
    return asyncio.run(_hold(secs))


def isolated_loop(secs: float) -> int:
    loop = ErlangEventLoop(isolated=True)
    try:
        return loop.run_until_complete(_hold(secs))
    finally:
        loop.close()


async def sleeper(secs: float) -> str:
    await asyncio.sleep(secs)
    return "slept"


def collect() -> int:
    import gc

    return gc.collect()
