"""Echo servers on ErlangEventLoop: a TCP echo server and clients with
asyncio streams, and a UDP echo server and client with Protocols, all on
127.0.0.1 inside the BEAM node. Prints round-trip times (p50/p99).

Run with ``bin/erlang-python examples/echo_servers.py``. The code is plain
asyncio: it runs unchanged on any event loop.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

HOST = "127.0.0.1"
TCP_CLIENTS = 4
TCP_REQUESTS = 150  # per client
UDP_REQUESTS = 500


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    return f"p50 {at(0.50):7.1f} us   p99 {at(0.99):7.1f} us   ({len(ordered)} round trips)"


# ---------------------------------------------------------------- TCP, streams


async def handle_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def tcp_client(port: int, client: int) -> list[float]:
    reader, writer = await asyncio.open_connection(HOST, port)
    rtts = []
    for i in range(TCP_REQUESTS):
        message = f"client {client} request {i}\n".encode()
        start = time.perf_counter()
        writer.write(message)
        reply = await reader.readline()
        rtts.append(time.perf_counter() - start)
        assert reply == message, (reply, message)
    writer.close()
    await writer.wait_closed()
    return rtts


async def tcp_echo() -> list[float]:
    server = await asyncio.start_server(handle_echo, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        per_client = await asyncio.gather(*(tcp_client(port, c) for c in range(TCP_CLIENTS)))
    return [rtt for rtts in per_client for rtt in rtts]


# ---------------------------------------------------------------- UDP, protocols


class EchoServerProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


class EchoClientProtocol(asyncio.DatagramProtocol):
    """Sends one datagram at a time and waits for its echo."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.waiting: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(exc)

    async def request(self, data: bytes) -> bytes:
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.sendto(data)
        return await asyncio.wait_for(self.waiting, 2.0)


async def udp_echo() -> list[float]:
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(EchoServerProtocol, local_addr=(HOST, 0))
    address = server.get_extra_info("sockname")
    transport, client = await loop.create_datagram_endpoint(EchoClientProtocol, remote_addr=address)
    rtts = []
    try:
        for i in range(UDP_REQUESTS):
            message = f"datagram {i}".encode()
            start = time.perf_counter()
            reply = await client.request(message)
            rtts.append(time.perf_counter() - start)
            assert reply == message, (reply, message)
    finally:
        transport.close()
        server.close()
    return rtts


async def main() -> None:
    loop = asyncio.get_running_loop()
    print(f"Python {sys.version.split()[0]} inside the BEAM, loop: {type(loop).__name__}")
    tcp = await tcp_echo()
    print(f"TCP echo, {TCP_CLIENTS} stream clients:  {percentiles(tcp)}")
    udp = await udp_echo()
    print(f"UDP echo, 1 protocol client:  {percentiles(udp)}")


if __name__ == "__main__":
    asyncio.run(main())
