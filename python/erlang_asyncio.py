"""asyncio's high-level API, with a faster ``sleep`` on ErlangEventLoop.

Everything here has the name and behaviour of its asyncio counterpart.
``sleep`` puts a bare entry in the loop's timer wheel and resolves a future
when it fires (no ``TimerHandle``, no extra callback); cancelling the
sleeping task removes the entry. On any other loop it is ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import math
from asyncio import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    TimeoutError,
    create_task,
    ensure_future,
    gather,
    get_running_loop,
    new_event_loop,
    set_event_loop,
    shield,
    timeout,
    wait,
    wait_for,
)
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import _erlang_loop
from erlang_loop import ErlangEventLoop
from erlang_loop import run as _run

_T = TypeVar("_T")

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CancelledError",
    "TimeoutError",
    "create_task",
    "ensure_future",
    "gather",
    "get_event_loop",
    "get_running_loop",
    "new_event_loop",
    "run",
    "set_event_loop",
    "shield",
    "sleep",
    "timeout",
    "wait",
    "wait_for",
]


async def _sleep_elsewhere(delay: float, result: _T | None = None) -> _T | None:
    """``sleep`` where its native coroutine cannot use the loop's runner
    directly: another loop (``asyncio.sleep``), debug mode, or a delay that
    is not a real number (refused as asyncio refuses it)."""
    if math.isnan(delay):
        raise ValueError("delay must not be NaN")
    loop = get_running_loop()
    if delay <= 0 or not isinstance(loop, ErlangEventLoop):
        return await asyncio.sleep(delay, result)
    key, future = loop._sleep_future(delay)
    try:
        await future
    except BaseException:
        # Cancelled (or the loop failed): the wheel entry goes at once.
        loop._cancel_sleep(key)
        raise
    return result


# ``sleep(delay, result=None)`` suspends the task for ``delay`` seconds,
# then returns ``result``. It makes a native coroutine object
# (``_erlang_loop.Sleep``) without a Python frame: on a running
# ErlangEventLoop that costs none either; elsewhere it runs
# ``_sleep_elsewhere``. A coroutine function to asyncio, as an ``async def``.
sleep: Callable[..., Coroutine[Any, Any, Any]] = _erlang_loop.SleepFunction()
Coroutine.register(_erlang_loop.Sleep)


def get_event_loop() -> asyncio.AbstractEventLoop:
    """The running loop, else the policy's loop for this thread (an
    ErlangEventLoop inside the node), created on demand on any thread (on
    CPython 3.12+ with asyncio's DeprecationWarning, pointing at the caller)."""
    try:
        return get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop_policy().get_event_loop()


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Runs ``main`` on a new ErlangEventLoop, like ``asyncio.run``."""
    return _run(main, debug=debug)
