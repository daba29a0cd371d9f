"""The loop's selector: fd registrations live in Python (as in the stdlib
selectors) and in the native loop's own epoll set, which the native loop
polls with the GIL released (the BEAM wakes it when it sleeps), never a
Python-side poll."""

from __future__ import annotations

import selectors
from collections.abc import Callable
from typing import Any

from _erlang_loop import NativeLoop


class _ErlangSelector(selectors._BaseSelectorImpl):  # type: ignore[name-defined,misc]
    """A selector whose ``select`` waits on the native loop (GIL released).

    The loop's iteration waits through its native runner instead; a direct
    ``select`` hands the timers its wait fired to :attr:`on_timers_fired`."""

    def __init__(self, native: NativeLoop) -> None:
        super().__init__()
        self._native = native
        self.on_timers_fired: Callable[[], None] | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        try:
            self._native.set_interest(key.fd, events)
        except BaseException:
            super().unregister(fileobj)
            raise
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        try:
            key = self._fd_to_key[self._fileobj_lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        # Told even when the events are the same: the number may name another
        # file since (a socket closed while watched, its number reused), which
        # the native loop's epoll set does not hold yet.
        self._native.set_interest(key.fd, events)
        key = key._replace(events=events, data=data)
        self._fd_to_key[key.fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self._native.set_interest(key.fd, 0)
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        fd_events, fired = self._native.wait(timeout)
        if fired and self.on_timers_fired is not None:
            self.on_timers_fired()
        ready = []
        fd_to_key = self._fd_to_key
        for fd, mask in fd_events:
            key = fd_to_key.get(fd)
            if key is not None:
                ready.append((key, mask & key.events))
        return ready

    def close(self) -> None:
        self._native.close()
        super().close()
