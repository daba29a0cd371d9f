"""TCP on ErlangEventLoop inside the BEAM: asyncio's echo examples (Protocols
and streams), many clients, half-close, flow control both ways, abort,
close, servers, create_connection's options, BufferedProtocol, TLS and
start_tls, sendfile, and the transport classes in use.

Run with ``bin/erlang-python -m pytest tests/python/test_networking.py``.
UDP is in test_networking_udp.py; sock_*, unix sockets, pipes and
subprocesses in test_networking_sock.py. Both import their helpers from here.

Every test checks that it leaves no fd open (``no_leaked_fds``); every wait
has a generous deadline (LESSONS 30) and no test asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import hashlib
import os
import random
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from erlang_loop import ErlangEventLoop
from erlang_loop._transports import _ErlangSocketTransport

T = TypeVar("T")

# A generous bound for anything that should happen "soon" (LESSONS 30).
DEADLINE = 20.0
LOCALHOST = "127.0.0.1"


# ---------------------------------------------------------------- helpers


def open_fds() -> dict[int, str]:
    """This process's open fds and what they point to."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the fd of the listdir itself, closed meanwhile
    return fds


def check_no_leaked_fds() -> Iterator[None]:
    """Body of the ``no_leaked_fds`` fixture of each networking test file:
    the fd count after the test (and its loop's teardown) comes back to the
    count before. Select stops are asynchronous (LESSONS 30): poll."""
    gc.collect()
    before = open_fds()
    yield
    gc.collect()
    give_up = time.monotonic() + 5.0
    while len(open_fds()) > len(before) and time.monotonic() < give_up:
        time.sleep(0.02)
    after = open_fds()
    leaked = {fd: what for fd, what in after.items() if before.get(fd) != what}
    assert len(after) <= len(before), f"leaked fds: {leaked}"


@pytest.fixture(autouse=True)
def no_leaked_fds() -> Iterator[None]:
    yield from check_no_leaked_fds()


def new_loop(isolated: bool = False) -> Iterator[ErlangEventLoop]:
    """A fresh loop whose exception handler records instead of logging: an
    assertion that fails inside a protocol callback reaches the handler, not
    the test, so the test fails at teardown if anything was recorded (tests
    that expect errors take them out of ``errors(loop)``)."""
    loop = ErlangEventLoop(isolated=isolated)
    recorded: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: recorded.append(context))
    loop.recorded_errors = recorded  # type: ignore[attr-defined]
    try:
        yield loop
    finally:
        if not loop.is_closed():
            loop.run_until_complete(_settle_tasks())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
    gc.collect()  # unclosed transports and never-retrieved task errors
    assert not recorded, f"errors reported to the loop: {[c['message'] for c in recorded]}"


async def _settle_tasks() -> None:
    """Lets the tasks a test leaves behind finish (server handlers: in 3.11
    Server.wait_closed does not wait for them), then cancels the rest, as
    asyncio.run does."""
    me = asyncio.current_task()
    give_up = time.monotonic() + 5.0
    while time.monotonic() < give_up:
        rest = [t for t in asyncio.all_tasks() if t is not me]
        if not rest:
            return
        await asyncio.sleep(0.005)
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


def errors(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """What the loop's exception handler received so far (see new_loop)."""
    return loop.recorded_errors  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def loop() -> Iterator[ErlangEventLoop]:
    """A fresh loop served by the application's shared worker."""
    yield from new_loop()


@pytest.fixture(params=[False, True], ids=["default", "isolated"])
def any_loop(request: pytest.FixtureRequest) -> Iterator[ErlangEventLoop]:
    """A fresh loop, served by the shared worker or by its own."""
    yield from new_loop(request.param)


def run(loop: asyncio.AbstractEventLoop, coro: Awaitable[T], timeout: float = DEADLINE) -> T:
    """Runs ``coro`` on ``loop``, failing instead of hanging past ``timeout``."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def wait_for_condition(done: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Waits (yielding to the loop) until ``done()`` holds."""
    give_up = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < give_up, "condition not reached in time"
        await asyncio.sleep(0.002)


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes (so a misplaced chunk shows)."""
    return random.Random(seed).randbytes(size)


def unused_port(kind: int = socket.SOCK_STREAM) -> int:
    """A local port that nobody listens on right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Recorder(asyncio.Protocol):
    """A client protocol that keeps everything that happens to it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: Any = None
        self.chunks: list[bytes] = []
        self.eof = False
        self.lost = loop.create_future()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        self.chunks.append(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


# ------------------------------------------- asyncio's documented examples


class EchoServerProtocol(asyncio.Protocol):
    """asyncio docs, "TCP Echo Server" (Protocols), without the prints."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.close()


class EchoClientProtocol(asyncio.Protocol):
    """asyncio docs, "TCP Echo Client" (Protocols)."""

    def __init__(self, message: str, on_con_lost: asyncio.Future[Any]) -> None:
        self.message = message
        self.on_con_lost = on_con_lost
        self.received: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.message.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.received.append(data.decode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_con_lost.set_result(True)


def test_tcp_echo_with_protocols(any_loop: ErlangEventLoop) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoServerProtocol, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        on_con_lost = loop.create_future()
        transport, protocol = await loop.create_connection(
            lambda: EchoClientProtocol("Hello World!", on_con_lost), LOCALHOST, port
        )
        try:
            await on_con_lost
        finally:
            transport.close()
        server.close()
        await server.wait_closed()
        return protocol.received

    assert "".join(run(any_loop, main())) == "Hello World!"


async def handle_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """asyncio docs, "TCP echo server using streams"."""
    data = await reader.read(100)
    writer.write(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def tcp_echo_client(message: str, port: int) -> str:
    """asyncio docs, "TCP echo client using streams"."""
    reader, writer = await asyncio.open_connection(LOCALHOST, port)
    writer.write(message.encode())
    await writer.drain()
    data = await reader.read(100)
    writer.close()
    await writer.wait_closed()
    return data.decode()


def test_tcp_echo_with_streams(any_loop: ErlangEventLoop) -> None:
    async def main() -> str:
        server = await asyncio.start_server(handle_echo, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await tcp_echo_client("Hello World!", port)

    assert run(any_loop, main()) == "Hello World!"


def test_transport_classes_are_the_erlang_ones(loop: ErlangEventLoop) -> None:
    accepted: list[asyncio.BaseTransport] = []

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    async def main() -> None:
        server = await loop.create_server(Server, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, LOCALHOST, port)
        # Streams sit on the same transports.
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        await wait_for_condition(lambda: len(accepted) == 2)
        assert type(transport) is _ErlangSocketTransport
        assert [type(t) for t in accepted] == [_ErlangSocketTransport] * 2
        assert type(writer.transport) is _ErlangSocketTransport
        writer.close()
        transport.close()
        for t in accepted:
            t.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


# ---------------------------------------------------------------- many clients


def test_hundred_concurrent_clients(loop: ErlangEventLoop) -> None:
    handled: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line[::-1][1:] + b"\n")
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        handled.append(True)

    async def client(i: int, port: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        replies = []
        for j in range(5):
            writer.write(f"client {i} line {j} ".encode() + payload(100, i * 10 + j).hex().encode())
            writer.write(b"\n")
            await writer.drain()
            replies.append(await reader.readline())
        writer.close()
        await writer.wait_closed()
        return replies

    async def main() -> list[list[bytes]]:
        server = await asyncio.start_server(handle, LOCALHOST, 0, backlog=200)
        port = server.sockets[0].getsockname()[1]
        async with server:
            replies = await asyncio.gather(*(client(i, port) for i in range(100)))
            await wait_for_condition(lambda: len(handled) == 100)
            return replies

    results = run(loop, main())
    for i, replies in enumerate(results):
        expected = [
            (f"client {i} line {j} ".encode() + payload(100, i * 10 + j).hex().encode())[::-1]
            + b"\n"
            for j in range(5)
        ]
        assert replies == expected


# ---------------------------------------------------------------- half-close


class CountingServer(asyncio.Protocol):
    """Receives until EOF, keeps the transport open (eof_received returns
    True), then answers with the size and digest of what came, and closes."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.types: set[type] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.types.add(type(data))
        self.digest.update(data)
        self.size += len(data)

    def eof_received(self) -> bool:
        assert not self.transport.is_closing()
        self.transport.write(f"{self.size} {self.digest.hexdigest()}".encode())
        self.transport.close()
        return True


def test_upload_16_mib_with_half_close_then_reply(loop: ErlangEventLoop) -> None:
    data = payload(16 * 1024 * 1024, seed=16)
    servers: list[CountingServer] = []

    def factory() -> CountingServer:
        servers.append(CountingServer())
        return servers[-1]

    async def main() -> bytes:
        server = await loop.create_server(factory, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        assert writer.can_write_eof()
        view = memoryview(data)
        for i in range(0, len(data), 1024 * 1024):
            writer.write(view[i : i + 1024 * 1024])
            await writer.drain()
        writer.write_eof()
        with pytest.raises(RuntimeError):
            writer.write(b"after eof")
        reply = await reader.read()  # until the server's close
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return reply

    reply = run(loop, main(), timeout=60)
    assert reply == f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
    assert servers[0].types == {bytes}


def test_eof_received_returning_true_keeps_the_transport_open(loop: ErlangEventLoop) -> None:
    """The peer half-closes; the server answers afterwards, twice, from a
    timer: the transport stayed open, and reading stopped."""

    class LateAnswer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            self.data = data

        def eof_received(self) -> bool:
            loop.call_later(0.01, self.transport.write, b"late " + self.data)
            loop.call_later(0.02, self.transport.write, b" and later")
            loop.call_later(0.03, self.transport.close)
            return True

    async def main() -> bytes:
        server = await loop.create_server(LateAnswer, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        transport.write(b"question")
        transport.write_eof()
        assert not transport.is_closing()
        await client.lost
        server.close()
        await server.wait_closed()
        assert client.eof
        return client.data

    assert run(loop, main()) == b"late question and later"


def test_close_flushes_the_write_buffer_first(loop: ErlangEventLoop) -> None:
    data = payload(16 * 1024 * 1024, seed=4)
    buffered: list[int] = []

    class WriteAndClose(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(data)  # type: ignore[attr-defined]
            buffered.append(transport.get_write_buffer_size())  # type: ignore[attr-defined]
            transport.close()
            assert transport.is_closing()

    async def main() -> bytes:
        server = await loop.create_server(WriteAndClose, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        await client.lost
        server.close()
        await server.wait_closed()
        assert client.eof
        return client.data

    assert run(loop, main()) == data
    # Too much for the socket at once: close() had a buffer to flush.
    assert buffered[0] > 0


# ---------------------------------------------------------------- flow control


def test_pause_and_resume_reading_with_a_slow_consumer(loop: ErlangEventLoop) -> None:
    data = payload(2 * 1024 * 1024, seed=2)

    class Sender(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(data)  # type: ignore[attr-defined]
            transport.close()

    class SlowConsumer(Recorder):
        def __init__(self) -> None:
            super().__init__(loop)
            self.pauses = 0

        def data_received(self, data: bytes) -> None:
            # Never called while paused.
            assert self.transport.is_reading()
            super().data_received(data)
            self.transport.pause_reading()
            assert not self.transport.is_reading()
            self.pauses += 1
            loop.call_later(0.001, self.resume)

        def resume(self) -> None:
            if not self.transport.is_closing():
                self.transport.resume_reading()
                assert self.transport.is_reading()

    async def main() -> SlowConsumer:
        server = await loop.create_server(Sender, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        _, client = await loop.create_connection(SlowConsumer, LOCALHOST, port)
        await client.lost
        server.close()
        await server.wait_closed()
        return client

    client = run(loop, main())
    assert client.data == data
    assert client.pauses == len(client.chunks) > 1


def test_write_buffer_back_pressure(loop: ErlangEventLoop) -> None:
    """A peer that does not read: the writer's buffer passes the high-water
    mark, pause_writing comes; the peer reads, resume_writing comes once the
    buffer is at or below the low-water mark."""
    chunk = payload(64 * 1024, seed=7)
    events: list[tuple[str, int]] = []

    class Writer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            transport.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)  # type: ignore[attr-defined]
            assert transport.get_write_buffer_limits() == (64 * 1024, 256 * 1024)  # type: ignore[attr-defined]
            self.sent = 0
            self.paused = False
            self.fill()

        def fill(self) -> None:
            while not self.paused:
                self.transport.write(chunk)
                self.sent += len(chunk)

        def pause_writing(self) -> None:
            events.append(("pause", self.transport.get_write_buffer_size()))
            self.paused = True

        def resume_writing(self) -> None:
            events.append(("resume", self.transport.get_write_buffer_size()))
            self.transport.write_eof()

    writers: list[Writer] = []

    def factory() -> Writer:
        writers.append(Writer())
        return writers[-1]

    async def main() -> bytes:
        server = await loop.create_server(factory, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        transport.pause_reading()
        await wait_for_condition(lambda: bool(events))
        assert events[0][0] == "pause" and events[0][1] > 256 * 1024
        assert writers[0].transport.get_write_buffer_size() > 256 * 1024
        transport.resume_reading()
        await wait_for_condition(lambda: client.eof)
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return client.data

    received = run(loop, main())
    assert [kind for kind, _ in events] == ["pause", "resume"]
    assert events[1][1] <= 64 * 1024
    assert received == chunk * (writers[0].sent // len(chunk))


def test_a_partial_write_buffers_the_rest_for_a_peer_gone_meanwhile(
    loop: ErlangEventLoop,
) -> None:
    """As asyncio's: one send, the rest buffered for the writer, the
    protocol paused. The peer closed before: its reset comes with the first
    send, so a second send at once (what the native `write` made) failed
    inside `write()`, with no `pause_writing` and the peer's EOF unread."""
    events: list[str] = []
    server_side: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.pause_reading()  # type: ignore[attr-defined]
            server_side.set_result(transport)  # type: ignore[arg-type]

        def pause_writing(self) -> None:
            events.append("pause_writing")

        def eof_received(self) -> None:
            events.append("eof_received")

        def connection_lost(self, exc: Exception | None) -> None:
            events.append(f"connection_lost({type(exc).__name__})")

    async def main() -> None:
        server = await loop.create_server(Server, LOCALHOST, 0)
        peer = socket.create_connection(server.sockets[0].getsockname())
        transport = await server_side
        peer.close()
        sock = transport.get_extra_info("socket")
        # The peer's FIN has arrived (reading is paused: nothing reads it).
        await wait_for_condition(lambda: bool(select.select([sock], [], [], 0)[0]))
        transport.write(b"x" * 8_000_000)  # more than the socket takes at once
        assert events == ["pause_writing"]
        assert not transport.is_closing()
        assert transport.get_write_buffer_size() > 0
        transport.resume_reading()
        await wait_for_condition(lambda: events[-1].startswith("connection_lost"))
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert events[:2] == ["pause_writing", "eof_received"]
    assert events[2] in {
        "connection_lost(BrokenPipeError)",
        "connection_lost(ConnectionResetError)",
    }


def test_a_write_to_a_full_socket_is_buffered_and_sent_later(loop: ErlangEventLoop) -> None:
    """Nothing buffered, but the socket takes nothing (EAGAIN): the data
    waits in the buffer for the writer, as asyncio's `write` has it."""
    server_side: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            server_side.set_result(transport)  # type: ignore[arg-type]

    async def main() -> tuple[int, bytes]:
        server = await loop.create_server(Server, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        peer, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        peer.pause_reading()
        transport = await server_side
        fd = transport.get_extra_info("socket").fileno()
        filled = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                filled += os.write(fd, b"f" * 65536)
        transport.write(b"tail")
        assert transport.get_write_buffer_size() == 4
        peer.resume_reading()
        await wait_for_condition(lambda: len(client.data) == filled + 4)
        transport.close()
        peer.close()
        server.close()
        await server.wait_closed()
        return filled, client.data

    filled, data = run(loop, main())
    assert data == b"f" * filled + b"tail"


def test_writelines_and_write_types(loop: ErlangEventLoop) -> None:
    async def main() -> bytes:
        server = await asyncio.start_server(echo_until_eof, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        transport.writelines([b"one ", bytearray(b"two "), memoryview(b"three")])
        transport.write(b"")
        with pytest.raises(TypeError):
            transport.write("text")
        transport.write_eof()
        await client.lost
        server.close()
        await server.wait_closed()
        return client.data

    assert run(loop, main()) == b"one two three"


async def echo_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


# ------------------------------------------ the native per-event methods


def test_the_per_event_transport_methods_are_native() -> None:
    for name in ("_read_ready", "_read_ready__data_received", "write", "is_closing"):
        method = vars(_ErlangSocketTransport)[name]
        assert type(method).__name__ == "method_descriptor", name


def test_is_closing_follows_close_and_abort(loop: ErlangEventLoop) -> None:
    async def main() -> list[object]:
        server = await asyncio.start_server(echo_until_eof, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        seen: list[object] = []
        for end in ("close", "abort"):
            transport, client = await loop.create_connection(
                lambda: Recorder(loop), LOCALHOST, port
            )
            seen.append(transport.is_closing())
            getattr(transport, end)()
            seen.append(transport.is_closing())
            await client.lost
            seen.append(transport.is_closing())
        server.close()
        await server.wait_closed()
        return seen

    # The attribute itself, as asyncio's `return self._closing`.
    assert run(loop, main()) == [False, True, True] * 2
    # Before __init__ set it: AttributeError, as asyncio's.
    with pytest.raises(AttributeError):
        _ErlangSocketTransport.__new__(_ErlangSocketTransport).is_closing()


def test_a_failing_data_received_is_a_fatal_error(loop: ErlangEventLoop) -> None:
    class Failing(Recorder):
        def data_received(self, data: bytes) -> None:
            raise ValueError("protocol bug")

    async def main() -> BaseException | None:
        server = await asyncio.start_server(echo_until_eof, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Failing(loop), LOCALHOST, port)
        transport.write(b"ping")
        exc = await client.lost
        server.close()
        await server.wait_closed()
        return exc

    exc = run(loop, main())
    assert isinstance(exc, ValueError)
    reported = errors(loop)
    assert [(e["message"], type(e["exception"])) for e in reported] == [
        ("Fatal error: protocol.data_received() call failed.", ValueError)
    ]
    reported.clear()


def test_system_exit_from_data_received_propagates(loop: ErlangEventLoop) -> None:
    class Exiting(Recorder):
        def data_received(self, data: bytes) -> None:
            raise SystemExit(3)

    async def connect() -> tuple[asyncio.BaseTransport, asyncio.AbstractServer]:
        server = await asyncio.start_server(echo_until_eof, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(lambda: Exiting(loop), LOCALHOST, port)
        return transport, server

    transport, server = run(loop, connect())
    transport.write(b"ping")  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        loop.run_until_complete(asyncio.sleep(DEADLINE))
    transport.abort()  # type: ignore[attr-defined]
    server.close()
    run(loop, server.wait_closed())


async def reset_by_peer(
    loop: ErlangEventLoop, before_reset: Callable[[asyncio.Transport], None] = lambda _: None
) -> BaseException | None:
    """Connects a Recorder to a peer that then resets the connection (an RST
    instead of a FIN: a zero linger time after unread data, so the client's
    next read fails); what the client's connection_lost got."""
    listener = socket.socket()
    listener.bind((LOCALHOST, 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    accept = loop.create_task(loop.sock_accept(listener))
    transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
    peer, _ = await accept
    before_reset(transport)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.write(b"unread")
    await asyncio.sleep(0.05)
    peer.close()
    listener.close()
    return await client.lost


def test_a_reset_connection_is_a_read_error(loop: ErlangEventLoop) -> None:
    exc = run(loop, reset_by_peer(loop))
    assert isinstance(exc, ConnectionResetError), repr(exc)
    assert exc.errno == errno.ECONNRESET


def test_a_socket_closed_behind_the_transport_s_back_is_never_read_by_number(
    loop: ErlangEventLoop,
) -> None:
    """The native read uses the socket object's fd at call time: once the
    socket is closed its old number may belong to another socket, which
    must not be read from (asyncio's Python gets EBADF from the closed
    socket object; so does this)."""

    async def main() -> tuple[bytes, BaseException | None]:
        server = await asyncio.start_server(echo_until_eof, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        old_fd = transport._sock_fd
        transport._sock.close()
        other, peer = socket.socketpair()
        try:
            assert other.fileno() == old_fd  # the number was reused at once
            peer.sendall(b"not yours")
            transport._read_ready__data_received()
            other.setblocking(False)
            left = other.recv(100)
        finally:
            other.close()
            peer.close()
        lost = await client.lost
        server.close()
        await server.wait_closed()
        return left, lost

    left, lost = run(loop, main())
    assert left == b"not yours"
    # A fatal read error, as asyncio's recv on the closed socket gives.
    assert isinstance(lost, OSError) and lost.errno == errno.EBADF, repr(lost)


class _CountingSocket(socket.socket):
    """A socket subclass that counts its send/recv (asyncio calls them)."""

    calls: list[str] = []

    def send(self, data: Any, flags: int = 0) -> int:
        _CountingSocket.calls.append("send")
        return super().send(data, flags)

    def recv(self, size: int, flags: int = 0) -> bytes:
        _CountingSocket.calls.append("recv")
        return super().recv(size, flags)


def test_a_socket_subclass_gets_its_own_send_and_recv_called(loop: ErlangEventLoop) -> None:
    a, b = socket.socketpair()
    sock = _CountingSocket(a.family, a.type, a.proto, fileno=a.detach())
    _CountingSocket.calls.clear()

    async def main() -> bytes:
        transport, client = await loop.create_connection(lambda: Recorder(loop), sock=sock)
        transport.write(b"hello")
        assert b.recv(5) == b"hello"
        b.sendall(b"world")
        b.shutdown(socket.SHUT_WR)
        await wait_for_condition(lambda: client.eof)
        transport.close()
        await client.lost
        return client.data

    try:
        assert run(loop, main()) == b"world"
    finally:
        b.close()
    assert "send" in _CountingSocket.calls and "recv" in _CountingSocket.calls


def test_a_busy_loop_looks_at_its_fds_at_least_every_other_iteration(
    loop: ErlangEventLoop,
) -> None:
    """After an iteration whose callbacks sent nothing the loop may leave
    out its look into the epoll set (it would most likely find nothing
    new), but never twice in a row: a reader whose socket turns readable
    under a chain of callbacks runs within two iterations."""
    a, b = socket.socketpair()
    ticks = 0
    sent_at: list[int] = []
    read_at: list[int] = []

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 5:
            b.send(b"x")
            sent_at.append(ticks)
        if not read_at and ticks < 100:
            loop.call_soon(tick)

    def readable() -> None:
        read_at.append(ticks)
        loop.remove_reader(a)
        loop.stop()

    try:
        loop.add_reader(a, readable)
        loop.call_soon(tick)
        loop.run_forever()
    finally:
        a.close()
        b.close()
    assert sent_at == [5]
    assert read_at and read_at[0] - sent_at[0] <= 2, (sent_at, read_at)


def test_stop_before_run_forever_still_looks_at_the_fds(loop: ErlangEventLoop) -> None:
    """asyncio's promise: ``stop()`` before ``run_forever()`` polls the
    selector once, runs what was scheduled and the callbacks of the I/O
    found, and exits (busy with a callback, the loop still looks)."""
    a, b = socket.socketpair()
    calls: list[str] = []
    try:
        loop.add_reader(a, lambda: calls.append("read"))
        b.send(b"x")
        loop.call_soon(calls.append, "soon")
        loop.stop()
        loop.run_forever()
        loop.remove_reader(a)
    finally:
        a.close()
        b.close()
    assert calls == ["soon", "read"]


def test_max_size_bounds_one_read(loop: ErlangEventLoop) -> None:
    a, b = socket.socketpair()

    async def main() -> list[bytes]:
        transport, client = await loop.create_connection(lambda: Recorder(loop), sock=a)
        transport.max_size = 16
        b.sendall(b"x" * 100)
        await wait_for_condition(lambda: len(client.data) >= 100)
        transport.close()
        await client.lost
        return client.chunks

    try:
        chunks = run(loop, main())
    finally:
        b.close()
    assert b"".join(chunks) == b"x" * 100
    assert max(map(len, chunks)) <= 16


def test_a_max_size_beyond_the_native_buffer_is_read_as_asked(loop: ErlangEventLoop) -> None:
    """The native read goes into a 256 KiB buffer; a bigger ``max_size``
    is asyncio's read, as large as asked, as on the stdlib loop."""
    a, b = socket.socketpair()
    for sock, option in ((a, socket.SO_RCVBUF), (b, socket.SO_SNDBUF)):
        sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)

    async def main() -> tuple[int, list[bytes]]:
        transport, client = await loop.create_connection(lambda: Recorder(loop), sock=a)
        transport.pause_reading()
        transport.max_size = 4 << 20
        b.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while sent < 2 << 20:
                sent += b.send(b"x" * (256 << 10))
        transport.resume_reading()
        await wait_for_condition(lambda: len(client.data) >= sent)
        transport.close()
        await client.lost
        return sent, client.chunks

    try:
        sent, chunks = run(loop, main())
    finally:
        b.close()
    assert sent > 512 << 10, f"the socket pair buffered only {sent} bytes"
    assert b"".join(chunks) == b"x" * sent
    assert max(map(len, chunks)) > 256 << 10, list(map(len, chunks))


def test_a_socket_a_max_size_closes_is_not_read_through(loop: ErlangEventLoop) -> None:
    """asyncio's ``recv(max_size)`` reads the fd after ``max_size``'s
    ``__index__``: one that closes the socket (its number handed to another
    socket) fails the read with EBADF, and what waits on that other socket
    stays there, unread by the transport."""
    a, b = socket.socketpair()
    others: list[socket.socket] = []

    class ClosesTheSocket:
        def __index__(self) -> int:
            if not others:
                number = a.fileno()
                a.close()
                for _ in range(64):
                    others.extend(socket.socketpair())
                    if others[-2].fileno() == number:
                        others[-1].sendall(b"not yours")
                        break
            return 16

    async def main() -> BaseException | None:
        transport, client = await loop.create_connection(lambda: Recorder(loop), sock=a)
        transport.max_size = ClosesTheSocket()
        b.sendall(b"x")
        return await client.lost

    try:
        exc = run(loop, main())
        taken_over = [sock for sock in others[::2] if sock.fileno() >= 0]
        assert others, "max_size was never read"
        waiting = [sock.recv(100, socket.MSG_DONTWAIT) for sock in others[-2:-1]]
    finally:
        b.close()
        for sock in others:
            sock.close()
    assert taken_over
    assert isinstance(exc, OSError) and exc.errno == errno.EBADF, repr(exc)
    assert waiting == [b"not yours"]


def test_a_negative_max_size_fails_the_read_as_asyncio_s(loop: ErlangEventLoop) -> None:
    a, b = socket.socketpair()

    async def main() -> BaseException | None:
        transport, client = await loop.create_connection(lambda: Recorder(loop), sock=a)
        transport.max_size = -1
        b.sendall(b"x")
        return await client.lost

    try:
        exc = run(loop, main())
    finally:
        b.close()
    # socket.recv(-1) raises ValueError inside asyncio's try: fatal.
    assert isinstance(exc, ValueError), repr(exc)
    reported = errors(loop)
    assert [e["message"] for e in reported] == ["Fatal read error on socket transport"]
    reported.clear()


def test_reads_use_one_buffer_not_a_big_allocation_each(loop: ErlangEventLoop) -> None:
    """LESSONS 28: a read goes into the loop thread's reusable buffer and
    becomes ``bytes`` of the size read. A buffer of ``max_size`` (256 KiB)
    allocated per read would show in the traced peak."""
    a, b = socket.socketpair()
    messages = 500

    async def main() -> tuple[list[bytes], int]:
        transport, client = await loop.create_connection(lambda: Recorder(loop), sock=a)
        await asyncio.sleep(0)
        tracemalloc.start()
        try:
            for i in range(messages):
                b.sendall(b"%09d\n" % i)
                await wait_for_condition(lambda i=i: len(client.data) >= 10 * (i + 1))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        transport.close()
        await client.lost
        return client.chunks, peak

    try:
        chunks, peak = run(loop, main())
    finally:
        b.close()
    assert b"".join(chunks) == b"".join(b"%09d\n" % i for i in range(messages))
    assert all(type(chunk) is bytes for chunk in chunks)
    # What the test itself keeps (chunks, futures) is tens of KiB; one
    # max_size buffer alone would be 256.
    assert peak < 200 * 1024, peak


def test_a_read_error_is_the_handled_exception_in_fatal_error(loop: ErlangEventLoop) -> None:
    """asyncio calls _fatal_error from an except block: debug logging with
    exc_info and handlers reading sys.exc_info() see the error."""
    seen: list[Any] = []

    def watch_fatal_error(transport: Any) -> None:
        stock = transport._fatal_error

        def fatal_error(exc: BaseException, message: str = "") -> None:
            seen.append(sys.exc_info()[1])
            stock(exc, message)

        transport._fatal_error = fatal_error

    exc = run(loop, reset_by_peer(loop, watch_fatal_error))
    assert isinstance(exc, ConnectionResetError)
    assert seen == [exc]
    assert sys.exc_info() == (None, None, None)


def test_write_checks_as_asyncio_does(loop: ErlangEventLoop) -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        server = await asyncio.start_server(echo_until_eof, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        with pytest.raises(TypeError):
            transport.write(12)
        transport.write(b"")
        assert transport.get_write_buffer_size() == 0
        # `data` by keyword too, as asyncio's `write(self, data)` takes it;
        # other shapes are refused as a Python method would refuse them.
        transport.write(data=b"by keyword")
        for args, kwargs, message in [
            ((), {}, "missing 1 required positional argument: 'data'"),
            ((b"a", b"b"), {}, "takes 2 positional arguments but 3 were given"),
            ((), {"buf": b"x"}, "got an unexpected keyword argument 'buf'"),
            ((b"a",), {"data": b"b"}, "got multiple values for argument 'data'"),
        ]:
            with pytest.raises(TypeError, match=r"write\(\) " + message):
                transport.write(*args, **kwargs)
        transport.write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            transport.write(b"late")
        await client.lost
        assert client.data == b"by keyword"
        server.close()
        await server.wait_closed()

        # A connection the peer closed: writes are counted, not raised.
        server = await asyncio.start_server(close_at_once, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        await client.lost
        transport.write(b"after")
        transport.write(b"after")
        assert transport._conn_lost >= 2
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_a_big_write_is_sent_in_part_and_buffered_in_order(loop: ErlangEventLoop) -> None:
    data = payload(8 * 1024 * 1024, seed=7)

    async def main() -> bytes:
        server = await asyncio.start_server(echo_until_eof, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        tracemalloc.start()
        try:
            transport.write(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The socket took part of it at once; the rest waits in the buffer,
        # copied there once (not first into a bytes of its own: that made
        # the call's peak twice the rest).
        buffered = transport.get_write_buffer_size()
        assert 0 < buffered < len(data)
        assert peak < 1.5 * buffered
        transport.write(b"tail")
        transport.write_eof()
        await client.lost
        server.close()
        await server.wait_closed()
        return client.data

    assert run(loop, main()) == data + b"tail"


# ---------------------------------------------------------------- abort


def test_abort_drops_the_buffer_and_loses_the_connection(loop: ErlangEventLoop) -> None:
    lost: list[Exception | None] = []
    server_side: list[Any] = []

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            server_side.append(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            lost.append(exc)

    async def main() -> Recorder:
        server = await loop.create_server(Server, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        transport.pause_reading()
        await wait_for_condition(lambda: bool(server_side))
        writer = server_side[0]
        while writer.get_write_buffer_size() == 0:
            writer.write(payload(1024 * 1024))
        writer.abort()
        assert writer.is_closing()
        assert writer.get_write_buffer_size() == 0
        await wait_for_condition(lambda: bool(lost))
        assert lost == [None]
        transport.resume_reading()
        await client.lost
        # The client got at most what was sent before the abort, then the
        # connection went away (EOF or a reset).
        transport.close()
        server.close()
        await server.wait_closed()
        return client

    run(loop, main())


def test_client_abort_is_seen_by_the_server(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server_lost = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                server_lost.set_result(exc)

        server = await loop.create_server(Server, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        transport.write(b"x")
        transport.abort()
        assert await client.lost is None
        await server_lost
        server.close()
        await server.wait_closed()

    run(loop, main())


# ---------------------------------------------------------------- servers


def test_server_close_ends_serve_forever(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server = await asyncio.start_server(handle_echo, LOCALHOST, 0, start_serving=False)
        port = server.sockets[0].getsockname()[1]
        assert not server.is_serving()
        serving = asyncio.ensure_future(server.serve_forever())
        await wait_for_condition(server.is_serving)
        assert await tcp_echo_client("ping", port) == "ping"
        server.close()
        # asyncio ends serve_forever by cancelling it.
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()
        await server.wait_closed()

    run(loop, main())


def test_server_start_serving_sockets_and_context_manager(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server = await loop.create_server(
            EchoServerProtocol,
            LOCALHOST,
            0,
            start_serving=False,
            reuse_address=True,
            reuse_port=True,
            backlog=10,
        )
        async with server:
            assert server.get_loop() is loop
            assert not server.is_serving()
            (sock,) = server.sockets
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            port = sock.getsockname()[1]
            # A second socket binds the same port thanks to SO_REUSEPORT
            # (not serving: a closed listener lingers a moment, see
            # test_a_closed_server_frees_its_port_at_once).
            twin = await loop.create_server(
                EchoServerProtocol, LOCALHOST, port, reuse_port=True, start_serving=False
            )
            twin.close()
            await twin.wait_closed()
            await server.start_serving()
            assert server.is_serving()
            assert await tcp_echo_client("hi", port) == "hi"
        assert not server.is_serving()
        assert server.sockets == ()

    run(loop, main())


def test_server_on_a_host_list_and_on_a_given_socket(loop: ErlangEventLoop) -> None:
    hosts = [LOCALHOST, "::1"] if has_ipv6() else [LOCALHOST]

    async def main() -> None:
        port = unused_port()
        server = await asyncio.start_server(handle_echo, hosts, port)
        async with server:
            assert len(server.sockets) == len(hosts)
            for host in hosts:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(host.encode())
                assert await reader.read(100) == host.encode()
                writer.close()
                await writer.wait_closed()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((LOCALHOST, 0))
        server = await asyncio.start_server(handle_echo, sock=sock)
        async with server:
            assert server.sockets[0].getsockname() == sock.getsockname()
            assert await tcp_echo_client("own socket", sock.getsockname()[1]) == "own socket"
        assert sock.fileno() == -1  # the server closed it

    run(loop, main())


def test_a_closed_server_frees_its_port_at_once(loop: ErlangEventLoop) -> None:
    """As on CPython's loop: once wait_closed() returned, nobody listens on the
    port (a connection is refused) and a new socket binds it. Checked on 20
    servers, so that the bug's window (often a few ms) shows on some."""

    async def main() -> list[str]:
        problems = []
        for _ in range(20):
            server = await loop.create_server(asyncio.Protocol, LOCALHOST, 0)
            port = server.sockets[0].getsockname()[1]
            await asyncio.sleep(0.01)  # serving for real (the select armed)
            server.close()
            await server.wait_closed()
            with socket.socket() as probe:
                if probe.connect_ex((LOCALHOST, port)) == 0:
                    problems.append("accepted a connection")
            with socket.socket() as again:
                again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    again.bind((LOCALHOST, port))
                    again.listen()
                except OSError as exc:
                    problems.append(f"rebind: {exc}")
        return problems

    assert run(loop, main()) == []


# ------------------------------------------------------ create_connection


def test_create_connection_falls_back_over_addresses(loop: ErlangEventLoop) -> None:
    """The name resolves to two addresses (a fake getaddrinfo): the first
    refuses, the connection is made to the second; when all refuse, the
    error names them all."""
    with socket.socket() as a, socket.socket() as b:
        a.bind((LOCALHOST, 0))
        b.bind((LOCALHOST, 0))
        dead1, dead2 = a.getsockname()[1], b.getsockname()[1]  # bound, not listening
        resolved: list[int] = []

        async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> list[Any]:
            assert host == "echo.invalid"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (LOCALHOST, p)) for p in resolved]

        async def main() -> None:
            server = await asyncio.start_server(handle_echo, LOCALHOST, 0)
            port = server.sockets[0].getsockname()[1]
            loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
            resolved[:] = [dead1, port]
            transport, client = await loop.create_connection(
                lambda: Recorder(loop), "echo.invalid", 1
            )
            assert transport.get_extra_info("peername") == (LOCALHOST, port)
            transport.write(b"through the second")
            await client.lost
            assert client.data == b"through the second"
            resolved[:] = [dead1, dead2]
            with pytest.raises(OSError) as refused:
                await loop.create_connection(asyncio.Protocol, "echo.invalid", 1)
            assert "Multiple exceptions" in str(refused.value)
            assert str(dead1) in str(refused.value) and str(dead2) in str(refused.value)
            server.close()
            await server.wait_closed()

        try:
            run(loop, main())
        finally:
            del loop.getaddrinfo


def test_create_connection_with_sock_and_local_addr(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server = await asyncio.start_server(handle_echo, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        # local_addr: the client's own address.
        local_port = unused_port()
        transport, client = await loop.create_connection(
            lambda: Recorder(loop), LOCALHOST, port, local_addr=(LOCALHOST, local_port)
        )
        assert transport.get_extra_info("sockname") == (LOCALHOST, local_port)
        transport.write(b"from a chosen port")
        await client.lost
        assert client.data == b"from a chosen port"
        # sock=: an already connected socket.
        sock = socket.create_connection((LOCALHOST, port))
        transport, client = await loop.create_connection(lambda: Recorder(loop), sock=sock)
        assert transport.get_extra_info("socket").fileno() == sock.fileno()
        assert not sock.getblocking()
        transport.write(b"over my socket")
        await client.lost
        assert client.data == b"over my socket"
        assert sock.fileno() == -1
        # Both at once is refused, as asyncio does.
        with socket.socket() as unused, pytest.raises(ValueError):
            await loop.create_connection(asyncio.Protocol, LOCALHOST, port, sock=unused)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_get_extra_info(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        server = await asyncio.start_server(handle_echo, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, LOCALHOST, port)
        sock = transport.get_extra_info("socket")
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert transport.get_extra_info("peername") == (LOCALHOST, port)
        assert transport.get_extra_info("sockname") == sock.getsockname()
        assert transport.get_extra_info("sslcontext") is None
        assert transport.get_extra_info("nothing", "default") == "default"
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        transport.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


# ---------------------------------------------------------------- protocols


class BufferedEcho(asyncio.BufferedProtocol):
    """Echoes through a small buffer of its own (get_buffer/buffer_updated)."""

    def __init__(self) -> None:
        self.buffer = bytearray(1000)
        self.updates = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.updates += 1
        self.transport.write(bytes(self.buffer[:nbytes]))

    def eof_received(self) -> None:
        self.transport.close()


def test_buffered_protocol_echo(loop: ErlangEventLoop) -> None:
    data = payload(300_000, seed=3)
    servers: list[BufferedEcho] = []

    def factory() -> BufferedEcho:
        servers.append(BufferedEcho())
        return servers[-1]

    async def main() -> bytes:
        server = await loop.create_server(factory, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        writer.write(data)
        writer.write_eof()
        reply = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return reply

    assert run(loop, main()) == data
    assert servers[0].updates >= len(data) // 1000


class BufferedRecorder(asyncio.BufferedProtocol):
    """Keeps what it is given through get_buffer/buffer_updated."""

    def __init__(self) -> None:
        self.buffer = bytearray(64)
        self.chunks: list[bytes] = []

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.chunks.append(bytes(self.buffer[:nbytes]))


def test_set_protocol_switches_the_read_path_both_ways(loop: ErlangEventLoop) -> None:
    """The native reader dispatches on the transport's `_read_ready_cb`,
    which `set_protocol` changes: data goes to whichever protocol is set,
    plain or buffered, at every switch."""
    a, b = socket.socketpair()
    plain_first, buffered, plain_again = Recorder(loop), BufferedRecorder(), Recorder(loop)

    async def main() -> None:
        transport, _ = await loop.create_connection(lambda: plain_first, sock=a)
        b.sendall(b"one")
        await wait_for_condition(lambda: plain_first.data == b"one")
        transport.set_protocol(buffered)
        b.sendall(b"two")
        await wait_for_condition(lambda: b"".join(buffered.chunks) == b"two")
        transport.set_protocol(plain_again)
        b.sendall(b"three")
        await wait_for_condition(lambda: plain_again.data == b"three")
        transport.close()
        await plain_again.lost

    try:
        run(loop, main())
    finally:
        b.close()
    assert plain_first.data == b"one"
    assert b"".join(buffered.chunks) == b"two"
    assert plain_again.data == b"three"


def test_a_subclass_of_our_transport_is_read_through_its_own_attributes() -> None:
    """The native methods read our class's slots at fixed offsets; an
    instance of a subclass (which may put a property over one of those
    names) is read as `getattr` reads it."""
    reads: list[str] = []

    class WatchedTransport(_ErlangSocketTransport):
        @property
        def _conn_lost(self) -> int:
            reads.append("_conn_lost")
            return self._lost

        @_conn_lost.setter
        def _conn_lost(self, value: int) -> None:
            self._lost = value
            # What a read of our class's slot would find: a lost
            # connection, so nothing would be read or written.
            _ErlangSocketTransport._conn_lost.__set__(self, 1)

    class WatchingLoop(ErlangEventLoop):
        def _make_socket_transport(self, *args: Any, **kwargs: Any) -> Any:
            return WatchedTransport(self, *args, **kwargs)

    a, b = socket.socketpair()
    b.settimeout(DEADLINE)
    loop = WatchingLoop()

    async def main() -> bytes:
        transport, client = await loop.create_connection(lambda: Recorder(loop), sock=a)
        assert type(transport) is WatchedTransport
        b.sendall(b"watched")
        await wait_for_condition(lambda: client.data == b"watched")
        transport.write(b"back")
        transport.close()
        await client.lost
        return b.recv(10)

    try:
        assert run(loop, main()) == b"back"
    finally:
        loop.close()
        b.close()
    assert reads.count("_conn_lost") >= 2  # the native read and write asked


def test_connect_accepted_socket(loop: ErlangEventLoop) -> None:
    listener = socket.create_server((LOCALHOST, 0))
    port = listener.getsockname()[1]

    async def main() -> bytes:
        client = socket.create_connection((LOCALHOST, port))
        conn, _ = listener.accept()
        transport, _ = await loop.connect_accepted_socket(EchoServerProtocol, conn)
        assert type(transport) is _ErlangSocketTransport
        client.setblocking(False)
        await loop.sock_sendall(client, b"accepted elsewhere")
        reply = b""
        while chunk := await loop.sock_recv(client, 100):
            reply += chunk
        client.close()
        return reply

    try:
        assert run(loop, main()) == b"accepted elsewhere"
    finally:
        listener.close()


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 (key, cert)."""
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    try:
        from cryptography import x509  # noqa: F401
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl command")
        # Exit statuses of children are lost inside the VM (SIGCHLD is
        # ignored there), so success is judged by the files.
        subprocess.run(
            [
                openssl, "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-days", "2",
                "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            capture_output=True,
            timeout=30,
        )  # fmt: skip
    else:
        _certificate_with_cryptography(key, cert)
    assert key.stat().st_size > 0 and cert.stat().st_size > 0
    return key, cert


def _certificate_with_cryptography(key_path: Path, cert_path: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCALHOST))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def tls_contexts(certificate: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key, cert = certificate
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


def test_tls_echo(loop: ErlangEventLoop, certificate: tuple[Path, Path]) -> None:
    server_ctx, client_ctx = tls_contexts(certificate)
    data = payload(1024 * 1024, seed=5)

    async def main() -> None:
        server = await asyncio.start_server(echo_until_eof, LOCALHOST, 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection(
                LOCALHOST,
                port,
                ssl=client_ctx,
                server_hostname="localhost",
                ssl_handshake_timeout=DEADLINE,
            )
            assert writer.get_extra_info("sslcontext") is client_ctx
            assert writer.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
            assert writer.get_extra_info("cipher") is not None
            # The SSL protocol sits on our socket transport.
            raw = writer.transport._ssl_protocol._transport  # type: ignore[attr-defined]
            assert type(raw) is _ErlangSocketTransport
            writer.write(data)
            await writer.drain()
            echoed = await reader.readexactly(len(data))
            assert echoed == data
            writer.close()
            await writer.wait_closed()
            # A client that does not trust the certificate is refused.
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection(
                    LOCALHOST, port, ssl=ssl.create_default_context(), server_hostname="localhost"
                )

    run(loop, main())


def test_start_tls_upgrades_a_plain_connection(
    loop: ErlangEventLoop, certificate: tuple[Path, Path]
) -> None:
    server_ctx, client_ctx = tls_contexts(certificate)

    class StartTlsServer(asyncio.Protocol):
        """Answers "STARTTLS" in clear with "GO", then speaks TLS: echoes
        upper-cased. Data may come through TLS before start_tls returns."""

        def __init__(self) -> None:
            self.tls: Any = None
            self.early: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            if self.early or self.tls is not None:
                self.early.append(data)
                self.flush()
            elif data == b"STARTTLS":
                self.early.append(b"")
                self.transport.write(b"GO")
                self.transport.pause_reading()
                asyncio.ensure_future(self.upgrade())

        async def upgrade(self) -> None:
            self.tls = await loop.start_tls(self.transport, self, server_ctx, server_side=True)
            self.flush()

        def flush(self) -> None:
            if self.tls is not None:
                for data in self.early:
                    self.tls.write(data.upper())
                self.early = []

    async def main() -> bytes:
        server = await loop.create_server(StartTlsServer, LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(lambda: Recorder(loop), LOCALHOST, port)
        transport.write(b"STARTTLS")
        await wait_for_condition(lambda: client.data == b"GO")
        tls = await loop.start_tls(
            transport, client, client_ctx, server_hostname="localhost", ssl_handshake_timeout=10
        )
        assert tls.get_extra_info("sslcontext") is client_ctx
        client.chunks.clear()
        tls.write(b"secret")
        await wait_for_condition(lambda: client.data == b"SECRET")
        tls.close()
        await client.lost
        server.close()
        await server.wait_closed()
        return client.data

    assert run(loop, main()) == b"SECRET"


# ---------------------------------------------------------------- sendfile


def test_sendfile_over_a_transport(
    loop: ErlangEventLoop, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """loop.sendfile: os.sendfile on a plain transport, the read-and-write
    fallback on a TLS one."""
    data = payload(3 * 1024 * 1024 + 17, seed=9)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    server_ctx, client_ctx = tls_contexts(certificate)

    async def send(tls: bool, offset: int, count: int | None) -> bytes:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with path.open("rb") as f:
                sent = await loop.sendfile(writer.transport, f, offset, count)
            assert sent == len(data[offset:][:count])
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, LOCALHOST, 0, ssl=server_ctx if tls else None)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection(
                LOCALHOST,
                port,
                ssl=client_ctx if tls else None,
                server_hostname="localhost" if tls else None,
            )
            received = await reader.read()
            writer.close()
            await writer.wait_closed()
            return received

    async def main() -> None:
        assert await send(False, 0, None) == data
        assert await send(False, 1000, 50_000) == data[1000:51_000]
        assert await send(True, 5, None) == data[5:]

    run(loop, main(), timeout=60)


def test_readiness_a_callback_made_is_seen_by_the_next_iteration(
    loop: ErlangEventLoop,
) -> None:
    """A task that writes to a socket pair (not through a transport) and
    yields twice finds the loop's reader run meanwhile, as on asyncio's
    loop: the first iteration after the write looks at the fds."""
    a, b = socket.socketpair()
    a.setblocking(False)
    got: list[bytes] = []

    async def main() -> list[bytes]:
        loop.add_reader(a, lambda: got.append(a.recv(10)))
        try:
            for attempt in range(2):
                # Either parity of the iteration the write falls in.
                if attempt:
                    await asyncio.sleep(0)
                got.clear()
                b.send(b"x")
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                if got != [b"x"]:
                    return got
            return got
        finally:
            loop.remove_reader(a)

    try:
        assert run(loop, main()) == [b"x"]
    finally:
        a.close()
        b.close()
