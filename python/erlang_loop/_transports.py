"""The loop's socket transports, named after asyncio's.

They are CPython's selector transports (``selector_events``), so the whole
transport contract holds as it does there: write/writelines that try the
socket at once and buffer only the rest, ``write_eof`` as a half-close,
``abort``, ``close`` that flushes first, pause/resume of reading, write buffer
limits calling ``pause_writing``/``resume_writing``, ``BufferedProtocol``,
``eof_received`` keeping the transport open, and the SSL path on top.

What changes is the receive path: CPython's ``sock.recv(max_size)`` allocates
a 256 KiB object per read and shrinks it (mmap/munmap on every read). Here
every transport reads into its thread's one reusable buffer and hands the
protocol ``bytes`` of the right size (LESSONS 28): the stream transport's
per-event methods and the datagram transport's ``_read_ready`` are native.
Readiness comes through the loop's selector (its own epoll set, see
src/io/poller.rs).
"""

from __future__ import annotations

import sys
from asyncio import selector_events
from typing import Any

import _erlang_loop


class _ErlangSocketTransport(selector_events._SelectorSocketTransport):  # type: ignore[name-defined,misc]
    """A stream socket transport whose per-event methods are native.

    ``_read_ready``, ``_read_ready__data_received`` (one read into the
    thread's receive buffer, ``bytes`` of the right size to the protocol) and
    the ``write`` fast path (``bytes`` sent at once while nothing is
    buffered) are the steps of asyncio's methods, in Rust
    (src/py/socket_transport.rs); everything else is asyncio's. The
    attributes they read on every event are slots of this class, read at
    fixed offsets (src/py/instance_attrs.rs); asyncio's code sets and reads
    them as before."""

    __slots__ = _erlang_loop.SOCKET_TRANSPORT_SLOTS

    def __new__(cls, *args: Any, **kwargs: Any) -> _ErlangSocketTransport:
        # asyncio's class default, which its __del__ reads even when
        # __init__ failed or never ran (a copy, an unpickling); a slot has
        # none.
        transport = super().__new__(cls)
        transport._sock = None
        return transport


for _name, _method in _erlang_loop.socket_transport_methods(_ErlangSocketTransport).items():
    setattr(_ErlangSocketTransport, _name, _method)


class _ErlangDatagramTransport(selector_events._SelectorDatagramTransport):  # type: ignore[name-defined,misc]
    """A datagram transport whose ``_read_ready`` is native (one datagram
    per readiness event, as asyncio's, read into the thread's receive
    buffer) and ``sendto``'s fast path too (``bytes`` sent at once to the
    connected peer or a numeric IPv4 address)
    (src/py/datagram_transport.rs); everything else is asyncio's. The
    attributes those read are slots of this class, as above."""

    __slots__ = _erlang_loop.DATAGRAM_TRANSPORT_SLOTS

    def __new__(cls, *args: Any, **kwargs: Any) -> _ErlangDatagramTransport:
        transport = super().__new__(cls)
        transport._sock = None  # asyncio's class default, as above
        return transport

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The native _read_ready reads _paused on every event. Later 3.11
        # releases set it in _SelectorTransport.__init__; earlier ones
        # (3.11.2, Debian 12's python3) set it for stream transports only,
        # and an unset slot raises AttributeError there.
        if not hasattr(self, "_paused"):
            self._paused = False

    if sys.version_info >= (3, 13) and not hasattr(
        selector_events._SelectorDatagramTransport, "_header_size"
    ):
        # 3.13's sendto counts a datagram it buffers as its length plus 8
        # header bytes, written as a literal; later releases name it
        # `_header_size`. The native sendto adds this attribute where it is
        # set, so a buffered datagram counts in get_write_buffer_size() (and
        # against the high-water mark) as on the stdlib loop.
        _header_size = 8

    if "pause_reading" not in selector_events._SelectorTransport.__dict__:
        # Those earlier releases also give flow control of reads to stream
        # transports only (a datagram transport's pause_reading raises
        # NotImplementedError); later ones give every selector transport the
        # same code: a datagram transport pauses and resumes on all of them.
        pause_reading = selector_events._SelectorSocketTransport.pause_reading
        resume_reading = selector_events._SelectorSocketTransport.resume_reading
        is_reading = selector_events._SelectorSocketTransport.is_reading

        def _add_reader(self, fd: int, callback: Any, *args: Any) -> None:
            # As later releases: a transport paused before its first read
            # (in connection_made) is not watched by the read scheduled then.
            if self.is_reading():
                self._loop._add_reader(fd, callback, *args)


for _name, _method in _erlang_loop.datagram_transport_methods(_ErlangDatagramTransport).items():
    setattr(_ErlangDatagramTransport, _name, _method)
