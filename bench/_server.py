"""A FakeDeerAPI in its own process, so the client's memory and CPU are measured alone.

`python -m bench._server COUNT DURATION [CREATE_DURATION]` adds ids task-0 ... and
prints its URL; it stops when its standard input closes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from deerluma.testing import FakeDeerAPI


async def serve(count: int, duration: float, create_duration: float = 5.0) -> None:
    async with FakeDeerAPI(create_duration=create_duration) as fake:
        fake.record_requests = False
        start = datetime.now(UTC)
        for i in range(count):
            # Distinct creation times, as real bodies have: no decoding shortcut can share them.
            created = start - timedelta(seconds=i * 7.123457)
            fake.add_generation(f"task-{i}", duration=duration, pending_for=0, created_at=created)
        print(fake.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2]), *map(float, sys.argv[3:4])))


@contextmanager
def server_process(count: int, duration: float, create_duration: float = 5.0) -> Iterator[str]:
    """Run the fake server in a child process; yield its base URL."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench._server", str(count), str(duration), str(create_duration)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip()
    finally:
        child.communicate("")
