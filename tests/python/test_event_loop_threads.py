"""ErlangEventLoop and threads: loops on non-main threads (LESSONS 5),
wake-ups from other threads, and isolation of loops running side by side
(LESSONS 11, 21).

Every wait is bounded (thread joins, ``wait_for``) so a bug fails the test
instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import ctypes
import random
import socket
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import erlang_loop
from erlang_loop import ErlangEventLoop
from test_event_loop import wait_for_sleeping

T = TypeVar("T")

DEADLINE = 10.0


def run(loop: asyncio.AbstractEventLoop, coro: Awaitable[T], timeout: float = DEADLINE) -> T:
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def in_threads(targets: list[Callable[[], Any]], timeout: float = 2 * DEADLINE) -> list[Any]:
    """Runs each target in its own (daemon) thread at the same time; returns
    their results in order, re-raising the first exception."""
    results: list[Any] = [None] * len(targets)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def body(index: int, target: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout)
            results[index] = target()
        except BaseException as error:  # noqa: BLE001 - reported to the test
            errors.append(error)

    threads = [
        threading.Thread(target=body, args=(i, target), daemon=True, name=f"loop-thread-{i}")
        for i, target in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    give_up = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, give_up - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a loop thread hung"
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------- loops on other threads


def test_policy_new_event_loop_on_a_non_main_thread() -> None:
    def make() -> tuple[type, type, bool]:
        policy = asyncio.get_event_loop_policy()
        loop = policy.new_event_loop()
        try:
            from_asyncio = asyncio.new_event_loop()
            from_asyncio.close()
            return type(loop), type(from_asyncio), run(loop, asyncio.sleep(0.001, True))
        finally:
            loop.close()

    made, from_asyncio, ran = in_threads([make])[0]
    assert made is ErlangEventLoop
    assert from_asyncio is ErlangEventLoop
    assert ran is True


# On CPython 3.12+ a loop that get_event_loop() makes warns (the tests of
# that warning are below); these tests are about the loop it makes.
@pytest.mark.filterwarnings("ignore:There is no current event loop:DeprecationWarning")
def test_policy_get_event_loop_creates_one_on_a_non_main_thread() -> None:
    """The stdlib policy only creates a loop on ``threading.main_thread()``;
    inside the BEAM that thread means nothing (LESSONS 5)."""

    def get() -> tuple[type, bool]:
        policy = asyncio.get_event_loop_policy()
        loop = policy.get_event_loop()
        try:
            same = policy.get_event_loop() is loop
            return type(loop), same
        finally:
            policy.set_event_loop(None)
            loop.close()

    kind, same = in_threads([get])[0]
    assert kind is ErlangEventLoop
    assert same


def test_asyncio_run_on_several_threads_at_once() -> None:
    async def main() -> tuple[type, int]:
        await asyncio.sleep(0.01)
        return type(asyncio.get_running_loop()), threading.get_ident()

    results = in_threads([lambda: asyncio.run(main()) for _ in range(4)])
    assert all(kind is ErlangEventLoop for kind, _ in results)
    assert len({ident for _, ident in results}) == 4


def test_isolated_loops_on_several_threads() -> None:
    """The seed's multi-threaded form: each thread makes an isolated loop,
    sets it as its loop and runs a coroutine to completion."""

    async def main(n: int) -> tuple[int, ErlangEventLoop]:
        total = 0
        for i in range(5):
            await asyncio.sleep(0.002)
            total += i * n
        return total, asyncio.get_running_loop()  # type: ignore[return-value]

    def thread_main(n: int) -> tuple[int, ErlangEventLoop, bool]:
        loop = erlang_loop.ErlangEventLoop(isolated=True)
        asyncio.set_event_loop(loop)
        try:
            total, used = loop.run_until_complete(main(n))
            return total, used, loop._loop_handle is not None
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    results = in_threads([lambda n=n: thread_main(n) for n in range(4)])
    assert [total for total, _, _ in results] == [10 * n for n in range(4)]
    loops = [used for _, used, _ in results]
    assert len({id(loop) for loop in loops}) == 4
    assert all(isolated for _, _, isolated in results)
    assert all(loop.is_closed() for loop in loops)


# ---------------------------------------------------------------- wake-ups from other threads


@pytest.mark.parametrize("isolated", [False, True], ids=["default", "isolated"])
def test_call_soon_threadsafe_wakes_an_idle_loop(isolated: bool) -> None:
    """The loop waits with no timer and no fd of its own: only the wake-up of
    ``call_soon_threadsafe`` can end the wait. A socket watchdog ends the test
    (as a failure) if the wake-up is lost, instead of hanging."""
    loop = ErlangEventLoop(isolated=isolated)
    watch_r, watch_w = socket.socketpair()
    try:
        woken = loop.create_future()
        sent_at: list[float] = []
        ran_at: list[float] = []
        states: list[dict[str, int]] = []

        def on_wake() -> None:
            ran_at.append(time.monotonic())
            if not woken.done():
                woken.set_result("threadsafe")

        def on_watchdog() -> None:
            watch_r.recv(10)
            if not woken.done():
                woken.set_result("watchdog")

        def poke() -> None:
            # Let the loop settle into its idle wait first.
            time.sleep(0.2)
            states.append(loop.stats())
            sent_at.append(time.monotonic())
            loop.call_soon_threadsafe(on_wake)
            if not ran_at:
                time.sleep(5.0)
            if not ran_at:
                watch_w.send(b"!")

        async def main() -> str:
            assert loop.stats()["live_timers"] == 0
            thread = threading.Thread(target=poke, daemon=True)
            thread.start()
            return await woken

        loop.add_reader(watch_r, on_watchdog)
        result = loop.run_until_complete(main())
        assert result == "threadsafe"
        assert ran_at[0] - sent_at[0] < 2.0
        stats = loop.stats()
        assert stats["wakeups"] > states[0]["wakeups"]
        assert stats["live_timers"] == 0
        loop.remove_reader(watch_r)
    finally:
        loop.close()
        watch_r.close()
        watch_w.close()


@pytest.mark.parametrize("isolated", [False, True], ids=["default", "isolated"])
def test_call_soon_threadsafe_from_many_threads(isolated: bool) -> None:
    loop = ErlangEventLoop(isolated=isolated)
    try:
        received: list[tuple[int, int]] = []
        done = loop.create_future()
        per_thread, threads = 500, 4

        def receive(item: tuple[int, int]) -> None:
            received.append(item)
            if len(received) == per_thread * threads and not done.done():
                done.set_result(None)

        def producer(n: int) -> Callable[[], None]:
            def body() -> None:
                for i in range(per_thread):
                    loop.call_soon_threadsafe(receive, (n, i))
                    if i % 50 == 0:
                        time.sleep(0.001)

            return body

        async def main() -> None:
            workers = threading.Thread(
                target=in_threads,
                args=([producer(n) for n in range(threads)],),
                daemon=True,
            )
            workers.start()
            await done
            await loop.run_in_executor(None, workers.join, DEADLINE)

        run(loop, main())
        assert len(received) == per_thread * threads
        for n in range(threads):
            # Each producer's callbacks run in the order it scheduled them.
            assert [i for m, i in received if m == n] == list(range(per_thread))
    finally:
        loop.close()


@pytest.mark.parametrize("isolated", [False, True], ids=["default", "isolated"])
def test_call_soon_threadsafe_racing_close(isolated: bool) -> None:
    """Threads calling into a loop while it closes see RuntimeError, nothing
    worse."""
    loop = ErlangEventLoop(isolated=isolated)
    outcomes: list[str] = []

    def hammer() -> None:
        give_up = time.monotonic() + DEADLINE
        while time.monotonic() < give_up:
            try:
                loop.call_soon_threadsafe(lambda: None)
            except RuntimeError:
                outcomes.append("closed")
                return
            time.sleep(0)  # let the loop's thread have the GIL too
        outcomes.append("never closed")

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    run(loop, asyncio.sleep(0.02))
    loop.close()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in threads)
    assert outcomes == ["closed"] * 3


def test_stop_from_another_thread_via_call_soon_threadsafe() -> None:
    loop = ErlangEventLoop()
    try:
        timer = threading.Timer(0.05, loop.call_soon_threadsafe, args=(loop.stop,))
        timer.start()
        start = time.monotonic()
        loop.run_forever()
        assert time.monotonic() - start < DEADLINE
        timer.join(DEADLINE)
    finally:
        loop.close()


# ---------------------------------------------------------------- isolation


@pytest.mark.parametrize(
    "kinds",
    [(False, True), (False, False), (True, True)],
    ids=["default+isolated", "default+default", "isolated+isolated"],
)
def test_loops_on_two_threads_never_see_each_others_timers(
    kinds: tuple[bool, bool],
) -> None:
    """LESSONS 11, 21: two loops running at the same time, each with 100
    timers of random short delays: each runs exactly its own 100 callbacks,
    on its own thread, under its own running loop."""
    count = 100

    def thread_main(
        tag: int, isolated: bool
    ) -> tuple[list[int], list[tuple[int, int, Any]], dict[str, int]]:
        loop = ErlangEventLoop(isolated=isolated)
        rng = random.Random(tag)
        seen: list[int] = []
        foreign: list[tuple[int, int, Any]] = []
        me = threading.get_ident()
        try:

            def callback(owner: int, index: int) -> None:
                if (
                    owner != tag
                    or threading.get_ident() != me
                    or asyncio.get_running_loop() is not loop
                ):
                    foreign.append((owner, index, asyncio.get_running_loop()))
                seen.append(index)

            async def main() -> None:
                for i in range(count):
                    loop.call_later(rng.uniform(0.0, 0.03), callback, tag, i)
                    if i % 10 == 0:
                        await asyncio.sleep(0)
                while len(seen) < count:
                    await asyncio.sleep(0.005)
                # Anything stray would arrive now.
                await asyncio.sleep(0.05)

            run(loop, main())
            return seen, foreign, loop.stats()
        finally:
            loop.close()

    results = in_threads(
        [lambda tag=tag, iso=iso: thread_main(tag, iso) for tag, iso in enumerate(kinds)]
    )
    for seen, foreign, _stats in results:
        assert foreign == []
        assert sorted(seen) == list(range(count))


@pytest.mark.parametrize(
    "kinds",
    [(False, True), (False, False)],
    ids=["default+isolated", "default+default"],
)
def test_loops_on_two_threads_never_see_each_others_fds(
    kinds: tuple[bool, bool],
) -> None:
    """Fd readiness goes to the loop that watches the fd, even when both loops
    share one Erlang worker."""
    rounds = 50

    def thread_main(isolated: bool) -> list[bytes]:
        loop = ErlangEventLoop(isolated=isolated)
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        got: list[bytes] = []
        try:

            async def main() -> None:
                for i in range(rounds):
                    arrived = loop.create_future()

                    def on_read(future: asyncio.Future[None] = arrived) -> None:
                        got.append(rsock.recv(100))
                        if not future.done():
                            future.set_result(None)

                    loop.add_reader(rsock, on_read)
                    wsock.send(str(i).encode())
                    await arrived
                    loop.remove_reader(rsock)

            run(loop, main())
            return got
        finally:
            loop.close()
            rsock.close()
            wsock.close()

    results = in_threads([lambda iso=iso: thread_main(iso) for iso in kinds])
    for got in results:
        assert got == [str(i).encode() for i in range(rounds)]


# On CPython 3.12+ a loop that get_event_loop() makes warns (the tests of
# that warning are below); these tests are about the loop it makes.
@pytest.mark.filterwarnings("ignore:There is no current event loop:DeprecationWarning")
def test_get_event_loop_after_set_none_follows_cpython_until_the_pool_resets() -> None:
    """asyncio.run ends with set_event_loop(None); then, as in CPython,
    get_event_loop() refuses on that thread. The py worker pool forgets that
    None between calls (erlang_loop._policy.forget_unset_loop)."""
    from erlang_loop import _policy

    outcome: list[object] = []

    def body() -> None:
        asyncio.run(asyncio.sleep(0))
        try:
            asyncio.get_event_loop()
        except RuntimeError as error:
            outcome.append(str(error))
        _policy.forget_unset_loop()
        loop = asyncio.get_event_loop()
        outcome.append(type(loop).__name__)
        loop.close()
        asyncio.set_event_loop(None)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert len(outcome) == 2, outcome
    assert "no current event loop" in str(outcome[0])
    assert outcome[1] == "ErlangEventLoop"


# CPython 3.12 deprecated get_event_loop() making a loop when none is set:
# the stdlib's policy warns where it makes one (3.11's is silent).
IMPLICIT_LOOP_WARNS = sys.version_info >= (3, 12)


def _get_on_a_fresh_thread(
    get: Callable[[], asyncio.AbstractEventLoop],
) -> tuple[type, list[warnings.WarningMessage]]:
    """Calls ``get`` on a new thread, where no loop is set yet: the type of
    the loop it returns and the warnings it raised."""

    def body() -> tuple[type, list[warnings.WarningMessage]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loop = get()
        asyncio.set_event_loop(None)
        loop.close()
        return type(loop), list(caught)

    return in_threads([body])[0]  # type: ignore[no-any-return]


def _implicit_getters() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    import erlang_asyncio

    return [
        lambda: asyncio.get_event_loop_policy().get_event_loop(),
        lambda: asyncio.get_event_loop(),
        lambda: erlang_asyncio.get_event_loop(),
    ]


@pytest.mark.skipif(
    not IMPLICIT_LOOP_WARNS, reason="CPython 3.11's get_event_loop makes a loop without a warning"
)
@pytest.mark.parametrize("which", range(3), ids=["policy", "asyncio", "erlang_asyncio"])
def test_get_event_loop_warns_where_it_makes_a_loop_on_3_12(which: int) -> None:
    """As the stdlib's policy on 3.12+: a DeprecationWarning that points at the
    caller's line (asyncio's frames and ours skipped); the loop is still made,
    on any thread."""
    kind, caught = _get_on_a_fresh_thread(_implicit_getters()[which])
    assert kind is ErlangEventLoop
    assert [(w.category, str(w.message)) for w in caught] == [
        (DeprecationWarning, "There is no current event loop")
    ]
    assert caught[0].filename == __file__


@pytest.mark.skipif(IMPLICIT_LOOP_WARNS, reason="CPython 3.12+ warns (gh-93453): the test above")
@pytest.mark.parametrize("which", range(3), ids=["policy", "asyncio", "erlang_asyncio"])
def test_get_event_loop_makes_a_loop_silently_on_3_11(which: int) -> None:
    kind, caught = _get_on_a_fresh_thread(_implicit_getters()[which])
    assert kind is ErlangEventLoop
    assert caught == []


def test_get_event_loop_does_not_warn_for_a_set_loop_or_after_set_none() -> None:
    """Only a loop made implicitly warns; a set loop is returned, and an
    explicit set_event_loop(None) refuses (RuntimeError), as in the stdlib."""

    def body() -> tuple[bool, str, list[warnings.WarningMessage]]:
        loop = asyncio.new_event_loop()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            asyncio.set_event_loop(loop)
            same = asyncio.get_event_loop() is loop
            asyncio.set_event_loop(None)
            try:
                asyncio.get_event_loop()
                refusal = ""
            except RuntimeError as error:
                refusal = str(error)
        loop.close()
        return same, refusal, list(caught)

    same, refusal, caught = in_threads([body])[0]
    assert same
    assert "There is no current event loop" in refusal
    assert caught == []


def test_an_interrupted_thread_leaves_its_waiting_loop_with_keyboard_interrupt() -> None:
    """What Ctrl-C of ``bin/erlang-python`` does to the program's thread:
    ``_erlang.interrupt_thread`` marks KeyboardInterrupt pending there and
    wakes the loop that thread waits in, so it is raised now rather than
    when a timer an hour away fires. The loop's other threads and loops are
    left alone."""
    import _erlang

    from erlang_loop._loop import native_loop_of

    waiting = threading.Event()
    outcome: list[str] = []

    def program() -> None:
        loop = ErlangEventLoop()
        try:
            loop.call_later(3600, outcome.append, "timer fired")
            loop.call_soon(waiting.set)
            try:
                loop.run_forever()
            except KeyboardInterrupt:
                outcome.append("KeyboardInterrupt")
        finally:
            loop.close()

    thread = threading.Thread(target=program, daemon=True)
    thread.start()
    assert waiting.wait(DEADLINE)
    assert thread.ident is not None
    # A thread that does not exist is not interrupted, nor its loop woken.
    assert _erlang.interrupt_thread(2**40 + 12345) is False
    # Not a thread id at all: a clear error, nothing interrupted.
    with pytest.raises(TypeError):
        _erlang.interrupt_thread("main")
    with pytest.raises(OverflowError):
        _erlang.interrupt_thread(-1)
    assert native_loop_of(2**40 + 12345) is None
    # The loop runs (it ran `waiting.set`): about to wait or waiting, either
    # way it is woken.
    assert _erlang.interrupt_thread(thread.ident) is True
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert outcome == ["KeyboardInterrupt"]


def set_async_exception(ident: int, exception: type[BaseException]) -> None:
    """What a timed-out ``py:call`` does to its thread: ``exception`` pending
    there, raised at its next bytecode. (``ctypes`` is imported beforehand:
    an import here could let the thread run in between.)"""
    marked = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exception)
    )
    assert marked == 1


@pytest.mark.parametrize("debug", [False, True], ids=["native", "debug"])
def test_an_exception_set_on_a_waiting_loop_thread_ends_run_forever(debug: bool) -> None:
    """A ``TimeoutError`` set on the thread of a loop waiting for a timer an
    hour away (a timed-out ``py:call``), its loop woken: ``run_forever``
    raises it. It is not raised inside a callback, where the loop's
    exception handler would take it and the loop would run on. In debug
    mode too (asyncio's ``_run_once`` in Python around the native wait)."""
    from erlang_loop._loop import native_loop_of

    waiting = threading.Event()
    outcome: list[str] = []
    handled: list[dict[str, Any]] = []

    loops: list[ErlangEventLoop] = []
    loop_ready = threading.Event()

    def program() -> None:
        loop = ErlangEventLoop()
        loop.set_debug(debug)
        loops.append(loop)
        loop_ready.set()
        loop.set_exception_handler(lambda _loop, context: handled.append(context))
        try:
            loop.call_later(3600, outcome.append, "timer fired")
            loop.call_soon(waiting.set)
            try:
                loop.run_forever()
            except TimeoutError:
                outcome.append("TimeoutError")
            # The loop is not spoilt: it runs again, with nothing left over.
            loop.call_soon(loop.stop)
            loop.run_forever()
            outcome.append("ran again")
        finally:
            loop.close()

    thread = threading.Thread(target=program, daemon=True)
    thread.start()
    assert waiting.wait(DEADLINE)
    assert loop_ready.wait(DEADLINE)
    assert thread.ident is not None
    # Asleep in its wait, not running Python code (a callback there would
    # meet the exception).
    wait_for_sleeping(loops[0])
    # A callback made ready in the same wake-up waits for the next run: run
    # first, it would meet the exception. This thread keeps the GIL from
    # the callback to the wake-up, so the loop sees both at once.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(30)
    try:
        loops[0].call_soon_threadsafe(outcome.append, "callback")
        set_async_exception(thread.ident, TimeoutError)
        native = native_loop_of(thread.ident)
        assert native is not None
        native.interrupt()
    finally:
        sys.setswitchinterval(interval)
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert outcome == ["TimeoutError", "callback", "ran again"]
    assert handled == []


def test_interrupting_its_own_thread_raises_at_once_and_leaves_the_loop_sound() -> None:
    """``_erlang.interrupt_thread`` of the calling thread, in a callback of
    its running loop: KeyboardInterrupt is raised right after the call
    (not lost in the loop's wake-up), and the loop, whose wait was marked
    interrupted for it, then runs its ready callbacks as asyncio does."""
    import _erlang

    loop = ErlangEventLoop()
    try:
        after: list[str] = []

        def interrupt_me() -> None:
            _erlang.interrupt_thread(threading.get_ident())
            after.append("not raised")

        loop.call_soon(interrupt_me)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        assert after == []
        # stop() before run_forever(): the ready callbacks run once.
        ran: list[int] = []
        loop.call_soon(ran.append, 1)
        loop.stop()
        loop.run_forever()
        assert ran == [1]
    finally:
        loop.close()
