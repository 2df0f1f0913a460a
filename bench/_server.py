"""A FakeDeerAPI in its own process, so the client's memory and CPU are measured alone.

`python -m bench._server COUNT DURATION [CREATE_DURATION [LATENCY [SPREAD]]]` adds ids
task-0 ... and prints its URL; it stops when its standard input closes. Creates take
LATENCY seconds to answer ("0.8-1.2": drawn for each), and make generations of
CREATE_DURATION seconds (SPREAD "10-20": drawn for each instead).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from deerluma.testing import FakeDeerAPI


def _span(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    return float(low), float(high or low)


async def serve(
    count: int, duration: float, create_duration: float = 5.0, latency: str = "0", spread: str = ""
) -> None:
    durations = random.Random(7)

    def script(body: object) -> dict[str, object]:
        return {"duration": durations.uniform(*_span(spread))} if spread else {}

    async with FakeDeerAPI(
        create_duration=create_duration, create_latency=_span(latency), create_script=script
    ) as fake:
        fake.record_requests = False
        start = datetime.now(UTC)
        for i in range(count):
            # Distinct creation times, as real bodies have: no decoding shortcut can share them.
            created = start - timedelta(seconds=i * 7.123457)
            fake.add_generation(f"task-{i}", duration=duration, pending_for=0, created_at=created)
        print(fake.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(
        serve(int(sys.argv[1]), float(sys.argv[2]), *map(float, sys.argv[3:4]), *sys.argv[4:])
    )


@contextmanager
def server_process(
    count: int,
    duration: float,
    create_duration: float = 5.0,
    latency: str = "0",
    spread: str = "",
) -> Iterator[str]:
    """Run the fake server in a child process; yield its base URL."""
    args = [str(count), str(duration), str(create_duration), latency, spread]
    child = subprocess.Popen(
        [sys.executable, "-m", "bench._server", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip()
    finally:
        child.communicate("")
