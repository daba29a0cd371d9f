"""The policy that gives every thread an ``ErlangEventLoop``. Which thread is
Python's "main thread" inside the BEAM is an accident of start-up, so nothing
here depends on it (LESSONS 5)."""

from __future__ import annotations

import asyncio
import sys
import threading
import warnings
from collections.abc import Coroutine
from typing import Any, TypeVar

from asyncio import unix_events

from ._loop import ErlangEventLoop

_T = TypeVar("_T")

# CPython 3.12 deprecated get_event_loop() making a loop when none is set
# (gh-93453): its policy warns where it makes one. Ours makes one on any
# thread, and warns there too on 3.12+, as the stdlib's does on its main
# thread (3.11's makes it silently).
WARNS_IMPLICIT_LOOP = sys.version_info >= (3, 12)

# Modules whose frames the warning skips, so that it points at the caller's
# line as the stdlib's does (asyncio's own, and ours that wrap it).
_WRAPPER_MODULES = ("asyncio", "erlang_loop", "erlang_asyncio")


def _is_wrapper(module: object) -> bool:
    return isinstance(module, str) and any(
        module == name or module.startswith(name + ".") for name in _WRAPPER_MODULES
    )


def _warn_implicit_loop() -> None:
    """The stdlib's DeprecationWarning of 3.12+ for a loop made implicitly,
    attached to the first frame outside asyncio and our wrappers."""
    if not WARNS_IMPLICIT_LOOP:
        return
    stacklevel = 1  # this function
    frame: Any = sys._getframe(0)
    while frame is not None and _is_wrapper(frame.f_globals.get("__name__")):
        frame = frame.f_back
        stacklevel += 1
    warnings.warn("There is no current event loop", DeprecationWarning, stacklevel=stacklevel)


class ErlangEventLoopPolicy(unix_events._UnixDefaultEventLoopPolicy):  # type: ignore[name-defined,misc]
    """Creates ``ErlangEventLoop`` on every thread, on demand."""

    _loop_factory = ErlangEventLoop

    def get_event_loop(self) -> asyncio.AbstractEventLoop:
        """This thread's loop, created on first use on any thread (on CPython
        3.12+ with the stdlib's DeprecationWarning). As in
        CPython, a thread that explicitly set None (``asyncio.run`` does at
        its end) gets ``RuntimeError``; a call from Erlang always starts
        afresh (the worker pool forgets that None between calls). A loop
        whose Erlang worker died (restarted by its supervisor, or with the
        application) is closed and replaced: it could never wait again."""
        local = self._local
        loop = local._loop
        if isinstance(loop, ErlangEventLoop) and not loop.is_running() and loop._worker_lost():
            loop.close()
            self.set_event_loop(self.new_event_loop())
        if local._loop is None:
            if local._set_called:
                raise RuntimeError(
                    f"There is no current event loop in thread "
                    f"{threading.current_thread().name!r}."
                )
            _warn_implicit_loop()
            self.set_event_loop(self.new_event_loop())
        assert local._loop is not None
        return local._loop  # type: ignore[no-any-return]

    def new_event_loop(self) -> ErlangEventLoop:
        return ErlangEventLoop()


_policy_lock = threading.Lock()
_policy: ErlangEventLoopPolicy | None = None


def get_event_loop_policy() -> ErlangEventLoopPolicy:
    """The process-wide ``ErlangEventLoopPolicy`` (created once)."""
    global _policy
    with _policy_lock:
        if _policy is None:
            _policy = ErlangEventLoopPolicy()
        return _policy


def forget_unset_loop() -> None:
    """Makes this thread's loop state that of a fresh thread when no loop is
    set (the py worker pool calls it after every call)."""
    policy = _policy
    if policy is not None:
        local = policy._local
        if local._loop is None:
            local._set_called = False


def install() -> None:
    """Makes ``asyncio.run`` and ``asyncio.get_event_loop`` use ErlangEventLoop."""
    asyncio.set_event_loop_policy(get_event_loop_policy())


def new_event_loop() -> ErlangEventLoop:
    return ErlangEventLoop()


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Runs ``main`` on a new ErlangEventLoop, like ``asyncio.run``."""
    if asyncio.events._get_running_loop() is not None:
        # Before the Runner, as asyncio.run: entering it makes a loop, whose
        # clean-up would fail on the running one too (a second RuntimeError
        # hiding this one, its shutdown_asyncgens never awaited).
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(loop_factory=new_event_loop, debug=debug) as runner:
        return runner.run(main)
