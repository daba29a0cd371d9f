"""The main job: an asyncio program running inside a BEAM node.

Run it with ``make run`` (or ``bin/erlang-python examples/hello_asyncio.py``).
"""

from __future__ import annotations

import asyncio
import sys
import time


async def worker(name: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return f"{name} slept {delay * 1000:.0f} ms"


async def main() -> None:
    loop = asyncio.get_running_loop()
    print(f"Python {sys.version.split()[0]} inside the BEAM, loop: {type(loop).__name__}")
    started = time.monotonic()
    results = await asyncio.gather(*(worker(f"task{i}", 0.05 * i) for i in range(1, 4)))
    for line in results:
        print(" ", line)
    print(f"gather of 3 sleeps took {(time.monotonic() - started) * 1000:.0f} ms (concurrent)")


if __name__ == "__main__":
    asyncio.run(main())
