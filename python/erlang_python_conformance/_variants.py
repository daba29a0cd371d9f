"""ErlangEventLoop variants of the suite's per-loop test classes.

Where CPython's suite runs one mixin of tests once per loop class
(``SelectEventLoopTests``, ``PollEventLoopTests``, ``EPollEventLoopTests``,
``SelectorStartServerTests``, ...), we add the same tests once more with our
loop, under an ``Erlang`` name. The stdlib-loop classes themselves are in
``excluded.txt``: they test the selector loops, not ours.
"""

from __future__ import annotations

import asyncio
import unittest
from collections.abc import Callable
from types import ModuleType
from typing import Any
from unittest import mock

from erlang_loop import ErlangEventLoop


def _make_class(
    module: ModuleType, name: str, bases: tuple[type, ...], body: dict[str, Any]
) -> type:
    """A test class that unittest finds in ``module`` and names
    ``test.test_asyncio.<module>.<name>.<test>``."""
    cls = type(name, bases, {"__module__": module.__name__, "__qualname__": name, **body})
    setattr(module, name, cls)
    return cls


def _create_event_loop(self: object) -> ErlangEventLoop:
    return ErlangEventLoop()


def _events(module: ModuleType) -> list[type]:
    utils = module.test_utils

    def set_up(self: Any) -> None:
        # The Unix classes attach a SafeChildWatcher, which needs a SIGCHLD
        # handler; signals belong to the BEAM, so use asyncio's default
        # watcher (a thread per child), as asyncio.run would.
        super(cls, self).setUp()
        watcher = asyncio.ThreadedChildWatcher()
        watcher.attach_loop(self.loop)
        asyncio.set_child_watcher(watcher)

    def tear_down(self: Any) -> None:
        asyncio.set_child_watcher(None)
        super(cls, self).tearDown()

    cls = _make_class(
        module,
        "ErlangEventLoopTests",
        (module.EventLoopTestsMixin, module.SubprocessTestsMixin, utils.TestCase),
        {"create_event_loop": _create_event_loop, "setUp": set_up, "tearDown": tear_down},
    )
    return [cls]


def _mixin(
    mixin_name: str, name: str = "ErlangEventLoopTests"
) -> Callable[[ModuleType], list[type]]:
    """A variant made of the module's mixin and ``test_utils.TestCase``, with
    ``create_event_loop`` returning our loop (test_sendfile, test_sock_lowlevel)."""

    def make(module: ModuleType) -> list[type]:
        bases = (getattr(module, mixin_name), module.test_utils.TestCase)
        return [_make_class(module, name, bases, {"create_event_loop": _create_event_loop})]

    return make


def _new_loop(base_name: str, name: str) -> Callable[[ModuleType], list[type]]:
    """A subclass of the module's selector class whose ``new_loop`` returns
    our loop (the functional tests: test_server, test_buffered_proto, ...)."""

    def make(module: ModuleType) -> list[type]:
        base = getattr(module, base_name, None)
        if base is None:  # e.g. test_sslproto without the ssl module
            return []
        return [_make_class(module, name, (base,), {"new_loop": _create_event_loop})]

    return make


def _selector_in_set_up(base_name: str, name: str) -> Callable[[ModuleType], list[type]]:
    """A subclass of a class whose ``setUp`` calls ``asyncio.SelectorEventLoop()``
    itself; the call gives our loop instead."""

    def make(module: ModuleType) -> list[type]:
        base = getattr(module, base_name, None)
        if base is None:
            return []

        def set_up(self: Any) -> None:
            with mock.patch.object(asyncio, "SelectorEventLoop", ErlangEventLoop):
                base.setUp(self)

        return [_make_class(module, name, (base,), {"setUp": set_up})]

    return make


# module name -> the variants to add to it.
_VARIANTS: dict[str, Callable[[ModuleType], list[type]]] = {
    "test_events": _events,
    "test_sendfile": _mixin("SendfileTestsBase"),
    "test_sock_lowlevel": _mixin("BaseSockTestsMixin"),
    "test_server": _new_loop("SelectorStartServerTests", "ErlangStartServerTests"),
    "test_buffered_proto": _new_loop(
        "BufferedProtocolSelectorTests", "BufferedProtocolErlangTests"
    ),
    "test_sslproto": _new_loop("SelectorStartTLSTests", "ErlangStartTLSTests"),
    "test_base_events": _selector_in_set_up(
        "BaseEventLoopWithSelectorTests", "BaseEventLoopWithErlangLoopTests"
    ),
    "test_unix_events": _selector_in_set_up(
        "SelectorEventLoopUnixSocketTests", "ErlangEventLoopUnixSocketTests"
    ),
}


def add_variants(module: ModuleType) -> list[str]:
    """Adds the ErlangEventLoop classes for ``module``; returns their names."""
    short = module.__name__.rpartition(".")[2]
    make = _VARIANTS.get(short)
    if make is None:
        return []
    return [cls.__name__ for cls in make(module) if issubclass(cls, unittest.TestCase)]
