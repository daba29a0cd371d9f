"""erlang_asyncio (asyncio's API, sleep straight into the wheel), the blocking
``py_event_loop._erlang_sleep``, and ``erlang.receive``/``erlang.self`` outside
a py_asyncio loop (inside one they are tested by erlang/test/py_asyncio_SUITE).

Run with ``bin/erlang-python -m pytest tests/python/test_erlang_asyncio.py``.
Timers never fire early, so lower bounds are exact; upper bounds are generous
(LESSONS 30), and concurrency is checked by order (every sleep of a gather
started before any ended), not by wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import math
import random
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

import erlang
import erlang_asyncio
import py_event_loop
from erlang_loop import ErlangEventLoop

T = TypeVar("T")

DEADLINE = 10.0
# Upper bound on how late a timer may be on a loaded 2-core machine.
LATE = 0.5


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Runs ``main()`` on a new ErlangEventLoop, bounded by DEADLINE."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), DEADLINE)

    return erlang_asyncio.run(bounded())


def live_timers() -> int:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ErlangEventLoop)
    return loop.stats()["live_timers"]


# ---------------------------------------------------------------- the API


def test_reexports_are_asyncios() -> None:
    for name in erlang_asyncio.__all__:
        if name in ("sleep", "run", "get_event_loop"):
            continue
        assert getattr(erlang_asyncio, name) is getattr(asyncio, name), name
    assert erlang_asyncio.TimeoutError is TimeoutError


def test_run_uses_erlang_event_loop() -> None:
    async def main() -> type:
        return type(asyncio.get_running_loop())

    assert run(main) is ErlangEventLoop


def test_get_event_loop_is_the_running_loop() -> None:
    async def main() -> bool:
        return erlang_asyncio.get_event_loop() is asyncio.get_running_loop()

    assert run(main)


# ---------------------------------------------------------------- sleep


def test_sleep_is_never_early() -> None:
    rng = random.Random(7)
    delays = [rng.choice([0.001, 0.002, 0.005]) + rng.random() * 0.02 for _ in range(60)]

    async def main() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        measured = []
        for delay in delays:
            start = loop.time()
            await erlang_asyncio.sleep(delay)
            measured.append((delay, loop.time() - start))
        return measured

    for delay, elapsed in run(main):
        assert elapsed >= delay, (delay, elapsed)
        assert elapsed < delay + LATE, (delay, elapsed)


def test_concurrent_sleeps_are_never_early() -> None:
    async def one(delay: float) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await erlang_asyncio.sleep(delay)
        return loop.time() - start

    delays = [0.001 * (i % 37 + 1) for i in range(500)]

    async def main() -> list[float]:
        return await asyncio.gather(*(one(d) for d in delays))

    for delay, elapsed in zip(delays, run(main), strict=True):
        assert delay <= elapsed < delay + LATE


def test_gather_of_three_50ms_sleeps_overlaps() -> None:
    """LESSONS 26: the three sleeps wait at once. Sleeps that blocked the
    loop would run one after another: each would start after the one
    before ended. Checked by order, not by a wall-clock bound."""
    starts: list[float] = []
    ends: list[float] = []

    async def one() -> None:
        starts.append(time.monotonic())
        await erlang_asyncio.sleep(0.05)
        ends.append(time.monotonic())

    async def main() -> None:
        await erlang_asyncio.gather(*(one() for _ in range(3)))

    run(main)
    assert max(starts) < min(ends), (starts, ends)
    assert all(end - start >= 0.05 for start, end in zip(starts, ends, strict=True))


def test_sleep_returns_its_result() -> None:
    sentinel = object()

    async def main() -> tuple[object, object, object]:
        return (
            await erlang_asyncio.sleep(0.001, sentinel),
            await erlang_asyncio.sleep(0, "zero"),
            await erlang_asyncio.sleep(0.001),
        )

    assert run(main) == (sentinel, "zero", None)


def test_sleep_uses_the_wheel_without_a_timer_handle() -> None:
    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, ErlangEventLoop)
        before = loop.stats()["timers_inserted"], *loop._runner.scheduled()
        task = asyncio.create_task(erlang_asyncio.sleep(5))
        await asyncio.sleep(0)
        during = loop.stats()["timers_inserted"], *loop._runner.scheduled()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        inserted, handles, sleepers = (d - b for d, b in zip(during, before, strict=True))
        return inserted, handles, sleepers

    inserted, handles, sleepers = run(main)
    assert (inserted, handles, sleepers) == (1, 0, 1)


def test_cancel_of_a_sleeping_task_removes_its_wheel_entry() -> None:
    async def main() -> tuple[int, int, int, bool]:
        base = live_timers()
        tasks = [asyncio.create_task(erlang_asyncio.sleep(3600)) for _ in range(10)]
        await asyncio.sleep(0)
        during = live_timers() - base
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        assert isinstance(loop, ErlangEventLoop)
        return (
            during,
            live_timers() - base,
            loop._runner.scheduled()[1],
            all(isinstance(r, asyncio.CancelledError) for r in results),
        )

    assert run(main) == (10, 0, 0, True)


def test_far_sleeps_wait_and_cancel_cleanly() -> None:
    async def main() -> list[tuple[bool, int, int]]:
        seen = []
        for delay in (math.inf, 1e300, 100 * 365 * 86400.0):
            base = live_timers()
            task = asyncio.create_task(erlang_asyncio.sleep(delay))
            await erlang_asyncio.sleep(0.02)
            during = live_timers() - base
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            seen.append((task.cancelled(), during, live_timers() - base))
        return seen

    assert run(main) == [(True, 1, 0)] * 3


def test_sleep_bad_and_odd_delays() -> None:
    async def main() -> float:
        with pytest.raises(ValueError):
            await erlang_asyncio.sleep(math.nan)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await erlang_asyncio.sleep(-1)
        await erlang_asyncio.sleep(0)
        return loop.time() - start

    assert run(main) < LATE


def test_sleep_falls_back_to_asyncio_on_other_loops() -> None:
    loop = asyncio.SelectorEventLoop()
    try:
        start = time.monotonic()
        result = loop.run_until_complete(erlang_asyncio.sleep(0.01, "plain"))
        assert result == "plain"
        assert time.monotonic() - start >= 0.01
    finally:
        loop.close()


# ------------------------------------------------- sleep, a native coroutine


def on_the_native_path(task: asyncio.Task[Any]) -> bool:
    """Whether the sleep ``task`` runs waits for a future of its own loop's
    runner (not ``_sleep_elsewhere``, the Python coroutine)."""
    awaited = task.get_coro().cr_await  # type: ignore[union-attr]
    return isinstance(awaited, asyncio.Future) and awaited.get_loop() is task.get_loop()


def sleepers() -> int:
    """Sleeps of the running loop waiting in its wheel."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ErlangEventLoop)
    assert loop._runner is not None
    return loop._runner.scheduled()[1]


def test_sleep_is_a_coroutine_asyncio_accepts() -> None:
    async def main() -> tuple[object, ...]:
        pending = erlang_asyncio.sleep(0.001, "r")
        checks = (
            asyncio.iscoroutine(pending),
            isinstance(pending, Coroutine),
            "created" in repr(pending),
        )
        task = asyncio.create_task(erlang_asyncio.sleep(0.001, "t"))
        return (*checks, await pending, await task, task.get_coro().__qualname__)

    assert run(main) == (True, True, True, "r", "t", "sleep")


def test_sleep_returns_tuples_and_exceptions_as_themselves() -> None:
    error = ValueError("a result, not an error")

    async def main() -> list[object]:
        return [
            await erlang_asyncio.sleep(0.001, (1, 2)),
            await erlang_asyncio.sleep(0.001, ()),
            await erlang_asyncio.sleep(0, (3,)),
            await erlang_asyncio.sleep(0.001, error),
            await erlang_asyncio.sleep(0.001, None),
        ]

    assert run(main) == [(1, 2), (), (3,), error, None]


def test_close_and_throw_of_a_waiting_sleep_take_its_entry_out() -> None:
    class Boom(Exception):
        pass

    async def main() -> tuple[object, ...]:
        closing = erlang_asyncio.sleep(3600)
        assert isinstance(closing.send(None), asyncio.Future)
        during = sleepers()
        closing.close()
        after_close = sleepers()
        throwing = erlang_asyncio.sleep(3600)
        closing_future = throwing.send(None)
        with pytest.raises(Boom, match="thrown"):
            throwing.throw(Boom("thrown"))
        after_throw = sleepers()
        with pytest.raises(Boom):
            erlang_asyncio.sleep(1).throw(Boom)  # a new one: raised at once
        with pytest.raises(RuntimeError, match="reuse"):
            throwing.send(None)
        return during, after_close, after_throw, closing_future.done()

    assert run(main) == (1, 0, 0, False)


def test_a_sleep_stepped_before_its_future_is_done_waits_on() -> None:
    async def main() -> tuple[bool, bool, object]:
        pending = erlang_asyncio.sleep(0.02, "done")
        first = pending.send(None)
        again = pending.send(None)  # too early: the same future again
        await asyncio.wait_for(asyncio.shield(first), DEADLINE)
        with pytest.raises(StopIteration) as stop:
            pending.send(None)
        return first is again, first._asyncio_future_blocking, stop.value.value

    assert run(main) == (True, True, "done")


def test_sleep_refuses_a_value_sent_before_it_starts() -> None:
    async def main() -> object:
        pending = erlang_asyncio.sleep(0.001, "ok")
        with pytest.raises(TypeError, match="non-None"):
            pending.send(1)
        return await pending

    assert run(main) == "ok"


def test_sleep_in_debug_mode_takes_the_python_path() -> None:
    async def main() -> tuple[object, int, bool, bool]:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        try:
            task = asyncio.create_task(erlang_asyncio.sleep(0.01, "debug"))
            await asyncio.sleep(0)
            waiting, native = sleepers(), on_the_native_path(task)
            result = await task
        finally:
            loop.set_debug(False)
        task = asyncio.create_task(erlang_asyncio.sleep(0.01))
        await asyncio.sleep(0)
        return result, waiting, native, on_the_native_path(task)

    # The Python path puts the same bare wheel entry.
    assert run(main) == ("debug", 1, False, True)


def test_a_refused_nested_run_leaves_the_running_loop_in_charge() -> None:
    """asyncio refuses to run a second loop inside a running one only once
    ``run_forever`` began; the thread's running runner must be the outer
    loop's again afterwards, or sleeps would go to the wrong loop."""

    async def main() -> tuple[bool, int, str]:
        inner = ErlangEventLoop()
        try:
            with pytest.raises(RuntimeError, match="another loop is running"):
                inner.run_forever()
        finally:
            inner.close()
        task = asyncio.create_task(erlang_asyncio.sleep(0.01, "outer"))
        await asyncio.sleep(0)
        return on_the_native_path(task), sleepers(), await task

    assert run(main) == (True, 1, "outer")


def test_run_inside_a_running_loop_is_refused_as_asyncio_run_refuses_it() -> None:
    """asyncio.run fails fast there, before making a loop. Entered first,
    the Runner made one whose clean-up (``shutdown_asyncgens``) then failed
    on the running loop too: a second RuntimeError hiding the first, and a
    "never awaited" warning for that coroutine."""

    async def main() -> list[str]:
        inner = asyncio.sleep(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(RuntimeError) as refused:
                erlang_asyncio.run(inner)
            inner.close()
            gc.collect()
        assert refused.value.__context__ is None
        assert str(refused.value) == "asyncio.run() cannot be called from a running event loop"
        return [str(warning.message) for warning in caught]

    assert run(main) == []


def test_loops_run_one_after_another_on_a_thread_get_their_own_sleeps() -> None:
    """The thread's remembered running loop (asked of asyncio without a
    system call while its answer stands) is never a loop that stopped."""

    async def main() -> tuple[bool, str]:
        task = asyncio.create_task(erlang_asyncio.sleep(0.005, "mine"))
        await asyncio.sleep(0)
        return on_the_native_path(task), await task

    for _ in range(3):
        assert run(main) == (True, "mine")
        plain = asyncio.SelectorEventLoop()
        try:
            assert plain.run_until_complete(erlang_asyncio.sleep(0.005, "plain")) == "plain"
        finally:
            plain.close()


def test_sleeps_on_loops_of_two_threads_go_to_their_own_loops() -> None:
    results: dict[str, tuple[bool, int, str]] = {}

    def in_thread(name: str) -> None:
        async def main() -> tuple[bool, int, str]:
            task = asyncio.create_task(erlang_asyncio.sleep(0.05, name))
            await asyncio.sleep(0)
            return on_the_native_path(task), sleepers(), await task

        results[name] = run(main)

    threads = [threading.Thread(target=in_thread, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert results == {"a": (True, 1, "a"), "b": (True, 1, "b")}


def test_sleep_is_a_coroutine_function_to_asyncio() -> None:
    assert asyncio.iscoroutinefunction(erlang_asyncio.sleep)


def test_a_loop_run_from_inside_a_running_one_gets_its_own_sleeps() -> None:
    """The bridge of synchronous code: asyncio's running loop set aside to
    run another loop to completion from inside a callback. The sleep goes to
    the loop asyncio says runs, not to the one whose callback this is."""

    async def main() -> object:
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        inner = asyncio.SelectorEventLoop()
        try:
            return inner.run_until_complete(erlang_asyncio.sleep(0.01, "inner"))
        finally:
            inner.close()
            asyncio.events._set_running_loop(outer)

    assert run(main) == "inner"


def test_methods_set_on_the_loop_are_honoured() -> None:
    """A ``call_soon`` or ``_sleep_future`` set on a loop (instrumentation)
    is called where the loop's own would be: an ``asyncio.sleep`` resolving
    its future calls that ``call_soon`` in the timer's context, and
    ``erlang_asyncio.sleep`` calls that ``_sleep_future``."""
    seen: list[tuple[str, str]] = []
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")

    async def main() -> list[tuple[str, str]]:
        loop = asyncio.get_running_loop()
        native_call_soon, native_sleep_future = loop.call_soon, loop._sleep_future  # type: ignore[attr-defined]
        sleeper_task: list[asyncio.Task[None]] = []

        def call_soon(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
            # The wake-up of the sleeping task, by its future's set_result.
            if getattr(callback, "__self__", None) in sleeper_task and args:
                seen.append(("wake-up", var.get()))
            return native_call_soon(callback, *args, **kwargs)

        def sleep_future(delay: float) -> Any:
            seen.append(("_sleep_future", var.get()))
            return native_sleep_future(delay)

        loop.call_soon = call_soon  # type: ignore[method-assign]
        loop._sleep_future = sleep_future  # type: ignore[attr-defined]

        async def sleeper() -> None:
            var.set("task")
            await asyncio.sleep(0.001)
            await erlang_asyncio.sleep(0.001)

        sleeper_task.append(asyncio.create_task(sleeper()))
        await sleeper_task[0]
        return seen

    # asyncio.sleep's timer runs in a copy of the task's context; the
    # erlang_asyncio.sleep future is resolved by the wheel, in none.
    assert run(main)[:2] == [("wake-up", "task"), ("_sleep_future", "task")]


def test_a_delay_whose_repr_closes_its_sleep_does_not_break_it() -> None:
    """``repr`` runs the delay's ``__repr__`` with the sleep not borrowed
    (a Rust borrow held across Python code would panic)."""

    class Delay(float):
        sleep: Any = None

        def __repr__(self) -> str:
            self.sleep.close()
            return "Delay()"

    delay = Delay(0.001)
    pending = erlang_asyncio.sleep(delay)
    delay.sleep = pending
    assert repr(pending) == "<erlang_asyncio.sleep(Delay()) created>"
    assert repr(pending).endswith(" done>")


def test_a_throw_of_no_exception_leaves_the_sleep_unstarted() -> None:
    async def main() -> object:
        pending = erlang_asyncio.sleep(0.001, "still")
        with pytest.raises(TypeError, match="exceptions must be"):
            pending.throw(1)  # type: ignore[arg-type]
        return await pending

    assert run(main) == "still"


# ---------------------------------------------------------------- high-level API


def test_wait_for_fast_and_slow() -> None:
    async def main() -> tuple[str, bool, int]:
        base = live_timers()
        fast = await erlang_asyncio.wait_for(erlang_asyncio.sleep(0.01, "fast"), 5)
        slow_timed_out = False
        try:
            await erlang_asyncio.wait_for(erlang_asyncio.sleep(3600), 0.05)
        except erlang_asyncio.TimeoutError:
            slow_timed_out = True
        return fast, slow_timed_out, live_timers() - base

    assert run(main) == ("fast", True, 0)


def test_timeout_fires_and_cancels_the_body() -> None:
    steps: list[str] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            async with erlang_asyncio.timeout(0.05):
                steps.append("started")
                try:
                    await erlang_asyncio.sleep(3600)
                    steps.append("slept through")
                except erlang_asyncio.CancelledError:
                    steps.append("cancelled")
                    raise
        elapsed = loop.time() - start
        await erlang_asyncio.sleep(0.01)  # anything left over would run now
        return elapsed

    elapsed = run(main)
    assert steps == ["started", "cancelled"]
    assert 0.05 <= elapsed < 0.05 + LATE


def test_create_task_from_a_running_coroutine() -> None:
    async def child(n: int) -> int:
        await erlang_asyncio.sleep(0.001 * n)
        return n * n

    async def main() -> list[int]:
        tasks = [erlang_asyncio.create_task(child(n)) for n in range(5)]
        inner = erlang_asyncio.ensure_future(child(7))
        return [await task for task in tasks] + [await inner]

    assert run(main) == [0, 1, 4, 9, 16, 49]


def test_wait_first_completed() -> None:
    async def main() -> tuple[list[str], int]:
        fast = erlang_asyncio.create_task(erlang_asyncio.sleep(0.01, "fast"))
        slow = erlang_asyncio.create_task(erlang_asyncio.sleep(3600, "slow"))
        done, pending = await erlang_asyncio.wait(
            {fast, slow}, return_when=erlang_asyncio.FIRST_COMPLETED
        )
        names = [task.result() for task in done]
        for task in pending:
            task.cancel()
        await erlang_asyncio.wait(pending, return_when=erlang_asyncio.ALL_COMPLETED)
        return names, len(pending)

    assert run(main) == (["fast"], 1)


def test_wait_first_exception() -> None:
    async def boom() -> None:
        await erlang_asyncio.sleep(0.01)
        raise ValueError("boom")

    async def main() -> tuple[int, int]:
        slow = erlang_asyncio.create_task(erlang_asyncio.sleep(3600))
        done, pending = await erlang_asyncio.wait(
            {erlang_asyncio.create_task(boom()), slow},
            return_when=erlang_asyncio.FIRST_EXCEPTION,
        )
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        return len(done), len(pending)

    assert run(main) == (1, 1)


def test_shield_keeps_the_inner_task_running() -> None:
    async def main() -> tuple[bool, str]:
        inner = erlang_asyncio.create_task(erlang_asyncio.sleep(0.05, "inner done"))

        async def outer_body() -> str:
            return await erlang_asyncio.shield(inner)

        outer = erlang_asyncio.create_task(outer_body())
        await erlang_asyncio.sleep(0.005)
        outer.cancel()
        outer_cancelled = False
        try:
            await outer
        except erlang_asyncio.CancelledError:
            outer_cancelled = True
        return outer_cancelled, await inner

    assert run(main) == (True, "inner done")


def test_get_running_loop_and_new_event_loop() -> None:
    loop = erlang_asyncio.new_event_loop()
    try:
        assert isinstance(loop, ErlangEventLoop)
        erlang_asyncio.set_event_loop(loop)
        assert erlang_asyncio.get_event_loop() is loop

        async def main() -> bool:
            return erlang_asyncio.get_running_loop() is loop

        assert loop.run_until_complete(main())
    finally:
        erlang_asyncio.set_event_loop(None)
        loop.close()


# ---------------------------------------------------------------- _erlang_sleep


def test_erlang_sleep_is_never_early() -> None:
    for ms in (1, 2, 5, 10, 0.5, 3.3):
        start = time.monotonic()
        py_event_loop._erlang_sleep(ms)
        elapsed = time.monotonic() - start
        assert ms / 1000 <= elapsed < ms / 1000 + LATE, (ms, elapsed)


def test_erlang_sleep_zero_returns_at_once() -> None:
    start = time.monotonic()
    for _ in range(100):
        py_event_loop._erlang_sleep(0)
    assert time.monotonic() - start < LATE


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, -math.inf])
def test_erlang_sleep_bad_arguments(bad: float) -> None:
    with pytest.raises(ValueError):
        py_event_loop._erlang_sleep(bad)


class _Counter:
    """A Python thread counting as fast as it can, stamping the time every
    thousand counts: where it ran, the GIL was free."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._count, daemon=True)

    def _count(self) -> None:
        count = 0
        while not self._stop.is_set():
            count += 1
            if count % 1000 == 0:
                self.stamps.append(time.monotonic())

    def __enter__(self) -> _Counter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)

    def ran_between(self, start: float, end: float) -> bool:
        return any(start < stamp < end for stamp in self.stamps)


def test_erlang_sleep_from_eight_threads() -> None:
    """Eight threads sleep at once, with the GIL free: checked by order (all
    were asleep together, and another thread counted meanwhile), not by a
    wall-clock bound."""
    lengths_ms = [200 + 40 * i for i in range(8)]  # 200..480 ms
    barrier = threading.Barrier(len(lengths_ms) + 1)
    slept: dict[int, tuple[float, float]] = {}
    errors: list[BaseException] = []

    def sleeper(ms: int) -> None:
        try:
            barrier.wait(DEADLINE)
            start = time.monotonic()
            py_event_loop._erlang_sleep(ms)
            slept[ms] = (start, time.monotonic())
        except BaseException as error:  # noqa: BLE001 - reported to the test
            errors.append(error)

    threads = [threading.Thread(target=sleeper, args=(ms,), daemon=True) for ms in lengths_ms]
    with _Counter() as counter:
        for thread in threads:
            thread.start()
        barrier.wait(DEADLINE)
        for thread in threads:
            thread.join(DEADLINE)

    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    for ms, (start, end) in slept.items():
        assert ms / 1000 <= end - start < ms / 1000 + 2 * LATE, (ms, slept)
    # Concurrent: each sleep started before any ended.
    all_asleep = max(start for start, _ in slept.values())
    first_awake = min(end for _, end in slept.values())
    assert all_asleep < first_awake, slept
    # The GIL was free: another Python thread ran while all eight slept.
    assert counter.ran_between(all_asleep, first_awake), (all_asleep, first_awake)


def test_erlang_sleep_lets_other_threads_run() -> None:
    """The sleep holds no GIL: another thread runs in the middle of it (50 ms
    in from either end, where the calls into and out of the sleep are not)."""
    with _Counter() as counter:
        start = time.monotonic()
        py_event_loop._erlang_sleep(300)
        end = time.monotonic()
    assert end - start >= 0.3
    assert counter.ran_between(start + 0.05, end - 0.05), (start, end, counter.stamps[-3:])


# ---------------------------------------------------------------- erlang.receive / self


def test_receive_and_self_outside_a_py_asyncio_loop() -> None:
    with pytest.raises(RuntimeError, match="py_asyncio"):
        erlang.self()

    async def main() -> None:
        with pytest.raises(RuntimeError, match="py_asyncio"):
            await erlang.receive(0.01)
        with pytest.raises(RuntimeError, match="py_asyncio"):
            erlang.self()

    run(main)
    # Not even a coroutine runner: still the same clear error.
    coroutine = erlang.receive()
    with pytest.raises(RuntimeError, match="py_asyncio"):
        coroutine.send(None)


def test_sleep_outside_a_running_loop_says_so() -> None:
    with pytest.raises(RuntimeError, match="no running event loop"):
        erlang_asyncio.sleep(0.01).send(None)


def test_a_finished_sleep_refuses_a_throw_as_a_coroutine_does() -> None:
    async def main() -> None:
        done = erlang_asyncio.sleep(0.001)
        await done
        with pytest.raises(RuntimeError, match="reuse"):
            done.throw(ValueError("late"))

    run(main)


def test_a_sleep_cancelled_on_another_loop_raises_cancelled() -> None:
    loop = asyncio.SelectorEventLoop()

    async def main() -> bool:
        task = asyncio.create_task(erlang_asyncio.sleep(3600))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return task.cancelled()
        return False

    try:
        assert loop.run_until_complete(asyncio.wait_for(main(), DEADLINE))
    finally:
        loop.close()


# ------------------------------------------- the iteration a sleeper wakes in


def _wake_order(sleep: Callable[..., Any]) -> list[str]:
    """What happens, in order, when a sleep and a later timer fall due in the
    same iteration (the loop thread blocked past both)."""

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        log: list[str] = []

        async def sleeper() -> None:
            await sleep(0.05)
            log.append("sleeper woke")

        task = loop.create_task(sleeper())
        await asyncio.sleep(0)  # the sleeper's timer is in the wheel now

        def timer() -> None:
            log.append("timer")
            loop.call_soon(log.append, "timer's call_soon")

        loop.call_later(0.05, timer)
        loop.call_soon(time.sleep, 0.2)  # both are due when the loop looks
        await task
        await asyncio.sleep(0.01)
        return log

    return run(main)


def test_a_sleeper_wakes_in_the_iteration_asyncio_sleep_would() -> None:
    """The sleep's future is resolved in its turn among the iteration's ready
    callbacks, as asyncio.sleep's `_set_result_unless_cancelled` handle is:
    its task then runs in the next iteration, after what the callbacks
    before it scheduled (not before the earlier timers even ran)."""
    expected = ["timer", "sleeper woke", "timer's call_soon"]
    assert _wake_order(asyncio.sleep) == expected
    assert _wake_order(erlang_asyncio.sleep) == expected


@pytest.mark.parametrize("sleep", [asyncio.sleep, erlang_asyncio.sleep])
def test_wait_for_a_sleep_as_long_as_its_timeout_times_out(sleep: Callable[..., Any]) -> None:
    """The timeout's timer is scheduled first, so it is earlier: the waiter
    times out before the sleep's task ends, with either sleep."""

    async def main() -> str:
        try:
            return await asyncio.wait_for(sleep(0.05, "done"), 0.05)
        except TimeoutError:
            return "timed out"

    assert run(main) == "timed out"


def test_a_sleep_made_natively_wakes_after_the_loop_turns_to_debug_mode() -> None:
    """In debug mode asyncio's own dispatch pops the ready queue: a sleep
    made on the native path before the switch comes out as the handle
    asyncio's sleep would have made, and ends as it would."""

    async def main() -> tuple[str, bool]:
        loop = asyncio.get_running_loop()
        sleeping = loop.create_task(erlang_asyncio.sleep(0.05, "woke"))
        await asyncio.sleep(0)
        assert loop.stats()["live_timers"] >= 1
        loop.set_debug(True)
        return await sleeping, loop.get_debug()

    assert run(main) == ("woke", True)
