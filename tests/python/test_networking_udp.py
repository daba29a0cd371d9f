"""UDP on ErlangEventLoop inside the BEAM: asyncio's UDP echo examples,
connected and unconnected endpoints, create_datagram_endpoint's options,
ICMP errors, flow of many datagrams, pause_reading, the transport class.

Run with ``bin/erlang-python -m pytest tests/python/test_networking_udp.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import socket
import sys
import time
from asyncio import selector_events
from collections.abc import Iterator
from typing import Any

import pytest
from test_networking import (
    LOCALHOST,
    check_no_leaked_fds,
    errors,
    has_ipv6,
    new_loop,
    payload,
    run,
    unused_port,
    wait_for_condition,
)

from erlang_loop import ErlangEventLoop
from erlang_loop._transports import _ErlangDatagramTransport, _ErlangSocketTransport


@pytest.fixture(autouse=True)
def no_leaked_fds() -> Iterator[None]:
    yield from check_no_leaked_fds()


@pytest.fixture
def loop() -> Iterator[ErlangEventLoop]:
    yield from new_loop()


@pytest.fixture(params=[False, True], ids=["default", "isolated"])
def any_loop(request: pytest.FixtureRequest) -> Iterator[ErlangEventLoop]:
    yield from new_loop(request.param)


class Datagrams(asyncio.DatagramProtocol):
    """Keeps every datagram, error and the loss of the connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: Any = None
        self.received: list[tuple[bytes, Any]] = []
        self.errors: list[Exception] = []
        self.lost = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert type(data) is bytes
        self.received.append((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Echo(asyncio.DatagramProtocol):
    """Sends every datagram back to where it came from."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


# ------------------------------------------- asyncio's documented examples


class EchoServerProtocol(asyncio.DatagramProtocol):
    """asyncio docs, "UDP Echo Server", without the prints."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        message = data.decode()
        self.transport.sendto(message.encode(), addr)  # type: ignore[attr-defined]


class EchoClientProtocol(asyncio.DatagramProtocol):
    """asyncio docs, "UDP Echo Client"."""

    def __init__(self, message: str, on_con_lost: asyncio.Future[Any]) -> None:
        self.message = message
        self.on_con_lost = on_con_lost
        self.transport: Any = None
        self.received: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.sendto(self.message.encode())

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data.decode())
        self.transport.close()

    def error_received(self, exc: Exception) -> None:
        raise AssertionError(f"error received: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_con_lost.set_result(True)


def test_udp_echo_docs_example(any_loop: ErlangEventLoop) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(
            EchoServerProtocol, local_addr=(LOCALHOST, 0)
        )
        port = server.get_extra_info("sockname")[1]
        on_con_lost = loop.create_future()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: EchoClientProtocol("Hello World!", on_con_lost),
            remote_addr=(LOCALHOST, port),
        )
        try:
            await on_con_lost
        finally:
            transport.close()
            server.close()
        return protocol.received

    assert run(any_loop, main()) == ["Hello World!"]


def test_udp_echo_on_a_base_class_that_sets_no_paused(
    loop: ErlangEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CPython 3.11.2 (Debian 12's python3) sets _paused for stream transports
    # only: its datagram transports have none, which the native _read_ready
    # reads on every event (every datagram was lost to an AttributeError).
    base_init = selector_events._SelectorTransport.__init__

    def init_without_paused(self: Any, *args: Any, **kwargs: Any) -> None:
        base_init(self, *args, **kwargs)
        if isinstance(self, selector_events._SelectorDatagramTransport):
            with contextlib.suppress(AttributeError):  # 3.11.2 set none
                del self._paused

    monkeypatch.setattr(selector_events._SelectorTransport, "__init__", init_without_paused)

    async def main() -> list[str]:
        server, _ = await loop.create_datagram_endpoint(
            EchoServerProtocol, local_addr=(LOCALHOST, 0)
        )
        on_con_lost = loop.create_future()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: EchoClientProtocol("Hello World!", on_con_lost),
            remote_addr=server.get_extra_info("sockname"),
        )
        try:
            await asyncio.wait_for(on_con_lost, 10)
        finally:
            transport.close()
            server.close()
        return protocol.received

    assert run(loop, main()) == ["Hello World!"]


# ---------------------------------------------------------------- endpoints


def test_datagram_transport_class_and_extra_info(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCALHOST, 0))
        address = server.get_extra_info("sockname")
        client, _ = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), remote_addr=address
        )
        assert type(server) is _ErlangDatagramTransport
        assert type(client) is _ErlangDatagramTransport
        assert server.get_extra_info("peername") is None
        assert client.get_extra_info("peername") == address
        sock = client.get_extra_info("socket")
        assert sock.type == socket.SOCK_DGRAM and sock.family == socket.AF_INET
        assert client.get_extra_info("sockname") == sock.getsockname()
        assert client.get_write_buffer_size() == 0
        assert client.is_reading()
        client.close()
        assert client.is_closing()
        server.close()

    run(loop, main())


def test_unconnected_client(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCALHOST, 0))
        address = server.get_extra_info("sockname")
        client, protocol = await recording_endpoint(loop)
        assert client.get_extra_info("peername") is None
        for message in (b"one", b"two", b"three"):
            client.sendto(message, address)
            await wait_for_condition(lambda m=message: protocol.received[-1:] == [(m, address)])
        assert protocol.received == [(m, address) for m in (b"one", b"two", b"three")]
        client.close()
        server.close()
        assert await protocol.lost is None

    run(loop, main())


def test_connected_endpoint_sendto(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCALHOST, 0))
        address = server.get_extra_info("sockname")
        client, protocol = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), remote_addr=address
        )
        client.sendto(b"no address")
        client.sendto(b"its own address", address)
        await wait_for_condition(lambda: len(protocol.received) == 2)
        assert sorted(protocol.received) == [
            (b"its own address", address),
            (b"no address", address),
        ]
        with pytest.raises(ValueError):
            client.sendto(b"elsewhere", (LOCALHOST, address[1] + 1))
        with pytest.raises(TypeError):
            client.sendto("text")
        client.close()
        server.close()

    run(loop, main())


def test_a_connected_endpoint_ignores_other_senders(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCALHOST, 0))
        address = server.get_extra_info("sockname")
        client, protocol = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), remote_addr=address
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(b"stranger", client.get_extra_info("sockname"))
            client.sendto(b"peer")
            await wait_for_condition(lambda: bool(protocol.received))
            await asyncio.sleep(0.05)
        assert protocol.received == [(b"peer", address)]
        client.close()
        server.close()

    run(loop, main())


def test_error_received_on_a_closed_port(loop: ErlangEventLoop) -> None:
    """A connected endpoint sends to a port nobody listens on: the ICMP
    "port unreachable" comes back as error_received(ConnectionRefusedError)
    and the transport stays open."""
    dead = unused_port(socket.SOCK_DGRAM)

    async def main() -> None:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), remote_addr=(LOCALHOST, dead)
        )
        give_up = loop.time() + 10
        while not protocol.errors and loop.time() < give_up:
            transport.sendto(b"anyone?")  # ICMP replies are rate limited: retry
            await asyncio.sleep(0.05)
        assert protocol.errors, "no error_received"
        assert all(isinstance(e, ConnectionRefusedError) for e in protocol.errors)
        assert not transport.is_closing()
        assert not protocol.lost.done()
        transport.close()
        assert await protocol.lost is None

    run(loop, main())


def test_broadcast_option(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        plain, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(LOCALHOST, 0)
        )
        broadcast, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(LOCALHOST, 0), allow_broadcast=True
        )
        assert not plain.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        assert broadcast.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        plain.close()
        broadcast.close()

    run(loop, main())


def test_reuse_address_refused_and_reuse_port(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        # Refused as asyncio refuses it: a TypeError since 3.11 (the
        # parameter is gone).
        with pytest.raises(TypeError, match="reuse_address"):
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(LOCALHOST, 0), reuse_address=True
            )
        first, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(LOCALHOST, 0), reuse_port=True
        )
        port = first.get_extra_info("sockname")[1]
        assert first.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        second, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(LOCALHOST, port), reuse_port=True
        )
        assert second.get_extra_info("sockname") == (LOCALHOST, port)
        first.close()
        second.close()

    run(loop, main())


def test_family_proto_flags_and_an_unbound_endpoint(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server, _ = await loop.create_datagram_endpoint(
            Echo,
            local_addr=("localhost", 0),
            family=socket.AF_INET,
            proto=socket.IPPROTO_UDP,
            flags=socket.AI_PASSIVE,
        )
        host, port = server.get_extra_info("sockname")
        assert host == LOCALHOST
        # No address at all: an unbound socket of the family, bound by the
        # OS at the first send.
        client, protocol = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), family=socket.AF_INET
        )
        assert client.get_extra_info("socket").family == socket.AF_INET
        client.sendto(b"unbound", (LOCALHOST, port))
        await wait_for_condition(lambda: bool(protocol.received))
        assert protocol.received == [(b"unbound", (LOCALHOST, port))]
        client.close()
        server.close()

    run(loop, main())


def test_endpoint_on_a_given_socket(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCALHOST, 0))
        address = server.get_extra_info("sockname")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOCALHOST, 0))
        client, protocol = await loop.create_datagram_endpoint(lambda: Datagrams(loop), sock=sock)
        assert not sock.getblocking()
        assert client.get_extra_info("sockname") == sock.getsockname()
        client.sendto(b"mine", address)
        await wait_for_condition(lambda: bool(protocol.received))
        assert protocol.received == [(b"mine", address)]
        client.close()
        await protocol.lost
        assert sock.fileno() == -1
        server.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other, pytest.raises(ValueError):
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(LOCALHOST, 0), sock=other
            )

    run(loop, main())


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
def test_udp_echo_over_ipv6(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("::1", 0))
        address = server.get_extra_info("sockname")
        client, protocol = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), remote_addr=address[:2]
        )
        client.sendto(b"six")
        await wait_for_condition(lambda: bool(protocol.received))
        assert protocol.received[0][0] == b"six"
        client.close()
        server.close()

    run(loop, main())


# ---------------------------------------------------------------- reading


def test_many_and_large_datagrams_arrive_intact(loop: ErlangEventLoop) -> None:
    """Datagrams of every size up to the largest IPv4 one, sent in a burst:
    each arrives whole, in order, as its own bytes (the loop's receive buffer
    is reused, a few datagrams per readiness event)."""
    sizes = [1, 2, 100, 1400, 9000, 65507] * 5 + [10] * 170
    messages = [payload(size, seed=i) for i, size in enumerate(sizes)]

    async def main() -> list[bytes]:
        receiver, protocol = await recording_endpoint(loop)
        receiver.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024
        )
        address = receiver.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            for message in messages:
                sender.sendto(message, address)
            await wait_for_condition(lambda: len(protocol.received) == len(messages))
        receiver.close()
        return [data for data, _ in protocol.received]

    assert run(loop, main()) == messages


def test_pause_reading_in_datagram_received_stops_at_once(loop: ErlangEventLoop) -> None:
    class PauseAfterEach(Datagrams):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            self.transport.pause_reading()

    async def main() -> None:
        receiver, protocol = await loop.create_datagram_endpoint(
            lambda: PauseAfterEach(loop), local_addr=(LOCALHOST, 0)
        )
        address = receiver.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(5):
                sender.sendto(b"%d" % i, address)
            for expected in range(1, 6):
                await wait_for_condition(lambda n=expected: len(protocol.received) >= n)
                assert not receiver.is_reading()
                # Paused: nothing more comes, however long we wait.
                await asyncio.sleep(0.02)
                assert len(protocol.received) == expected
                receiver.resume_reading()
        assert [data for data, _ in protocol.received] == [b"0", b"1", b"2", b"3", b"4"]
        receiver.close()

    run(loop, main())


def test_an_endpoint_paused_in_connection_made_reads_once_resumed(
    loop: ErlangEventLoop,
) -> None:
    """The first read is scheduled with ``connection_made``: a pause made
    there holds it (on every 3.11 release; the earlier ones have no flow
    control of datagram reads of their own)."""

    class PausedAtOnce(Datagrams):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.transport.pause_reading()

    async def main() -> None:
        receiver, protocol = await loop.create_datagram_endpoint(
            lambda: PausedAtOnce(loop), local_addr=(LOCALHOST, 0)
        )
        assert not receiver.is_reading()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"held", receiver.get_extra_info("sockname"))
            # Paused: nothing comes, however long we wait.
            await asyncio.sleep(0.05)
            assert protocol.received == []
            receiver.resume_reading()
            assert receiver.is_reading()
            await wait_for_condition(lambda: bool(protocol.received))
        assert [data for data, _ in protocol.received] == [b"held"]
        receiver.close()

    run(loop, main())


def test_abort_loses_the_endpoint(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        transport, protocol = await recording_endpoint(loop)
        transport.abort()
        assert transport.is_closing()
        assert await protocol.lost is None

    run(loop, main())


def test_a_closed_endpoint_s_port_is_free_at_once(loop: ErlangEventLoop) -> None:
    """The loop keeps no copy of a socket's fd (its own epoll set holds the
    sockets it watches, not duplicates): once ``connection_lost`` ran, the
    port can be bound again without SO_REUSEADDR, as on the stdlib loop."""

    async def main() -> None:
        for _ in range(20):
            transport, protocol = await recording_endpoint(loop)
            port = transport.get_extra_info("sockname")[1]
            transport.close()
            await protocol.lost
            again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                again.bind((LOCALHOST, port))
            finally:
                again.close()

    run(loop, main())


# ------------------------------------------------ the native _read_ready


@pytest.mark.parametrize("name", ["_read_ready", "sendto"])
def test_the_datagram_read_and_send_are_native(name: str) -> None:
    method = vars(_ErlangDatagramTransport)[name]
    assert type(method).__name__ == "method_descriptor"


def test_a_socket_subclass_gets_its_own_sendto_called(loop: ErlangEventLoop) -> None:
    """The native send is for a plain socket.socket: a subclass's own
    sendto (one that counts or throttles) is asyncio's to call."""
    calls: list[Any] = []

    class CountingSocket(socket.socket):
        def sendto(self, data: Any, *args: Any) -> int:
            calls.append(args[-1])
            return super().sendto(data, *args)

    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind((LOCALHOST, 0))
    sock = CountingSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())

    async def main() -> None:
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(LOCALHOST, 0))
        address = server.get_extra_info("sockname")
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), sock=sock
        )
        transport.sendto(b"counted", address)
        await wait_for_condition(lambda: bool(protocol.received))
        transport.close()
        server.close()

    run(loop, main())
    assert calls and calls[0][1] > 0


async def recording_endpoint(loop: asyncio.AbstractEventLoop) -> tuple[Any, Datagrams]:
    """An endpoint on a port of its own whose protocol keeps what it gets."""
    return await loop.create_datagram_endpoint(lambda: Datagrams(loop), local_addr=(LOCALHOST, 0))


async def only_marker_arrives(server: Datagrams, address: Any) -> None:
    """Sends a marker to ``server`` from a fresh socket and waits for it:
    a datagram sent before it (from anywhere, on loopback) would be
    received first. Then checks that the marker is all it got."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as marker:
        marker.sendto(b"marker", address)
        await wait_for_condition(lambda: bool(server.received))
    assert [data for data, _ in server.received] == [b"marker"]


@contextlib.contextmanager
def fd_number_taken_over(sock: socket.socket) -> Iterator[socket.socket]:
    """Closes ``sock`` and opens sockets until one has its fd number (the
    lowest free one, unless another thread took it meanwhile): what a send
    through the old number would reach."""
    number = sock.fileno()
    sock.close()
    opened: list[socket.socket] = []
    try:
        for _ in range(64):
            opened.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            if opened[-1].fileno() == number:
                yield opened[-1]
                return
        pytest.fail(f"fd {number} was not handed out again")
    finally:
        for other in opened:
            other.close()


@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
def test_sendto_on_a_socket_closed_behind_the_transport_is_error_received(
    loop: ErlangEventLoop, connected: bool
) -> None:
    """As asyncio's sendto on the stdlib loop: the closed socket's send
    fails with EBADF, never through the fd number it had, which another
    socket holds by then; the error goes to error_received, the one being
    handled; the transport stays open."""
    seen: list[Any] = []

    class Seeing(Datagrams):
        def error_received(self, exc: Exception) -> None:
            seen.append((exc, sys.exc_info()[1]))

    async def main() -> None:
        server_transport, server = await recording_endpoint(loop)
        address = server_transport.get_extra_info("sockname")
        where = {"remote_addr": address} if connected else {"local_addr": (LOCALHOST, 0)}
        transport, _ = await loop.create_datagram_endpoint(lambda: Seeing(loop), **where)
        inner = transport.get_extra_info("socket")._sock
        with fd_number_taken_over(inner):
            transport.sendto(b"to nowhere", None if connected else address)
            assert not transport.is_closing()
            await only_marker_arrives(server, address)
        transport.abort()
        server_transport.close()

    run(loop, main())
    [(exc, handled)] = seen
    assert isinstance(exc, OSError) and exc.errno == errno.EBADF and handled is exc


def test_sendto_after_close_of_a_connected_endpoint_sends_nothing(loop: ErlangEventLoop) -> None:
    """asyncio counts a write after the connection is lost and sends
    nothing (on a connected endpoint)."""

    async def main() -> None:
        server_transport, server = await recording_endpoint(loop)
        address = server_transport.get_extra_info("sockname")
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), remote_addr=address
        )
        transport.close()
        transport.sendto(b"late")
        assert transport._conn_lost == 2
        await only_marker_arrives(server, address)
        server_transport.close()

    run(loop, main())


def test_sendto_queues_behind_what_is_buffered(loop: ErlangEventLoop) -> None:
    """A datagram sent while others wait in the buffer goes after them."""

    async def main() -> None:
        server_transport, server = await recording_endpoint(loop)
        address = server_transport.get_extra_info("sockname")
        transport, _ = await recording_endpoint(loop)
        transport._buffer.append((b"first", address))
        transport._buffer_size += len(b"first")
        transport.sendto(b"second", address)
        assert [data for data, _ in transport._buffer] == [b"first", b"second"]
        loop._add_writer(transport._sock_fd, transport._sendto_ready)
        await wait_for_condition(lambda: len(server.received) == 2)
        assert [data for data, _ in server.received] == [b"first", b"second"]
        transport.close()
        server_transport.close()

    run(loop, main())


async def buffered_size_after_a_would_block(
    loop: asyncio.AbstractEventLoop, path: str
) -> tuple[int, int]:
    """Sends 100-byte datagrams from an endpoint connected to a paused Unix
    datagram endpoint at ``path`` until one waits in the buffer (the
    receiver's queue is full: the send would block). That datagram is the
    first buffered, so it took the native sendto's path on our loop. Gives
    how many datagrams went out before it and the buffer's size then."""
    server_transport, _ = await loop.create_datagram_endpoint(
        lambda: Datagrams(loop), local_addr=path, family=socket.AF_UNIX
    )
    server_transport.pause_reading()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: Datagrams(loop), remote_addr=path, family=socket.AF_UNIX
    )
    try:
        for sent in range(100_000):
            transport.sendto(b"x" * 100)
            if transport.get_write_buffer_size():
                return sent, transport.get_write_buffer_size()
        raise AssertionError("the receiver's queue never filled")
    finally:
        transport.abort()
        server_transport.close()
        await asyncio.sleep(0)


def test_a_datagram_buffered_after_a_would_block_counts_as_on_the_stdlib_loop(
    loop: ErlangEventLoop, tmp_path: Any
) -> None:
    """A datagram the native sendto buffers (the socket would block) counts
    in get_write_buffer_size(), and so against the high-water mark, as
    asyncio's sendto counts it: on 3.13 and later its length plus the
    header bytes the stdlib adds per datagram, its length alone before."""
    stdlib = asyncio.SelectorEventLoop()
    try:
        expected = run(stdlib, buffered_size_after_a_would_block(stdlib, str(tmp_path / "stdlib")))
    finally:
        stdlib.close()
    assert run(loop, buffered_size_after_a_would_block(loop, str(tmp_path / "ours"))) == expected


# What the audit hook below does with `socket.sendto` events: None, nothing
# (hooks stay for the life of the process); True, record them; an
# exception class, record and raise it; a function, record and call it
# with the event's arguments.
AUDIT_MODE: list[Any] = [None]
AUDITED: list[Any] = []


def _audit_sendto(event: str, args: tuple[Any, ...]) -> None:
    mode = AUDIT_MODE[0]
    if event != "socket.sendto" or mode is None:
        return
    AUDITED.append(args)
    if isinstance(mode, type) and issubclass(mode, BaseException):
        raise mode("refused by the audit hook")
    if callable(mode):
        mode(*args)


@pytest.fixture(scope="module")
def audit_hook() -> Iterator[None]:
    sys.addaudithook(_audit_sendto)
    yield
    AUDIT_MODE[0] = None


def test_sendto_raises_the_socket_module_s_audit_event(
    loop: ErlangEventLoop, audit_hook: None
) -> None:
    """As the socket module's sendto: the event with the socket and the
    address; a hook's OSError goes to error_received, another exception is
    the fatal write error (as on the stdlib loop)."""
    outcomes: list[Any] = []

    async def main() -> None:
        reported = errors(loop)
        server_transport, _ = await recording_endpoint(loop)
        address = server_transport.get_extra_info("sockname")
        for mode in (True, PermissionError, RuntimeError):
            transport, protocol = await recording_endpoint(loop)
            AUDIT_MODE[0], AUDITED[:] = mode, []
            try:
                transport.sendto(b"audited", address)
            finally:
                AUDIT_MODE[0] = None
            sock = transport.get_extra_info("socket")._sock
            assert AUDITED == [(sock, address)]
            if mode is RuntimeError:
                outcomes.append(type(await protocol.lost).__name__)
                assert [e["message"] for e in reported] == [
                    "Fatal write error on datagram transport"
                ]
                reported.clear()
            else:
                outcomes.append([type(e).__name__ for e in protocol.errors])
                transport.close()
        server_transport.close()

    run(loop, main())
    assert outcomes == [[], ["PermissionError"], "RuntimeError"]


def test_a_sendto_the_audit_hook_makes_wait_is_buffered_and_audited_once(
    loop: ErlangEventLoop, audit_hook: None
) -> None:
    """A would-block (here the hook's BlockingIOError) buffers the datagram
    until the socket is writable, as asyncio's sendto does: the hook sees
    the send once, then once more for the buffered one going out."""

    async def main() -> None:
        server_transport, server = await recording_endpoint(loop)
        address = server_transport.get_extra_info("sockname")
        transport, _ = await recording_endpoint(loop)
        AUDIT_MODE[0], AUDITED[:] = BlockingIOError, []
        try:
            transport.sendto(b"later", address)
        finally:
            AUDIT_MODE[0] = True
        try:
            assert len(AUDITED) == 1
            assert [data for data, _ in transport._buffer] == [b"later"]
            await wait_for_condition(lambda: bool(server.received))
            assert len(AUDITED) == 2  # the buffered datagram's own send
        finally:
            AUDIT_MODE[0] = None
        assert [data for data, _ in server.received] == [b"later"]
        transport.close()
        server_transport.close()

    run(loop, main())


def test_a_socket_the_audit_hook_closes_is_not_sent_through(
    loop: ErlangEventLoop, audit_hook: None
) -> None:
    """The socket module reads the fd after the audit event: a hook that
    closes the socket (its number handed to another) makes the send fail
    with EBADF, for error_received."""
    taken: list[Any] = []

    async def main() -> None:
        server_transport, server = await recording_endpoint(loop)
        address = server_transport.get_extra_info("sockname")
        transport, protocol = await recording_endpoint(loop)

        def close_and_take_over(sock: socket.socket, _addr: Any) -> None:
            taken.append(fd_number_taken_over(sock))
            taken[-1].__enter__()

        AUDIT_MODE[0] = close_and_take_over
        try:
            transport.sendto(b"to nowhere", address)
        finally:
            AUDIT_MODE[0] = None
            for holder in taken:
                holder.__exit__(None, None, None)
        assert [e.errno for e in protocol.errors] == [errno.EBADF]
        await only_marker_arrives(server, address)
        transport.abort()
        server_transport.close()

    run(loop, main())


def test_a_socket_a_max_size_closes_is_not_read_through(loop: ErlangEventLoop) -> None:
    """asyncio's ``recvfrom(max_size)`` reads the fd after ``max_size``'s
    ``__index__``: one that closes the socket (its number handed to another)
    makes the read fail with EBADF, for error_received, and the datagram
    waiting on that other socket stays there."""
    taken: list[Any] = []
    waiting: list[bytes] = []

    async def main() -> None:
        transport, protocol = await recording_endpoint(loop)
        address = transport.get_extra_info("sockname")

        class ClosesTheSocket:
            def __index__(self) -> int:
                if not taken:
                    taken.append(fd_number_taken_over(transport._sock))
                    other = taken[0].__enter__()
                    other.bind((LOCALHOST, 0))
                    other.sendto(b"not yours", other.getsockname())
                    taken.append(other)
                return 64

        transport.max_size = ClosesTheSocket()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"to the transport", address)
            await wait_for_condition(lambda: bool(protocol.errors or protocol.received))
        waiting.append(taken[1].recv(100, socket.MSG_DONTWAIT))
        transport.abort()
        assert protocol.received == []
        assert protocol.errors and protocol.errors[0].errno == errno.EBADF, protocol.errors

    try:
        run(loop, main())
    finally:
        if taken:
            taken[0].__exit__(None, None, None)
    assert waiting == [b"not yours"]


def test_sendto_arguments_as_asyncio_takes_and_refuses_them(loop: ErlangEventLoop) -> None:
    """Keywords and wrong counts go to asyncio's sendto: `data=` and `addr=`
    by keyword arrive; no data, a third argument and an unknown keyword
    are its TypeError, and the endpoint stays open."""

    async def main() -> None:
        server_transport, server = await recording_endpoint(loop)
        address = server_transport.get_extra_info("sockname")
        transport, _ = await recording_endpoint(loop)
        transport.sendto(data=b"by keyword", addr=address)
        await wait_for_condition(lambda: bool(server.received))
        assert [data for data, _ in server.received] == [b"by keyword"]
        for args, kwargs in [((), {}), ((b"x", address, 3), {}), ((b"x",), {"where": address})]:
            with pytest.raises(TypeError):
                transport.sendto(*args, **kwargs)
        assert not transport.is_closing()
        transport.close()
        server_transport.close()

    run(loop, main())


def test_native_methods_have_asyncio_s_signatures() -> None:
    from asyncio import selector_events

    for ours, theirs, name in [
        (_ErlangDatagramTransport, selector_events._SelectorDatagramTransport, "sendto"),
        (_ErlangDatagramTransport, selector_events._SelectorDatagramTransport, "_read_ready"),
        (_ErlangSocketTransport, selector_events._SelectorSocketTransport, "write"),
        (_ErlangSocketTransport, selector_events._SelectorSocketTransport, "_read_ready"),
    ]:
        parameters = [
            [(p.name, p.default) for p in inspect.signature(getattr(cls, name)).parameters.values()]
            for cls in (ours, theirs)
        ]
        assert parameters[0] == parameters[1], name


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_sendto_takes_every_address_and_data_form_the_socket_module_takes(
    loop: ErlangEventLoop, family: int
) -> None:
    """Numeric and named addresses, the keyword, other buffers: all arrive;
    what the socket module refuses closes the endpoint with asyncio's fatal
    write error, as on the stdlib loop."""
    if family == socket.AF_INET6 and not has_ipv6():
        pytest.skip("no IPv6 on this machine")
    host = LOCALHOST if family == socket.AF_INET else "::1"

    async def main() -> None:
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=(host, 0))
        port = server.get_extra_info("sockname")[1]
        client, protocol = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), local_addr=(host, 0)
        )
        forms: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
            (b"numeric", ((host, port),), {}),
            (b"keyword", (), {"addr": (host, port)}),
            (bytearray(b"bytearray"), ((host, port),), {}),
            (memoryview(b"memoryview"), ((host, port),), {}),
        ]
        if family == socket.AF_INET:
            forms.append((b"name", (("localhost", port),), {}))
        else:
            forms.append((b"four fields", ((host, port, 0, 0),), {}))
            forms.append((b"three fields", ((host, port, 0),), {}))
        for data, args, kwargs in forms:
            client.sendto(data, *args, **kwargs)
        expected = sorted(bytes(data) for data, _, _ in forms)
        await wait_for_condition(lambda: len(protocol.received) == len(expected))
        assert sorted(data for data, _ in protocol.received) == expected
        client.sendto(b"", (host, port))
        if sys.version_info >= (3, 13):
            # asyncio sends an empty datagram since 3.13: echoed back.
            await wait_for_condition(lambda: len(protocol.received) == len(expected) + 1)
            assert protocol.received[-1][0] == b""
        else:
            await asyncio.sleep(0.05)  # nothing to send: asyncio returns at once
            assert len(protocol.received) == len(expected)
        assert not client.is_closing()
        client.close()
        # What the socket module refuses is asyncio's fatal write error: the
        # endpoint closes with it.
        bad = [(host, 70000), None, (host, "port")]
        if family == socket.AF_INET6:
            bad.append((host, port, 1 << 20, 0))
        for addr in bad:
            endpoint, lost = await loop.create_datagram_endpoint(
                lambda: Datagrams(loop), local_addr=(host, 0)
            )
            endpoint.sendto(b"bad", addr)
            assert isinstance(await lost.lost, TypeError | OverflowError), addr
            reported = errors(loop)
            assert [e["message"] for e in reported] == [
                "Fatal write error on datagram transport"
            ], addr
            reported.clear()
        server.close()

    run(loop, main())


@pytest.mark.parametrize("host", ["127.0.0.1", "127.10.200.255", "::1"])
def test_senders_are_written_as_the_socket_module_writes_them(
    loop: ErlangEventLoop, host: str
) -> None:
    if host == "::1" and not has_ipv6():
        pytest.skip("no IPv6 on this machine")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    async def main() -> tuple[Any, Any]:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), local_addr=(host, 0)
        )
        with socket.socket(family, socket.SOCK_DGRAM) as sender:
            sender.bind((host, 0))
            sender.sendto(b"who", transport.get_extra_info("sockname"))
            await wait_for_condition(lambda: bool(protocol.received))
            expected = sender.getsockname()
        transport.close()
        return protocol.received[0][1], expected

    addr, expected = run(loop, main())
    assert addr == expected
    assert type(addr) is tuple and len(addr) == (4 if ":" in host else 2)


def test_a_failing_datagram_received_is_reported_and_reading_goes_on(
    loop: ErlangEventLoop,
) -> None:
    class FailingFirst(Datagrams):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if data == b"bad":
                raise ValueError("protocol bug")
            super().datagram_received(data, addr)

    async def main() -> list[bytes]:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: FailingFirst(loop), local_addr=(LOCALHOST, 0)
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            target = transport.get_extra_info("sockname")
            sender.sendto(b"bad", target)
            await wait_for_condition(lambda: bool(errors(loop)))
            sender.sendto(b"good", target)
            await wait_for_condition(lambda: bool(protocol.received))
        transport.close()
        return [data for data, _ in protocol.received]

    assert run(loop, main()) == [b"good"]
    reported = errors(loop)
    assert [type(e.get("exception")) for e in reported] == [ValueError]
    reported.clear()


def test_error_received_sees_its_error_as_the_one_being_handled(loop: ErlangEventLoop) -> None:
    seen: list[Any] = []

    class Seeing(Datagrams):
        def error_received(self, exc: Exception) -> None:
            seen.append((exc, sys.exc_info()[1]))
            super().error_received(exc)

    async def main() -> None:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: Seeing(loop), remote_addr=(LOCALHOST, unused_port(socket.SOCK_DGRAM))
        )
        # ICMP replies are rate limited: ask again for up to 10 s.
        give_up = loop.time() + 10
        while not protocol.errors and loop.time() < give_up:
            transport.sendto(b"anyone?")
            await asyncio.sleep(0.01)
        transport.close()

    run(loop, main())
    assert seen, "no ICMP error came back"
    exc, handled = seen[0]
    assert isinstance(exc, ConnectionRefusedError) and handled is exc


def test_max_size_bounds_a_datagram_read(loop: ErlangEventLoop) -> None:
    async def main() -> bytes:
        transport, protocol = await recording_endpoint(loop)
        transport.max_size = 8
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"0123456789abcdef", transport.get_extra_info("sockname"))
            await wait_for_condition(lambda: bool(protocol.received))
        transport.close()
        return protocol.received[0][0]

    # As asyncio's recvfrom(max_size): the rest of the datagram is dropped.
    assert run(loop, main()) == b"01234567"


def test_a_socket_subclass_gets_its_own_recvfrom_called(loop: ErlangEventLoop) -> None:
    calls: list[str] = []

    class CountingSocket(socket.socket):
        def recvfrom(self, size: int, flags: int = 0) -> tuple[bytes, Any]:
            calls.append("recvfrom")
            return super().recvfrom(size, flags)

    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind((LOCALHOST, 0))
    sock = CountingSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())

    async def main() -> list[tuple[bytes, Any]]:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), sock=sock
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"counted", sock.getsockname())
            await wait_for_condition(lambda: bool(protocol.received))
        transport.close()
        return protocol.received

    assert run(loop, main())[0][0] == b"counted"
    assert calls


def test_a_socket_closed_in_datagram_received_is_not_read_through_its_old_fd(
    loop: ErlangEventLoop,
) -> None:
    """Each read takes the socket's fd anew: once the protocol closed the
    socket, its number may belong to another socket."""
    others: list[socket.socket] = []

    class ClosingSocket(Datagrams):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            if data == b"1":
                old_fd = self.transport._sock.fileno()
                self.transport._sock.close()
                other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                other.bind((LOCALHOST, 0))
                others.append(other)
                assert other.fileno() == old_fd
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                    sender.sendto(b"for the other socket", other.getsockname())

    async def main() -> list[bytes]:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: ClosingSocket(loop), local_addr=(LOCALHOST, 0)
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for data in (b"1", b"2"):
                sender.sendto(data, transport.get_extra_info("sockname"))
            await wait_for_condition(lambda: bool(protocol.received))
            await asyncio.sleep(0.05)
        transport.abort()
        await asyncio.sleep(0)
        return [data for data, _ in protocol.received]

    try:
        received = run(loop, main())
        others[0].setblocking(False)
        left = others[0].recv(100)
    finally:
        for other in others:
            other.close()
        errors(loop).clear()
    assert b"for the other socket" not in received
    assert left == b"for the other socket"


def test_each_datagram_s_callbacks_run_before_the_next_is_read(loop: ErlangEventLoop) -> None:
    """One datagram per readiness event, as asyncio's ``_read_ready``: what
    ``datagram_received`` schedules runs before the next datagram (a
    protocol resolving a future per datagram sees every one)."""
    order: list[str] = []

    class Scheduling(Datagrams):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            order.append(f"d{data.decode()}")
            loop.call_soon(order.append, f"cb{data.decode()}")

    async def main() -> None:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: Scheduling(loop), local_addr=(LOCALHOST, 0)
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            # All four wait in the socket before the loop looks at it.
            for i in range(4):
                sender.sendto(str(i).encode(), transport.get_extra_info("sockname"))
            await wait_for_condition(lambda: len(order) == 8)
        transport.close()

    run(loop, main())
    assert order == ["d0", "cb0", "d1", "cb1", "d2", "cb2", "d3", "cb3"]


def test_a_loop_stopped_in_datagram_received_reads_no_further_datagram(
    loop: ErlangEventLoop,
) -> None:
    """``stop()`` from ``datagram_received`` ends the iteration as on
    asyncio's loop: the datagrams still waiting are read by the next
    ``run_forever``, one each here."""

    class Stopping(Datagrams):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            loop.stop()

    transport, protocol = loop.run_until_complete(
        loop.create_datagram_endpoint(lambda: Stopping(loop), local_addr=(LOCALHOST, 0))
    )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(3):
                sender.sendto(str(i).encode(), transport.get_extra_info("sockname"))
            loop.run_forever()
            assert [data for data, _ in protocol.received] == [b"0"]
            loop.run_forever()
            assert [data for data, _ in protocol.received] == [b"0", b"1"]
    finally:
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))


def _queued_datagrams(
    loop: ErlangEventLoop, count: int, protocol: Any, setup: Any = None
) -> list[str]:
    """Runs ``loop`` once ``count`` datagrams wait in an endpoint's socket
    (``setup(order)`` first, nothing ready: the first iteration polls);
    what the protocol and the callbacks appended."""
    order: list[str] = []
    transport, _ = loop.run_until_complete(
        loop.create_datagram_endpoint(lambda: protocol(order), local_addr=(LOCALHOST, 0))
    )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(count):
                sender.sendto(f"d{i}".encode(), transport.get_extra_info("sockname"))
        time.sleep(0.05)
        if setup is not None:
            setup(order)
        loop.call_later(0.1, loop.stop)
        loop.run_forever()
    finally:
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))
    return order


class _Appending(asyncio.DatagramProtocol):
    def __init__(self, order: list[str]) -> None:
        self.order = order

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.order.append(data.decode())


def test_datagrams_whose_protocol_schedules_nothing_are_read_on_one_event(
    loop: ErlangEventLoop,
) -> None:
    """A ``datagram_received`` that schedules nothing, its reader the
    iteration's last callback, leaves nothing to run before the next
    datagram: those waiting are read on the same readiness event (an echo
    server's ``sendto`` schedules nothing), not one loop iteration each."""
    events: list[int] = []

    class Counting(_Appending):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            events.append(loop.stats()["fd_events"])

    # All four wait in the socket before the loop looks at it, nothing else
    # ready or due meanwhile.
    assert _queued_datagrams(loop, 4, Counting) == ["d0", "d1", "d2", "d3"]
    assert len(set(events)) == 1, events


def test_what_was_queued_behind_the_reader_runs_before_the_next_datagram(
    loop: ErlangEventLoop,
) -> None:
    """asyncio reads one datagram per iteration: a callback already queued
    behind the reader (a timer due in the same iteration, a task's step)
    runs before the next datagram, as on the stdlib loop."""
    order = _queued_datagrams(
        loop, 3, _Appending, lambda order: loop.call_at(loop.time() - 1, order.append, "T")
    )
    assert order == ["d0", "T", "d1", "d2"]


def test_a_due_timer_datagram_received_schedules_runs_before_the_second_next_datagram(
    loop: ErlangEventLoop,
) -> None:
    """``call_later(0)`` goes to the timers, not the ready queue: on the
    stdlib loop it runs after the next datagram, before the one after."""

    class Later(_Appending):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            loop.call_later(0, self.order.append, "cb" + data.decode()[1:])

    order = _queued_datagrams(loop, 4, Later)
    assert order == ["d0", "d1", "cb0", "d2", "cb1", "d3", "cb2", "cb3"]


def test_a_reader_removed_in_datagram_received_reads_no_further_datagram(
    loop: ErlangEventLoop,
) -> None:
    """``loop._remove_reader`` of the transport's fd (what pause_reading
    does, without the flag) ends the reads at once, as on the stdlib loop."""

    class Removing(_Appending):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            loop._remove_reader(self.transport.get_extra_info("socket").fileno())

    assert _queued_datagrams(loop, 3, Removing) == ["d0"]


def test_a_socket_closed_in_datagram_received_is_not_read_again(
    loop: ErlangEventLoop,
) -> None:
    """The callback closes the transport's socket: asyncio does not call
    the reader again (no ``error_received`` of EBADF from a further read)."""

    class Closing(_Appending):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            self.transport._sock.close()

        def error_received(self, exc: Exception) -> None:
            self.order.append(f"error {exc!r}")

    assert _queued_datagrams(loop, 3, Closing) == ["d0"]


def test_a_bad_max_size_is_a_fatal_read_error(loop: ErlangEventLoop) -> None:
    async def main() -> BaseException | None:
        transport, protocol = await recording_endpoint(loop)
        transport.max_size = -1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"x", transport.get_extra_info("sockname"))
            return await protocol.lost

    exc = run(loop, main())
    # As asyncio's recvfrom(-1) failing inside its try: the transport closes.
    assert isinstance(exc, ValueError), repr(exc)
    reported = errors(loop)
    assert [e["message"] for e in reported] == ["Fatal read error on datagram transport"]
    reported.clear()
