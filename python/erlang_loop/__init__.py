"""asyncio on the BEAM: an event loop whose timers and fd readiness are driven
by Erlang.

Usage (any of these, inside a node running erlang_python)::

    import asyncio, erlang_loop

    erlang_loop.run(main())                        # like uvloop.run

    loop = erlang_loop.ErlangEventLoop()           # by hand
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())

    asyncio.set_event_loop_policy(erlang_loop.get_event_loop_policy())
    asyncio.run(main())                            # the application does this at start

    loop = erlang_loop.ErlangEventLoop(isolated=True)   # a loop with its own Erlang worker
"""

from __future__ import annotations

from ._loop import ErlangEventLoop
from ._policy import ErlangEventLoopPolicy, get_event_loop_policy, install, new_event_loop, run

EventLoopPolicy = ErlangEventLoopPolicy

__all__ = [
    "ErlangEventLoop",
    "ErlangEventLoopPolicy",
    "EventLoopPolicy",
    "get_event_loop_policy",
    "install",
    "new_event_loop",
    "run",
]
