"""ErlangEventLoop inside the BEAM: policy and usage forms, ordering, timers,
life cycle, handlers, executors, fds, sockets and fd leaks.

Run with ``bin/erlang-python -m pytest tests/python/test_event_loop.py``.
Time-based checks wait for events with generous deadlines (LESSONS 30); the
only timing thresholds are the spec ones (gather of sleeps, idle wake-ups).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import errno
import gc
import logging
import math
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import unittest.mock
import warnings
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import erlang_loop
from erlang_loop import ErlangEventLoop
from erlang_loop._loop import _InstanceClock

T = TypeVar("T")

# A generous bound for anything that should happen "soon" (LESSONS 30).
DEADLINE = 10.0


@pytest.fixture(params=[False, True], ids=["default", "isolated"])
def loop(request: pytest.FixtureRequest) -> Iterator[ErlangEventLoop]:
    """A fresh loop (served by the shared worker, or by its own), closed after."""
    new = ErlangEventLoop(isolated=request.param)
    try:
        yield new
    finally:
        if not new.is_closed():
            new.close()


@pytest.fixture
def default_loop() -> Iterator[ErlangEventLoop]:
    new = ErlangEventLoop()
    try:
        yield new
    finally:
        if not new.is_closed():
            new.close()


def run(loop: asyncio.AbstractEventLoop, coro: Awaitable[T], timeout: float = DEADLINE) -> T:
    """Runs ``coro`` on ``loop``, failing instead of hanging past ``timeout``."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def run_until(
    loop: asyncio.AbstractEventLoop, done: Callable[[], bool], timeout: float = DEADLINE
) -> None:
    """Runs ``loop`` until ``done()`` holds (checked every 1 ms of loop time)."""

    async def poll() -> None:
        while not done():
            await asyncio.sleep(0.001)

    run(loop, poll(), timeout)


def wait_for_sleeping(loop: ErlangEventLoop) -> None:
    """Waits (from another thread) until ``loop``'s thread is asleep in its
    wait."""
    give_up = time.monotonic() + DEADLINE
    while loop.stats()["sleeping"] == 0:
        if time.monotonic() > give_up:
            raise AssertionError("the loop's thread never went to sleep")
        time.sleep(0.001)


def block_until(condition: Callable[[], bool], what: str) -> None:
    """Holds the loop thread (from inside a callback) until ``condition()``;
    polls gently so the Erlang side can take the loop's lock meanwhile."""
    give_up = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"{what} never came")
        time.sleep(0.0005)


def spin(seconds: float) -> None:
    """Busy-waits (holding the loop thread) for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


# ---------------------------------------------------------------- policy and usage


async def _running_loop() -> asyncio.AbstractEventLoop:
    await asyncio.sleep(0.001)
    return asyncio.get_running_loop()


def test_policy_is_installed_and_asyncio_run_uses_erlang_loop() -> None:
    assert isinstance(asyncio.get_event_loop_policy(), erlang_loop.ErlangEventLoopPolicy)
    used = asyncio.run(_running_loop())
    assert isinstance(used, ErlangEventLoop)
    assert used.is_closed()


def test_usage_set_event_loop_and_run_until_complete() -> None:
    loop = erlang_loop.ErlangEventLoop()
    asyncio.set_event_loop(loop)
    try:
        used = loop.run_until_complete(_running_loop())
        assert used is loop
        assert asyncio.get_event_loop() is loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_usage_set_event_loop_policy_and_asyncio_run() -> None:
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(erlang_loop.get_event_loop_policy())
    try:
        used = asyncio.run(_running_loop())
        assert isinstance(used, ErlangEventLoop)
    finally:
        asyncio.set_event_loop_policy(previous)


def test_usage_erlang_loop_run() -> None:
    used = erlang_loop.run(_running_loop())
    assert isinstance(used, ErlangEventLoop)
    assert used.is_closed()
    assert erlang_loop.run(asyncio.sleep(0, "result")) == "result"


def test_usage_erlang_loop_run_debug() -> None:
    async def debug_flag() -> bool:
        return asyncio.get_running_loop().get_debug()

    assert erlang_loop.run(debug_flag(), debug=True) is True


def test_loop_handle_is_none_for_default_loops_only() -> None:
    default = ErlangEventLoop()
    isolated = ErlangEventLoop(isolated=True)
    try:
        assert default._loop_handle is None
        assert isolated._loop_handle is not None
        assert run(default, _running_loop()) is default
        assert run(isolated, _running_loop()) is isolated
    finally:
        default.close()
        isolated.close()


def test_is_running_and_is_closed(loop: ErlangEventLoop) -> None:
    assert not loop.is_running()
    assert not loop.is_closed()

    async def inside() -> bool:
        return loop.is_running()

    assert run(loop, inside()) is True
    assert not loop.is_running()
    loop.close()
    assert loop.is_closed()
    assert not loop.is_running()


def test_scheduling_reads_the_closed_state_not_a_patched_is_closed(
    loop: ErlangEventLoop,
) -> None:
    # As asyncio's `_check_closed`: janus's tests patch `is_closed` to fake
    # what their own code sees, and count its calls.
    async def main() -> str:
        with unittest.mock.patch.object(loop, "is_closed", return_value=True) as is_closed:
            task = loop.create_task(asyncio.sleep(0, "ran"))
            result = await task
        assert is_closed.call_count == 0
        return result

    assert run(loop, main()) == "ran"


# ---------------------------------------------------------------- ordering


def test_call_soon_is_fifo(loop: ErlangEventLoop) -> None:
    seen: list[int] = []
    for i in range(500):
        loop.call_soon(seen.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == list(range(500))


def test_call_soon_from_a_callback_runs_after_the_current_batch(
    loop: ErlangEventLoop,
) -> None:
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        loop.call_soon(seen.append, "scheduled by first")

    loop.call_soon(first)
    loop.call_soon(seen.append, "second")
    loop.call_soon(loop.call_soon, loop.stop)
    loop.run_forever()
    assert seen == ["first", "second", "scheduled by first"]


def test_timers_due_together_fire_in_deadline_order_then_fifo(
    loop: ErlangEventLoop,
) -> None:
    """Timers that all become due while the loop is blocked fire sorted by
    deadline, and in scheduling order for equal deadlines (LESSONS 14)."""
    fired: list[tuple[float, int]] = []
    rng = random.Random(7)
    # Far enough that no timer comes due while they are being scheduled.
    base = loop.time() + 0.25
    # Distinct deadlines spread over several wheel ticks and inside one tick,
    # plus groups of equal deadlines; more than one native batch (4096 events
    # per wait).
    whens = [base + rng.uniform(0.0, 0.02) for _ in range(5000)]
    whens += [base + 0.005] * 20 + [base + 0.0101] * 20 + [base] * 20
    rng.shuffle(whens)
    for seq, when in enumerate(whens):
        loop.call_at(when, fired.append, (when, seq))
    assert loop.time() < base, "scheduling took too long for this test's premise"
    # Block the loop until every deadline has passed, so all come due at once.
    last = max(whens)
    loop.call_soon(lambda: spin(max(0.0, last - loop.time()) + 0.005))
    run_until(loop, lambda: len(fired) == len(whens))
    assert fired == sorted(fired)


def test_timer_scheduled_in_the_past_runs_before_an_already_due_later_one(
    loop: ErlangEventLoop,
) -> None:
    """CPython pops every due timer from its heap in deadline order. A timer
    scheduled with a past deadline after a later-deadline timer came due (and
    was queued by the Erlang tick) still runs first; one with an equal
    deadline runs after it (FIFO)."""
    order: list[str] = []
    fired_before = loop.stats()["timers_fired"]
    x = loop.call_later(0.01, order.append, "X")

    def block_until_x_is_queued() -> None:
        block_until(lambda: loop.stats()["timers_fired"] > fired_before, "the Erlang tick")
        loop.call_at(x.when(), order.append, "X2")
        loop.call_at(x.when() - 0.005, order.append, "Y")

    loop.call_soon(block_until_x_is_queued)
    run_until(loop, lambda: len(order) == 3)
    assert order == ["Y", "X", "X2"]


def test_past_deadline_timer_runs_first_even_behind_a_full_batch(
    loop: ErlangEventLoop,
) -> None:
    order: list[str] = []
    fired_before = loop.stats()["timers_fired"]
    # Far enough that no timer comes due while they are being scheduled.
    when = loop.time() + 0.25
    for _ in range(5000):
        loop.call_at(when, order.append, "X")
    assert loop.time() < when, "scheduling took too long for this test's premise"

    def block_until_all_are_queued() -> None:
        block_until(lambda: loop.stats()["timers_fired"] >= fired_before + 5000, "the tick")
        loop.call_at(when - 0.005, order.append, "Y")

    loop.call_soon(block_until_all_are_queued)
    run_until(loop, lambda: len(order) == 5001)
    assert order.index("Y") == 0


def test_timers_at_different_times_fire_in_deadline_order(
    loop: ErlangEventLoop,
) -> None:
    fired: list[float] = []
    rng = random.Random(11)
    whens = [loop.time() + rng.uniform(0.0, 0.05) for _ in range(300)]
    for when in whens:
        loop.call_at(when, fired.append, when)
    run_until(loop, lambda: len(fired) == len(whens))
    assert fired == sorted(whens)


def test_io_callbacks_run_before_timers_due_in_the_same_iteration(
    loop: ErlangEventLoop,
) -> None:
    """CPython's order within one iteration: I/O first, then due timers."""
    order: list[str] = []
    rsock, wsock = socket.socketpair()
    try:
        rsock.setblocking(False)

        def on_read() -> None:
            rsock.recv(100)
            loop.remove_reader(rsock)
            order.append("io")

        def block_until_both_ready() -> None:
            # Both the fd (readable in the kernel once sent) and the timer are
            # ready before the next iteration starts.
            timer = loop.call_later(0.001, order.append, "timer")
            wsock.send(b"x")
            block_until(lambda: loop.time() >= timer.when(), "the timer's deadline")

        loop.add_reader(rsock, on_read)
        loop.call_soon(block_until_both_ready)
        run_until(loop, lambda: len(order) == 2)
        assert order == ["io", "timer"]
    finally:
        rsock.close()
        wsock.close()


def test_an_iteration_runs_its_io_callbacks_before_its_due_timers(
    loop: ErlangEventLoop,
) -> None:
    """LESSONS 14, 22: as CPython's ``_run_once``, an iteration makes the
    callbacks of the fds found ready first and those of the timers due
    after them. A reader made readable and a timer made due by one
    callback are both found by the next iteration's poll."""
    order: list[str] = []
    rsock, wsock = socket.socketpair()
    try:

        def on_read() -> None:
            rsock.recv(100)
            loop.remove_reader(rsock)
            order.append("io")

        def make_both_ready() -> None:
            wsock.send(b"x")
            loop.call_later(0, order.append, "timer")

        loop.add_reader(rsock, on_read)
        loop.call_soon(make_both_ready)
        run_until(loop, lambda: len(order) == 2)
    finally:
        rsock.close()
        wsock.close()
    assert order == ["io", "timer"]


def test_an_iteration_runs_only_the_callbacks_ready_when_it_began(
    loop: ErlangEventLoop,
) -> None:
    """LESSONS 22: a callback that schedules itself again runs once per
    iteration, so timers and I/O still get their turn; a loop draining its
    ready queue until empty would spin on it alone."""
    iterations = count_iterations(loop)
    spins: list[int] = []  # the iteration of each spin
    seen: dict[str, int] = {}  # spins done when the timer and the reader ran
    rsock, wsock = socket.socketpair()
    try:

        def spin() -> None:
            spins.append(iterations[0])
            if len(spins) < 100_000 and len(seen) < 2:
                loop.call_soon(spin)

        def on_read() -> None:
            rsock.recv(100)
            loop.remove_reader(rsock)
            seen["io"] = len(spins)

        loop.add_reader(rsock, on_read)
        loop.call_later(0.001, lambda: seen.setdefault("timer", len(spins)))
        loop.call_soon(spin)
        wsock.send(b"x")
        run_until(loop, lambda: len(seen) == 2)
    finally:
        rsock.close()
        wsock.close()
    assert seen["io"] < len(spins) and seen["timer"] < 100_000, (seen, len(spins))
    # One spin per iteration, never two.
    assert len(spins) == len(set(spins)), len(spins) - len(set(spins))


def test_call_soon_runs_before_a_zero_delay_timer(loop: ErlangEventLoop) -> None:
    order: list[str] = []
    loop.call_later(0, order.append, "timer")
    loop.call_soon(order.append, "soon")
    run_until(loop, lambda: len(order) == 2)
    assert order == ["soon", "timer"]


# ---------------------------------------------------------------- timers


def test_loop_time_is_the_wheel_clock(loop: ErlangEventLoop) -> None:
    """LESSONS 9: one clock for loop.time() and the wheel."""
    from _erlang_loop import NativeLoop

    for _ in range(100):
        before = loop.time()
        native = NativeLoop.time()
        after = loop.time()
        assert before <= native <= after


def test_a_clock_replaced_on_the_instance_fires_timers_by_it(loop: ErlangEventLoop) -> None:
    # aiohttp's keep-alive test moves a patched `loop.time` past a timer's
    # `when` and expects it to run in the next iterations, as asyncio's
    # `_run_once` fires by `time()`. (No `wait_for` around it: its timeout
    # is a timer too.)
    fired: list[str] = []
    native_time = loop.time

    async def main() -> None:
        now = loop.time()
        due = loop.call_at(now + 3600, fired.append, "due by the fake clock")
        later = loop.call_later(7200, fired.append, "still ahead")
        with unittest.mock.patch.object(loop, "time", return_value=now + 3601):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert fired == ["due by the fake clock"]
            assert not due.cancelled()
            # Set by the fake clock, 50 ms ahead of it: run 50 ms later.
            loop.call_at(now + 3601.05, fired.append, "50 ms later")
            deadline = time.monotonic() + 30
            while len(fired) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        assert fired == ["due by the fake clock", "50 ms later"]
        assert loop.time == native_time  # the native paths are back
        assert not later.cancelled()
        later.cancel()

    loop.run_until_complete(main())


def test_a_subclass_clock_replaced_on_the_instance_fires_timers_by_it() -> None:
    # A subclass's own `time` hides the loop's clock descriptor: a clock
    # patched on its instance still takes the loop off the native paths
    # that fire by CLOCK_MONOTONIC, and back when the patch goes.
    class OwnClock(ErlangEventLoop):
        def time(self) -> float:
            return super().time()

    class Grandchild(OwnClock):
        pass

    async def main(loop: ErlangEventLoop) -> None:
        fired: list[str] = []
        now = loop.time()
        loop.call_at(now + 3600, fired.append, "due by the fake clock")
        with unittest.mock.patch.object(loop, "time", return_value=now + 3601):
            assert "_run_once" not in loop.__dict__, "still native"
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        assert fired == ["due by the fake clock"]
        assert "time" not in loop.__dict__

    for cls in (OwnClock, Grandchild):
        loop = cls()
        try:
            loop.run_until_complete(main(loop))
            assert "_run_once" in loop.__dict__, "native again"
        finally:
            loop.close()


def test_the_loop_s_clock_is_asyncio_s_on_the_class_and_the_runner_s_on_the_instance(
    loop: ErlangEventLoop,
) -> None:
    assert ErlangEventLoop.time is asyncio.BaseEventLoop.time
    if loop.get_debug():
        assert loop.time.__func__ is asyncio.BaseEventLoop.time  # type: ignore[attr-defined]
    else:
        assert loop.time == loop._runner.time  # type: ignore[attr-defined]
    # Writing any other attribute leaves the native paths alone.
    paths = dict(loop.__dict__)
    loop.some_attribute = 1  # type: ignore[attr-defined]
    del loop.some_attribute  # type: ignore[attr-defined]
    assert loop.__dict__ == paths
    # Deleted, the clock is asyncio's again: the runner's is put back.
    del loop.time
    assert loop.__dict__ == paths


def test_a_loop_without_a_clock_of_its_own_reads_asyncio_s() -> None:
    loop = ErlangEventLoop()
    loop.close()  # the native paths, the runner's clock among them, leave
    assert "time" not in loop.__dict__
    assert loop.time.__func__ is asyncio.BaseEventLoop.time  # type: ignore[attr-defined]
    assert abs(loop.time() - time.monotonic()) < 60
    with pytest.raises(AttributeError, match="time"):
        del loop.time
    loop.time = lambda: 42.0  # type: ignore[method-assign]
    assert loop.time() == 42.0
    del loop.time
    assert loop.time.__func__ is asyncio.BaseEventLoop.time  # type: ignore[attr-defined]


def test_the_clock_descriptor_s_cycles_are_collected() -> None:
    # Its change hook reaches back to the class that holds it, as
    # ErlangEventLoop.time's does through its module's globals.
    def make_class() -> weakref.ref[type]:
        clock_class = type("WithClock", (), {})
        clock_class.time = _InstanceClock(  # type: ignore[attr-defined]
            asyncio.BaseEventLoop.time, types.MethodType, lambda loop: clock_class
        )
        return weakref.ref(clock_class)

    made = make_class()
    gc.collect()
    assert made() is None


def test_a_wait_longer_than_the_clock_counts_waits_until_woken(loop: ErlangEventLoop) -> None:
    # 1e20 s is past what the clock can add (a Rust panic, once): as the
    # stdlib's select with a huge timeout, it waits for an event.
    waker = threading.Timer(0.05, loop.call_soon_threadsafe, (lambda: None,))
    waker.start()
    try:
        assert loop._selector.select(1e20) == []  # type: ignore[attr-defined]
    finally:
        waker.join()


def test_call_at_when_is_exactly_the_float_asked(loop: ErlangEventLoop) -> None:
    for when in (
        loop.time() + 0.123456789,
        1e-9,
        12345.678901234,
        loop.time() + 3600.5,
    ):
        handle = loop.call_at(when, lambda: None)
        assert isinstance(handle, asyncio.TimerHandle)
        assert handle.when() == when
        handle.cancel()


def test_timer_handles_read_as_the_stdlib_loop_s(loop: ErlangEventLoop) -> None:
    stdlib = asyncio.SelectorEventLoop()
    try:
        handles = [
            each.call_at(12.5, print, "x", context=contextvars.copy_context())
            for each in (loop, stdlib)
        ]
        ours, theirs = map(repr, handles)
        assert ours == theirs, (ours, theirs)
        assert ours.startswith("<TimerHandle when=12.5 print(")
        handles[0].cancel()
        handles[1].cancel()
        assert repr(handles[0]) == repr(handles[1])
        assert repr(handles[0]).startswith("<TimerHandle cancelled when=12.5>")
    finally:
        stdlib.close()


def test_call_later_when_is_time_plus_delay(loop: ErlangEventLoop) -> None:
    before = loop.time()
    handle = loop.call_later(0.25, lambda: None)
    after = loop.time()
    assert isinstance(handle, asyncio.TimerHandle)
    assert before + 0.25 <= handle.when() <= after + 0.25
    handle.cancel()


def test_cancel_before_firing(loop: ErlangEventLoop) -> None:
    ran: list[str] = []
    base = loop.stats()
    handle = loop.call_later(0.02, ran.append, "cancelled")
    assert loop.stats()["live_timers"] == base["live_timers"] + 1
    handle.cancel()
    assert handle.cancelled()
    stats = loop.stats()
    assert stats["live_timers"] == base["live_timers"]
    assert stats["timers_cancelled"] == base["timers_cancelled"] + 1
    # A later timer fires: the cancelled one, due earlier, would have run first.
    loop.call_later(0.05, ran.append, "later")
    run_until(loop, lambda: bool(ran))
    assert ran == ["later"]


# What an emptied wheel keeps of its allocation (KEEP_DRAINED_BYTES).
KEEP_DRAINED_BYTES = 64 * 1024


@pytest.mark.parametrize("end", ["fired", "cancelled", "loop closed"])
def test_a_burst_of_timers_gives_its_memory_back(end: str) -> None:
    """A loop that once had 20k timers pending does not keep their memory
    for as long as it lives (or, closed, until the BEAM collects the term
    that refers to it): once its wheel empties it goes back."""
    loop = ErlangEventLoop()
    try:
        ran: list[int] = []
        # Holds the wheel's memory while the burst's first timers may fire
        # (the BEAM's backstop timer advances the wheel meanwhile).
        keeper = loop.call_later(3600, ran.append, 0)
        handles = [loop.call_later(0.001 * (i % 10), ran.append, i) for i in range(20_000)]
        # ~40 bytes a timer, less the slots of the first ones if they
        # fired meanwhile and were reused.
        assert loop.stats()["timer_memory"] > 10_000 * 40
        if end == "fired":
            run_until(loop, lambda: len(ran) == 20_000)
            assert loop.stats()["timer_memory"] > 10_000 * 40
            keeper.cancel()
        elif end == "cancelled":
            for handle in handles:
                handle.cancel()
            keeper.cancel()
        else:
            loop.close()
        assert loop.stats()["live_timers"] == 0
        assert loop.stats()["timer_memory"] <= KEEP_DRAINED_BYTES
        if end != "loop closed":
            # Stale handles stay stale for the timers made anew.
            later = loop.call_later(0.001, ran.append, -1)
            for handle in handles:
                handle.cancel()
            run_until(loop, lambda: ran[-1:] == [-1])
            assert not later.cancelled()
    finally:
        loop.close()


def test_cancel_after_firing_and_double_cancel_are_harmless(
    loop: ErlangEventLoop,
) -> None:
    ran: list[str] = []
    first = loop.call_later(0.001, ran.append, "first")
    run_until(loop, lambda: ran == ["first"])
    cancelled = loop.stats()["timers_cancelled"]
    first.cancel()
    first.cancel()
    assert loop.stats()["timers_cancelled"] == cancelled
    assert loop.stats()["live_timers"] == 0

    # A stale handle never cancels the timer that reuses its slot (LESSONS 10, 23).
    second = loop.call_later(0.001, ran.append, "second")
    first.cancel()
    run_until(loop, lambda: len(ran) == 2)
    assert ran == ["first", "second"]

    cancelled = loop.stats()["timers_cancelled"]
    third = loop.call_later(10, ran.append, "third")
    third.cancel()
    third.cancel()
    assert loop.stats()["timers_cancelled"] == cancelled + 1
    assert loop.stats()["live_timers"] == 0
    second.cancel()


def test_nan_delay_or_deadline_raises_value_error(loop: ErlangEventLoop) -> None:
    with pytest.raises(ValueError):
        loop.call_later(float("nan"), lambda: None)
    with pytest.raises(ValueError):
        loop.call_at(float("nan"), lambda: None)
    assert loop.stats()["live_timers"] == 0


def test_infinite_delay_never_fires_and_cancels(loop: ErlangEventLoop) -> None:
    ran: list[str] = []
    never = loop.call_later(float("inf"), ran.append, "inf")
    assert never.when() == math.inf
    assert loop.stats()["live_timers"] == 1
    loop.call_later(0.05, ran.append, "soon")
    run_until(loop, lambda: bool(ran))
    assert ran == ["soon"]
    never.cancel()
    assert loop.stats()["live_timers"] == 0


def test_far_deadlines_stay_scheduled(loop: ErlangEventLoop) -> None:
    handles = [loop.call_later(delay, lambda: None) for delay in (86400.0, 86400.0 * 365, 1e12)]
    ran: list[int] = []
    loop.call_later(0.01, ran.append, 1)
    run_until(loop, lambda: bool(ran))
    assert loop.stats()["live_timers"] == len(handles)
    for handle in handles:
        handle.cancel()
    assert loop.stats()["live_timers"] == 0


def test_thousands_of_random_timers_never_fire_early(loop: ErlangEventLoop) -> None:
    """LESSONS 8: no timer callback and no sleep ever returns before its deadline."""
    rng = random.Random(1234)
    early: list[tuple[float, float]] = []
    done: list[int] = []

    def check(handle_box: list[asyncio.TimerHandle]) -> None:
        now = loop.time()
        if now < handle_box[0].when():
            early.append((now, handle_box[0].when()))
        done.append(1)

    async def sleeper(delay: float) -> None:
        start = loop.time()
        await asyncio.sleep(delay)
        now = loop.time()
        if now < start + delay:
            early.append((now, start + delay))
        done.append(1)

    async def main() -> None:
        tasks = []
        for i in range(3000):
            delay = rng.uniform(0.0, 0.02)
            if i % 2:
                box: list[asyncio.TimerHandle] = []
                box.append(loop.call_later(delay, check, box))
            else:
                tasks.append(asyncio.ensure_future(sleeper(delay)))
            if i % 100 == 0:
                # Schedule from inside a running loop too, at varied clock phases.
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        while len(done) < 3000:
            await asyncio.sleep(0.001)

    run(loop, main(), timeout=20)
    assert early == []
    assert len(done) == 3000


def test_sequential_short_sleeps_never_return_early(loop: ErlangEventLoop) -> None:
    async def main() -> list[tuple[float, float]]:
        early = []
        for _ in range(200):
            start = loop.time()
            await asyncio.sleep(0.001)
            now = loop.time()
            if now < start + 0.001:
                early.append((start, now))
        return early

    assert run(loop, main(), timeout=20) == []


def test_gather_of_three_sleeps_is_concurrent(loop: ErlangEventLoop) -> None:
    """LESSONS 26: sleeps yield to the loop, so three 50 ms sleeps overlap.

    Sleeps that blocked the loop would run one after another: each would
    start after the one before ended. Checked by order, not by a
    wall-clock bound (a loaded machine's Erlang timers can be late by
    hundreds of ms)."""
    starts: list[float] = []
    ends: list[float] = []

    async def one() -> None:
        starts.append(loop.time())
        await asyncio.sleep(0.05)
        ends.append(loop.time())

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(3)))

    run(loop, main())
    assert max(starts) < min(ends), (starts, ends)
    assert all(end - start >= 0.05 for start, end in zip(starts, ends, strict=True))


def test_timers_fired_counter(loop: ErlangEventLoop) -> None:
    before = loop.stats()
    ran: list[int] = []
    for i in range(10):
        loop.call_later(0.001 * i, ran.append, i)
    run_until(loop, lambda: len(ran) == 10)
    after = loop.stats()
    assert after["timers_inserted"] - before["timers_inserted"] >= 10
    assert after["timers_fired"] - before["timers_fired"] >= 10


# ---------------------------------------------------------------- wake-ups


def count_iterations(loop: ErlangEventLoop) -> list[int]:
    """Counts the loop's iterations (``_run_once`` calls) from now on."""
    count = [0]
    run_once = loop._run_once

    def counted() -> None:
        count[0] += 1
        run_once()

    loop._run_once = counted  # type: ignore[method-assign]
    return count


def test_a_loop_sleeping_1_ms_at_a_time_keeps_the_beam_out_of_the_way(
    loop: ErlangEventLoop,
) -> None:
    """The loop's thread runs each timer on time by itself; the BEAM's timer
    is its backstop, armed past the deadline: 200 sleeps of 1 ms cost a
    tick every few tens of ms, not one per sleep or two."""

    async def sleeps() -> tuple[dict[str, int], dict[str, int], float]:
        before, start = loop.stats(), loop.time()
        for _ in range(200):
            await asyncio.sleep(0.001)
        return before, loop.stats(), loop.time() - start

    before, after, took = run(loop, sleeps())
    assert after["timers_fired"] - before["timers_fired"] == 200
    # A tick every 50-100 ms of the run (however slow the machine made it),
    # where a tick per other sleep came before.
    most = int(took * 1000 / 25) + 5
    assert after["ticks"] - before["ticks"] <= most, (took, before, after)
    assert after["timer_arms"] - before["timer_arms"] <= most, (took, before, after)


def test_a_timer_scheduled_from_another_thread_wakes_the_sleeping_loop() -> None:
    """Not asyncio's contract (call_soon_threadsafe is), but it works: the
    loop's thread, asleep with no timer, is told of the earlier deadline and
    runs the timer itself, not when the BEAM's backstop timer fires 50 ms
    past it (a tick that fires a timer)."""
    loop = ErlangEventLoop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def beam_fired() -> int:
        stats = loop.stats()
        return stats["ticks"] - stats["spurious_ticks"]

    try:
        started = threading.Event()
        loop.call_soon_threadsafe(started.set)
        assert started.wait(10)
        by_beam: list[int] = []
        for _ in range(3):
            ran = threading.Event()
            wait_for_sleeping(loop)
            before = beam_fired()

            def callback(before: int = before, ran: threading.Event = ran) -> None:
                by_beam.append(beam_fired() - before)
                ran.set()

            loop.call_later(0.005, callback)
            assert ran.wait(10)
        assert by_beam == [0, 0, 0], by_beam
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_idle_loop_with_far_timers_barely_wakes(loop: ErlangEventLoop) -> None:
    """LESSONS 12: 10,000 timers an hour away, a quiet socket watched, and
    nothing to do for 3 s cost at most a handful of wake-ups, Erlang timer
    ticks and loop iterations."""
    far = [loop.call_later(3600 + i * 0.001, lambda: None) for i in range(10_000)]
    quiet, other = socket.socketpair()
    iterations = count_iterations(loop)
    try:
        loop.add_reader(quiet, lambda: None)

        async def idle() -> tuple[dict[str, int], dict[str, int], int]:
            await asyncio.sleep(0)
            before = loop.stats()
            iterations_before = iterations[0]
            done = loop.create_future()
            loop.call_later(3.0, done.set_result, None)
            await done
            return before, loop.stats(), iterations[0] - iterations_before

        before, after, idle_iterations = run(loop, idle())
        assert after["wakeups"] - before["wakeups"] <= 5, (before, after)
        assert after["ticks"] - before["ticks"] <= 5, (before, after)
        assert 1 <= idle_iterations <= 5, idle_iterations
        assert after["live_timers"] == before["live_timers"] >= 10_000
        loop.remove_reader(quiet)
    finally:
        quiet.close()
        other.close()
    cancelled = loop.stats()["timers_cancelled"]
    for handle in far:
        handle.cancel()
    stats = loop.stats()
    assert stats["live_timers"] == 0
    assert stats["timers_cancelled"] - cancelled == 10_000


def test_timers_less_than_a_tick_apart_share_wake_ups(loop: ErlangEventLoop) -> None:
    """2,000 timers 10 us apart (20 ms of a busy loop's timers) run in
    order, none early, for about a wake-up per 1 ms tick: the loop waits a
    tick for a deadline less than a tick away instead of waking for each
    (about 300 wake-ups when it did)."""
    ran: list[tuple[int, float, float]] = []

    async def busy() -> tuple[dict[str, int], dict[str, int]]:
        done = loop.create_future()
        before = loop.stats()
        start = loop.time() + 0.005
        for n in range(2_000):
            when = start + n * 1e-5

            def callback(n: int = n, when: float = when) -> None:
                ran.append((n, when, loop.time()))
                if n == 1_999:
                    done.set_result(None)

            loop.call_at(when, callback)
        await done
        return before, loop.stats()

    before, after = run(loop, busy())
    assert [n for n, _, _ in ran] == list(range(2_000))
    assert all(now >= when for _, when, now in ran), "a timer ran early"
    assert after["wakeups"] - before["wakeups"] <= 60, (before, after)


def test_wakeup_flag_is_cleared_after_threadsafe_calls(loop: ErlangEventLoop) -> None:
    """LESSONS 24: wake-ups requested while the loop was busy are consumed;
    the loop then sleeps instead of spinning."""
    iterations = count_iterations(loop)
    received: list[int] = []

    def flood() -> None:
        for i in range(200):
            loop.call_soon_threadsafe(received.append, i)

    async def main() -> int:
        thread = threading.Thread(target=flood)
        thread.start()
        spin(0.05)  # busy while the wake-ups arrive
        await loop.run_in_executor(None, thread.join, DEADLINE)
        while len(received) < 200:
            await asyncio.sleep(0.001)
        start = iterations[0]
        await asyncio.sleep(1.0)
        return iterations[0] - start

    idle_iterations = run(loop, main())
    assert received == list(range(200))
    assert 1 <= idle_iterations <= 5, idle_iterations


def test_stop_from_a_callback(loop: ErlangEventLoop) -> None:
    ran: list[str] = []
    loop.call_soon(ran.append, "before")
    loop.call_soon(loop.stop)
    loop.call_later(0.5, ran.append, "timer")
    loop.run_forever()
    assert ran == ["before"]
    assert not loop.is_running()


def test_stop_from_a_timer_wakes_the_loop(loop: ErlangEventLoop) -> None:
    loop.call_later(0.01, loop.stop)
    start = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - start < DEADLINE


def test_run_forever_stop_and_run_again(loop: ErlangEventLoop) -> None:
    ran: list[int] = []
    loop.call_soon(ran.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    # Scheduled while stopped: runs at the next start.
    loop.call_soon(ran.append, 2)
    loop.call_later(0.01, ran.append, 3)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert ran == [1, 2, 3]
    assert run(loop, asyncio.sleep(0.001, "again")) == "again"


def test_stop_before_run_forever_runs_one_iteration(loop: ErlangEventLoop) -> None:
    ran: list[int] = []
    loop.call_soon(ran.append, 1)
    loop.stop()
    loop.run_forever()
    assert ran == [1]


def test_stop_ends_run_forever_when_stopping_is_no_instance_attribute() -> None:
    """A subclass may keep ``_stopping`` out of the instance ``__dict__`` (a
    property): ``stop()`` then changes no dict entry, and the iterations
    the runner makes inside one ``_run_once`` still end with the one that
    called it, as asyncio's ``run_forever`` ends."""
    stopping = [False]

    class StoppingElsewhere(ErlangEventLoop):
        @property  # type: ignore[override]
        def _stopping(self) -> bool:
            return stopping[0]

        @_stopping.setter
        def _stopping(self, value: bool) -> None:
            stopping[0] = value

    loop = StoppingElsewhere()
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 5:
            loop.stop()
        loop.call_soon(tick)

    try:
        loop.call_soon(tick)
        loop.run_forever()
    finally:
        loop.close()
    assert ticks == [0, 1, 2, 3, 4]


def test_nested_run_is_refused(loop: ErlangEventLoop) -> None:
    async def inner() -> None:
        pass

    async def outer() -> list[str]:
        errors = []
        coro = inner()
        try:
            loop.run_until_complete(coro)
        except RuntimeError as error:
            errors.append(str(error))
        finally:
            coro.close()
        try:
            loop.run_forever()
        except RuntimeError as error:
            errors.append(str(error))
        return errors

    errors = run(loop, outer())
    assert len(errors) == 2
    assert all("running" in message for message in errors)
    # The loop is still usable afterwards.
    assert run(loop, asyncio.sleep(0, 5)) == 5


def test_close_of_a_running_loop_raises(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError):
            loop.close()

    run(loop, main())
    assert not loop.is_closed()


def test_methods_after_close_raise(loop: ErlangEventLoop) -> None:
    loop.close()
    loop.close()  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: loop.call_soon(lambda: None),
        lambda: loop.call_later(0.1, lambda: None),
        lambda: loop.call_at(loop.time() + 0.1, lambda: None),
        lambda: loop.call_soon_threadsafe(lambda: None),
        loop.run_forever,
        lambda: loop.run_in_executor(None, lambda: None),
    ]
    for call in calls:
        with pytest.raises(RuntimeError):
            call()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(coro)
    coro.close()
    rsock, wsock = socket.socketpair()
    try:
        with pytest.raises(RuntimeError):
            loop.add_reader(rsock, lambda: None)
        with pytest.raises(RuntimeError):
            loop.add_writer(wsock, lambda: None)
    finally:
        rsock.close()
        wsock.close()


def test_close_drops_pending_timers(loop: ErlangEventLoop) -> None:
    """The wheel lets go of its timers at close: their callbacks (and what
    they hold) are freed, nothing of them runs."""

    class Callback:
        ran = False

        def __call__(self) -> None:
            self.ran = True

    callback = Callback()
    alive = weakref.ref(callback)
    loop.call_later(0.01, callback)
    del callback
    handle = loop.call_later(0.01, lambda: None)
    assert loop.stats()["live_timers"] == 2
    loop.close()
    assert loop.is_closed()
    gc.collect()
    assert alive() is None
    handle.cancel()  # harmless after close


# ---------------------------------------------------------------- tasks and futures


def test_create_task_with_name_and_context(loop: ErlangEventLoop) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    context = contextvars.copy_context()
    context.run(var.set, "in context")

    async def read_var() -> str:
        await asyncio.sleep(0)
        return var.get()

    async def main() -> tuple[str, str, str]:
        named = loop.create_task(read_var(), name="the-task", context=context)
        plain = loop.create_task(read_var())
        return named.get_name(), await named, await plain

    name, in_context, plain = run(loop, main())
    assert name == "the-task"
    assert in_context == "in context"
    assert plain == "unset"


def test_call_soon_and_call_later_with_context(loop: ErlangEventLoop) -> None:
    var: contextvars.ContextVar[int] = contextvars.ContextVar("n", default=0)
    context = contextvars.copy_context()
    context.run(var.set, 42)
    seen: list[int] = []
    loop.call_soon(lambda: seen.append(var.get()), context=context)
    loop.call_later(0.001, lambda: seen.append(var.get()), context=context)
    run_until(loop, lambda: len(seen) == 2)
    assert seen == [42, 42]


def test_task_factory_get_and_set(loop: ErlangEventLoop) -> None:
    made: list[asyncio.Task[Any]] = []

    def factory(
        the_loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=the_loop, **kwargs)
        made.append(task)
        return task

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def main() -> int:
        return await loop.create_task(asyncio.sleep(0, 3), name="made")

    assert run(loop, main()) == 3
    assert "made" in [task.get_name() for task in made]
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    with pytest.raises(TypeError):
        loop.set_task_factory(42)  # type: ignore[arg-type]


def test_create_future(loop: ErlangEventLoop) -> None:
    future = loop.create_future()
    assert isinstance(future, asyncio.Future)
    assert future.get_loop() is loop
    loop.call_later(0.001, future.set_result, "value")
    assert run(loop, future) == "value"


# ---------------------------------------------------------------- exceptions and debug


def test_exception_in_callback_reaches_custom_handler(loop: ErlangEventLoop) -> None:
    contexts: list[dict[str, Any]] = []

    def handler(the_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        assert the_loop is loop
        contexts.append(context)

    assert loop.get_exception_handler() is None
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler

    def boom() -> None:
        raise ValueError("boom")

    loop.call_soon(boom)
    loop.call_later(0.001, boom)
    run_until(loop, lambda: len(contexts) == 2)
    for context in contexts:
        assert {"message", "exception", "handle"} <= context.keys()
        assert isinstance(context["exception"], ValueError)
        assert isinstance(context["handle"], asyncio.Handle)
    assert isinstance(contexts[1]["handle"], asyncio.TimerHandle)

    loop.call_exception_handler({"message": "by hand", "custom": 1})
    assert contexts[-1] == {"message": "by hand", "custom": 1}

    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    with pytest.raises(TypeError):
        loop.set_exception_handler(42)  # type: ignore[arg-type]


def test_default_exception_handler_logs(
    loop: ErlangEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise KeyError("logged")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(boom)
        run(loop, asyncio.sleep(0.001))
        loop.default_exception_handler({"message": "direct call"})
    messages = [record.getMessage() for record in caplog.records if record.name == "asyncio"]
    assert any("Exception in callback" in message for message in messages)
    assert any("direct call" in message for message in messages)


def test_debug_mode_warns_about_slow_callbacks(
    loop: ErlangEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    loop.set_debug(True)
    assert loop.get_debug()
    loop.slow_callback_duration = 0.01

    def slow() -> None:
        spin(0.05)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow)
        loop.call_later(0.001, slow)
        run(loop, asyncio.sleep(0.01))
    slow_warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == "asyncio"
        and "Executing" in record.getMessage()
        and "took" in record.getMessage()
    ]
    # Other steps may be reported too (debug mode's first traceback captures
    # read source files): both slow callbacks must be among the warnings.
    about_slow = [message for message in slow_warnings if "slow()" in message]
    assert len(about_slow) >= 2, slow_warnings


def test_debug_mode_refuses_calls_from_another_thread(loop: ErlangEventLoop) -> None:
    loop.set_debug(True)
    errors: list[BaseException] = []

    async def main() -> None:
        def other() -> None:
            try:
                loop.call_soon(lambda: None)
            except RuntimeError as error:
                errors.append(error)

        thread = threading.Thread(target=other)
        thread.start()
        await loop.run_in_executor(None, thread.join, DEADLINE)

    run(loop, main())
    assert len(errors) == 1


# ---------------------------------------------------------------- async generators


def test_shutdown_asyncgens_finalises_unfinished_generators(
    loop: ErlangEventLoop,
) -> None:
    finalised: list[str] = []

    async def agen() -> Any:
        try:
            for i in range(10):
                yield i
                await asyncio.sleep(0)
        finally:
            finalised.append("finally")

    gen = agen()

    async def take_one() -> int:
        return await gen.__anext__()

    assert run(loop, take_one()) == 0
    assert finalised == []
    run(loop, loop.shutdown_asyncgens())
    assert finalised == ["finally"]
    assert gen.ag_running is False


def test_asyncio_run_finalises_unfinished_generators() -> None:
    finalised: list[str] = []

    async def agen() -> Any:
        try:
            while True:
                yield 1
        finally:
            finalised.append("finally")

    async def main() -> Any:
        gen = agen()
        await gen.__anext__()
        return gen  # still referenced: only shutdown_asyncgens closes it

    gen = asyncio.run(main())
    assert finalised == ["finally"]
    del gen


def test_garbage_collected_asyncgen_is_finalised_on_the_loop(
    loop: ErlangEventLoop,
) -> None:
    finalised: list[str] = []

    async def agen() -> Any:
        try:
            while True:
                yield 1
        finally:
            finalised.append("finally")

    async def main() -> None:
        gen = agen()
        await gen.__anext__()
        del gen
        gc.collect()
        for _ in range(10):
            await asyncio.sleep(0)

    run(loop, main())
    assert finalised == ["finally"]


# ---------------------------------------------------------------- executors and DNS


def test_run_in_default_executor(loop: ErlangEventLoop) -> None:
    async def main() -> tuple[int, int]:
        value = await loop.run_in_executor(None, pow, 2, 10)
        ident = await loop.run_in_executor(None, threading.get_ident)
        return value, ident

    value, ident = run(loop, main())
    assert value == 1024
    assert ident != threading.get_ident()
    run(loop, loop.shutdown_default_executor())


def test_run_in_custom_executor_and_set_default_executor(loop: ErlangEventLoop) -> None:
    custom = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="custom")
    default = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="chosen")
    try:

        def thread_name() -> str:
            return threading.current_thread().name

        async def main() -> tuple[str, str]:
            in_custom = await loop.run_in_executor(custom, thread_name)
            loop.set_default_executor(default)
            in_default = await loop.run_in_executor(None, thread_name)
            return in_custom, in_default

        in_custom, in_default = run(loop, main())
        assert in_custom.startswith("custom")
        assert in_default.startswith("chosen")
        run(loop, loop.shutdown_default_executor())
        with pytest.raises(RuntimeError):
            default.submit(lambda: None)
    finally:
        custom.shutdown(wait=True)
        default.shutdown(wait=True)


def test_getaddrinfo_and_getnameinfo(loop: ErlangEventLoop) -> None:
    async def main() -> tuple[list[Any], tuple[str, str]]:
        infos = await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
        name = await loop.getnameinfo(("127.0.0.1", 80))
        return infos, name

    infos, name = run(loop, main())
    assert infos
    for family, type_, _proto, _canon, address in infos:
        assert family in (socket.AF_INET, socket.AF_INET6)
        assert type_ == socket.SOCK_STREAM
        assert address[1] == 80
    host, port = name
    assert isinstance(host, str) and host
    assert port in ("80", "http")
    run(loop, loop.shutdown_default_executor())


# ---------------------------------------------------------------- fds


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_reader_is_level_triggered_and_stops_after_remove(
    loop: ErlangEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    rsock, wsock = pair
    calls: list[int] = []
    before = loop.stats()["fd_events"]
    loop.add_reader(rsock, lambda: calls.append(1))
    wsock.send(b"data")
    # Never read: the fd stays readable, the callback keeps coming.
    run_until(loop, lambda: len(calls) >= 5)
    assert loop.stats()["fd_events"] - before >= 5
    assert loop.remove_reader(rsock) is True
    assert loop.remove_reader(rsock) is False
    stopped_at = len(calls)
    # Some loop iterations with the data still there: no more calls.
    run(loop, asyncio.sleep(0.05))
    for _ in range(20):
        run(loop, asyncio.sleep(0))
    assert len(calls) == stopped_at
    assert loop.stats()["fds"] == 0


@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit])
def test_run_until_complete_consumes_the_base_exception_of_its_own_task(
    loop: ErlangEventLoop, exception: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """A coroutine given to run_until_complete that raises KeyboardInterrupt
    or SystemExit: raised, and its task (which the caller never sees) is not
    logged as "exception was never retrieved", as with asyncio's loop."""

    async def fails() -> None:
        raise exception

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with pytest.raises(exception):
            loop.run_until_complete(fails())
        gc.collect()
    assert "never retrieved" not in caplog.text


@pytest.mark.parametrize("direction", ["reader", "writer"])
def test_an_fd_watched_from_another_thread_wakes_the_sleeping_loop(
    loop: ErlangEventLoop, pair: tuple[socket.socket, socket.socket], direction: str
) -> None:
    """add_reader/add_writer from another thread while the loop sleeps with
    no fd watched (the stdlib loop allows it: its epoll set is the kernel's):
    the loop wakes for the fd, not at its next timer (``run``'s DEADLINE)."""
    rsock, wsock = pair
    done = asyncio.Event()

    def ready() -> None:
        getattr(loop, f"remove_{direction}")(rsock)
        done.set()

    def watch() -> None:
        wait_for_sleeping(loop)
        getattr(loop, f"add_{direction}")(rsock, ready)
        wsock.send(b"x")

    thread = threading.Thread(target=watch)
    thread.start()
    fired = loop.stats()["timers_fired"]
    try:
        run(loop, done.wait())
    finally:
        thread.join()
    # Woken by the fd: the run's timeout timer never fired.
    assert loop.stats()["timers_fired"] == fired


def test_reader_fires_on_data_only(
    loop: ErlangEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    rsock, wsock = pair
    received: list[bytes] = []

    def on_read() -> None:
        received.append(rsock.recv(100))

    loop.add_reader(rsock, on_read)
    run(loop, asyncio.sleep(0.05))
    assert received == []
    for chunk in (b"one", b"two", b"three"):
        wsock.send(chunk)
        run_until(loop, lambda chunk=chunk: bool(received) and received[-1] == chunk)
    assert received == [b"one", b"two", b"three"]
    assert loop.remove_reader(rsock) is True


def test_writer_fires_and_remove_returns_bool(
    loop: ErlangEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    _, wsock = pair
    calls: list[int] = []
    assert loop.remove_writer(wsock) is False
    loop.add_writer(wsock, lambda: calls.append(1))
    run_until(loop, lambda: len(calls) >= 3)  # a writable socket stays writable
    assert loop.remove_writer(wsock) is True
    assert loop.remove_writer(wsock) is False
    stopped_at = len(calls)
    for _ in range(20):
        run(loop, asyncio.sleep(0))
    assert len(calls) == stopped_at


def test_reader_and_writer_on_the_same_fd(
    loop: ErlangEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    rsock, wsock = pair
    events: list[str] = []

    def on_read() -> None:
        rsock.recv(100)
        events.append("read")
        loop.remove_reader(rsock)

    def on_write() -> None:
        events.append("write")
        loop.remove_writer(rsock)

    loop.add_reader(rsock, on_read)
    loop.add_writer(rsock, on_write)
    assert loop.stats()["fds"] == 1
    run_until(loop, lambda: "write" in events)
    assert "read" not in events
    wsock.send(b"x")
    run_until(loop, lambda: "read" in events)
    assert sorted(events) == ["read", "write"]
    assert loop.stats()["fds"] == 0


def test_replacing_a_reader_callback(
    loop: ErlangEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    rsock, wsock = pair
    seen: list[str] = []
    loop.add_reader(rsock, seen.append, "old")
    loop.add_reader(rsock, seen.append, "new")
    wsock.send(b"x")
    run_until(loop, lambda: bool(seen))
    assert set(seen) == {"new"}
    assert loop.remove_reader(rsock) is True


def test_fd_number_reused_after_close(loop: ErlangEventLoop) -> None:
    """LESSONS 17: an fd closed after remove_reader and a new socket that gets
    the same number work at once, with the old callback never called."""
    old_r, old_w = socket.socketpair()
    old_calls: list[int] = []
    loop.add_reader(old_r, lambda: old_calls.append(1))
    old_w.send(b"x")
    run_until(loop, lambda: bool(old_calls))
    number = old_r.fileno()
    assert loop.remove_reader(old_r) is True
    old_r.close()
    old_w.close()
    calls_at_close = len(old_calls)

    new_r, new_w = socket.socketpair()
    try:
        assert new_r.fileno() == number  # the OS hands out the lowest free fd
        new_calls: list[bytes] = []
        loop.add_reader(new_r, lambda: new_calls.append(new_r.recv(100)))
        run(loop, asyncio.sleep(0.02))
        assert new_calls == []
        new_w.send(b"fresh")
        run_until(loop, lambda: bool(new_calls))
        assert new_calls == [b"fresh"]
        assert len(old_calls) == calls_at_close
        assert loop.remove_reader(new_r) is True
    finally:
        new_r.close()
        new_w.close()


def test_add_reader_on_a_closed_fd_raises_and_leaves_nothing(loop: ErlangEventLoop) -> None:
    a, b = socket.socketpair()
    number = a.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError) as raised:
        loop.add_reader(number, lambda: None)
    assert raised.value.errno == errno.EBADF
    assert loop.remove_reader(number) is False
    assert loop.stats()["fds"] == 0


def test_a_loop_can_move_between_threads(loop: ErlangEventLoop) -> None:
    """Run on one thread, then another, then back (never two at once)."""
    results: list[str] = []

    def elsewhere() -> None:
        results.append(run(loop, asyncio.sleep(0.005, "other thread")))

    assert run(loop, asyncio.sleep(0.005, "here")) == "here"
    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(DEADLINE)
    assert results == ["other thread"]
    assert run(loop, asyncio.sleep(0.005, "back")) == "back"


def test_many_fds_at_once(loop: ErlangEventLoop) -> None:
    pairs = [socket.socketpair() for _ in range(50)]
    try:
        got: dict[int, bytes] = {}
        for i, (r, _) in enumerate(pairs):
            r.setblocking(False)

            def on_read(index: int = i, sock: socket.socket = r) -> None:
                got[index] = sock.recv(100)
                loop.remove_reader(sock)

            loop.add_reader(r, on_read)
        assert loop.stats()["fds"] == 50
        for i, (_, w) in enumerate(pairs):
            w.send(str(i).encode())
        run_until(loop, lambda: len(got) == 50)
        assert got == {i: str(i).encode() for i in range(50)}
        assert loop.stats()["fds"] == 0
    finally:
        for r, w in pairs:
            r.close()
            w.close()


# ---------------------------------------------------------------- sockets


def test_sock_methods_echo_over_loopback(loop: ErlangEventLoop) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setblocking(False)

    async def serve() -> None:
        conn, _ = await loop.sock_accept(listener)
        with conn:
            conn.setblocking(False)
            while data := await loop.sock_recv(conn, 1024):
                await loop.sock_sendall(conn, data)

    async def main() -> list[bytes]:
        server = asyncio.ensure_future(serve())
        await loop.sock_connect(client, listener.getsockname())
        replies = []
        for message in (b"hello", b"erlang", b"x" * 100_000):
            await loop.sock_sendall(client, message)
            reply = b""
            while len(reply) < len(message):
                chunk = await loop.sock_recv(client, 65536)
                assert chunk
                reply += chunk
            replies.append(reply)
        client.shutdown(socket.SHUT_WR)
        await server
        return replies

    try:
        assert run(loop, main()) == [b"hello", b"erlang", b"x" * 100_000]
    finally:
        client.close()
        listener.close()


def test_streams_echo_over_loopback(loop: ErlangEventLoop) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> list[bytes]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies = []
        for message in (b"one\n", b"two\n", b"three\n"):
            writer.write(message)
            await writer.drain()
            replies.append(await reader.readline())
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return replies

    assert run(loop, main()) == [b"ONE\n", b"TWO\n", b"THREE\n"]


# ---------------------------------------------------------------- subprocesses


def _run_child(loop: ErlangEventLoop, script: str) -> tuple[bytes, int | None]:
    async def main() -> tuple[bytes, int | None]:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", script, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        out, _ = await proc.communicate(b"from the parent")
        return out, proc.returncode

    return run(loop, main())


def test_subprocess_pipes(loop: ErlangEventLoop) -> None:
    out, _ = _run_child(loop, "echo child; cat")
    assert out == b"child\nfrom the parent"


def test_subprocess_exit_status(loop: ErlangEventLoop) -> None:
    out, returncode = _run_child(loop, "echo child; exit 3")
    assert out == b"child\n"
    assert returncode == 3


def test_the_beams_own_signals_are_refused(loop: ErlangEventLoop) -> None:
    """The BEAM owns process signals (LESSONS 2): SIGINT, SIGTERM, SIGQUIT and
    SIGUSR1 are its own, and nothing else is passed on but SIGCHLD, SIGHUP,
    SIGALRM and SIGUSR2."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGWINCH):
        with pytest.raises(NotImplementedError):
            loop.add_signal_handler(sig, lambda: None)
        assert loop.remove_signal_handler(sig) is False

    async def coroutine() -> None:
        pass

    # No process can catch these: asyncio's RuntimeError.
    for sig in (signal.SIGKILL, signal.SIGSTOP):
        with pytest.raises(RuntimeError, match=f"sig {sig} cannot be caught"):
            loop.add_signal_handler(sig, lambda: None)
        assert loop.remove_signal_handler(sig) is False

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGCHLD, coroutine)
    with pytest.raises(ValueError):
        loop.add_signal_handler(0, lambda: None)
    with pytest.raises(TypeError):
        loop.add_signal_handler("SIGHUP", lambda: None)  # type: ignore[arg-type]


def _until(loop: ErlangEventLoop, seen: list[object], count: int = 1) -> None:
    async def wait() -> None:
        while len(seen) < count:
            await asyncio.sleep(0.01)

    run(loop, asyncio.wait_for(wait(), 30))


def test_a_sighup_to_the_node_runs_every_loops_handler(loop: ErlangEventLoop) -> None:
    """SIGHUP is routed by the BEAM while a loop has a handler for it: the
    node survives it and each loop's handler runs, with its arguments, on
    its loop. A loop whose handler is gone keeps the route for the other."""
    other = ErlangEventLoop()
    seen: list[object] = []
    seen_by_other: list[object] = []
    try:
        loop.add_signal_handler(signal.SIGHUP, seen.append, "first")
        other.add_signal_handler(signal.SIGHUP, seen_by_other.append, "other")
        os.kill(os.getpid(), signal.SIGHUP)
        _until(loop, seen)
        _until(other, seen_by_other)
        assert (seen, seen_by_other) == (["first"], ["other"])
        assert loop.remove_signal_handler(signal.SIGHUP) is True
        assert loop.remove_signal_handler(signal.SIGHUP) is False
        os.kill(os.getpid(), signal.SIGHUP)
        _until(other, seen_by_other, 2)
        assert seen_by_other == ["other", "other"]
        assert seen == ["first"]
    finally:
        other.close()


def test_more_loops_than_64_handle_a_signal_at_once() -> None:
    """Loops dropped without ``close()`` keep their signal pipe until the
    cyclic GC finds them: a fixed 64 pipes made ``add_signal_handler`` fail
    with EMFILE where asyncio's loops run on (a socket pair each, only the
    OS's fd limit). 150 loops each handle a SIGHUP."""
    loops = [ErlangEventLoop() for _ in range(150)]
    seen: list[list[object]] = [[] for _ in loops]
    try:
        for each, seen_by in zip(loops, seen, strict=True):
            each.add_signal_handler(signal.SIGHUP, seen_by.append, "hup")
        os.kill(os.getpid(), signal.SIGHUP)
        for each, seen_by in zip(loops, seen, strict=True):
            _until(each, seen_by)
        assert all(seen_by == ["hup"] for seen_by in seen)
    finally:
        for each in loops:
            each.close()


def test_signals_run_their_handlers_in_the_order_they_came(loop: ErlangEventLoop) -> None:
    """Each signal read from the loop's signal pipe runs its handler once,
    in arrival order, repeats included (asyncio's _process_self_data)."""
    seen: list[object] = []
    loop.add_signal_handler(signal.SIGUSR2, seen.append, "usr2")
    loop.add_signal_handler(signal.SIGHUP, seen.append, "hup")
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    subscribed, loop._signal_fd = loop._signal_fd, read_end
    try:
        os.write(write_end, bytes([signal.SIGUSR2, signal.SIGHUP, signal.SIGUSR2, signal.SIGUSR2]))
        loop._read_signals()
    finally:
        loop._signal_fd = subscribed
        os.close(read_end)
        os.close(write_end)
    _until(loop, seen, 4)
    assert seen == ["usr2", "hup", "usr2", "usr2"]
    assert loop.remove_signal_handler(signal.SIGUSR2) is True
    assert loop.remove_signal_handler(signal.SIGHUP) is True


def test_a_signal_the_beam_will_not_route_leaves_no_pipe_behind(
    loop: ErlangEventLoop, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """add_signal_handler failing halfway (the route refused) raises and
    closes the loop's signal pipe; remove_signal_handler whose un-route
    fails still removes the handler and closes the pipe, with a warning
    (asyncio's close() removes the others after it)."""
    from erlang_loop import _loop as loop_module

    baseline = _open_fds()

    def refused(sig: int, *rest: object) -> None:
        raise RuntimeError(f"the BEAM could not route {sig}")

    monkeypatch.setattr(loop_module, "_take_signal", refused)
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    assert loop._signal_fd is None
    assert _open_fds() == baseline
    monkeypatch.undo()

    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    assert _open_fds() >= baseline + 2  # the pipe's two ends
    route = loop._signal_routes[signal.SIGUSR2]
    monkeypatch.setattr(loop_module, "_leave_signal", refused)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        assert loop.remove_signal_handler(signal.SIGUSR2) is True
    assert "could not stop taking signal" in caplog.text
    assert loop._signal_fd is None
    assert _open_fds() <= baseline
    monkeypatch.undo()
    # The refused un-route left SIGUSR2 routed: taken back by hand.
    loop_module._leave_signal(signal.SIGUSR2, route)


def test_a_close_interrupted_halfway_still_removes_the_signal_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception inside asyncio's close (a timed-out py:call's
    TimeoutError, raised at any bytecode, lands most often while the
    selector's close waits for the BEAM) still removes the loop's signal
    handlers: their pipe, its subscription and the catch of SIGCHLD were
    left for good (asyncio removes them after the selector's close)."""
    from asyncio import selector_events

    baseline = _open_fds()
    loop = ErlangEventLoop()
    loop.add_signal_handler(signal.SIGCHLD, lambda: None)
    assert _open_fds() >= baseline + 2  # the pipe's two ends
    real_close = selector_events.BaseSelectorEventLoop.close

    def interrupted(self: asyncio.AbstractEventLoop) -> None:
        real_close(self)
        raise TimeoutError

    monkeypatch.setattr(selector_events.BaseSelectorEventLoop, "close", interrupted)
    with pytest.raises(TimeoutError):
        loop.close()
    assert loop._signal_handlers == {}
    assert loop._signal_fd is None
    assert _open_fds() <= baseline


def test_a_sigalrm_handler_runs_while_the_loop_sleeps(loop: ErlangEventLoop) -> None:
    """setitimer's SIGALRM, routed by the BEAM, wakes a loop asleep in
    run_forever (asyncio's test_signal_handling_while_selecting)."""
    caught: list[int] = []

    def on_alarm(n: int) -> None:
        caught.append(n)
        loop.stop()

    loop.add_signal_handler(signal.SIGALRM, on_alarm, 42)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0)
        stop = loop.call_later(30, loop.stop)
        loop.run_forever()
        stop.cancel()
        assert caught == [42]
    finally:
        # Disarmed first: an alarm after the route is gone ends the node.
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert loop.remove_signal_handler(signal.SIGALRM) is True


def test_sigchld_handler_runs_when_a_child_exits(loop: ErlangEventLoop) -> None:
    baseline = _open_fds()
    seen: list[int] = []
    loop.add_signal_handler(signal.SIGCHLD, seen.append, 7)
    child = subprocess.Popen(["true"])

    async def until_seen() -> None:
        while not seen:
            await asyncio.sleep(0.01)

    run(loop, asyncio.wait_for(until_seen(), 30))
    child.wait()
    assert seen[0] == 7
    assert loop.remove_signal_handler(signal.SIGCHLD) is True
    assert loop.remove_signal_handler(signal.SIGCHLD) is False
    # The subscription's pipe is closed (and the BEAM's duplicate of the
    # loop's epoll fd, whose select stops asynchronously with its last fd).
    deadline = time.monotonic() + 10
    while _open_fds() > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _open_fds() <= baseline


def test_child_watchers_that_need_sigchld_work(loop: ErlangEventLoop) -> None:
    """asyncio's SafeChildWatcher reaps children from a SIGCHLD handler."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.SafeChildWatcher()
    watcher.attach_loop(loop)
    try:
        statuses: list[int] = []
        done = loop.create_future()

        def exited(pid: int, returncode: int) -> None:
            statuses.append(returncode)
            loop.call_soon_threadsafe(done.set_result, None)

        child = subprocess.Popen(["sh", "-c", "exit 5"])
        with watcher:
            watcher.add_child_handler(child.pid, exited)
        run(loop, asyncio.wait_for(done, 30))
        assert statuses == [5]
    finally:
        watcher.close()


# ---------------------------------------------------------------- leaks


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _use_a_loop(isolated: bool) -> None:
    loop = ErlangEventLoop(isolated=isolated)
    try:

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        async def main() -> bytes:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping")
            reply = await reader.read(100)
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
            # A raw reader too, removed before the socket closes.
            a, b = socket.socketpair()
            with a, b:
                got = loop.create_future()
                loop.add_reader(a, lambda: got.done() or got.set_result(a.recv(10)))
                b.send(b"!")
                reply += await got
                loop.remove_reader(a)
            return reply

        assert run(loop, main()) == b"ping!"
    finally:
        loop.close()


def _settled_fd_count() -> int:
    """The open fd count once it stays the same for 60 ms (fds freed by the
    garbage collector or by a BEAM process may still be going)."""
    give_up = time.monotonic() + 5.0
    counts = [_open_fds()]
    while len(counts) < 4 or len(set(counts[-4:])) > 1:
        if time.monotonic() > give_up:
            break
        time.sleep(0.02)
        counts.append(_open_fds())
    return counts[-1]


def _wait_for_fd_count(baseline: int, timeout: float = 5.0) -> int:
    """The open fd count once it is back to ``baseline`` (or after
    ``timeout``): select stops are asynchronous (LESSONS 30)."""
    give_up = time.monotonic() + timeout
    while _open_fds() > baseline and time.monotonic() < give_up:
        time.sleep(0.05)
    return _open_fds()


# ------------------------------------ sockets closed while the loop watches them


def test_a_socket_closed_while_watched_with_a_copy_alive_does_not_wake_the_loop(
    loop: ErlangEventLoop,
) -> None:
    """The kernel keeps a closed socket's registration while a copy of the
    file lives on: ready, and past any removal by its number. The loop sheds
    it (a new epoll set) instead of being woken for it forever."""
    idle, idle_peer = socket.socketpair()
    watched, peer = socket.socketpair()
    alive = watched.dup()
    try:
        loop.add_reader(idle, lambda: None)
        loop.add_reader(watched, lambda: None)
        fd = watched.fileno()
        watched.close()
        loop.remove_reader(fd)
        peer.send(b"x")  # the closed socket's file is readable
        rebuilds = loop.stats()["poller_rebuilds"]
        run_until(loop, lambda: loop.stats()["poller_rebuilds"] > rebuilds)
        before = loop.stats()
        loop.run_until_complete(asyncio.sleep(0.3))
        after = loop.stats()
        assert after["poller_rebuilds"] == rebuilds + 1
        # A sleep of 0.3 s once the set is rebuilt: its timer. Spinning on
        # the leftover would be thousands.
        assert after["wakeups"] - before["wakeups"] < 50
    finally:
        loop.remove_reader(idle)
        for sock in (idle, idle_peer, peer, alive):
            sock.close()


def _reuse_number(sock: socket.socket) -> tuple[socket.socket, socket.socket]:
    """Closes ``sock`` and gives its fd number to a new connected socket at
    once (as the OS reuses numbers), deterministically: ``dup2`` onto it."""
    fd = sock.detach()
    new, new_peer = socket.socketpair()
    os.dup2(new.fileno(), fd)
    new.close()
    return socket.socket(fileno=fd), new_peer


def test_a_reused_fd_number_gets_no_events_of_the_closed_file(loop: ErlangEventLoop) -> None:
    old, old_peer = socket.socketpair()
    loop.add_reader(old, lambda: None)
    old_alive = old.dup()
    new, new_peer = _reuse_number(old)  # closed while watched, its file alive
    calls: list[bytes] = []
    try:
        new.setblocking(False)

        def on_read() -> None:
            try:
                calls.append(new.recv(10))
            except BlockingIOError:
                calls.append(b"nothing to read")

        loop.add_reader(new, on_read)
        old_peer.send(b"old")  # only the old file is readable
        loop.run_until_complete(asyncio.sleep(0.2))
        assert calls == []
        new_peer.send(b"new")
        run_until(loop, lambda: bool(calls))
        assert calls == [b"new"]
    finally:
        loop.remove_reader(new)
        for sock in (new, new_peer, old_alive, old_peer):
            sock.close()


def test_a_socket_closed_while_watched_and_its_number_reused_is_watched(
    loop: ErlangEventLoop,
) -> None:
    """``add_reader`` on a number asyncio still has registered (its socket
    closed without ``remove_reader``) watches the socket that has it now."""
    old, old_peer = socket.socketpair()
    loop.add_reader(old, lambda: None)
    old_peer.close()
    new, new_peer = _reuse_number(old)
    got: list[bytes] = []
    try:
        new.setblocking(False)
        loop.add_reader(new, lambda: got.append(new.recv(10)))
        new_peer.send(b"x")
        run_until(loop, lambda: bool(got))
        assert got == [b"x"]
    finally:
        loop.remove_reader(new)
        new.close()
        new_peer.close()


def test_no_fd_leak_after_many_loops() -> None:
    _use_a_loop(False)  # warm up (imports, first worker)
    _use_a_loop(True)
    gc.collect()
    baseline = _open_fds()
    for i in range(20):
        _use_a_loop(isolated=bool(i % 2))
    gc.collect()
    assert _wait_for_fd_count(baseline) <= baseline


def _loop_with_watched_sockets(isolated: bool) -> tuple[ErlangEventLoop, list[socket.socket]]:
    """A loop that watched a socketpair (read and write), still registered."""
    loop = ErlangEventLoop(isolated=isolated)
    a, b = socket.socketpair()
    seen = loop.create_future()
    loop.add_reader(a, lambda: seen.done() or seen.set_result(a.recv(10)))
    loop.add_writer(b, lambda: None)
    b.send(b"x")
    assert run(loop, seen) == b"x"
    assert loop.stats()["fds"] == 2
    return loop, [a, b]


def test_internal_fds_count_the_loops_own_fd() -> None:
    """asyncio's `_internal_fds` counts the fds a loop keeps for itself (the
    stdlib's self-pipe, as 1). Ours is its epoll set, with the BEAM's
    duplicate of it: two fds from the start (watching fds takes no more)
    until close, none after, as the process's open fds say."""
    gc.collect()
    baseline = _settled_fd_count()
    loop = ErlangEventLoop()
    assert loop._internal_fds == 1
    assert _open_fds() == baseline + 2
    assert loop._csock is None and loop._ssock is None
    a, b = socket.socketpair()
    loop.add_reader(a.fileno(), lambda: None)
    loop.add_writer(b.fileno(), lambda: None)
    assert _open_fds() == baseline + 4  # the pair's own two
    loop.remove_reader(a.fileno())
    loop.remove_writer(b.fileno())
    a.close()
    b.close()
    assert _open_fds() == baseline + 2
    loop.close()
    assert loop._internal_fds == 0
    assert _open_fds() == baseline


def test_close_returns_with_the_loops_fds_closed() -> None:
    """close() returns once the BEAM's duplicate of the loop's epoll fd is
    closed too (by its worker's select stop, a message away), as a stdlib
    loop's close() releases its fds: the count right after is the count
    before the loop, every time, shared worker or a worker of its own."""
    for isolated in (False, True):
        ErlangEventLoop(isolated=isolated).close()  # the workers, imports
    gc.collect()
    baseline = _settled_fd_count()
    for i in range(60):
        loop = ErlangEventLoop(isolated=bool(i % 2))
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        assert _open_fds() == baseline, f"loop {i} (isolated={bool(i % 2)})"


@contextlib.contextmanager
def _fd_table_full() -> Iterator[None]:
    """The process's fd table full: its limit lowered just above the fds
    open now, the room left filled with copies of stdin. Restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
    hogs: list[int] = []
    try:
        while True:
            try:
                hogs.append(os.dup(0))
            except OSError as error:
                assert error.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in hogs:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_full_fd_table_fails_a_new_loop_with_emfile() -> None:
    """As the stdlib's loop (its self-pipe): OSError with errno EMFILE, not a
    RuntimeError that `except OSError` misses."""
    unraisable: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with _fd_table_full():
            try:
                ErlangEventLoop()
            except OSError as error:
                # Not kept: its traceback holds the half-made loop.
                seen = error.errno
            else:
                pytest.fail("a loop was made with no fd left")
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert seen == errno.EMFILE
    # The half-made loop goes quietly (no "Exception ignored in __del__").
    assert unraisable == []


def test_watching_fds_takes_no_fd_when_the_table_is_full() -> None:
    """add_reader/add_writer work with no fd left, as with the stdlib's
    selectors: a server's accept back-off on EMFILE removes its only reader,
    and the connection it accepts next must still be watched."""
    loop = ErlangEventLoop()
    a, b = socket.socketpair()
    try:
        with _fd_table_full():
            for _ in range(3):
                loop.add_reader(a.fileno(), lambda: None)
                loop.add_writer(b.fileno(), lambda: None)
                assert loop.remove_reader(a.fileno())
                assert loop.remove_writer(b.fileno())
            received: list[bytes] = []
            loop.add_reader(a.fileno(), lambda: received.append(a.recv(16)))
            b.send(b"ping")
            loop.call_later(5.0, loop.stop)
            loop.call_soon(_stop_when, loop, lambda: bool(received))
            loop.run_forever()
            loop.remove_reader(a.fileno())
        assert received == [b"ping"]
    finally:
        loop.close()
        a.close()
        b.close()


def _stop_when(loop: asyncio.AbstractEventLoop, done: Callable[[], bool]) -> None:
    if done():
        loop.stop()
    else:
        loop.call_later(0.001, _stop_when, loop, done)


def test_no_fd_leak_when_a_loop_closes_with_fds_still_watched() -> None:
    """close() stops every select; the BEAM's duplicates of the fds go."""
    # A first loop's one-time costs (the worker, its poll set) come before
    # the baseline.
    warm_up, pair = _loop_with_watched_sockets(False)
    warm_up.close()
    for sock in pair:
        sock.close()
    gc.collect()
    baseline = _open_fds()
    sockets: list[socket.socket] = []
    for i in range(10):
        loop, pair = _loop_with_watched_sockets(isolated=bool(i % 2))
        loop.close()
        assert loop.stats()["fds"] == 0
        sockets += pair
    for sock in sockets:
        sock.close()
    gc.collect()
    assert _wait_for_fd_count(baseline) <= baseline


def test_no_fd_leak_when_an_unclosed_loop_is_garbage_collected() -> None:
    """asyncio closes a forgotten loop when it is collected (with a
    ResourceWarning); its selects must go with it."""
    gc.collect()
    baseline = _open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for i in range(10):
            loop, pair = _loop_with_watched_sockets(isolated=bool(i % 2))
            loop.call_later(3600, lambda: None)
            collected = weakref.ref(loop)
            del loop
            gc.collect()
            assert collected() is None
            # Our fds close; the loop's duplicates must go with the loop.
            for sock in pair:
                sock.close()
        gc.collect()
    assert _wait_for_fd_count(baseline) <= baseline
