"""uvicorn serving examples/asgi_app.py (Starlette) on ErlangEventLoop inside
the BEAM, asked by plain ``http.client`` clients on other threads.

Run with ``bin/erlang-python -m pytest tests/python/test_asgi.py``. uvicorn
and Starlette come with the venv (requirements-dev.txt): if they cannot be
imported, that is a failure, not a skip. Every wait has a generous deadline
(LESSONS 30); the one bound on time is a wide one on concurrency.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import asgi_app  # noqa: E402  (examples/ is not a package)

DEADLINE = 20.0


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """uvicorn with loop="none": the loop comes from the node's policy."""
    with asgi_app.serve_in_thread("none", timeout=DEADLINE) as port:
        yield port


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> Any:
    status, headers, body = get(port, path)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def test_uvicorn_and_starlette_are_installed() -> None:
    import starlette
    import uvicorn

    assert uvicorn.__version__
    assert starlette.__version__


def test_json_is_served_by_erlang_event_loop(port: int) -> None:
    assert get_json(port, "/json") == {"hello": "world", "loop": "ErlangEventLoop"}


def test_sleep_never_answers_early(port: int) -> None:
    answer = get_json(port, "/sleep?ms=30")
    assert answer["loop"] == "ErlangEventLoop"
    assert answer["slept_ms"] >= 30


def test_stream_sends_every_chunk_in_order(port: int) -> None:
    status, headers, body = get(port, "/stream")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert headers.get("transfer-encoding") == "chunked"
    expected = "".join(f"chunk {i}\n" for i in range(asgi_app.STREAM_CHUNKS))
    assert body.decode() == expected


def test_unknown_path_is_404(port: int) -> None:
    status, _, _ = get(port, "/nowhere")
    assert status == 404


def test_keep_alive_connection_serves_many_requests(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        for _ in range(20):
            conn.request("GET", "/json")
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["loop"] == "ErlangEventLoop"
    finally:
        conn.close()


def test_sleeping_requests_are_served_concurrently(port: int) -> None:
    """40 requests that each sleep 250 ms, from 40 threads: served one after
    the other they would take 10 s; concurrently, well under 5 s."""
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda _: get_json(port, "/sleep?ms=250"), range(40)))
    elapsed = time.monotonic() - start
    assert all(a["slept_ms"] >= 250 for a in answers)
    assert elapsed < 5.0, elapsed


def test_server_stops_and_frees_its_port() -> None:
    with asgi_app.serve_in_thread("none", timeout=DEADLINE) as port:
        assert get_json(port, "/json")["loop"] == "ErlangEventLoop"
    with pytest.raises(ConnectionRefusedError):
        get(port, "/json")
