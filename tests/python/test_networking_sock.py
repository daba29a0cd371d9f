"""The low-level socket methods (sock_*), unix sockets, pipes and
subprocesses on ErlangEventLoop inside the BEAM.

Run with ``bin/erlang-python -m pytest tests/python/test_networking_sock.py``.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_networking import (
    LOCALHOST,
    Recorder,
    check_no_leaked_fds,
    new_loop,
    payload,
    run,
    wait_for_condition,
)

from erlang_loop import ErlangEventLoop
from erlang_loop._transports import _ErlangSocketTransport


@pytest.fixture(autouse=True)
def no_leaked_fds() -> Iterator[None]:
    yield from check_no_leaked_fds()


@pytest.fixture
def loop() -> Iterator[ErlangEventLoop]:
    yield from new_loop()


@pytest.fixture
def tcp_pair(loop: ErlangEventLoop) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected, non-blocking (client, server-side) TCP pair made with
    sock_connect and sock_accept."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOCALHOST, 0))
    listener.listen()
    listener.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setblocking(False)

    async def connect() -> socket.socket:
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        await asyncio.sleep(0.01)  # sock_accept waits for the connection
        assert not accepting.done()
        await loop.sock_connect(client, listener.getsockname())
        conn, address = await accepting
        assert address == client.getsockname()
        conn.setblocking(False)
        return conn

    try:
        conn = run(loop, connect())
    finally:
        listener.close()
    try:
        yield client, conn
    finally:
        client.close()
        conn.close()


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two non-blocking UDP sockets bound on the loopback."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind((LOCALHOST, 0))
        s.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


async def recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        assert chunk, "EOF too early"
        data += chunk
    return data


# ---------------------------------------------------------------- TCP sock_*


def test_sock_recv_waits_and_sock_sendall_sends_everything(
    loop: ErlangEventLoop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, conn = tcp_pair
    big = payload(8 * 1024 * 1024, seed=1)

    async def main() -> None:
        # Nothing there yet: sock_recv waits for the data.
        receiving = asyncio.ensure_future(loop.sock_recv(conn, 100))
        await asyncio.sleep(0.01)
        assert not receiving.done()
        await loop.sock_sendall(client, b"hello")
        assert await receiving == b"hello"
        # More than the socket buffers hold: sock_sendall finishes only as
        # the peer reads.
        sending = asyncio.ensure_future(loop.sock_sendall(client, big))
        assert await recv_exactly(loop, conn, len(big)) == big
        assert await sending is None
        # EOF: b"".
        client.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(conn, 100) == b""

    run(loop, main())


def test_sock_recv_into(
    loop: ErlangEventLoop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, conn = tcp_pair

    async def main() -> bytes:
        buffer = bytearray(10)
        receiving = asyncio.ensure_future(loop.sock_recv_into(conn, buffer))
        await asyncio.sleep(0.01)
        assert not receiving.done()
        await loop.sock_sendall(client, b"0123456789abc")
        n = await receiving
        assert n == 10
        rest = memoryview(bytearray(10))
        m = await loop.sock_recv_into(conn, rest)
        return bytes(buffer[:n]) + bytes(rest[:m])

    assert run(loop, main()) == b"0123456789abc"


def test_cancelled_sock_recv_leaves_no_reader(
    loop: ErlangEventLoop, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, conn = tcp_pair

    async def main() -> bytes:
        receiving = asyncio.ensure_future(loop.sock_recv(conn, 100))
        await asyncio.sleep(0.01)
        assert loop.stats()["fds"] == 1
        receiving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await receiving
        assert loop.stats()["fds"] == 0
        await loop.sock_sendall(client, b"for the next one")
        return await loop.sock_recv(conn, 100)

    assert run(loop, main()) == b"for the next one"


def test_sock_methods_refuse_blocking_sockets(loop: ErlangEventLoop) -> None:
    a, b = socket.socketpair()
    with a, b:
        assert a.getblocking()

        async def main() -> None:
            # asyncio checks only in debug mode (else the call would block).
            loop.set_debug(True)
            with pytest.raises(ValueError, match="non-blocking"):
                await loop.sock_recv(a, 1)
            with pytest.raises(ValueError, match="non-blocking"):
                await loop.sock_sendall(a, b"x")

        run(loop, main())


def test_sock_connect_refused_and_resolving(loop: ErlangEventLoop) -> None:
    async def main() -> None:
        with socket.socket() as dead:
            dead.bind((LOCALHOST, 0))  # bound, not listening
            with socket.socket() as sock:
                sock.setblocking(False)
                with pytest.raises(ConnectionRefusedError):
                    await loop.sock_connect(sock, dead.getsockname())
        with socket.create_server((LOCALHOST, 0)) as listener:
            with socket.socket() as sock:
                sock.setblocking(False)
                # A name is resolved by the loop first.
                await loop.sock_connect(sock, ("localhost", listener.getsockname()[1]))
                assert sock.getpeername()[1] == listener.getsockname()[1]

    run(loop, main())


# ---------------------------------------------------------------- UDP sock_*


def test_sock_sendto_and_sock_recvfrom(
    loop: ErlangEventLoop, udp_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = udp_pair

    async def main() -> None:
        receiving = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0.01)
        assert not receiving.done()
        assert await loop.sock_sendto(a, b"datagram", b.getsockname()) == 8
        assert await receiving == (b"datagram", a.getsockname())

    run(loop, main())


def test_sock_recvfrom_into(
    loop: ErlangEventLoop, udp_pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = udp_pair

    async def main() -> None:
        buffer = bytearray(100)
        receiving = asyncio.ensure_future(loop.sock_recvfrom_into(b, buffer))
        await asyncio.sleep(0.01)
        assert not receiving.done()
        await loop.sock_sendto(a, b"into my buffer", b.getsockname())
        n, address = await receiving
        assert (bytes(buffer[:n]), address) == (b"into my buffer", a.getsockname())
        # nbytes: at most that many, the rest of the datagram is dropped.
        await loop.sock_sendto(a, b"truncated datagram", b.getsockname())
        n, _ = await loop.sock_recvfrom_into(b, buffer, 9)
        assert bytes(buffer[:n]) == b"truncated"

    run(loop, main())


# ---------------------------------------------------------------- sendfile


def test_sock_sendfile_native_and_fallback(
    loop: ErlangEventLoop, tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    client, conn = tcp_pair
    data = payload(2 * 1024 * 1024 + 3, seed=8)
    path = tmp_path / "file.bin"
    path.write_bytes(data)

    async def main() -> None:
        # os.sendfile on a regular file, with offset and count; the file
        # position follows what was sent.
        with path.open("rb") as f:
            receiving = asyncio.ensure_future(recv_exactly(loop, conn, len(data) - 10))
            sent = await loop.sock_sendfile(client, f, 10)
            assert sent == len(data) - 10
            assert f.tell() == len(data)
            assert await receiving == data[10:]
            f.seek(0)
            sent = await loop.sock_sendfile(client, f, 100, 1000)
            assert sent == 1000
            assert await recv_exactly(loop, conn, 1000) == data[100:1100]
        # Not a real file: no os.sendfile, the read-and-send fallback.
        memory = io.BytesIO(data)
        receiving = asyncio.ensure_future(recv_exactly(loop, conn, len(data)))
        assert await loop.sock_sendfile(client, memory) == len(data)
        assert await receiving == data
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(client, io.BytesIO(b"x"), fallback=False)

    run(loop, main(), timeout=60)


# ---------------------------------------------------------------- unix sockets


def test_unix_socket_echo_with_protocols_and_streams(loop: ErlangEventLoop, tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

        def eof_received(self) -> None:
            self.transport.close()

    async def main() -> None:
        server = await loop.create_unix_server(Echo, path)
        async with server:
            assert server.sockets[0].family == socket.AF_UNIX
            transport, client = await loop.create_unix_connection(lambda: Recorder(loop), path)
            assert type(transport) is _ErlangSocketTransport
            assert transport.get_extra_info("peername") == path
            transport.write(b"over a unix socket")
            transport.write_eof()
            await client.lost
            assert client.data == b"over a unix socket"
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"with streams")
            writer.write_eof()
            assert await reader.read() == b"with streams"
            writer.close()
            await writer.wait_closed()
            # sock_connect on a unix socket.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.setblocking(False)
                await loop.sock_connect(sock, path)
                await loop.sock_sendall(sock, b"raw")
                assert await loop.sock_recv(sock, 10) == b"raw"

    run(loop, main())


def test_unix_stream_server(loop: ErlangEventLoop, tmp_path: Path) -> None:
    path = str(tmp_path / "streams.sock")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> bytes:
        server = await asyncio.start_unix_server(handle, path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"shout\n")
            reply = await reader.read()
            writer.close()
            await writer.wait_closed()
            return reply

    assert run(loop, main()) == b"SHOUT\n"


# ---------------------------------------------------------------- pipes


def test_read_and_write_pipes(loop: ErlangEventLoop) -> None:
    data = payload(1024 * 1024, seed=11)

    async def main() -> bytes:
        rfd, wfd = os.pipe()
        reader_protocol = Recorder(loop)
        read_transport, _ = await loop.connect_read_pipe(
            lambda: reader_protocol, os.fdopen(rfd, "rb", 0)
        )
        write_transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(wfd, "wb", 0)
        )
        write_transport.write(data)
        write_transport.close()  # flushes, then the reader sees EOF
        await reader_protocol.lost
        assert reader_protocol.eof
        read_transport.close()
        return reader_protocol.data

    assert run(loop, main()) == data


# ---------------------------------------------------------------- subprocesses


ECHO = "import sys; sys.stdout.write(sys.stdin.read().upper()); sys.stdout.flush()"


def test_sys_executable_is_a_python() -> None:
    assert os.path.basename(sys.executable).startswith("python")


def test_subprocess_exec_echo(loop: ErlangEventLoop) -> None:
    async def main() -> tuple[bytes, bytes]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ECHO + "; sys.stderr.write('err')",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.pid > 0
        out, err = await process.communicate(b"echo me")
        return out, err

    assert run(loop, main()) == (b"ECHO ME", b"err")


def test_subprocess_shell_and_subprocess_protocol(loop: ErlangEventLoop) -> None:
    class Collect(asyncio.SubprocessProtocol):
        def __init__(self) -> None:
            self.out = b""
            self.exited = loop.create_future()

        def pipe_data_received(self, fd: int, data: bytes | str) -> None:
            assert fd == 1 and isinstance(data, bytes)
            self.out += data

        def process_exited(self) -> None:
            self.exited.set_result(True)

    async def main() -> bytes:
        process = await asyncio.create_subprocess_shell(
            "printf 'from the shell'", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
        assert out == b"from the shell"
        transport, protocol = await loop.subprocess_exec(
            Collect, sys.executable, "-c", "print('via protocol')", stdin=None, stderr=None
        )
        await protocol.exited
        await wait_for_condition(lambda: protocol.out == b"via protocol\n")
        transport.close()
        return protocol.out

    assert run(loop, main()) == b"via protocol\n"


def test_subprocess_exit_status(loop: ErlangEventLoop) -> None:
    async def main() -> int:
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
        return await process.wait()

    assert run(loop, main()) == 3
