"""Calling the Erlang node from Python code that runs inside it.

``call(name, *args)`` runs the Erlang function registered with
``py:register_function(Name, Fun)`` and returns its result; an Erlang error
raises :class:`ErlangError`. ``send(pid, term)`` sends ``term`` to ``pid``.
Pids, references, funs and ports arrive as :class:`Pid`, :class:`Ref` and
:class:`OpaqueTerm` and convert back to the same Erlang value.

On a loop started by ``py_asyncio:start_loop/1``, ``await receive(timeout)``
returns the next Erlang message sent to ``self()`` (the loop's
``py_asyncio_loop`` process) without blocking the loop.
"""

from __future__ import annotations

from typing import Any

from _erlang import ErlangError, OpaqueTerm, Pid, Ref, call, send

__all__ = ["ErlangError", "OpaqueTerm", "Pid", "Ref", "call", "receive", "self", "send"]


async def receive(timeout: float | None = None) -> Any:
    """Waits for the next message sent to :func:`self` and returns it (as
    Python values). ``timeout`` in seconds; when it passes, raises
    ``TimeoutError``. Only on a ``py_asyncio`` loop, else ``RuntimeError``."""
    # Imported here: ``import erlang`` stays cheap for code that never waits.
    import erlang_python_loops

    return await erlang_python_loops.receive(timeout)


def self() -> Pid:
    """The pid whose messages :func:`receive` returns: this ``py_asyncio``
    loop's Erlang process. Only on such a loop, else ``RuntimeError``."""
    import erlang_python_loops

    return erlang_python_loops.current_pid()
