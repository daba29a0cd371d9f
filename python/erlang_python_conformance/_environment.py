"""What the run changes in asyncio so that every test gets an ErlangEventLoop,
and how it sees which tests did.

- ``asyncio.DefaultEventLoopPolicy`` becomes ``ErlangEventLoopPolicy``: the
  tests reset the policy with ``asyncio.set_event_loop_policy(None)``, and
  asyncio then builds a new ``DefaultEventLoopPolicy``, so ``asyncio.run``,
  ``asyncio.new_event_loop`` and ``IsolatedAsyncioTestCase`` still get our
  loop afterwards.
- :class:`AsyncioState` puts back what a test changed in ``asyncio`` and
  ``asyncio.events`` and did not restore. (``test_events``' get_event_loop
  tests replace ``asyncio.get_running_loop`` and friends in ``setUp``; when
  ``setUp`` fails after that, ``tearDown`` never restores them, and every later
  test would see the wrong running loop.)
- ``ErlangEventLoop.__init__`` reports each new loop to a :class:`LoopTracker`,
  so the run can tell the tests that used our loop from those that only used
  the suite's virtual-time ``TestLoop`` or mocks.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from asyncio import unix_events
from typing import Any

import erlang_loop
from erlang_loop import ErlangEventLoop


class TestLoops:
    """The ErlangEventLoops one test created."""

    def __init__(self) -> None:
        self.count = 0
        self._loops: weakref.WeakSet[ErlangEventLoop] = weakref.WeakSet()

    def add(self, loop: ErlangEventLoop) -> None:
        self.count += 1
        self._loops.add(loop)

    def stop_all(self) -> None:
        """Asks every loop of the test that still runs to stop (used on a test
        that timed out, so that its thread can finish and free its fds)."""
        for loop in list(self._loops):
            try:
                if loop.is_running() and not loop.is_closed():
                    loop.call_soon_threadsafe(loop.stop)
            except Exception:  # noqa: BLE001 - best effort on an abandoned test
                pass


class LoopTracker:
    """Counts the ErlangEventLoops created while a test runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: TestLoops | None = None

    def start_test(self) -> TestLoops:
        loops = TestLoops()
        with self._lock:
            self._current = loops
        return loops

    def stop_test(self) -> None:
        with self._lock:
            self._current = None

    def loop_created(self, loop: ErlangEventLoop) -> None:
        with self._lock:
            if self._current is not None:
                self._current.add(loop)


class AsyncioState:
    """A snapshot of the module globals of ``asyncio`` and ``asyncio.events``."""

    _MODULES = (asyncio, asyncio.events)

    def __init__(self) -> None:
        self._saved = [(module, dict(vars(module))) for module in self._MODULES]

    def restore(self) -> list[str]:
        """Puts every changed global back; returns the names restored."""
        restored = []
        for module, saved in self._saved:
            current = vars(module)
            for name in [name for name in current if name not in saved]:
                delattr(module, name)
                restored.append(f"{module.__name__}.{name}")
            for name, value in saved.items():
                if current.get(name, _MISSING) is not value:
                    setattr(module, name, value)
                    restored.append(f"{module.__name__}.{name}")
        return restored


_MISSING = object()


def install(tracker: LoopTracker) -> None:
    """Makes ErlangEventLoop the loop of every policy asyncio creates, and
    reports new loops to ``tracker``. Idempotent per process."""
    asyncio.DefaultEventLoopPolicy = erlang_loop.ErlangEventLoopPolicy  # type: ignore[misc]
    unix_events.DefaultEventLoopPolicy = erlang_loop.ErlangEventLoopPolicy  # type: ignore[misc]
    asyncio.set_event_loop_policy(None)

    init = ErlangEventLoop.__init__
    original = getattr(init, "__wrapped__", init)

    @functools.wraps(original)
    def tracked_init(self: ErlangEventLoop, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        tracker.loop_created(self)

    ErlangEventLoop.__init__ = tracked_init  # type: ignore[method-assign]
