"""The native hot paths of ErlangEventLoop (``_erlang_loop.LoopRunner``):
call_soon/call_at/call_later make real asyncio handles without running
Python, and one iteration dispatches them natively. These tests pin down
that they behave exactly as asyncio's Python code does.

Run with ``bin/erlang-python -m pytest tests/python/test_native_paths.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio import futures
import functools
import gc
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import erlang_asyncio
import pytest

from erlang_loop import ErlangEventLoop
from test_context_snapshots import context_slot

# The node runner, to start a fresh node where a test needs one.
CLI = str(Path(__file__).resolve().parents[2] / "bin" / "erlang-python")


def run_soon(loop: ErlangEventLoop) -> None:
    """Runs the loop until the callbacks scheduled so far have run."""
    done = loop.create_future()
    loop.call_soon(done.set_result, None)
    loop.run_until_complete(done)


def assert_busy_context_reported(
    reported: list[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """The handle's "cannot enter context" error went to the loop's exception
    handler, as asyncio's `Handle._run` sends it. Since 3.12 asyncio calls
    the handler in the handle's context, which is busy too: the handler's
    call fails as well and asyncio logs both, the handler never called."""
    if sys.version_info < (3, 12):
        assert len(reported) == 1 and isinstance(reported[0], RuntimeError)
        return
    logged = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("Unhandled error in exception handler")
    ]
    assert reported == [] and len(logged) == 1 and "cannot enter context" in logged[0]


def test_native_paths_are_used_outside_debug_mode_only() -> None:
    loop = ErlangEventLoop()
    try:
        assert "call_soon" in vars(loop) and "_run_once" in vars(loop)
        assert loop.get_debug() is False
        loop.set_debug(True)
        assert "call_soon" not in vars(loop) and "_run_once" not in vars(loop)
        assert loop.get_debug() is True
        loop.set_debug(False)
        assert "call_soon" in vars(loop) and "_run_once" in vars(loop)
        assert loop.get_debug() is False
    finally:
        loop.close()


def test_a_handle_kept_after_it_ran_is_never_reused(loop: ErlangEventLoop) -> None:
    """LESSONS 23: asyncio code cancels handles after they ran; a pooled
    handle handed out again would let that cancel a stranger's callback."""
    ran: list[str] = []
    first = loop.call_soon(ran.append, "first")
    first_timer = loop.call_later(0, ran.append, "first timer")
    run_soon(loop)
    second = loop.call_soon(ran.append, "second")
    second_timer = loop.call_later(0, ran.append, "second timer")
    assert second is not first and second_timer is not first_timer
    first.cancel()
    first_timer.cancel()
    run_soon(loop)
    assert ran == ["first", "first timer", "second", "second timer"]
    assert not second.cancelled() and not second_timer.cancelled()


def test_handles_are_asyncio_handles(loop: ErlangEventLoop) -> None:
    def callback(*args: Any) -> None:
        pass

    handle = loop.call_soon(callback, 1, 2)
    timer = loop.call_later(3600, callback, "x")
    at = loop.call_at(loop.time() + 3600, callback)
    assert type(handle) is asyncio.Handle
    assert isinstance(timer, asyncio.TimerHandle) and isinstance(at, asyncio.TimerHandle)
    assert handle._args == (1, 2) and handle._callback is callback and handle._loop is loop
    assert isinstance(handle._context, contextvars.Context)
    assert not handle.cancelled() and not timer.cancelled()
    assert "callback" in repr(handle) and "when=" in repr(timer)
    assert timer.when() > loop.time() + 3000 and timer._scheduled
    assert (handle._source_traceback is not None) == loop.get_debug()
    timer.cancel()
    at.cancel()
    assert timer.cancelled() and not timer._scheduled
    assert loop._runner.scheduled() == (0, 0)
    run_soon(loop)


def test_ready_queue_behaves_as_a_deque(loop: ErlangEventLoop) -> None:
    ran: list[str] = []
    loop.call_soon(ran.append, "a")
    assert len(loop._ready) == 1 and bool(loop._ready)
    handle = asyncio.Handle(ran.append, ("b",), loop)
    loop._ready.append(handle)
    assert len(loop._ready) == 2
    first = loop._ready.popleft()
    assert first._args == ("a",)
    loop._ready.append(first)
    run_soon(loop)
    assert ran == ["b", "a"]
    assert not loop._ready and len(loop._ready) == 0
    with pytest.raises(IndexError):
        loop._ready.popleft()


def test_callbacks_get_their_arguments_and_context(loop: ErlangEventLoop) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[tuple[Any, ...]] = []

    def record(*args: Any) -> None:
        seen.append((*args, var.get()))
        var.set("changed by the callback")

    context = contextvars.copy_context()
    context.run(var.set, "given")
    var.set("caller")
    loop.call_soon(record, 1, 2)
    loop.call_soon(record, context=context)
    loop.call_later(0, record, "timer", context=context)
    run_soon(loop)
    # The second callback changed the shared context before the timer ran.
    assert seen == [(1, 2, "caller"), ("given",), ("timer", "changed by the callback")]
    assert var.get() == "caller"
    assert context[var] == "changed by the callback"


def test_exceptions_go_to_the_exception_handler_and_the_loop_goes_on(
    loop: ErlangEventLoop,
) -> None:
    reported: list[dict[str, Any]] = []
    handled: list[BaseException | None] = []

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        reported.append(context)
        # As Handle._run calls it: inside its `except`, so that
        # `logging.exception` in a handler logs the traceback.
        handled.append(sys.exc_info()[1])

    loop.set_exception_handler(handler)
    ran: list[int] = []

    def fail(n: int) -> None:
        raise ValueError(f"boom {n}")

    handle = loop.call_soon(fail, 1)
    loop.call_soon(ran.append, 2)
    loop.call_later(0, fail, 3)
    run_soon(loop)
    assert ran == [2]
    assert [str(c["exception"]) for c in reported] == ["boom 1", "boom 3"]
    assert reported[0]["handle"] is handle
    assert reported[0]["message"].startswith("Exception in callback ")
    assert "fail" in reported[0]["message"]
    assert ("source_traceback" in reported[0]) == loop.get_debug()
    assert handled == [c["exception"] for c in reported]
    # Nothing is left as handled once the loop returned.
    assert sys.exc_info() == (None, None, None)


def test_a_busy_context_is_reported_not_raised(
    loop: ErlangEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    reported: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
    context = contextvars.copy_context()

    loop.call_soon(lambda: None, context=context)
    # The loop runs inside the context: entering it again for the handle fails.
    context.run(run_soon, loop)
    assert_busy_context_reported(reported, caplog)


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate(
    loop: ErlangEventLoop, error: type[BaseException]
) -> None:
    ran: list[str] = []

    def interrupt() -> None:
        raise error()

    loop.call_soon(interrupt)
    loop.call_soon(ran.append, "after")
    with pytest.raises(error):
        loop.run_forever()
    # The rest of the batch is still queued, as with asyncio's loop.
    assert ran == [] and len(loop._ready) == 1
    run_soon(loop)
    assert ran == ["after"]


def test_cancel_from_an_earlier_callback_of_the_same_batch(loop: ErlangEventLoop) -> None:
    ran: list[str] = []
    second = asyncio.Handle(ran.append, ("second",), loop)

    def cancel_second() -> None:
        ran.append("first")
        second.cancel()

    loop.call_soon(cancel_second)
    loop._ready.append(second)
    loop.call_soon(ran.append, "third")
    run_soon(loop)
    assert ran == ["first", "third"]


def test_a_handle_that_cancels_itself_while_running(loop: ErlangEventLoop) -> None:
    ran: list[str] = []
    handles: list[asyncio.Handle] = []

    def cancel_self(tag: str) -> None:
        handles[0].cancel()  # drops the handle's callback and args
        ran.append(tag)

    handles.append(loop.call_soon(cancel_self, "ran"))
    run_soon(loop)
    assert ran == ["ran"] and handles[0].cancelled()


def test_handle_subclasses_run_their_own_run(loop: ErlangEventLoop) -> None:
    ran: list[str] = []

    class LoudHandle(asyncio.Handle):
        __slots__ = ()

        def _run(self) -> None:
            ran.append("own _run")
            super()._run()

    loop._ready.append(LoudHandle(ran.append, ("callback",), loop, None))
    run_soon(loop)
    assert ran == ["own _run", "callback"]


def test_closed_loop_refuses_new_callbacks(loop: ErlangEventLoop) -> None:
    timer = loop.call_later(3600, lambda: None)
    loop.close()
    assert not timer._scheduled
    for schedule in (
        lambda: loop.call_soon(lambda: None),
        lambda: loop.call_later(1, lambda: None),
        lambda: loop.call_at(loop.time() + 1, lambda: None),
        lambda: loop.call_soon_threadsafe(lambda: None),
    ):
        with pytest.raises(RuntimeError, match="closed"):
            schedule()


def test_bad_arguments_raise_as_asyncio_does(loop: ErlangEventLoop) -> None:
    with pytest.raises(TypeError):
        loop.call_later(None, lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        loop.call_later(float("nan"), lambda: None)
    with pytest.raises(ValueError):
        loop.call_at(float("nan"), lambda: None)
    with pytest.raises(TypeError):
        loop.call_later("soon", lambda: None)  # type: ignore[arg-type]
    assert loop._runner.scheduled() == (0, 0)


def test_call_soon_threadsafe_from_another_thread(loop: ErlangEventLoop) -> None:
    done = loop.create_future()

    def from_thread() -> None:
        loop.call_soon_threadsafe(done.set_result, threading.get_ident())

    thread = threading.Thread(target=from_thread)
    thread.start()
    ident = loop.run_until_complete(asyncio.wait_for(done, 10))
    thread.join()
    assert ident == thread.ident


def test_an_unclosed_loop_with_pending_callbacks_is_collected() -> None:
    loop = ErlangEventLoop()
    loop.call_soon(lambda: None)
    loop.call_later(3600, lambda: None)
    ref = weakref.ref(loop)
    with pytest.warns(ResourceWarning):
        del loop
        gc.collect()
    assert ref() is None


def test_selector_select_hands_fired_timers_to_the_loop(loop: ErlangEventLoop) -> None:
    ran: list[str] = []
    loop.call_at(0, ran.append, "due")  # long past: fires on the next wait
    assert loop._runner.scheduled() == (1, 0)
    loop._selector.select(0)
    assert loop._runner.scheduled() == (0, 0) and len(loop._ready) == 1
    run_soon(loop)
    assert ran == ["due"]


def test_ready_fds_run_their_handles_and_cancelled_ones_unregister(
    loop: ErlangEventLoop,
) -> None:
    left, right = socket.socketpair()
    try:
        left.setblocking(False)
        ran: list[str] = []
        got = loop.create_future()

        def on_readable() -> None:
            ran.append("read")
            left.recv(100)
            if not got.done():
                got.set_result(None)

        loop._add_reader(left.fileno(), on_readable)
        loop._add_writer(left.fileno(), lambda: ran.append("write"))
        loop._remove_writer(left.fileno())
        right.send(b"x")
        loop.run_until_complete(asyncio.wait_for(got, 10))
        assert ran == ["read"]

        # A reader handle cancelled behind the loop's back: the next
        # readiness unregisters the fd instead of running it.
        handle = loop._add_reader(left.fileno(), on_readable)
        handle.cancel()
        right.send(b"y")
        deadline = loop.time() + 10
        while left.fileno() in loop._selector.get_map() and loop.time() < deadline:
            loop.run_until_complete(asyncio.sleep(0.001))
        assert left.fileno() not in loop._selector.get_map()
        assert ran == ["read"]
    finally:
        if left.fileno() in loop._selector.get_map():
            loop._remove_reader(left.fileno())
        left.close()
        right.close()


def test_subclasses_that_override_a_path_keep_their_python() -> None:
    class CountingLoop(ErlangEventLoop):
        calls = 0

        def call_soon(self, *args: Any, **kwargs: Any) -> asyncio.Handle:
            CountingLoop.calls += 1
            return super().call_soon(*args, **kwargs)

        def create_future(self) -> asyncio.Future[Any]:
            CountingLoop.calls += 100
            return super().create_future()

    loop = CountingLoop()
    try:
        assert "call_soon" not in vars(loop) and "_sleep_future" not in vars(loop)
        assert "call_later" in vars(loop)
        loop.call_soon(lambda: None)
        loop._sleep_future(0.001)
        assert CountingLoop.calls == 101
    finally:
        loop.close()


def fill_the_ready_queue(loop: ErlangEventLoop) -> None:
    """Queues callbacks until the next `call_soon` handle leaves the GC
    while it waits (a short queue stays under it)."""
    for _ in range(1024):
        loop.call_soon(lambda: None)


class _Holder:
    """Holds a handle whose callback is its own method: a reference cycle."""

    handle: asyncio.Handle | None = None

    def callback(self) -> None:
        pass


def test_handles_made_while_running_are_out_of_the_gc_until_they_leave() -> None:
    loop = ErlangEventLoop()
    seen: dict[str, bool] = {}

    async def main() -> tuple[asyncio.Handle, asyncio.TimerHandle, asyncio.TimerHandle]:
        # A short ready queue stays under the GC; from 1024 queued
        # callbacks on, new ones leave it.
        short = loop.call_soon(lambda: None)
        seen["short queue"] = gc.is_tracked(short) and gc.is_tracked(short._context)
        fill_the_ready_queue(loop)
        soon = loop.call_soon(lambda: None)
        later = loop.call_later(3600, lambda: None)
        pending = loop.call_later(3600, lambda: None)
        seen["soon"], seen["later"] = gc.is_tracked(soon), gc.is_tracked(later)
        # Its own copy of the context leaves with it, as the timers' snapshot.
        seen["soon context"] = gc.is_tracked(soon._context)
        # The context snapshot the timers share leaves with them (read from
        # the slot: reading `_context` gives the timer a context of its
        # own); a given one stays.
        seen["later context"] = gc.is_tracked(context_slot(later))
        given = contextvars.copy_context()
        seen["given context"] = gc.is_tracked(loop.call_later(3600, print, context=given)._context)
        later.cancel()  # leaves the loop while we hold it
        seen["cancelled"] = gc.is_tracked(later)
        seen["cancelled context"] = gc.is_tracked(context_slot(later))
        await asyncio.sleep(0)  # `soon` ran and left the loop while we hold it
        seen["ran"] = gc.is_tracked(soon)
        seen["ran context"] = gc.is_tracked(soon._context)
        seen["pending"] = gc.is_tracked(pending)
        return soon, later, pending

    gc.disable()  # no collection in between
    try:
        _, _, pending = loop.run_until_complete(main())
        assert seen == {
            "short queue": True,
            "soon": False,
            "soon context": False,
            "later": False,
            "later context": False,
            "given context": True,
            "cancelled": True,
            "cancelled context": True,
            "ran": True,
            "ran context": True,
            "pending": False,
        }
        # The loop stopped: what it still holds is under the GC again.
        assert gc.is_tracked(pending) and gc.is_tracked(context_slot(pending))
        # Made while the loop is not running: tracked from the start.
        assert gc.is_tracked(loop.call_soon(lambda: None))
    finally:
        gc.enable()
        loop.close()


@pytest.mark.parametrize("how", ["ran", "cancelled", "fired", "closed"])
def test_cycles_through_handles_are_collected(loop: ErlangEventLoop, how: str) -> None:
    holder = _Holder()
    if how == "ran":
        holder.handle = loop.call_soon(holder.callback)
        run_soon(loop)
    elif how == "cancelled":
        holder.handle = loop.call_later(3600, holder.callback)
        holder.handle.cancel()
    elif how == "fired":
        holder.handle = loop.call_later(0, holder.callback)
        loop.run_until_complete(asyncio.sleep(0.01))
    else:
        holder.handle = loop.call_later(3600, holder.callback)
        loop.close()
    ref = weakref.ref(holder)
    del holder
    gc.collect()
    assert ref() is None


class _ContextBox:
    """Kept in a context's variable while it holds that context: a cycle."""

    context: contextvars.Context | None = None


def test_an_own_context_that_outlives_its_handle_goes_back_under_the_gc(
    loop: ErlangEventLoop,
) -> None:
    var: contextvars.ContextVar[_ContextBox] = contextvars.ContextVar("var")
    other: contextvars.ContextVar[int] = contextvars.ContextVar("other")

    async def main() -> tuple[weakref.ref[_ContextBox], bool, bool]:
        done = loop.create_future()
        handle = loop.call_later(0, done.set_result, None)
        # A timer scheduled in other variables: the first timer's snapshot
        # is no longer shared, and it is the context `_context` gives.
        elsewhere = contextvars.copy_context()
        elsewhere.run(other.set, 1)
        elsewhere.run(loop.call_later, 3600, print)
        box = _ContextBox()
        box.context = handle._context
        box.context.run(var.set, box)
        pending = gc.is_tracked(box.context)
        del handle  # only the loop holds it: freed once it ran
        await done
        return weakref.ref(box), pending, gc.is_tracked(box.context)

    gc.disable()
    try:
        ref, pending, after = loop.run_until_complete(main())
    finally:
        gc.enable()
    # Debug mode builds handles through asyncio's Python code: all tracked.
    assert (pending, after) == (loop.get_debug(), True)
    gc.collect()
    assert ref() is None  # the cycle through the context was collected


def test_a_sleep_s_future_resolves_through_its_own_attributes(loop: ErlangEventLoop) -> None:
    """The runner resolves an `asyncio.sleep` timer's future itself; one
    whose `set_result` is an attribute of its own gets that one called, as
    `futures._set_result_unless_cancelled` would call it."""
    seen: list[int] = []

    async def main() -> bool:
        future = loop.create_future()
        future.set_result = seen.append  # type: ignore[method-assign]
        loop.call_later(0, futures._set_result_unless_cancelled, future, 7)
        plain = loop.create_future()
        loop.call_later(0, futures._set_result_unless_cancelled, plain, 8)
        await plain
        return future.done()

    assert loop.run_until_complete(main()) is False
    assert seen == [7]


def test_a_queued_handle_s_context_can_be_replaced(loop: ErlangEventLoop) -> None:
    """A `call_soon` handle's context left the GC with it: replaced through
    asyncio's own slot, it is still put back under the GC and freed, and
    the callback runs in the new one."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def main() -> tuple[weakref.ref[contextvars.Context], bool]:
        fill_the_ready_queue(loop)
        handle = loop.call_soon(lambda: seen.append(var.get()))
        original = weakref.ref(handle._context)
        untracked = not gc.is_tracked(handle._context)
        given = contextvars.copy_context()
        given.run(var.set, "given")
        handle._context = given
        del handle, given
        await asyncio.sleep(0)
        return original, untracked

    original, untracked = loop.run_until_complete(main())
    assert seen == ["given"]
    assert untracked != loop.get_debug()  # debug mode: asyncio's own handles
    assert original() is None  # freed, not kept by a reference of its own


def test_a_cycle_through_a_queued_handle_s_context_is_collected(
    loop: ErlangEventLoop,
) -> None:
    var: contextvars.ContextVar[_ContextBox] = contextvars.ContextVar("var")

    async def main() -> tuple[weakref.ref[_ContextBox], bool]:
        box = _ContextBox()
        handle = loop.call_soon(lambda: None)
        box.context = handle._context
        box.context.run(var.set, box)
        del handle  # only the loop holds it: freed once it ran
        await asyncio.sleep(0)
        return weakref.ref(box), gc.is_tracked(box.context)

    gc.disable()
    try:
        ref, tracked = loop.run_until_complete(main())
    finally:
        gc.enable()
    assert tracked
    gc.collect()
    assert ref() is None


def member_error_name(cls: type) -> str:
    """The class's name in a slot's "no attribute" error: its fully
    qualified name since 3.13 (PEP 737), its ``__name__`` before."""
    if sys.version_info < (3, 13) or cls.__module__ in ("builtins", "__main__"):
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


def test_a_pending_timer_s_context_can_be_replaced_and_deleted(loop: ErlangEventLoop) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def main() -> None:
        done = loop.create_future()
        handle = loop.call_later(0, lambda: (seen.append(var.get()), done.set_result(None)))
        # The copy it got is freed here, out of the loop's custody first.
        given = contextvars.copy_context()
        given.run(var.set, "given")
        handle._context = given
        assert handle._context is given and gc.is_tracked(given)
        del handle._context
        # As asyncio's slot says it, for reading and deleting.
        message = f"'{member_error_name(type(handle))}' object has no attribute '_context'"
        with pytest.raises(AttributeError, match=message):
            handle._context  # noqa: B018
        with pytest.raises(AttributeError, match=message):
            del handle._context
        stock = asyncio.TimerHandle(0, print, (), loop)
        del stock._context
        stock_name = member_error_name(asyncio.TimerHandle)
        with pytest.raises(AttributeError, match=f"'{stock_name}' object has no attribute"):
            stock._context  # noqa: B018
        handle._context = given
        await done

    loop.run_until_complete(main())
    assert seen == ["given"]


REPLACE_CONTEXT_PAST_THE_ATTRIBUTE = """
import asyncio, contextvars, gc, sys
from erlang_loop import ErlangEventLoop

how = sys.argv[1]
loop = ErlangEventLoop()

async def main():
    handle = loop.call_later(3600, print)  # out of the GC with its context
    member = asyncio.Handle.__dict__["_context"]  # asyncio's own slot member
    if how == "set":
        member.__set__(handle, contextvars.copy_context())
    else:
        member.__delete__(handle)
    handle.cancel()
    gc.collect()

loop.run_until_complete(main())
loop.close()
print("survived")
"""


@pytest.mark.parametrize("how", ["set", "delete"])
def test_a_pending_timer_s_context_written_past_its_attribute_does_not_crash(how: str) -> None:
    # The context it had is freed untracked unless the loop holds it: a
    # crash in CPython's context deallocation. Its own process: a crash
    # would take pytest with it.
    done = subprocess.run(
        [CLI, "-c", REPLACE_CONTEXT_PAST_THE_ATTRIBUTE, how],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip().splitlines()[-1] == "survived"


NESTED_RUN_UNDER_NEST_ASYNCIO = """
import asyncio, nest_asyncio
nest_asyncio.apply()

async def inner():
    await asyncio.sleep(0.01)
    return 42

async def outer():
    try:
        asyncio.run(inner())
    except NotImplementedError as error:
        print("refused:", error)
    return await inner()

print("awaited:", asyncio.run(outer()))
"""


def test_nest_asyncio_is_refused_at_the_nested_run_not_a_hang() -> None:
    # Its own process: nest_asyncio patches asyncio itself.
    done = subprocess.run(
        [CLI, "-c", NESTED_RUN_UNDER_NEST_ASYNCIO],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    refused, awaited = done.stdout.strip().splitlines()
    assert refused.startswith("refused: This event loop is already running")
    assert "cannot be made re-entrant (nest_asyncio)" in refused
    assert awaited == "awaited: 42"


def test_an_unclosed_loop_held_through_a_pending_handle_stays_whole() -> None:
    holder = _Holder()
    loop = ErlangEventLoop()
    holder.handle = loop.call_later(3600, loop.stop)
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    # Reachable through holder -> handle -> loop: alive and intact.
    alive = ref()
    assert alive is not None and not alive.is_closed()
    alive.close()


def test_an_unclosed_loop_in_a_cycle_with_a_held_pending_handle_is_collected() -> None:
    holder = _Holder()
    loop = ErlangEventLoop()
    # holder -> handle -> holder.callback -> holder, and handle -> loop.
    holder.handle = loop.call_later(3600, holder.callback)
    ref = weakref.ref(loop)
    with pytest.warns(ResourceWarning):
        del loop, holder
        gc.collect()
    assert ref() is None


def test_an_unclosed_loop_whose_handles_hold_it_is_collected() -> None:
    loop = ErlangEventLoop()
    loop.call_soon(loop.stop)  # handle -> bound method -> loop
    loop.call_later(3600, loop.stop)
    ref = weakref.ref(loop)
    with pytest.warns(ResourceWarning):
        del loop
        gc.collect()
    assert ref() is None


def test_native_time_and_create_future_are_asyncio_s(loop: ErlangEventLoop) -> None:
    before = time.monotonic()
    now = loop.time()
    assert before <= now <= time.monotonic()
    future = loop.create_future()
    assert isinstance(future, asyncio.Future) and future.get_loop() is loop
    loop.close()
    assert loop.create_future().get_loop() is loop  # as asyncio: no closed check


def test_a_subclass_with_its_own_clock_keeps_python_call_later() -> None:
    class SlowClock(ErlangEventLoop):
        def time(self) -> float:
            return super().time() + 1000.0

    loop = SlowClock()
    try:
        assert "call_later" not in vars(loop) and "_sleep_future" not in vars(loop)
        assert "call_at" not in vars(loop)
        timer = loop.call_later(1, lambda: None)
        assert timer.when() > loop.time() - 10 > 900
        timer.cancel()
    finally:
        loop.close()


class _TracingHandle(asyncio.Handle):
    __slots__ = ()
    ran: list[asyncio.Handle] = []

    def _run(self) -> None:
        _TracingHandle.ran.append(self)
        super()._run()


def test_a_loop_made_while_events_handle_is_replaced_makes_that_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the stdlib's `call_soon`, which makes whatever `events.Handle` is
    (tracers replace it); no loop was refused for it."""
    monkeypatch.setattr(asyncio.events, "Handle", _TracingHandle)
    loop = ErlangEventLoop()
    try:
        handle = loop.call_soon(lambda: None)
        loop.run_until_complete(asyncio.sleep(0))
        assert type(handle) is _TracingHandle and handle in _TracingHandle.ran
    finally:
        loop.close()
    monkeypatch.undo()
    loop = ErlangEventLoop()
    try:
        assert "call_soon" in vars(loop)  # the native path again
        assert type(loop.call_soon(lambda: None)) is asyncio.Handle
    finally:
        loop.close()


@pytest.mark.parametrize("debug", [False, True])
def test_timers_of_a_subclass_with_its_own_clock_fire_by_that_clock(debug: bool) -> None:
    """Its `when`s are times of its clock: they fire when as much time has
    passed as they were set for, never early by that clock (they would fire
    1000 s late if taken as times of the wheel's)."""

    class OffsetClock(ErlangEventLoop):
        def time(self) -> float:
            return time.monotonic() + 1000.0

    loop = OffsetClock()
    loop.set_debug(debug)
    fired: list[tuple[str, float, float]] = []

    def record(name: str, when: float) -> None:
        fired.append((name, when, loop.time()))

    async def main() -> None:
        later = loop.call_later(0.02, lambda: record("later", later.when()))
        at = loop.time() + 0.01
        loop.call_at(at, record, "at", at)
        await asyncio.sleep(0.03)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3600), 0.02)

    # A guard that needs no timer of the loop: a hang fails the test.
    guard = threading.Timer(30, loop.call_soon_threadsafe, (loop.stop,))
    guard.start()
    try:
        loop.run_until_complete(main())
    finally:
        guard.cancel()
        loop.close()
    assert [name for name, _, _ in fired] == ["at", "later"]
    assert all(now >= when for _, when, now in fired)


def test_popleft_of_foreign_objects_leaves_them_alone(loop: ErlangEventLoop) -> None:
    loop._ready.append(1.5)  # not a handle, not a GC object
    loop._ready.append("x")
    assert loop._ready.popleft() == 1.5 and loop._ready.popleft() == "x"


def test_objects_posing_as_timer_handles_are_refused(loop: ErlangEventLoop) -> None:
    from unittest import mock

    from erlang_loop._loop import _ErlangTimerHandle

    fake = mock.Mock(spec=_ErlangTimerHandle)
    assert isinstance(fake, _ErlangTimerHandle)  # isinstance is fooled ...
    assert loop._runner.timer_cancelled(fake) is False  # ... the runner is not
    with pytest.raises(TypeError):
        loop._runner.add_timer(loop.time(), fake)
    assert loop._runner.scheduled() == (0, 0)


def test_a_timer_handle_whose_key_was_changed_cancels_nothing_else(
    loop: ErlangEventLoop,
) -> None:
    ran: list[str] = []
    victim = loop.call_later(0, ran.append, "victim")
    impostor = loop.call_later(3600, ran.append, "impostor")
    impostor._key = victim._key  # type: ignore[attr-defined]
    impostor.cancel()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert ran == ["victim"]


def test_fired_timers_run_even_if_fd_bookkeeping_fails(loop: ErlangEventLoop) -> None:
    left, right = socket.socketpair()
    try:
        fired: list[str] = []
        handle = loop._add_reader(left.fileno(), lambda: None)
        handle.cancel()  # the next readiness unregisters the fd ...
        original = loop._remove_reader

        def failing_remove(fd: int) -> bool:  # ... and that fails once
            loop._remove_reader = original  # type: ignore[method-assign]
            raise OSError("remove failed")

        loop._remove_reader = failing_remove  # type: ignore[method-assign]
        loop.call_at(0, fired.append, "timer")  # due in the same wait
        right.send(b"x")
        with pytest.raises(OSError, match="remove failed"):
            loop.run_until_complete(asyncio.sleep(0.05))
        loop.run_until_complete(asyncio.sleep(0.01))
        assert fired == ["timer"]
    finally:
        loop._remove_reader(left.fileno())
        left.close()
        right.close()


def test_a_patched_handle_run_is_called(loop: ErlangEventLoop) -> None:
    calls: list[asyncio.Handle] = []
    original = asyncio.Handle._run

    def counting_run(self: asyncio.Handle) -> None:
        calls.append(self)
        original(self)

    asyncio.Handle._run = counting_run  # type: ignore[method-assign]
    try:
        run_soon(loop)
    finally:
        asyncio.Handle._run = original  # type: ignore[method-assign]
    assert len(calls) >= 1


def test_deadlines_are_kept_as_given(loop: ErlangEventLoop) -> None:
    from decimal import Decimal
    from fractions import Fraction

    def noop() -> None:
        pass

    timers = [loop.call_at(10, noop), loop.call_at(10**400, noop), loop.call_at(True, noop)]
    assert [type(t.when()) for t in timers] == [int, int, bool]
    assert timers[0].when() == 10
    with pytest.raises(TypeError):
        loop.call_later(Decimal(1), noop)  # float + Decimal, as asyncio's
    assert isinstance(loop.call_later(Fraction(1, 2), noop).when(), float)
    with pytest.raises(TypeError, match="when cannot be None"):
        loop.call_at(None, noop)  # type: ignore[arg-type]
    loop.close()


def test_a_truthy_cancelled_flag_counts(loop: ErlangEventLoop) -> None:
    ran: list[str] = []
    handle = loop.call_soon(ran.append, "ran")
    handle._cancelled = 1  # type: ignore[assignment]
    run_soon(loop)
    assert ran == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_weakref_callbacks_of_an_unclosed_loop_s_handles_are_safe() -> None:
    """An unclosed loop whose __del__ cannot close it (ResourceWarning as an
    error) is collected with pending handles: weakrefs to them are cleared
    by the GC before anything is torn down, as with asyncio's loop."""
    registry: list[Any] = []
    outcome: list[bool] = []

    def make() -> None:
        def callback() -> None:
            pass

        loop = ErlangEventLoop()
        first = loop.call_soon(print, "first")
        second = loop.call_soon(callback)
        second_ref = weakref.ref(second)

        def on_first_freed(_: Any) -> None:
            handle = second_ref()
            outcome.append(handle is not None)
            if handle is not None:
                handle._callback()

        registry.append(weakref.ref(first, on_first_freed))
        registry.append(on_first_freed)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        gc.collect()
        make()
        gc.collect()
    assert outcome in ([], [False])


def test_a_handle_whose_class_was_reassigned_is_tracked_again() -> None:
    class Relabelled(asyncio.Handle):
        __slots__ = ()

    loop = ErlangEventLoop()
    held: list[asyncio.Handle] = []

    async def main() -> None:
        handle = loop.call_soon(lambda: None)
        handle.__class__ = Relabelled  # same layout, another GC class
        held.append(handle)

    gc.disable()
    try:
        loop.run_until_complete(main())
        assert gc.is_tracked(held[0])  # it left the loop: under the GC again
    finally:
        gc.enable()
        loop.close()


# -- TimerHandle.cancel, native --


def test_timer_cancel_is_native_and_does_what_asyncio_s_does(loop: ErlangEventLoop) -> None:
    ran: list[str] = []
    payload = [1, 2, 3]
    handle = loop.call_later(0.001, ran.append, payload)
    assert type(handle).cancel is not asyncio.TimerHandle.cancel
    assert loop._runner is not None and loop._runner.scheduled()[0] == 1
    assert handle.cancel() is None
    assert handle.cancelled() and handle._cancelled is True
    assert loop._runner.scheduled()[0] == 0
    if loop.get_debug():
        # asyncio's Handle.cancel recorded the repr of the cancelled call.
        assert handle._repr is not None and "cancelled" in handle._repr
    else:
        assert handle._callback is None and handle._args is None
    handle.cancel()  # twice: nothing
    keep = loop.call_later(0.002, ran.append, "kept")
    loop.run_until_complete(asyncio.sleep(0.02))
    assert ran == ["kept"]
    keep.cancel()  # after firing: nothing, no error
    assert keep.cancelled()


def test_timer_cancel_refuses_other_objects(loop: ErlangEventLoop) -> None:
    handle = loop.call_later(10, lambda: None)
    with pytest.raises(TypeError):
        type(handle).cancel(asyncio.Handle(lambda: None, (), loop))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        handle.cancel(1)  # type: ignore[call-arg]
    handle.cancel()


@pytest.mark.parametrize("patched", [asyncio.TimerHandle, asyncio.Handle])
def test_a_patched_timer_handle_cancel_is_called(
    loop: ErlangEventLoop, patched: type[asyncio.Handle]
) -> None:
    calls: list[asyncio.Handle] = []
    original = patched.cancel

    def counting_cancel(self: asyncio.Handle) -> None:
        calls.append(self)
        original(self)

    # A cancel first: the native one remembers the classes unchanged.
    loop.call_later(10, lambda: None).cancel()
    handle = loop.call_later(10, lambda: None)
    patched.cancel = counting_cancel  # type: ignore[method-assign]
    try:
        handle.cancel()
    finally:
        patched.cancel = original  # type: ignore[method-assign]
    assert calls == [handle] and handle.cancelled()
    assert loop._runner is not None and loop._runner.scheduled()[0] == 0
    # Put back: native again, and the patch no longer called.
    loop.call_later(10, lambda: None).cancel()
    assert calls == [handle] and loop._runner.scheduled()[0] == 0


def test_a_loop_overriding_timer_handle_cancelled_is_told() -> None:
    told: list[asyncio.TimerHandle] = []

    class TellingLoop(ErlangEventLoop):
        def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
            told.append(handle)
            super()._timer_handle_cancelled(handle)

    loop = TellingLoop()
    try:
        handle = loop.call_later(10, lambda: None)
        handle.cancel()
        assert told == [handle] and handle.cancelled()
        assert loop._runner is not None and loop._runner.scheduled()[0] == 0
    finally:
        loop.close()


def test_timer_cancel_calls_the_runner_s_paths_without_asking_the_loop() -> None:
    # While the loop's `_timer_handle_cancelled` and `get_debug` are its
    # runner's, a cancel calls the runner directly: no look-up on the loop.
    asked: list[str] = []

    class AskedLoop(ErlangEventLoop):
        def __getattribute__(self, name: str) -> Any:
            if name in ("_timer_handle_cancelled", "get_debug"):
                asked.append(name)
            return super().__getattribute__(name)

    loop = AskedLoop()
    try:
        assert loop._runner is not None
        pending = loop.call_later(10, print, "never")
        fired = loop.call_later(0, lambda: None)
        loop.run_until_complete(asyncio.sleep(0.01))
        asked.clear()
        pending.cancel()
        fired.cancel()
        assert asked == []
        assert pending.cancelled() and fired.cancelled()
        assert pending._callback is None and pending._args is None
        assert loop._runner.scheduled()[0] == 0
    finally:
        loop.close()


def test_timer_cancel_honours_paths_replaced_on_the_loop() -> None:
    told: list[asyncio.TimerHandle] = []
    loop = ErlangEventLoop()
    try:
        runner = loop._runner
        assert runner is not None
        native_cancelled = vars(loop)["_timer_handle_cancelled"]

        def telling(handle: asyncio.TimerHandle) -> None:
            told.append(handle)
            native_cancelled(handle)

        loop._timer_handle_cancelled = telling  # type: ignore[method-assign]
        handle = loop.call_later(10, lambda: None)
        handle.cancel()
        assert told == [handle] and runner.scheduled()[0] == 0
        loop._timer_handle_cancelled = native_cancelled  # type: ignore[method-assign]
        loop.get_debug = lambda: True  # type: ignore[method-assign]
        handle = loop.call_later(10, lambda: None)
        handle.cancel()
        # Debug mode as the loop now says: asyncio records the repr.
        assert handle._repr is not None and "cancelled" in handle._repr
        assert told == [told[0]] and runner.scheduled()[0] == 0
    finally:
        loop.close()


def test_an_error_in_the_loop_s_bookkeeping_propagates_from_cancel() -> None:
    class FailingLoop(ErlangEventLoop):
        def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
            raise LookupError("bookkeeping")

    loop = FailingLoop()
    try:
        handle = loop.call_later(10, lambda: None)
        with pytest.raises(LookupError, match="bookkeeping"):
            handle.cancel()
        # As with asyncio's Python cancel: the handle is not marked cancelled.
        assert not handle.cancelled()
    finally:
        loop.close()


def test_cancel_marks_cancelled_before_asking_get_debug() -> None:
    class FailingLoop(ErlangEventLoop):
        failing = False

        def get_debug(self) -> bool:
            if self.failing:
                raise ValueError("get_debug")
            return False

    loop = FailingLoop()
    try:
        handle = loop.call_later(10, lambda: None)
        loop.failing = True
        with pytest.raises(ValueError):
            handle.cancel()
        loop.failing = False
        # asyncio's Handle.cancel sets _cancelled before it asks get_debug.
        assert handle.cancelled()
    finally:
        loop.close()


PATCHED_EARLY = """
import asyncio.events
CALLS = []
_stock_cancel = asyncio.events.TimerHandle.cancel
_stock_run = asyncio.events.Handle._run
def traced_cancel(self):
    CALLS.append("cancel")
    _stock_cancel(self)
def traced_run(self):
    CALLS.append("run")
    _stock_run(self)
asyncio.events.TimerHandle.cancel = traced_cancel
asyncio.events.Handle._run = traced_run
"""

CHECK_PATCHED_EARLY = """
import asyncio, sitecustomize
from erlang_loop import ErlangEventLoop
loop = ErlangEventLoop()
loop.call_later(10, print).cancel()
loop.run_until_complete(asyncio.sleep(0))
loop.close()
print(sorted(set(sitecustomize.CALLS)))
"""


def test_methods_patched_before_the_loop_was_imported_are_honoured(tmp_path: Path) -> None:
    """Tracers patch asyncio from sitecustomize, before erlang_loop exists:
    their TimerHandle.cancel and Handle._run must still be called."""
    (tmp_path / "sitecustomize.py").write_text(PATCHED_EARLY)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [CLI, "-c", CHECK_PATCHED_EARLY],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['cancel', 'run']"


# -- asyncio.sleep's timer callback, native --


def _stock_and_copy() -> list[Any]:
    """asyncio's _set_result_unless_cancelled (resolved natively) and a copy
    of it that is not the same function (run as any callback)."""
    import asyncio.futures as futures
    import types

    stock = futures._set_result_unless_cancelled
    return [stock, types.FunctionType(stock.__code__, stock.__globals__, stock.__name__)]


@pytest.mark.parametrize("which", [0, 1], ids=["native", "python"])
def test_a_sleep_timer_resolves_its_future_unless_cancelled(
    loop: ErlangEventLoop, which: int
) -> None:
    callback = _stock_and_copy()[which]
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    pending, cancelled, done = (loop.create_future() for _ in range(3))
    cancelled.cancel()
    done.set_result("first")
    for future in (pending, cancelled, done):
        loop.call_later(0.001, callback, future, "slept")
    loop.run_until_complete(asyncio.sleep(0.02))
    assert pending.result() == "slept"
    assert cancelled.cancelled()
    assert done.result() == "first"
    # Setting a done future's result fails: reported as asyncio reports it.
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], asyncio.InvalidStateError)
    assert reported[0]["message"].startswith("Exception in callback _set_result_unless_cancelled(")


def test_a_sleep_timer_of_a_python_future_runs_the_python_callback(
    loop: ErlangEventLoop,
) -> None:
    class TracingFuture(asyncio.Future):  # type: ignore[type-arg]
        seen: list[Any] = []

        def set_result(self, result: Any) -> None:
            TracingFuture.seen.append(contextvars.copy_context().get(_VAR, None))
            super().set_result(result)

    _VAR.set("outer")
    future = TracingFuture(loop=loop)
    context = contextvars.copy_context()
    context.run(_VAR.set, "timer's")
    loop.call_later(0.001, _stock_and_copy()[0], future, 1, context=context)
    loop.run_until_complete(future)
    # Run in the handle's context, as Handle._run does.
    assert TracingFuture.seen == ["timer's"]


_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("_VAR", default="outer")


@pytest.mark.parametrize("which", [0, 1], ids=["native", "python"])
def test_a_sleep_timer_in_a_busy_context_is_reported(
    loop: ErlangEventLoop, which: int, caplog: pytest.LogCaptureFixture
) -> None:
    callback = _stock_and_copy()[which]
    reported: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
    future = loop.create_future()
    context = contextvars.copy_context()
    loop.call_soon(callback, future, "slept", context=context)
    # The loop runs inside that context: Handle._run cannot enter it again.
    context.run(run_soon, loop)
    assert not future.done()
    assert_busy_context_reported(reported, caplog)


@pytest.mark.parametrize("debug", [False, True], ids=["native", "debug"])
def test_the_future_s_loop_call_soon_runs_in_the_timer_s_context(debug: bool) -> None:
    seen: list[str] = []

    class SeeingLoop(ErlangEventLoop):
        def call_soon(self, *args: Any, **kwargs: Any) -> asyncio.Handle:
            seen.append(_VAR.get())
            return super().call_soon(*args, **kwargs)

    loop = SeeingLoop()
    loop.set_debug(debug)

    async def main() -> None:
        _VAR.set("task")
        seen.clear()
        await asyncio.sleep(0.001)  # the timer's context: a copy of the task's

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    # The call_soon that set_result makes (the task's wake-up) runs in the
    # timer handle's context, as under asyncio's Handle._run.
    assert seen and seen[0] == "task", seen


def test_native_methods_are_only_made_for_strict_subclasses() -> None:
    """On asyncio's own class a native method falling back to asyncio's
    would call itself; on an unrelated class its slots mean nothing."""
    import _erlang_loop
    from asyncio import selector_events

    for make, base, names in [
        (_erlang_loop.timer_handle_methods, asyncio.TimerHandle, {"cancel"}),
        (
            _erlang_loop.socket_transport_methods,
            selector_events._SelectorSocketTransport,
            {"_read_ready", "_read_ready__data_received", "write", "is_closing"},
        ),
        (
            _erlang_loop.datagram_transport_methods,
            selector_events._SelectorDatagramTransport,
            {"_read_ready", "sendto"},
        ),
    ]:
        for wrong in (base, int, asyncio.Handle):
            with pytest.raises(TypeError):
                make(wrong)
        assert set(make(type("Sub", (base,), {"__slots__": ()}))) == names


def test_timer_handles_keep_their_key_and_when_inline(loop: ErlangEventLoop) -> None:
    import sys

    def noop() -> None:
        pass

    before = loop.time()
    timer = loop.call_later(3600.0, noop)
    assert loop.call_later(3600, noop).when() == pytest.approx(timer.when(), abs=1)
    # No int key and no float when hang off the handle: both live in it.
    referents = gc.get_referents(timer)
    assert not [r for r in referents if type(r) in (int, float)], referents
    stock = asyncio.TimerHandle(1.0, noop, (), loop)
    assert sys.getsizeof(timer) == sys.getsizeof(stock) + 16
    assert type(timer.when()) is float and before + 3600 <= timer.when() <= loop.time() + 3600
    assert loop.call_later(float("inf"), noop).when() == float("inf")
    assert isinstance(timer._key, int) and timer._key > 0
    assert timer < loop.call_later(3601, noop)  # asyncio's comparisons read `_when`
    timer._when = 7
    assert timer.when() == 7 and type(timer.when()) is int
    timer._when = 2.5
    assert timer.when() == 2.5 and type(timer.when()) is float
    timer._when = "soon"  # asyncio's slot takes anything; so does ours
    assert timer.when() == "soon"
    with pytest.raises(TypeError):
        del timer._when
    with pytest.raises(TypeError):
        del timer._key
    with pytest.raises(TypeError):
        timer._key = "key"
    with pytest.raises(OverflowError):
        timer._key = -1
    timer._key = None
    assert timer._key is None
    loop.close()


@pytest.mark.parametrize("how", ["fired", "cancelled", "closed", "sleep"])
def test_the_wheel_releases_every_object_it_held(how: str) -> None:
    import erlang_asyncio

    def futures() -> int:
        return sum(isinstance(o, asyncio.Future) for o in gc.get_objects())

    loop = ErlangEventLoop()
    gc.collect()
    before = futures()
    refs: list[weakref.ref[Any]] = []
    if how == "sleep":

        async def sleepers() -> None:
            await asyncio.gather(*(erlang_asyncio.sleep(0.001) for _ in range(100)))

        loop.run_until_complete(sleepers())
    else:
        delay = 0 if how == "fired" else 3600
        timers = [loop.call_later(delay, id, None) for _ in range(100)]
        refs = [weakref.ref(timer) for timer in timers]
        if how == "fired":
            loop.run_until_complete(asyncio.sleep(0.01))
        elif how == "cancelled":
            for timer in timers:
                timer.cancel()
            del timer
        del timers
    loop.close()
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []
    assert futures() == before


@pytest.mark.parametrize("cancel", ["TimerHandle.cancel", "Handle.cancel"])
def test_a_timer_cancelled_after_it_fired_but_before_the_loop_took_it(cancel: str) -> None:
    loop = ErlangEventLoop()
    ran: list[int] = []
    holder = _Holder()
    holder.handle = loop.call_at(0, ran.append, 1)  # due: the Erlang tick fires it
    deadline = time.monotonic() + 10
    while loop._native.stats()["pending"] == 0:
        assert time.monotonic() < deadline, "the tick never fired the timer"
        time.sleep(0.001)
    timer = holder.handle
    if cancel == "Handle.cancel":  # bypasses the timer's own bookkeeping
        asyncio.Handle.cancel(timer)
    else:
        timer.cancel()
    ref = weakref.ref(timer)
    del holder.handle
    loop.run_until_complete(asyncio.sleep(0))
    assert ran == [] and not timer._scheduled
    del timer
    assert ref() is None
    assert loop._runner.scheduled() == (0, 0)
    loop.close()


def test_a_copied_timer_handle_is_asyncio_s_copy_and_not_scheduled(loop: ErlangEventLoop) -> None:
    import copy

    ran: list[int] = []
    timer = loop.call_later(0.01, ran.append, 1)
    twin = copy.copy(timer)
    assert type(twin) is type(timer) and twin._key is None
    assert (twin.when(), twin._callback, twin._args, twin._loop, twin._context) == (
        timer.when(),
        timer._callback,
        timer._args,
        timer._loop,
        timer._context,
    )
    twin.cancel()  # not the original's timer
    assert not timer.cancelled()
    loop.run_until_complete(asyncio.sleep(0.05))
    assert ran == [1]
    loop.close()


def test_a_native_loop_has_one_runner() -> None:
    import _erlang_loop
    from asyncio import events

    from erlang_loop._loop import _ErlangTimerHandle

    loop = ErlangEventLoop()
    with pytest.raises(RuntimeError, match="already has a LoopRunner"):
        _erlang_loop.LoopRunner(loop._native, loop, events.Handle, _ErlangTimerHandle, {})
    ran: list[int] = []
    loop.call_later(0.001, ran.append, 1)
    loop.run_until_complete(asyncio.sleep(0.02))
    assert ran == [1]
    loop.close()


FIRST_USE_WITH_A_FINALIZER_THAT_COMES_BACK = """
import gc, sys
from erlang_loop import ErlangEventLoop

loop = ErlangEventLoop()
first_use, threshold = sys.argv[1], int(sys.argv[2])

class Resource:
    def __del__(self):
        loop.call_later(0, print).cancel()
        loop.create_future().cancel()

gc.disable()
gc.collect()
resource = Resource()
resource.cycle = resource
del resource
# A collection, and the finalizer, somewhere in the process's first use.
gc.set_threshold(threshold)
gc.enable()
if first_use == "create_future":
    loop.create_future()
else:
    loop.call_later(3600, print)
gc.set_threshold(700)
loop.close()
print("survived")
"""


@pytest.mark.parametrize("first_use", ["call_later", "create_future"])
def test_a_finalizer_coming_back_during_a_first_use_does_not_hang(first_use: str) -> None:
    # What the first timer (the context layout check) and the first future
    # (asyncio's class looked up) of a process set up allocates: a
    # finalizer run there that comes back for the same must not wait for
    # that set-up. A fresh node for each threshold (the set-up is once
    # a process); the thresholds put the collection at each allocation.
    for threshold in range(2, 11):
        done = subprocess.run(
            [CLI, "-c", FIRST_USE_WITH_A_FINALIZER_THAT_COMES_BACK, first_use, str(threshold)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONASYNCIODEBUG": ""},
        )
        assert done.returncode == 0, (threshold, done.returncode, done.stderr[-2000:])
        assert done.stdout.strip().splitlines()[-1] == "survived", threshold


# -- the callbacks a sleep's future schedules as the runner resolves it --


def _fire_one_sleep(loop: ErlangEventLoop) -> asyncio.Future[Any]:
    """A native sleep future (erlang_asyncio's) due at once, fired into the
    ready queue and resolved there: its callbacks are then queued."""
    _key, future = loop._sleep_future(0)
    return future


def test_a_resolved_sleep_s_callbacks_run_in_their_contexts_without_handles() -> None:
    loop = ErlangEventLoop()  # native paths: not in debug mode
    try:
        _callbacks_run_in_their_contexts_without_handles(loop)
    finally:
        loop.close()


def _callbacks_run_in_their_contexts_without_handles(loop: ErlangEventLoop) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="none")
    seen: list[tuple[str, str]] = []

    def record(_future: asyncio.Future[Any], name: str) -> None:
        seen.append((name, var.get()))

    future = _fire_one_sleep(loop)
    for name in ("a", "b"):
        context = contextvars.copy_context()
        context.run(var.set, name)
        future.add_done_callback(functools.partial(record, name=name), context=context)

    def nothing(_future: asyncio.Future[Any]) -> None:
        pass

    for _ in range(200):
        future.add_done_callback(nothing)
    loop._stopping = True  # one iteration, no wait
    gc.disable()
    try:
        # What 202 callbacks scheduled with handles cost the GC's count...
        before = gc.get_count()[0]
        context = contextvars.copy_context()
        for _ in range(202):
            loop.call_soon(nothing, future, context=context)
        with_handles = gc.get_count()[0] - before
        loop._ready.clear()
        # ... and what the sleep's 202 cost: it fires, is resolved in its
        # turn and its callbacks are queued, without a handle each.
        before = gc.get_count()[0]
        loop._run_once()
        resolved = gc.get_count()[0] - before
    finally:
        gc.enable()
    loop._run_once()  # they run
    loop._stopping = False
    assert seen == [("a", "a"), ("b", "b")]
    assert resolved + 150 < with_handles, (resolved, with_handles)


def test_a_failing_callback_of_a_resolved_sleep_is_reported_with_its_handle(
    loop: ErlangEventLoop,
) -> None:
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    def fails(future: asyncio.Future[Any]) -> None:
        raise ValueError("from a done callback")

    async def main() -> None:
        future = _fire_one_sleep(loop)
        future.add_done_callback(fails)
        await future
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert len(reported) == 1, reported
    context = reported[0]
    assert isinstance(context["exception"], ValueError)
    handle = context["handle"]
    assert type(handle) is asyncio.Handle
    assert handle._callback is fails and len(handle._args) == 1
    assert context["message"].startswith("Exception in callback")


def test_an_exit_from_a_callback_of_a_resolved_sleep_propagates(loop: ErlangEventLoop) -> None:
    def exits(future: asyncio.Future[Any]) -> None:
        raise SystemExit(7)

    async def main() -> None:
        _fire_one_sleep(loop).add_done_callback(exits)
        await asyncio.sleep(3600)

    with pytest.raises(SystemExit):
        loop.run_until_complete(main())


def test_the_ready_queue_gives_a_handle_for_a_resolved_sleep_s_callback(
    loop: ErlangEventLoop,
) -> None:
    """`_ready.popleft()` (asyncio's own dispatch, tests that inspect the
    queue) gets the Handle the callback would have had."""
    done: list[object] = []
    future = _fire_one_sleep(loop)
    future.add_done_callback(done.append)
    loop._stopping = True  # one iteration, no wait: fire, then resolve
    loop._run_once()  # the sleep fires and is resolved: the callback is queued
    handles = [loop._ready.popleft() for _ in range(len(loop._ready))]
    loop._stopping = False
    ours = [h for h in handles if getattr(h, "_callback", None) == done.append]
    assert len(ours) == 1 and type(ours[0]) is asyncio.Handle, handles
    assert ours[0]._args == (future,)
    ours[0]._run()
    assert done == [future]


def test_a_patched_handle_run_sees_a_resolved_sleep_s_callbacks(
    loop: ErlangEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profiler that wraps Handle._run still sees every callback run."""
    ran: list[object] = []
    stock = asyncio.Handle._run

    def traced(self: asyncio.Handle) -> None:
        ran.append(self._callback)
        stock(self)

    monkeypatch.setattr(asyncio.Handle, "_run", traced)
    marker: list[object] = []

    async def main() -> None:
        future = _fire_one_sleep(loop)
        future.add_done_callback(marker.append)
        await future
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert marker and marker.append in ran


def test_call_soon_inside_a_future_subclass_s_set_result_gets_a_handle() -> None:
    """A loop whose futures are a Python subclass: the runner resolving its
    sleep future runs their Python `set_result`, whose `call_soon` gets its
    handle (only a C Future's own wake-ups go without one)."""
    handles: list[object] = []

    class NotifyingFuture(asyncio.Future[Any]):
        def set_result(self, result: Any) -> None:
            super().set_result(result)
            handle = self.get_loop().call_soon(
                lambda _fut: None, self, context=contextvars.copy_context()
            )
            handles.append(handle)

    class Loop(ErlangEventLoop):
        def create_future(self) -> asyncio.Future[Any]:
            return NotifyingFuture(loop=self)

    async def main() -> None:
        await erlang_asyncio.sleep(0.001)

    loop = Loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert handles and all(type(h) is asyncio.Handle for h in handles), handles


def test_call_soon_takes_its_callback_by_keyword(loop: ErlangEventLoop) -> None:
    ran: list[str] = []
    handle = loop.call_soon(callback=ran.append, context=None)
    assert type(handle) is asyncio.Handle
    with pytest.raises(TypeError, match="multiple values for argument 'callback'"):
        loop.call_soon(print, callback=print)
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        loop.call_soon()
    with pytest.raises(TypeError, match="unexpected keyword argument 'when'"):
        loop.call_soon(print, when=1)
    handle.cancel()
    loop.call_soon(callback=functools.partial(ran.append, "ran"), context=None)
    run_soon(loop)
    assert ran == ["ran"]


def test_a_call_soon_kept_from_before_debug_mode_does_its_checks() -> None:
    """``loop.call_soon`` looked up before ``set_debug(True)`` is the native
    one; called in debug mode it does asyncio's checks all the same (it
    skipped them: a call from another thread was accepted)."""
    loop = ErlangEventLoop()
    try:
        call_soon = loop.call_soon
        loop.set_debug(True)
        from_thread: list[str] = []

        def other_thread() -> None:
            try:
                call_soon(print)
                from_thread.append("accepted")
            except RuntimeError:
                from_thread.append("RuntimeError")
            loop.call_soon_threadsafe(loop.stop)

        loop.call_soon(lambda: threading.Thread(target=other_thread).start())
        loop.run_forever()
        assert from_thread == ["RuntimeError"]

        async def coroutine_function() -> None:
            pass

        with pytest.raises(TypeError):
            call_soon(coroutine_function)
        assert call_soon(print)._source_traceback
    finally:
        loop.close()


@pytest.mark.parametrize("debug", [False, True])
def test_finalizers_run_by_close_see_the_loop_closed(debug: bool) -> None:
    """A callback's argument finalized as ``close()`` drops the queue sees
    the loop closed, as the stdlib's finalizers do: ``call_soon`` and
    ``create_task`` raise and make nothing (``is_closed()`` was False, a
    Task was made and reported destroyed; in debug mode both were taken)."""
    loop = ErlangEventLoop()
    loop.set_debug(debug)
    reports: list[str] = []
    loop.set_exception_handler(lambda _loop, context: reports.append(context["message"]))
    seen: list[object] = []

    async def job() -> None:
        pass

    class OnDrop:
        def __del__(self) -> None:
            seen.append(loop.is_closed())
            schedules = (lambda _coro: loop.call_soon(print), loop.create_task)
            for schedule in schedules:
                coro = job()
                try:
                    schedule(coro)
                    seen.append("accepted")
                except RuntimeError as error:
                    seen.append(str(error))
                finally:
                    coro.close()

    loop.call_soon(lambda _keep: None, OnDrop())
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        loop.close()
        gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    assert seen == [True, "Event loop is closed", "Event loop is closed"]
    assert reports == []


class _CollectionAtEachAllocation:
    """A GC callback that runs ``action`` at the start of each collection
    and leaves the young generation over its threshold of 1, so that the
    next allocation of a GC object (native code's too, on 3.11) collects
    again. Enter to install, exit to remove."""

    # Live objects left per collection: frees in between count down.
    LEFT_OVER = 50

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.left_over: list[list[object]] = []
        self.inside = False

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if self.inside:
            return
        self.inside = True
        try:
            if phase == "start":
                self.action()
            else:
                self.left_over.extend([] for _ in range(self.LEFT_OVER))
        finally:
            self.inside = False

    def __enter__(self) -> None:
        self.threshold = gc.get_threshold()
        gc.callbacks.append(self)
        gc.set_threshold(1)

    def __exit__(self, *_exc: object) -> None:
        gc.set_threshold(*self.threshold)
        gc.callbacks.remove(self)
        self.left_over.clear()


def test_collections_as_close_lets_go_of_the_loop_find_the_runner_free() -> None:
    """A finalizer run by a collection anywhere in ``close()`` that calls a
    ``call_soon`` kept from before is told the loop is closed, as the
    stdlib's is (the runner made the loop's weak reference while it held
    itself borrowed: "a native method panicked", Already borrowed)."""
    loop = ErlangEventLoop()
    kept_call_soon = loop.call_soon
    answers: set[str] = set()

    def schedule_once_closed() -> None:
        if loop.is_closed():
            try:
                kept_call_soon(print)
                answers.add("accepted")
            except Exception as error:
                answers.add(str(error))

    with _CollectionAtEachAllocation(schedule_once_closed):
        loop.close()
    assert answers == {"Event loop is closed"}
