"""Fixtures shared by the suites of tests/python (a suite's own ``loop``
fixture, where it has one, takes precedence)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from erlang_loop import ErlangEventLoop


@pytest.fixture(params=[False, True], ids=["native", "debug"])
def loop(request: pytest.FixtureRequest) -> Iterator[ErlangEventLoop]:
    """A fresh loop, on the native paths or (debug mode) asyncio's Python ones."""
    new = ErlangEventLoop()
    new.set_debug(request.param)
    try:
        yield new
    finally:
        if not new.is_closed():
            new.close()
