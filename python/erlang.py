"""Calling the Erlang node from Python code that runs inside it.

``call(name, *args)`` runs the Erlang function registered with
``py:register_function(Name, Fun)`` and returns its result; an Erlang error
raises :class:`ErlangError`. ``send(pid, term)`` sends ``term`` to ``pid``.
Pids, references, funs and ports arrive as :class:`Pid`, :class:`Ref` and
:class:`OpaqueTerm` and convert back to the same Erlang value.
"""

from __future__ import annotations

from _erlang import ErlangError, OpaqueTerm, Pid, Ref, call, send

__all__ = ["ErlangError", "OpaqueTerm", "Pid", "Ref", "call", "send"]
