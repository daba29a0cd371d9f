"""Two native shortcuts of ErlangEventLoop's iterations, and the asyncio
behaviour they must keep:

- inside ``run_forever``, the runner's ``_run_once`` runs the next
  iterations itself (up to a bound) instead of returning to
  ``run_forever``'s Python loop after each;
- a C Task scheduling its next step (``call_soon`` of a fresh
  ``TaskStepMethWrapper``, whose handle the Task drops) is queued without
  a Handle.

Run with ``bin/erlang-python -m pytest tests/python/test_native_iterations.py``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import subprocess
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from erlang_loop import ErlangEventLoop

# The node runner, for the test that needs a node of its own.
CLI = str(Path(__file__).resolve().parents[2] / "bin" / "erlang-python")


def _chain(loop: ErlangEventLoop, steps: int, at_step: dict[int, Any], ran: list[int]) -> None:
    """Schedules ``steps`` callbacks, each from the one before (one per
    iteration); ``at_step[i]()`` runs in the i-th."""

    def step(i: int) -> None:
        ran.append(i)
        if i in at_step:
            at_step[i]()
        if i < steps:
            loop.call_soon(step, i + 1)

    loop.call_soon(step, 1)


def test_stop_ends_run_forever_after_the_iteration_that_asked(loop: ErlangEventLoop) -> None:
    ran: list[int] = []
    _chain(loop, 20, {5: loop.stop}, ran)
    loop.run_forever()
    # The iteration that stopped ran whole; the callback it scheduled waits.
    assert ran == [1, 2, 3, 4, 5]
    assert len(loop._ready) == 1
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == [1, 2, 3, 4, 5, 6]


def test_debug_mode_switched_on_mid_run_takes_over_the_next_iteration(
    loop: ErlangEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """The iterations after ``set_debug(True)`` are asyncio's Python ones:
    the slow callback of the next iteration is reported as debug mode
    reports it."""
    loop.slow_callback_duration = 0.05
    ran: list[int] = []

    def slow() -> None:
        time.sleep(0.1)

    _chain(loop, 4, {2: lambda: loop.set_debug(True), 3: slow, 4: loop.stop}, ran)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    loop.set_debug(False)
    assert ran == [1, 2, 3, 4]
    assert any("Executing" in r.getMessage() and "took" in r.getMessage() for r in caplog.records)


def test_a_run_once_set_on_the_loop_mid_run_takes_over_the_next_iteration(
    loop: ErlangEventLoop,
) -> None:
    ran: list[int] = []
    calls: list[int] = []
    had_own = "_run_once" in vars(loop)
    original = loop._run_once

    def counting() -> None:
        calls.append(len(ran))
        original()

    _chain(loop, 4, {2: lambda: setattr(loop, "_run_once", counting), 4: loop.stop}, ran)
    try:
        loop.run_forever()
    finally:
        if had_own:
            vars(loop)["_run_once"] = original
        else:
            del vars(loop)["_run_once"]
    assert ran == [1, 2, 3, 4]
    assert calls == [2, 3], calls  # the iterations that ran steps 3 and 4


def test_a_nested_run_once_runs_one_iteration(loop: ErlangEventLoop) -> None:
    seen: list[str] = []

    def later() -> None:
        seen.append("later")

    def inner() -> None:
        seen.append("inner")
        loop.call_soon(later)

    def outer() -> None:
        loop.call_soon(inner)
        loop._run_once()  # runs `inner` only, as asyncio's Python loop would
        seen.append("outer done")
        loop.call_soon(loop.stop)

    loop.call_soon(outer)
    loop.run_forever()
    assert seen[:2] == ["inner", "outer done"]
    assert "later" in seen


BUSY_WITH_NATIVE_CALLBACKS = """
import functools, threading, time
from erlang_loop import ErlangEventLoop

loop = ErlangEventLoop()
again = functools.partial(print)
again.__setstate__((loop.call_soon, (again,), {}, None))
loop.call_soon(again)

def stop_later():
    time.sleep(0.05)  # the loop is busy by then: the GIL must come back
    loop.call_soon_threadsafe(loop.stop)

stopper = threading.Thread(target=stop_later)
loop.call_soon(stopper.start)
loop.run_forever()
stopper.join()
print("stopped")
"""


def test_a_loop_busy_with_native_callbacks_lets_other_threads_run() -> None:
    """A callback that only reschedules itself, all in C (a partial of
    ``call_soon`` holding itself), runs no bytecode: the iterations must
    still give the GIL to a thread that waits for it, here to stop the
    loop. In a node of its own: a loop that kept the GIL would starve the
    suite's timeout thread too."""
    done = subprocess.run(
        [CLI, "-c", BUSY_WITH_NATIVE_CALLBACKS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "stopped", done


def test_a_task_s_steps_run_in_the_task_s_context(loop: ErlangEventLoop) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")
    seen: list[str] = []

    async def task(name: str) -> None:
        var.set(name)
        for _ in range(3):
            await asyncio.sleep(0)
            seen.append(f"{name}={var.get()}")

    async def main() -> None:
        await asyncio.gather(task("a"), task("b"))

    loop.run_until_complete(main())
    assert sorted(seen) == sorted(["a=a"] * 3 + ["b=b"] * 3)
    assert var.get() == "outside"


def _stepped_once(loop: ErlangEventLoop, rounds: int, steps: list[int]) -> asyncio.Task[None]:
    """A task of ``rounds`` steps (each appends its number to ``steps``)
    that ran its first and waits in the ready queue for its next."""

    async def stepper() -> None:
        for i in range(rounds):
            steps.append(i)
            await asyncio.sleep(0)

    task = loop.create_task(stepper())
    loop.call_soon(loop.stop)
    loop.run_forever()
    return task


def test_the_ready_queue_gives_a_handle_for_a_task_s_next_step(loop: ErlangEventLoop) -> None:
    """``_ready.popleft()`` (asyncio's own dispatch, tests that look at the
    queue) gets the Handle the step would have had; running it goes on
    with the task."""
    steps: list[int] = []
    task = _stepped_once(loop, 3, steps)
    assert steps == [0]
    handles = [loop._ready.popleft() for _ in range(len(loop._ready))]
    assert len(handles) == 1, handles
    handle = handles[0]
    assert type(handle) is asyncio.Handle
    assert type(handle._callback).__name__ == "TaskStepMethWrapper"
    assert handle._args == ()
    assert isinstance(handle._context, contextvars.Context)
    handle._run()
    assert steps == [0, 1]
    loop.run_until_complete(task)
    assert steps == [0, 1, 2]


def test_a_task_step_rescheduled_by_python_code_gets_a_handle(loop: ErlangEventLoop) -> None:
    """Python code that took a step from the queue holds it as it calls:
    its ``call_soon`` returns the Handle, which runs the step."""
    steps: list[int] = []
    task = _stepped_once(loop, 2, steps)
    queued = loop._ready.popleft()
    callback, context = queued._callback, queued._context
    del queued
    handle = loop.call_soon(callback, context=context)
    del callback
    assert type(handle) is asyncio.Handle
    assert handle._args == () and handle._context is context
    loop.run_until_complete(task)
    assert steps == [0, 1]


def test_a_task_step_passed_on_as_a_temporary_gets_a_handle(loop: ErlangEventLoop) -> None:
    """A step Python code takes out of a container and passes on at once has
    one reference, as a C Task's own has: it is still Python's call (no
    task is stepping, or another one), and gets its Handle."""
    steps: list[int] = []
    task = _stepped_once(loop, 3, steps)
    # Outside the loop's run: no task stepping.
    handles: list[object] = [
        loop.call_soon(loop._ready.popleft()._callback, context=contextvars.copy_context())
    ]
    parked: list[Any] = []

    async def other() -> None:
        # From another task's step.
        parked.append(loop._ready.popleft()._callback)
        handles.append(loop.call_soon(parked.pop(), context=contextvars.copy_context()))

    loop.run_until_complete(other())
    assert [type(h) for h in handles] == [asyncio.Handle, asyncio.Handle], handles
    loop.run_until_complete(task)
    assert steps == [0, 1, 2]


def test_a_patched_handle_run_sees_task_steps(
    loop: ErlangEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profiler wrapping ``Handle._run`` sees every step of a task."""
    seen: list[str] = []
    stock = asyncio.Handle._run

    def traced(self: asyncio.Handle) -> None:
        seen.append(type(self._callback).__name__)
        stock(self)

    monkeypatch.setattr(asyncio.Handle, "_run", traced)

    async def main() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert seen.count("TaskStepMethWrapper") >= 4, seen


class _Box:
    def __init__(self, loop: ErlangEventLoop) -> None:
        self.handle = loop.call_soon(self.touch)

    def touch(self) -> None:
        pass


def test_a_cycle_through_a_queued_callback_is_collected_once_it_ran(
    loop: ErlangEventLoop,
) -> None:
    """While the loop runs the GC does not walk its ready queue (a look at
    each queued handle costs a cache miss per collection); what a queued
    callback holds in a cycle is collected once it ran."""

    async def main() -> None:
        box = _Box(loop)
        alive = weakref.ref(box)
        del box
        gc.collect()
        assert alive() is not None  # queued: kept
        await asyncio.sleep(0)  # it runs
        await asyncio.sleep(0)
        gc.collect()
        assert alive() is None

    loop.run_until_complete(main())
