"""Durable jobs: what the ledger costs.

Row 1: 1,000 jobs of instant generations on the fake, through `deerluma run`
(the real command, its SQLite ledger committing every state change), beside
the same work done without a ledger in the same process: `create_generation`
for each (16 at a time), `wait_many`, then `download` of each (16 at a
time). The target: `deerluma run` at >= 0.8x the rate of the plain calls.

Row 2: creates that take a second, as a real gateway's POST does (0.8-1.2 s),
60 jobs of 10-20 s generations: `deerluma run --creates-in-flight 8
--max-active 60` beside a plain concurrent script (8 creates at once, each
job then waits and downloads). The target: wall <= 1.3x the script's.

Each side gets a fresh fake server, in a process of its own (the client's
CPU is measured alone), and a fresh folder; the rounds alternate ABBA so
that warming up favours neither.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import deerluma
from deerluma.cli import main as cli_main

from ._server import server_process
from .common import abba

KEY = "fake-key-0123456789"


async def _plain(url: str, jobs: list[dict[str, str]], out: Path) -> None:
    gate = asyncio.Semaphore(16)
    async with deerluma.Session(api_key=KEY, base_url=url) as s:

        async def create(job: dict[str, str]) -> deerluma.Generation:
            async with gate:
                return await s.create_generation(job["prompt"])

        created = await asyncio.gather(*(create(job) for job in jobs))
        results = await s.wait_many([g.id for g in created])

        async def save(key: str, g: deerluma.Generation | deerluma.DeerLumaError) -> None:
            assert isinstance(g, deerluma.Generation)
            async with gate:
                await s.download(g, out / f"{key}.mp4")

        pairs = zip(jobs, created, strict=True)
        await asyncio.gather(*(save(j["key"], results[g.id]) for j, g in pairs))


async def _script(url: str, jobs: list[dict[str, str]], out: Path) -> None:
    """A plain concurrent script: 8 creates at once; each job then waits and downloads."""
    gate = asyncio.Semaphore(8)
    async with deerluma.Session(api_key=KEY, base_url=url) as s:

        async def one(job: dict[str, str]) -> None:
            async with gate:
                created = await s.create_generation(job["prompt"])
            done = await s.wait_until_completed(created.id)
            await s.download(done, out / f"{job['key']}.mp4")

        await asyncio.gather(*(one(job) for job in jobs))


async def _ledger(url: str, jobs_file: Path, out: Path, *flags: str) -> None:
    argv = ["--api-key", KEY, "--base-url", url, "run", str(jobs_file)]
    argv += ["--out", str(out), "--max-active", "64", *flags]
    code = await asyncio.to_thread(cli_main, argv, stdout=_Null(), stderr=_Null())
    assert code == 0, code


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


async def _timed(side: str, jobs: list[dict[str, str]], jobs_file: Path, slow: bool) -> float:
    server = (
        server_process(0, 0.0, 15.0, latency="0.8-1.2", spread="10-20")
        if slow
        else server_process(0, 0.0, create_duration=0.0)
    )
    with server as url, tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        # What the side before wrote (a thousand files made and removed) goes to disk now, not
        # in this side's first syncs: an ext4 fsync commits the whole journal, so the ledger's
        # syncs would pay for the other side's files.
        await asyncio.to_thread(os.sync)
        started = time.perf_counter()
        if side.startswith("deerluma run"):
            flags = ("--creates-in-flight", "8", "--max-active", "60") if slow else ()
            await _ledger(url, jobs_file, out, *flags)
        elif slow:
            await _script(url, jobs, out)
        else:
            await _plain(url, jobs, out)
        took = time.perf_counter() - started
        videos = await asyncio.to_thread(lambda: list(out.glob("*.mp4")))
        assert len(videos) == len(jobs)
    return took


async def _rounds(
    sides: tuple[str, str], count: int, rounds: int, slow: bool
) -> dict[str, list[float]]:
    jobs = [{"key": f"clip-{i:04}", "prompt": f"a deer, take {i}"} for i in range(count)]
    times: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as folder:
        jobs_file = Path(folder) / "jobs.jsonl"
        jobs_file.write_text("".join(json.dumps(j) + "\n" for j in jobs), encoding="utf-8")
        for round_ in range(rounds):
            for side, _ in abba(round_, times):
                times[side].append(await _timed(side, jobs, jobs_file, slow))
    return times


async def instant(count: int, rounds: int) -> None:
    times = await _rounds(("plain calls", "deerluma run"), count, rounds, slow=False)
    plain, ledger = (
        statistics.median(times["plain calls"]),
        statistics.median(times["deerluma run"]),
    )
    # Each round runs both sides back to back: the ratio within a round cancels the drift of
    # a shared machine (whole rounds differ by 20 % here), and the median of them the outliers.
    pairs = zip(times["plain calls"], times["deerluma run"], strict=True)
    share = statistics.median(p / r for p, r in pairs)
    print(f"bench_run: {count} jobs of instant generations, median of {rounds} rounds")
    print(
        f"  plain calls (create, wait_many, download)  {plain:6.2f}s  {count / plain:7.1f} jobs/s"
    )
    print(
        f"  deerluma run (SQLite ledger)               {ledger:6.2f}s  {count / ledger:7.1f} jobs/s"
    )
    print("  rounds:", {k: [round(t, 2) for t in v] for k, v in times.items()})
    verdict = "met" if share >= 0.8 else "MISSED"
    print(
        f"  deerluma run / plain rate: {share:.2f}x (median of the rounds' ratios)"
        f"   target >= 0.8x: {verdict}"
    )


async def slow_creates(count: int, rounds: int) -> None:
    sides = ("plain script", "deerluma run --creates-in-flight 8")
    times = await _rounds(sides, count, rounds, slow=True)
    script, ledger = (statistics.median(times[side]) for side in sides)
    pairs = zip(times[sides[0]], times[sides[1]], strict=True)
    ratio = statistics.median(r / p for p, r in pairs)
    print(
        f"bench_run: {count} jobs, creates answering in 0.8-1.2 s, 10-20 s generations, "
        f"median of {rounds} rounds"
    )
    print(f"  plain script (8 creates at once; wait, download)      {script:6.2f}s")
    print(f"  deerluma run --creates-in-flight 8 --max-active 60    {ledger:6.2f}s")
    print("  rounds:", {k: [round(t, 2) for t in v] for k, v in times.items()})
    verdict = "met" if ratio <= 1.3 else "MISSED"
    print(f"  deerluma run / script wall: {ratio:.2f}x   target <= 1.3x: {verdict}")


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--slow-jobs", type=int, default=60)
    parser.add_argument("--slow-rounds", type=int, default=2)
    parser.add_argument("--only", choices=("instant", "slow"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.only != "slow":
        asyncio.run(instant(args.jobs, args.rounds))
    if args.only != "instant":
        asyncio.run(slow_creates(args.slow_jobs, args.slow_rounds))


if __name__ == "__main__":
    cli()
