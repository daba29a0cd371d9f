"""Timers made without ``context=`` share one snapshot of the current
context (``_erlang_loop`` ``context_snapshot``) instead of a copy each, and
still run exactly as asyncio runs them: each callback in a context of its
own holding the variables of when it was scheduled.

Run with ``bin/erlang-python -m pytest tests/python/test_context_snapshots.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from erlang_loop import ErlangEventLoop

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


def context_slot(handle: asyncio.Handle) -> contextvars.Context:
    """What a handle's context slot holds, without reading ``_context``."""
    (context,) = (o for o in gc.get_referents(handle) if isinstance(o, contextvars.Context))
    return context


def recorder(seen: list[tuple[str, str]], name: str) -> Callable[[], None]:
    """A callback that records the variable it sees, then sets its own."""

    def callback() -> None:
        seen.append((name, var.get()))
        var.set(name)

    return callback


def test_timers_scheduled_in_the_same_variables_share_one_snapshot() -> None:
    loop = ErlangEventLoop()
    try:
        timers = [loop.call_later(3600, print) for _ in range(1000)]
        assert len({id(context_slot(timer)) for timer in timers}) == 1
        elsewhere = contextvars.copy_context()
        elsewhere.run(var.set, "elsewhere")
        other = elsewhere.run(loop.call_later, 3600, print)
        assert context_slot(other) is not context_slot(timers[0])
        # A context given is kept as given, never shared or copied.
        given = contextvars.copy_context()
        assert loop.call_later(3600, print, context=given)._context is given
    finally:
        loop.close()


@pytest.mark.parametrize("how", ["native", "patched _run", "_context read first"])
def test_each_callback_runs_in_a_context_of_its_own(
    loop: ErlangEventLoop, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    seen: list[tuple[str, str]] = []
    if how == "patched _run":
        stock_run = asyncio.Handle._run

        def traced_run(self: asyncio.Handle) -> None:
            stock_run(self)

        monkeypatch.setattr(asyncio.Handle, "_run", traced_run)

    async def main() -> list[asyncio.TimerHandle]:
        var.set("scheduled")
        timers = [loop.call_later(0, recorder(seen, name)) for name in "abc"]
        if how == "_context read first":
            contexts = [timer._context for timer in timers]
            assert len({id(context) for context in contexts}) == 3
        var.set("changed after")  # the snapshots do not see it
        done = loop.create_future()
        loop.call_later(0.001, done.set_result, None)
        await done
        return timers

    timers = loop.run_until_complete(main())
    assert seen == [("a", "scheduled"), ("b", "scheduled"), ("c", "scheduled")]
    # As in asyncio: what a callback set is in its handle's context.
    assert [timer._context[var] for timer in timers] == ["a", "b", "c"]


def test_a_context_read_from_a_pending_timer_is_its_own(loop: ErlangEventLoop) -> None:
    seen: list[tuple[str, str]] = []

    async def main() -> None:
        var.set("scheduled")
        first = loop.call_later(0, recorder(seen, "first"))
        second = loop.call_later(0, recorder(seen, "second"))
        context = first._context
        assert context is first._context and context is not second._context
        # Whoever runs code in it changes that timer's context only.
        context.run(var.set, "meddled")
        done = loop.create_future()
        loop.call_later(0.001, done.set_result, None)
        await done

    loop.run_until_complete(main())
    assert seen == [("first", "meddled"), ("second", "scheduled")]


def test_timers_in_other_variables_see_their_own(loop: ErlangEventLoop) -> None:
    seen: list[tuple[str, str]] = []

    async def main() -> None:
        for value in ["x", "y", "x"]:
            context = contextvars.copy_context()
            context.run(var.set, value)
            context.run(loop.call_later, 0, recorder(seen, value))
        loop.call_later(0, recorder(seen, "main"))
        done = loop.create_future()
        loop.call_later(0.001, done.set_result, None)
        await done

    loop.run_until_complete(main())
    assert seen == [("x", "x"), ("y", "y"), ("x", "x"), ("main", "unset")]


class _Value:
    """A value kept in a context variable, to see when it is freed."""


def test_the_loop_lets_go_of_its_last_snapshot_when_it_stops(loop: ErlangEventLoop) -> None:
    held: contextvars.ContextVar[_Value] = contextvars.ContextVar("held")

    async def main() -> weakref.ref[_Value]:
        value = _Value()
        held.set(value)
        loop.call_later(3600, print).cancel()
        return weakref.ref(value)

    ref = loop.run_until_complete(asyncio.ensure_future(main(), loop=loop))
    gc.collect()
    assert ref() is None


def test_a_key_with_the_top_bit_set_is_refused() -> None:
    loop = ErlangEventLoop()
    try:
        timer = loop.call_later(3600, print)
        key = timer._key  # type: ignore[attr-defined]
        assert key is not None and key < 2**63
        with pytest.raises(OverflowError, match="below 2\\*\\*63"):
            timer._key = 2**63  # type: ignore[attr-defined]
        # The key's word keeps the shared-context flag: both still right.
        timer._key = key  # type: ignore[attr-defined]
        assert timer._key == key  # type: ignore[attr-defined]
        assert timer._context is not context_slot(loop.call_later(3600, print))
        timer.cancel()
        assert timer.cancelled()
    finally:
        loop.close()


@pytest.mark.skipif(
    sys.version_info >= (3, 12),
    reason="since 3.12 the cyclic GC runs between bytecodes (gh-97922), never inside "
    "the allocation of call_later's native context copy",
)
def test_a_closed_loop_caches_no_snapshot() -> None:
    held: contextvars.ContextVar[_Value] = contextvars.ContextVar("held")
    loop = ErlangEventLoop()
    armed = [False]

    def close_in_a_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and armed[0]:
            armed[0] = False
            loop.close()

    def schedule() -> tuple[weakref.ref[_Value], str]:
        value = _Value()
        held.set(value)
        ref = weakref.ref(value)
        del value
        error = ""
        gc.collect()
        # The next allocation collects, and the collection closes the loop
        # while `call_later` copies the current context.
        gc.set_threshold(1)
        armed[0] = True
        try:
            loop.call_later(3600, print)
        except RuntimeError as closed:
            error = str(closed)
        gc.set_threshold(700)
        return ref, error

    loop.call_later(3600, print).cancel()
    gc.callbacks.append(close_in_a_collection)
    try:
        ref, error = contextvars.copy_context().run(schedule)
    finally:
        gc.set_threshold(700)
        gc.callbacks.remove(close_in_a_collection)
    assert loop.is_closed() and error == "Event loop is closed"
    gc.collect()
    assert ref() is None  # not kept by the closed loop


class _PythonCallSoon(ErlangEventLoop):
    """A loop whose ``call_soon`` is Python code: resolving a future runs it."""

    def call_soon(self, *args: Any, **kwargs: Any) -> asyncio.Handle:
        return super().call_soon(*args, **kwargs)


@pytest.mark.parametrize(
    ("loop_class", "shared"), [(ErlangEventLoop, True), (_PythonCallSoon, False)]
)
def test_sleep_timers_share_a_snapshot_while_call_soon_is_native(
    loop_class: type[ErlangEventLoop], shared: bool
) -> None:
    """``asyncio.sleep``'s timer (``_set_result_unless_cancelled``) runs no
    Python code when the loop's ``call_soon`` is the runner's: it shares the
    snapshot and fires without a copy. Otherwise ``call_soon`` runs in the
    timer's context: a copy of its own."""
    loop = loop_class()

    async def main() -> tuple[bool, str, bool, bool]:
        soon, later = loop.create_future(), loop.create_future()
        fires = loop.call_later(0.001, asyncio.futures._set_result_unless_cancelled, soon, "a")
        waits = loop.call_later(3600, asyncio.futures._set_result_unless_cancelled, later, "b")
        before = context_slot(fires) is context_slot(waits)
        result = await asyncio.wait_for(soon, 10)
        after = context_slot(fires) is context_slot(waits)
        own = fires._context is not context_slot(waits)  # read: its own now
        waits.cancel()
        return before, result, after, own

    try:
        assert loop.run_until_complete(main()) == (shared, "a", shared, True)
    finally:
        loop.close()


def test_sleeps_see_their_tasks_variables() -> None:
    async def sleeper(name: str) -> tuple[str, str]:
        var.set(name)
        await asyncio.sleep(0.001)
        seen = var.get()
        await asyncio.sleep(0.001)
        return seen, var.get()

    async def main() -> list[tuple[str, str]]:
        return await asyncio.gather(*(sleeper(str(n)) for n in range(20)))

    loop = ErlangEventLoop()
    try:
        assert loop.run_until_complete(main()) == [(str(n), str(n)) for n in range(20)]
    finally:
        loop.close()


def test_a_sleep_timer_for_another_loops_future_runs_in_its_context() -> None:
    """``set_result`` of a future calls its own loop's ``call_soon``: when
    that loop's is Python code, the timer resolves it in its context, even
    on a loop whose ``call_soon`` is the runner's."""
    seen: list[str] = []

    class Recording(ErlangEventLoop):
        def call_soon(self, *args: Any, **kwargs: Any) -> asyncio.Handle:
            seen.append(var.get())
            return super().call_soon(*args, **kwargs)

    loop, other = ErlangEventLoop(), Recording()

    def schedule(future: asyncio.Future[int]) -> asyncio.TimerHandle:
        var.set("timer")
        return loop.call_later(0.001, asyncio.futures._set_result_unless_cancelled, future, 1)

    async def main() -> int:
        future: asyncio.Future[int] = other.create_future()
        future.add_done_callback(lambda _: None)  # set_result calls call_soon
        contextvars.copy_context().run(schedule, future)
        resolved = loop.create_future()
        loop.call_later(0.05, resolved.set_result, None)
        await resolved
        return future.result()

    try:
        seen.clear()
        assert loop.run_until_complete(main()) == 1
        assert seen == ["timer"]
    finally:
        loop.close()
        other.close()
