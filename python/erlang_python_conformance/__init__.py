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

An entry of either list that holds on some CPython versions only starts its
reason with a version mark, ``[py`` comma-separated comparisons ``]``::

    test_events.PolicyTests.test_get_event_loop  [py>=3.12] why
    test_x.Y.test_z  [py>=3.12,<3.14] [not run] why

On the other versions the line is ignored: a test it names that fails there
is new, one that passes is not reported as passing again (see ``_lists``).
"""

from __future__ import annotations

from ._cli import QUICK, main

__all__ = ["QUICK", "main"]
