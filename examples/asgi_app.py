"""A small Starlette app served by uvicorn on ErlangEventLoop inside the node.

    bin/erlang-python examples/asgi_app.py [--port 8000] [--loop none|asyncio|uvloop]

Routes: ``GET /json`` (a JSON document naming the loop that serves it),
``GET /sleep?ms=10`` (answers after an ``asyncio.sleep``) and ``GET /stream``
(a streamed response of 10 chunks, one loop iteration apart).

uvicorn starts programmatically with ``loop="none"``: it then asks asyncio for
a loop, and inside the node asyncio's policy is erlang_loop's, so the app runs
on ErlangEventLoop. ``loop="asyncio"`` and ``loop="uvloop"`` give the other
loops (the benchmark compares them). :func:`serve_in_thread` runs a server on
a thread of its own, for tests and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

STREAM_CHUNKS = 10


def loop_name() -> str:
    return type(asyncio.get_running_loop()).__name__


async def json_endpoint(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world", "loop": loop_name()})


async def sleep_endpoint(request: Request) -> JSONResponse:
    ms = float(request.query_params.get("ms", "10"))
    start = time.monotonic()
    await asyncio.sleep(ms / 1000)
    return JSONResponse({"slept_ms": (time.monotonic() - start) * 1000, "loop": loop_name()})


async def stream_endpoint(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(STREAM_CHUNKS):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(chunks(), media_type="text/plain")


app = Starlette(
    routes=[
        Route("/json", json_endpoint),
        Route("/sleep", sleep_endpoint),
        Route("/stream", stream_endpoint),
    ]
)


def make_server(loop: str = "none", host: str = "127.0.0.1", port: int = 0) -> uvicorn.Server:
    """A uvicorn server for ``app``. ``loop`` is uvicorn's setting: "none"
    takes the policy's loop (ErlangEventLoop inside the node), "asyncio" the
    stdlib's, "uvloop" uvloop, "rloop:new_event_loop" rloop (a loop
    factory's import path). Port 0: the system picks one."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http="h11",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    return uvicorn.Server(config)


@contextlib.contextmanager
def serve_in_thread(
    loop: str = "none", host: str = "127.0.0.1", timeout: float = 10.0
) -> Iterator[int]:
    """Runs a server on a thread of its own while the block runs; yields its
    port. The server stops (and the thread ends) when the block exits.

    uvicorn binds the socket itself (``loop.create_server``), as when it is
    given a host and a port: a listening socket made by hand with
    ``socket.socket()`` has ``proto`` 0, and asyncio then leaves Nagle on for
    the connections it accepts (each response then waits ~40 ms for a
    delayed ACK)."""
    server = make_server(loop, host)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{loop}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn (loop={loop}) did not start")
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="uvicorn + Starlette inside the node")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--loop", default="none", choices=("none", "asyncio", "uvloop", "rloop"))
    args = parser.parse_args(argv)
    loop = "rloop:new_event_loop" if args.loop == "rloop" else args.loop
    config = uvicorn.Config(app, host=args.host, port=args.port, loop=loop, lifespan="off")
    # Inside the node Python never runs on its main thread, so uvicorn installs
    # no signal handlers: stop the node (or the erlang-python command) to stop.
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
