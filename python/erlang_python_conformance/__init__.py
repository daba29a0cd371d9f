"""CPython's own asyncio test suite (``test.test_asyncio``) on ErlangEventLoop,
inside the BEAM::

    bin/erlang-python -m erlang_python_conformance [--quick] [TEST ...]

Every test gets our loop: through the policy (``asyncio.run``,
``asyncio.new_event_loop``, ``IsolatedAsyncioTestCase``), and through an
``Erlang`` variant of each per-loop test class (``ErlangEventLoopTests`` next
to ``SelectEventLoopTests``, ...). Tests of other loops' internals are listed
in ``tests/conformance/excluded.txt``; the tests that still fail, with their
reasons, in ``tests/conformance/known_failures.txt``. The run exits 1 when a
test fails that is not a known failure; its last line is
``N passed, N failed (N known, N new), N skipped``.
"""

from __future__ import annotations

from ._cli import QUICK, main

__all__ = ["QUICK", "main"]
