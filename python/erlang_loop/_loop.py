"""``ErlangEventLoop``: the stdlib's selector loop with its clock, timers,
self-pipe and poll replaced by the native loop (Rust timer wheel, an epoll
set of its own whose fd the BEAM selects while the loop sleeps, one Erlang
timer armed for the next deadline)."""

from __future__ import annotations

import inspect
import os
import signal
import sys
import time
import types
import weakref
from asyncio import (
    Future,
    base_events,
    constants,
    coroutines,
    events,
    exceptions,
    format_helpers,
    futures,
    sslproto,
    tasks,
    unix_events,
)
from asyncio.base_events import _format_handle  # type: ignore[attr-defined]
from asyncio.log import logger
from collections.abc import Callable
from contextvars import Context
from typing import Any

import _erlang_loop

from ._selector import _ErlangSelector
from ._transports import _ErlangDatagramTransport, _ErlangSocketTransport


#: Signals caught by the loop's library (src/io/signals.rs) and routed to
#: it by the BEAM (erlang/src/py_signals.erl).
_CAUGHT_SIGNALS = frozenset(_erlang_loop.CAUGHT_SIGNALS)
_ROUTED_SIGNALS = frozenset(_erlang_loop.ROUTED_SIGNALS)

#: The Erlang functions that route a signal to the loops and undo one
#: route (py_signals).
_ROUTE_SIGNAL = "_erlang_python.route_signal"
_UNROUTE_SIGNAL = "_erlang_python.unroute_signal"


def _take_signal(sig: int) -> int | None:
    """Makes ``sig`` reach the loops' signal pipes, for one more handler;
    the BEAM's route for it, if it routes ``sig``."""
    if sig in _CAUGHT_SIGNALS:
        try:
            _erlang_loop.catch_signal(sig)
        except OSError as exc:
            raise RuntimeError(str(exc)) from exc
        return None
    # Imported here: the module exists only inside the node, where loops run.
    import _erlang

    name = signal.Signals(sig).name.lower()
    try:
        answer = _erlang.call(_ROUTE_SIGNAL, name, True)
    except _erlang.ErlangError as exc:
        raise RuntimeError(f"the BEAM could not route {name}: {exc}") from exc
    match answer:
        case ("ok", int(route)):
            return route
        case _:
            raise RuntimeError(f"the BEAM could not route {name}: {answer!r}")


def _leave_signal(sig: int, route: int | None) -> None:
    """Undoes one :func:`_take_signal` of ``sig``, which gave ``route``.
    A route the BEAM no longer knows (its application restarted since) is
    left alone: the handlers added since keep the signal."""
    if sig in _CAUGHT_SIGNALS:
        _erlang_loop.uncatch_signal(sig)
        return
    import _erlang

    _erlang.call(_UNROUTE_SIGNAL, route)


class _ErlangTimerHandle(_erlang_loop.timer_handle_base()):  # type: ignore[misc]
    """An ``asyncio.TimerHandle`` that knows its key in the native wheel,
    with that key and ``when`` stored in the instance (see
    src/py/timer_handle.rs); its ``cancel()`` is asyncio's, done natively
    (see src/py/timer_cancel.rs)."""

    __slots__ = ()

    _key: int | None

    def _repr_info(self) -> list[str]:
        # asyncio names the class first: a TimerHandle's repr, as the
        # stdlib loop's (a subclass of it would show its own name).
        info: list[str] = super()._repr_info()
        if type(self) is _ErlangTimerHandle:
            info[0] = "TimerHandle"
        return info

    def __getstate__(self) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        # What object.__getstate__ gives for asyncio's slotted handles (it
        # refuses a class with native fields): a copy is asyncio's. The
        # wheel key is not copied: the copy is not in the wheel.
        slots: dict[str, Any] = {}
        for cls in type(self).__mro__:
            names = cls.__dict__.get("__slots__", ())
            for name in (names,) if isinstance(names, str) else names:
                if name not in ("__dict__", "__weakref__") and hasattr(self, name):
                    slots[name] = getattr(self, name)
        return getattr(self, "__dict__", None) or None, slots


for _name, _method in _erlang_loop.timer_handle_methods(_ErlangTimerHandle).items():
    setattr(_ErlangTimerHandle, _name, _method)


# Every ErlangEventLoop alive, for `native_loop_of`.
_LOOPS: weakref.WeakSet[ErlangEventLoop] = weakref.WeakSet()

# asyncio's own Handle, which the runner makes and runs natively, even if
# `events.Handle` was replaced (by a tracer, say) before this import:
# `TimerHandle` still derives from it. A loop made while `events.Handle` is
# another class leaves `call_soon` to asyncio's Python, which makes that one.
_STOCK_HANDLE: type[events.Handle] = events.TimerHandle.__bases__[0]


def native_loop_of(ident: int) -> Any:
    """The native loop (``_erlang_loop.NativeLoop``) of the ErlangEventLoop
    running in thread ``ident`` (a ``threading.get_ident()``), or None: the
    one whose wait ``_erlang.interrupt_thread`` and a timed-out ``py:call``
    interrupt (``NativeLoop.interrupt``) for the exception they set on that
    thread, which CPython raises at its next bytecode and a loop waiting for
    events would not run."""
    loop = _loop_running_in(ident)
    return None if loop is None else loop._native


def cancel_main_of(ident: int) -> bool:
    """For a timed-out ``py:call`` whose thread ``ident`` runs an
    ErlangEventLoop in ``run_until_complete`` (``asyncio.run``): cancels the
    future it runs, from the loop's thread, as ``asyncio.Runner`` answers
    Ctrl-C, so the program unwinds through its own ``except`` and ``finally``
    and asyncio's transports and subprocesses finish what they started;
    ``run_until_complete`` then raises ``TimeoutError``. False when that
    thread runs no such loop (the exception is then raised out of
    ``run_forever`` between two callbacks)."""
    loop = _loop_running_in(ident)
    main = None if loop is None else loop._main_future
    if loop is None or main is None or main.done():
        return False
    loop.call_soon_threadsafe(loop._cancel_main_for_timeout, main)
    return True


def _loop_running_in(ident: int) -> ErlangEventLoop | None:
    """The open ErlangEventLoop running in thread ``ident``, if any."""
    for loop in list(_LOOPS):
        if loop._thread_id == ident and not loop.is_closed():  # type: ignore[attr-defined]
            return loop
    return None


def _timeout_raised() -> None:
    """Tells the node that the TimeoutError of the timed-out ``py:call``
    this thread runs is raised (by ``run_until_complete``): no second one
    is injected later."""
    erlang_module = sys.modules.get("_erlang")
    if erlang_module is not None:
        erlang_module.timeout_raised()


def _job_cancelled() -> bool:
    """Whether the ``py:call`` this thread runs timed out or lost its caller
    (``_erlang.job_cancelled``); False on a thread running no call."""
    erlang_module = sys.modules.get("_erlang")
    return erlang_module is not None and erlang_module.job_cancelled()


def _raise_pending() -> None:
    """Nothing but the start of a Python function, where CPython raises an
    exception set on this thread from outside: what the native loop calls
    when its wait was interrupted for one (see ``native_loop_of``)."""


def _clock_changed(loop: Any) -> None:
    if "_runner" in loop.__dict__:
        loop._use_native_paths(not loop._debug)


# ``ErlangEventLoop.time``: the clock set on the instance (the runner's
# native ``time`` while the native paths are in, or a test's fake), else
# asyncio's; a clock set on or deleted from the instance recomputes the
# native paths. A data descriptor rather than a ``__setattr__`` watching for
# ``time``, which ran as Python code for every attribute the loop's own code
# sets; native, as a Python ``__get__`` made every ``loop.time()`` slower.
_InstanceClock = _erlang_loop.InstanceClock


def _watch_the_clock(cls: type) -> None:
    """Hooks on ``cls``, a subclass whose own ``time`` hides the
    descriptor, that recompute the native paths when ``time`` is set on or
    deleted from an instance (around the class's own hooks, if it has any)."""
    own_set = cls.__dict__.get("__setattr__")
    own_del = cls.__dict__.get("__delattr__")

    def __setattr__(loop: Any, name: str, value: Any) -> None:
        if own_set is not None:
            own_set(loop, name, value)
        else:
            super(cls, loop).__setattr__(name, value)
        if name == "time":
            _clock_changed(loop)

    def __delattr__(loop: Any, name: str) -> None:
        if own_del is not None:
            own_del(loop, name)
        else:
            super(cls, loop).__delattr__(name)
        if name == "time":
            _clock_changed(loop)

    __setattr__._watches_the_clock = True  # type: ignore[attr-defined]
    cls.__setattr__ = __setattr__  # type: ignore[method-assign,assignment]
    cls.__delattr__ = __delattr__  # type: ignore[method-assign,assignment]


class ErlangEventLoop(unix_events._UnixSelectorEventLoop):  # type: ignore[name-defined,misc]
    """An asyncio event loop driven by the BEAM.

    ``isolated=False`` (default): the loop is served by the application's
    shared Erlang worker; ``_loop_handle`` is None. ``isolated=True``: the loop
    gets an Erlang worker of its own; ``_loop_handle`` is its native loop.
    Either way the loop has its own timers and event queue: events never cross
    between loops.
    """

    time = _InstanceClock(base_events.BaseEventLoop.time, types.MethodType, _clock_changed)  # type: ignore[assignment]

    # True while `close` drops the runner's queues (see `close`).
    _dropping_queues = False
    # The future `run_until_complete` runs, and the one it runs that a
    # timed-out py:call cancelled (see `cancel_main_of`).
    _main_future: futures.Future[Any] | None = None
    _timed_out_main: futures.Future[Any] | None = None

    def __init__(self, isolated: bool = False) -> None:
        # The pipe of this loop's SIGCHLD subscription, while it has handlers.
        self._signal_fd: int | None = None
        # The BEAM's route of each routed signal this loop handles.
        self._signal_routes: dict[int, int | None] = {}
        # Closed until BaseEventLoop.__init__ opens it: a loop whose native
        # part could not be made (EMFILE, the application stopped) leaves
        # nothing for BaseEventLoop.__del__ to report.
        self._closed = True
        self._native = _erlang_loop.new_loop(isolated)
        self._loop_handle = self._native if isolated else None
        self._runner: _erlang_loop.LoopRunner | None = None
        super().__init__(selector=_ErlangSelector(self._native))
        _LOOPS.add(self)
        # The ready queue, the timers in the wheel and one iteration are
        # native (LESSONS 27); `_ready` is the runner, deque-compatible.
        self._runner = _erlang_loop.LoopRunner(
            self._native, self, _STOCK_HANDLE, _ErlangTimerHandle, self._selector._fd_to_key
        )
        self._ready = self._runner
        self._selector.on_timers_fired = self._runner.fire_timers
        self._use_native_paths(not self._debug)

    # -- the self-pipe is the native wake-up --

    def _make_self_pipe(self) -> None:
        # No pipe: wake-ups go through the native core. The fds the loop
        # keeps for itself are its epoll set and the BEAM's duplicate of it,
        # counted here as one, as asyncio counts its self-pipe.
        self._ssock = self._csock = None
        self._internal_fds += 1

    def _close_self_pipe(self) -> None:
        # The epoll set closes with the native loop (`close`).
        self._internal_fds -= 1

    def _write_to_self(self) -> None:
        self._native.wakeup()

    def _worker_lost(self) -> bool:
        """Whether the Erlang process serving this loop died: it can no
        longer wait for anything (the policy replaces such a loop)."""
        native = self.__dict__.get("_native")
        return native is not None and native.server_lost()

    # -- transports: asyncio's, reading into the loop's buffer --

    def _make_socket_transport(
        self, sock: Any, protocol: Any, waiter: Any = None, *, extra: Any = None, server: Any = None
    ) -> _ErlangSocketTransport:
        return _ErlangSocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(
        self,
        rawsock: Any,
        protocol: Any,
        sslcontext: Any,
        waiter: Any = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: Any = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> Any:
        # As BaseSelectorEventLoop builds it, over our transport.
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        _ErlangSocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    def _make_datagram_transport(
        self, sock: Any, protocol: Any, address: Any = None, waiter: Any = None, extra: Any = None
    ) -> _ErlangDatagramTransport:
        return _ErlangDatagramTransport(self, sock, protocol, address, waiter, extra)

    # -- timers go to the wheel --

    def call_at(
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> events.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        timer = _ErlangTimerHandle(when, callback, args, self, context)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        timer._key = self._runner_or_closed().add_timer(self._wheel_time(when), timer)
        timer._scheduled = True
        return timer

    def call_later(
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> events.TimerHandle:
        if delay is None:
            raise TypeError("delay must not be None")
        if delay != delay:  # NaN, of any number type
            raise ValueError("delay must not be NaN")
        timer = self.call_at(self.time() + delay, callback, *args, context=context)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        return timer

    def _wheel_time(self, when: float) -> float:
        """``when``, a time of this loop's clock, on the wheel's clock
        (CLOCK_MONOTONIC, which ``time()`` reads unless a subclass or a
        patch of the instance replaced it: its timers then fire when as
        much time has passed as they were set for, as ``call_at`` says, or
        earlier if the replaced clock reaches their ``when`` first)."""
        clock = self.time
        if getattr(clock, "__func__", None) is base_events.BaseEventLoop.time or (
            self._runner is not None and getattr(clock, "__self__", None) is self._runner
        ):
            return when
        return when - clock() + time.monotonic()

    def _sleep_future(self, delay: float) -> tuple[int, Future[Any]]:
        """A future resolved `delay` seconds from now straight from the wheel
        (the erlang_asyncio.sleep fast path), and its wheel key."""
        self._check_closed()
        future = self.create_future()
        key = self._runner_or_closed().add_future(time.monotonic() + delay, future)
        return key, future

    def _cancel_sleep(self, key: int) -> None:
        if self._runner is not None:
            self._runner.cancel(key)

    def _timer_handle_cancelled(self, handle: events.TimerHandle) -> None:
        if self._runner is not None:
            self._runner.timer_cancelled(handle)

    def _runner_or_closed(self) -> _erlang_loop.LoopRunner:
        if self._runner is None:
            raise RuntimeError("Event loop is closed")
        return self._runner

    # -- the native paths, outside debug mode --

    # Methods the runner takes over, as instance attributes (looked up
    # before the class's), so that Tasks and Futures calling
    # `loop.call_soon` reach native code directly.
    _NATIVE_PATHS = {
        "call_soon": "call_soon_fast",
        "_call_soon": "push_new",
        "call_at": "call_at",
        "call_later": "call_later",
        "_run_once": "run_once",
        "_sleep_future": "sleep_future",
        "_timer_handle_cancelled": "timer_cancelled",
        "create_future": "create_future",
        "time": "time",
        "get_debug": "get_debug",
    }

    def _use_native_paths(self, native: bool) -> None:
        runner = self._runner
        if self._closed:
            # A closed loop's runner holds nothing of it (see `close`): no
            # path goes back, whatever `set_debug` says.
            native, runner = False, None
        clock_replaced = self._clock_replaced()
        loop_dict = self.__dict__
        on = native and runner is not None
        # This class itself overrides nothing (a patch of its attributes is
        # its own), and with asyncio's clock and Handle every path is
        # native: what `_overrides` would say of each, without asking. Most
        # loops are made so (`asyncio.run`), each looking once.
        every = (
            on
            and type(self) is ErlangEventLoop
            and not clock_replaced
            and events.Handle is _STOCK_HANDLE
        )
        for name, native_name in self._NATIVE_PATHS.items():
            if name == "time" and clock_replaced:
                continue  # the instance's own
            if every or (on and not self._overrides(name)):
                loop_dict[name] = getattr(runner, native_name)
            else:
                loop_dict.pop(name, None)
        if runner is not None:
            # The runner uses them directly while they are still these:
            # erlang_asyncio.sleep (no loop method call), an asyncio.sleep
            # timer resolving its future (no Python code runs), run_forever's
            # iterations (run_once runs the next ones itself).
            runner.set_native_paths(
                self.__dict__,
                self.__dict__.get("_sleep_future"),
                self.__dict__.get("call_soon"),
                self.__dict__.get("_run_once"),
            )

    def _overrides(self, name: str) -> bool:
        """Does a subclass, or a clock replaced on the instance, replace what
        the native path ``name`` does?"""
        if name in ("time", "_run_once") and self._clock_replaced():
            return True  # `_run_once` then fires by that clock too
        if name == "_sleep_future":  # it makes its future as create_future does
            return self._overrides("create_future") or self._overrides("time")
        if name == "call_later":  # it reads the clock as time() does
            return self._overrides("time") or self._overrides("call_at")
        if name in ("call_soon", "_call_soon") and events.Handle is not _STOCK_HANDLE:
            return True  # asyncio's makes whatever `events.Handle` is now
        if name == "call_at" and self._overrides("time"):
            return True  # its `when` is a time of time()'s clock
        return getattr(type(self), name) is not getattr(ErlangEventLoop, name)

    # nest_asyncio patches a loop's class unless this says it has: it would
    # replace `_run_once` and `run_until_complete` with code that reads the
    # heap of `_scheduled`, where no timer of ours is, and, shadowed by the
    # native paths, its patches would only half apply (a hang, not an
    # error). Marked, the class stays ours and a nested run is refused.
    _nest_patched = True

    def _check_running(self) -> None:
        try:
            super()._check_running()
        except RuntimeError as error:
            if "nest_asyncio" not in sys.modules:
                raise
            # NotImplementedError is a RuntimeError, as asyncio's refusal.
            raise NotImplementedError(
                f"{error}: ErlangEventLoop cannot be made re-entrant (nest_asyncio); "
                "await the coroutine instead of running the loop again"
            ) from None

    def _clock_replaced(self) -> bool:
        """Is ``time`` replaced on the instance (``mock.patch.object(loop,
        "time", ...)``, a test faking the clock)?"""
        clock = self.__dict__.get("time")
        runner = self.__dict__.get("_runner")
        return clock is not None and not (runner is not None and clock == runner.time)

    # A clock set on or deleted from the instance takes the paths that read
    # it (the native ones read CLOCK_MONOTONIC), and timers then fire by it
    # as asyncio's do: a test moving its fake clock past a timer's `when`
    # sees the timer run (aiohttp's do). `time` is a data descriptor for
    # that (see `_InstanceClock`); a subclass that defines its own `time`
    # hides it, and gets these hooks instead.
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(inspect.getattr_static(cls, "time"), _InstanceClock) and not getattr(
            cls.__setattr__, "_watches_the_clock", False
        ):
            _watch_the_clock(cls)

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        # BaseEventLoop.__init__ calls it before the runner exists, when no
        # native path is installed yet: nothing to do then.
        if self.__dict__.get("_runner") is not None:
            self._use_native_paths(not enabled)

    def _report_callback_error(self, handle: events.Handle, exc: BaseException) -> None:
        # What Handle._run reports when its callback raises.
        cb = format_helpers._format_callback_source(handle._callback, handle._args)
        context: dict[str, Any] = {
            "message": f"Exception in callback {cb}",
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    # -- one iteration, in CPython's order --

    def _run_once(self) -> None:
        """One iteration in debug mode, or with a clock replaced on the
        instance (the native ``run_once`` otherwise): the timers due by that
        clock, the runner's wait and timers, then asyncio's own dispatch
        with its slow-callback warnings in debug mode."""
        runner = self._runner_or_closed()
        wake_key = None
        if self._clock_replaced():
            # As asyncio's `_run_once`: what is due by `time()` runs now,
            # and the wait ends when the next one is due by that clock.
            now = self.time()
            fired, earliest = runner.fire_due_by(now + self._clock_resolution)
            if not fired and earliest is not None:
                wake_key = runner.add_future(
                    time.monotonic() + max(0.0, earliest - now), self.create_future()
                )
        try:
            runner.poll()
        finally:
            if wake_key is not None:
                runner.cancel(wake_key)
        for _ in range(len(runner)):
            handle = runner.popleft()
            if handle._cancelled:
                continue
            if not self._debug:
                handle._run()
                continue
            try:
                self._current_handle = handle
                t0 = self.time()
                handle._run()
                dt = self.time() - t0
                if dt >= self.slow_callback_duration:
                    # base_events' logger, looked up here as asyncio's own loop does.
                    base_events.logger.warning(
                        "Executing %s took %.3f seconds", _format_handle(handle), dt
                    )
            finally:
                self._current_handle = None
        handle = None  # Needed to break cycles when an exception occurs.

    def run_until_complete(self, future: Any) -> Any:
        # As asyncio's, which it calls, but the future it runs is known to
        # `cancel_main_of`.
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            future._log_destroy_pending = False
        outer = self._main_future
        self._main_future = future
        if _job_cancelled():
            # The py:call running us timed out (or its caller died) before
            # this loop ran, and its TimeoutError was lost on the way (raised
            # in a finalizer or a logging handler run by a collection, which
            # swallow it): cancelled at once, as `cancel_main_of` would,
            # rather than run on for as long as the future does.
            self.call_soon(self._cancel_main_for_timeout, future)
        try:
            return super().run_until_complete(future)
        except exceptions.CancelledError:
            if self._timed_out_main is future:
                _timeout_raised()
                raise TimeoutError from None
            raise
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                # As asyncio's: the caller cannot see the task, whose
                # exception would be logged as never retrieved.
                future.exception()
            raise
        finally:
            self._main_future = outer
            if self._timed_out_main is future:
                self._timed_out_main = None

    def _cancel_main_for_timeout(self, main: futures.Future[Any]) -> None:
        if not main.done():
            self._timed_out_main = main
            main.cancel()

    def run_forever(self) -> None:
        # Refused before asyncio's run_forever begins: CPython 3.13.0 checks
        # inside its `try`, whose `finally` then clears the running loop of
        # the loop that is running (gh-130145, fixed in later releases).
        self._check_closed()
        self._check_running()
        runner = self._runner
        if runner is None:  # an __init__ that failed before making it
            return super().run_forever()
        # While the loop runs, the handles its runner makes stay out of the
        # cyclic GC (a running loop is never garbage).
        runner.set_running(True)
        try:
            super().run_forever()
        finally:
            runner.set_running(False)

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        # The runner first: from here on nothing is scheduled (a finalizer
        # run by the closing could otherwise queue a callback into a
        # dropped queue). Those finalizers see the loop closed, as the
        # stdlib's see it while it clears its queues.
        if self._runner is not None and not self._closed:
            self._dropping_queues = True
            try:
                self._runner.close()
            finally:
                self._dropping_queues = False
        try:
            super().close()
        finally:
            # asyncio's close removes the signal handlers after closing the
            # selector, which waits for the BEAM: an exception meanwhile (a
            # timed-out py:call's, raised at any bytecode) left them, their
            # pipe and their catch, for good.
            if self._signal_handlers and not sys.is_finalizing():
                for sig in list(self._signal_handlers):
                    self.remove_signal_handler(sig)
            if self._closed and self._runner is not None:
                # The loop and its runner hold each other (the runner its
                # loop and `__dict__`, the dict the runner's methods): closed,
                # they let go, so that the loop is freed with its last
                # reference, as the stdlib's closed loop is.
                self._use_native_paths(False)
                self._runner.detach()

    def is_closed(self) -> bool:
        return self._closed or self._dropping_queues

    def _check_closed(self) -> None:
        # The state itself, as asyncio's reads `_closed`: not `is_closed()`,
        # which a test may patch to watch or fake what callers see.
        if self._closed or self._dropping_queues:
            raise RuntimeError("Event loop is closed")

    # -- signals: the BEAM owns them; a loop gets SIGCHLD and what it routes --

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        """asyncio's, for the signals a loop in the node may handle: SIGCHLD
        (caught by the loop's library itself; asyncio's SafeChildWatcher and
        FastChildWatcher use it) and SIGHUP, SIGALRM and SIGUSR2 (caught by
        the BEAM, set to ``handle`` while a loop has a handler for them, and
        passed on). SIGKILL and SIGSTOP raise RuntimeError, as in asyncio
        (no process can catch them); the BEAM's own signals (SIGINT,
        SIGTERM, SIGQUIT, SIGUSR1) and the rest raise NotImplementedError."""
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            # asyncio's words: signal.signal() refuses them.
            raise RuntimeError(f"sig {sig} cannot be caught")
        if sig not in _CAUGHT_SIGNALS and sig not in _ROUTED_SIGNALS:
            raise NotImplementedError(
                f"signal {sig} belongs to the BEAM: inside the node a loop may handle "
                "SIGCHLD, SIGHUP, SIGALRM and SIGUSR2 only"
            )
        self._check_closed()
        handle = events.Handle(callback, args, self, None)
        if sig in self._signal_handlers:
            self._signal_handlers[sig] = handle
            return
        try:
            if self._signal_fd is None:
                self._signal_fd = _erlang_loop.subscribe_signals()
                self._add_reader(self._signal_fd, self._read_signals)
            self._signal_routes[sig] = _take_signal(sig)
        except BaseException:
            if not self._signal_handlers:
                self._close_signal_fd()
            raise
        self._signal_handlers[sig] = handle

    def remove_signal_handler(self, sig: int) -> bool:
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        try:
            _leave_signal(sig, self._signal_routes.pop(sig, None))
        except Exception:
            # The handler is gone either way; `close()` removes the others
            # after this one.
            logger.warning("could not stop taking signal %d", sig, exc_info=True)
        if not self._signal_handlers:
            self._close_signal_fd()
        return True

    def _read_signals(self) -> None:
        assert self._signal_fd is not None
        try:
            delivered = os.read(self._signal_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        # One byte per signal, as asyncio's wakeup fd: each runs its handler,
        # in the order they came.
        for sig in delivered:
            if sig:
                self._handle_signal(sig)

    def _close_signal_fd(self) -> None:
        fd, self._signal_fd = self._signal_fd, None
        if fd is None:
            return
        try:
            if not self.is_closed():
                self._remove_reader(fd)
        finally:
            _erlang_loop.unsubscribe_signals(fd)

    # -- erlang_python extras --

    def stats(self) -> dict[str, int]:
        """The native loop's counters (timers, wake-ups, fd events, ...)."""
        return self._native.stats()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()} "
            f"isolated={self._loop_handle is not None}>"
        )
