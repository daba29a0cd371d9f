"""A `call_soon` handle whose last reference the loop holds is freed by the
loop itself, as CPython's deallocation of `asyncio.Handle` would free it
(without its walk of the class's member table: a busy loop's ~6%). These
check what that deallocation does and the loop's must do too: weak
references cleared with their callbacks run, every slot released at once,
no reference to the class or the loop left behind, and any handle it must
not free (kept by the program, given a finalizer, of another class) left
to CPython."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from erlang_loop import ErlangEventLoop


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = ErlangEventLoop()
    # Freed by reference count, never by a collection that happened by.
    gc.disable()
    try:
        yield loop
    finally:
        gc.enable()
        loop.close()


def run_callbacks(loop: asyncio.AbstractEventLoop) -> None:
    """Runs what is queued, and the iteration after."""

    async def two_iterations() -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.run_until_complete(two_iterations())


class Finalized:
    """Says when it is finalized."""

    def __init__(self, events: list[str], name: str) -> None:
        self.events = events
        self.name = name

    def record(self, event: str) -> None:
        self.events.append(event)

    def __del__(self) -> None:
        self.events.append(self.name)


def test_weak_references_are_cleared_and_their_callbacks_run(
    loop: asyncio.AbstractEventLoop,
) -> None:
    events: list[str] = []
    handle = loop.call_soon(events.append, "ran")
    ref = weakref.ref(handle, lambda dead: events.append(f"cleared, alive: {dead() is not None}"))
    del handle
    run_callbacks(loop)
    assert ref() is None
    assert events == ["ran", "cleared, alive: False"]


def test_what_a_handle_held_goes_with_it(loop: asyncio.AbstractEventLoop) -> None:
    events: list[str] = []
    loop.call_soon(lambda _value: events.append("ran"), Finalized(events, "argument"))
    callback = Finalized(events, "callback")
    loop.call_soon(callback.record, "ran too")
    del callback
    run_callbacks(loop)
    assert events == ["ran", "argument", "ran too", "callback"]


def test_no_reference_to_the_class_or_the_loop_is_left(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A free path that forgot the class's reference (every instance holds
    one) or the loop's would leave one per callback."""
    done = loop.create_future()
    count = [0]

    def callback(*_args: object) -> None:
        count[0] += 1
        if count[0] < 20_000:
            loop.call_soon(callback, 1, "x")
        else:
            done.set_result(None)

    run_callbacks(loop)
    before = sys.getrefcount(asyncio.Handle), sys.getrefcount(loop)
    loop.call_soon(callback)
    loop.run_until_complete(done)
    run_callbacks(loop)
    assert (sys.getrefcount(asyncio.Handle), sys.getrefcount(loop)) == before


def test_a_handle_the_program_keeps_stays_whole(loop: asyncio.AbstractEventLoop) -> None:
    kept = loop.call_soon(len, "abc")
    run_callbacks(loop)
    assert not kept.cancelled()
    assert kept._callback is len
    assert kept._args == ("abc",)
    assert "len" in repr(kept)


@pytest.mark.parametrize("how", ["finalizer on asyncio.Handle", "class reassigned"])
def test_a_handle_with_a_finalizer_is_left_to_cpython(
    loop: asyncio.AbstractEventLoop, how: str
) -> None:
    events: list[str] = []

    def finalizer(handle: asyncio.Handle) -> None:
        # The loop's own handles (its tasks' steps) are finalized too.
        if handle._callback == events.append:  # type: ignore[attr-defined]
            events.append("finalized")

    if how == "finalizer on asyncio.Handle":
        asyncio.Handle.__del__ = finalizer  # type: ignore[attr-defined]
        try:
            loop.call_soon(events.append, "ran")
            run_callbacks(loop)
        finally:
            del asyncio.Handle.__del__  # type: ignore[attr-defined]
    else:

        class Finalizing(asyncio.Handle):
            __slots__ = ()
            __del__ = finalizer

        handle = loop.call_soon(events.append, "ran")
        handle.__class__ = Finalizing
        del handle
        run_callbacks(loop)
    assert events == ["ran", "finalized"]
