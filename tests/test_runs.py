"""Durable runs a user can trust with money, through the real `deerluma` command in real
processes: runs keep to their own file, edited lines, outages, timeouts, creates in
flight, signals, local faults. Against FakeDeerAPI (or a server that never answers, or
nothing at all) over real sockets; SQLite files and a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from deerluma.jobs import Job, JobState, Ledger
from deerluma.jobs.store import LedgerRow, Move
from deerluma.testing import FakeDeerAPI

from .test_jobs import _rows as ledger_rows

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and ttys")


def _write(path: Path, jobs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs), encoding="utf-8")
    return path


def _jobs(prefix: str, count: int) -> list[dict[str, Any]]:
    return [{"key": f"{prefix}-{i}", "prompt": f"{prefix} {i}"} for i in range(count)]


async def deerluma(
    fake: FakeDeerAPI | str | None, *argv: str, stdout: Any = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """The real command, in a process of its own."""
    where = []
    if isinstance(fake, FakeDeerAPI):
        where = ["--api-key", fake.api_key, "--base-url", fake.url]
    elif isinstance(fake, str):
        where = ["--api-key", "fake-key-0123456789", "--base-url", fake]
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deerluma", *where, *argv,
        stdout=stdout, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def command(fake: FakeDeerAPI | str | None, *argv: str) -> tuple[int, str, str]:
    proc = await deerluma(fake, *argv)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=40)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _rows(where: Any) -> dict[str, LedgerRow]:
    """The ledger's rows by key (the jobs tests' reader, keyed)."""
    return {row.key: row for row in await ledger_rows(where)}


def _posts(fake: FakeDeerAPI) -> int:
    return sum(1 for r in fake.requests if r.method == "POST")


async def test_a_run_works_only_on_the_jobs_of_its_own_file(tmp_path: Path, pg_url: str) -> None:
    # One ledger, two files: a.jsonl's run was cut short before it sent anything; b.jsonl
    # then runs on the same ledger (a shared --out's SQLite file, or PostgreSQL).
    a, b = _jobs("a", 4), _jobs("b", 3)
    a_file, b_file = _write(tmp_path / "a.jsonl", a), _write(tmp_path / "b.jsonl", b)

    async def case(ledger: str, out: Path) -> None:
        async with await Ledger.open(ledger) as store:
            await store.add({Job.of(j).key: Job.of(j).request for j in a})
            # Two of a's were created, then its run stopped: no worker holds them.
            held = await store.claim("gone", 60.0, ["a-0", "a-1"], running=2, max_active=10)
            for row in held:
                sending = attrs.evolve(row, state=JobState.SUBMITTING, creates=1)
                await store.write("gone", [Move(JobState.NEW, sending)])
                created = attrs.evolve(sending, state=JobState.CREATED, task_id=f"t-{row.key}")
                await store.write("gone", [Move(JobState.SUBMITTING, created)])
            await store.release("gone")
        async with FakeDeerAPI(create_duration=0.1) as fake:
            # --max-active 2: a's generations, held by no one, take none of b's room.
            code, stdout, stderr = await command(
                fake, "run", str(b_file), "--out", str(out), "--ledger", ledger,
                "--max-active", "2",
            )  # fmt: skip
        assert code == 0, stderr
        assert sorted(str(body["prompt"]) for body in fake.created) == ["b 0", "b 1", "b 2"]
        assert sorted(line.split("\t")[0] for line in stdout.splitlines()) == ["b-0", "b-1", "b-2"]
        assert "3 jobs: 3 done" in stderr
        assert sorted(p.name for p in out.glob("*.mp4")) == ["b-0.mp4", "b-1.mp4", "b-2.mp4"]
        rows = await _rows(ledger)
        assert [rows[j["key"]].state for j in a] == [JobState.CREATED] * 2 + [JobState.NEW] * 2

    shared = tmp_path / "shared"
    await asyncio.gather(
        case(str(shared), shared),  # --out shared by both files: its SQLite ledger
        case(pg_url, tmp_path / "B"),
    )
    del a_file


async def test_an_edited_line_takes_effect_only_where_nothing_was_paid(tmp_path: Path) -> None:
    out = tmp_path / "videos"

    def script(body: Any) -> dict[str, object]:
        bad = str(body["prompt"]).startswith("blocked")
        return {"duration": 0.1, "failure_reason": "moderation: blocked" if bad else None}

    async with FakeDeerAPI(create_script=script) as fake:
        async with await Ledger.open(out) as ledger:  # recorded, never sent
            await ledger.add({"later": {"prompt": "old words"}})
        jobs = [
            {"key": "done", "prompt": "a deer"},
            {"key": "bad", "prompt": "blocked words"},
            {"key": "later", "prompt": "new words"},
        ]
        jobs_file = _write(tmp_path / "jobs.jsonl", jobs)
        code, _, stderr = await command(fake, "run", str(jobs_file), "--out", str(out))
        assert code == 1, stderr  # "bad" failed
        sent = sorted(str(body["prompt"]) for body in fake.created)
        assert sent == ["a deer", "blocked words", "new words"]  # "later": its new line

        jobs[0]["prompt"] = "a deer, edited"  # done: paid for already
        jobs[1]["prompt"] = "fixed words"  # failed
        _write(jobs_file, jobs)
        posts = _posts(fake)
        code, _, stderr = await command(fake, "run", str(jobs_file), "--out", str(out))
        assert code == 2, stderr
        assert "bad, done" in stderr and "new key" in stderr and "--retry-failed" in stderr
        assert "stopped after" not in stderr  # refused before it started: nothing to sum up
        assert _posts(fake) == posts  # nothing sent

        jobs[0]["prompt"] = "a deer"  # back as it was: only the failed one is edited
        _write(jobs_file, jobs)
        argv = ["run", str(jobs_file), "--out", str(out), "--retry-failed"]
        code, _, stderr = await command(fake, *argv)
        assert code == 0, stderr
        assert str(fake.created[-1]["prompt"]) == "fixed words"  # the line as it is now
        assert len(fake.created) == 4


async def test_an_api_out_of_reach_stops_the_run_and_sends_nothing(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    jobs_file = _write(tmp_path / "jobs.jsonl", _jobs("clip", 5))
    out = tmp_path / "videos"
    code, _, stderr = await command(url, "run", str(jobs_file), "--out", str(out))
    assert code == 4, stderr
    assert "stopped after 0 jobs settled" in stderr
    rows = await _rows(out)
    assert {row.state for row in rows.values()} == {JobState.NEW}  # sent later
    assert {row.creates for row in rows.values()} == {0}


@asynccontextmanager
async def _mute_server() -> AsyncIterator[str]:
    """A server that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_an_api_that_never_answers_leaves_one_unknown_and_stops(tmp_path: Path) -> None:
    jobs_file = _write(tmp_path / "jobs.jsonl", _jobs("clip", 6))
    out = tmp_path / "videos"
    async with _mute_server() as url:
        argv = ["--request-timeout", "0.5", "run", str(jobs_file), "--out", str(out)]
        code, _, stderr = await command(url, *argv)
    assert code == 4, stderr
    rows = await _rows(out)
    states = sorted(row.state.value for row in rows.values())
    assert states == ["new"] * 5 + ["unknown"]  # the one sent; the rest not
    assert "outcome unknown (may be charged): clip-0" in stderr
    code, status, _ = await command(None, "status", str(out))
    assert code == 0 and "6 jobs: 5 new, 1 unknown" in status  # on stdout


async def test_a_generation_that_never_ends_times_out_and_frees_its_slot(tmp_path: Path) -> None:
    def script(body: Any) -> dict[str, object]:
        prompt = str(body["prompt"])
        return {"duration": 3600.0 if prompt == "stuck" else 0.1, "video": prompt != "empty"}

    jobs = [{"key": "stuck", "prompt": "stuck"}, {"key": "empty", "prompt": "empty"}]
    jobs += _jobs("clip", 1)
    jobs_file, out = _write(tmp_path / "jobs.jsonl", jobs), tmp_path / "videos"
    async with FakeDeerAPI(create_script=script) as fake:
        argv = ["run", str(jobs_file), "--out", str(out), "--json", "--max-active", "1"]
        code, stdout, stderr = await command(fake, *argv, "--wait-timeout", "1.5")
        records = {r["key"]: r for r in map(json.loads, stdout.splitlines())}
        # One slot: the stuck one held it 1.5 s, then the others went.
        assert code == 3, stderr
        assert records["stuck"]["state"] == "timed_out"
        assert "timed out: stuck" in stderr
        assert records["empty"]["state"] == "failed"
        assert "has no video" in records["empty"]["error"]["message"]
        assert records["clip-0"]["state"] == "done"
        code, stdout, _ = await command(fake, *argv, "--wait-timeout", "0.5")  # again
        assert code == 3
        assert [str(body["prompt"]) for body in fake.created].count("stuck") == 1  # once
    rows = await _rows(out)
    assert rows["stuck"].state is JobState.TIMED_OUT and rows["stuck"].task_id


async def test_sigterm_stops_the_run_as_ctrl_c_does(tmp_path: Path) -> None:
    jobs_file, out = _write(tmp_path / "jobs.jsonl", _jobs("clip", 30)), tmp_path / "videos"
    async with FakeDeerAPI(create_duration=5.0, create_latency=0.3) as fake:
        proc = await deerluma(fake, "run", str(jobs_file), "--out", str(out), "--max-active", "30")
        while not fake.created:  # a create is on its way (its answer takes 0.3 s)
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
        assert proc.returncode == 143, err.decode()
        assert "terminated" in err.decode()
    rows = await _rows(out)
    states = {row.state for row in rows.values()}
    assert JobState.SUBMITTING not in states  # the create in flight had its grace
    assert JobState.CREATED in states and JobState.UNKNOWN not in states


async def test_local_mistakes_stop_before_any_create(tmp_path: Path) -> None:
    jobs_file = _write(tmp_path / "jobs.jsonl", _jobs("clip", 2))
    async with FakeDeerAPI() as fake:
        # /proc: a folder no one (root included) can write a file into.
        code, _, stderr = await command(fake, "run", str(jobs_file), "--out", "/proc")
        assert code == 5, stderr
        assert "Traceback" not in stderr and "cannot write videos into /proc" in stderr
        os.chdir(tmp_path)
        argv = ["run", str(jobs_file), "--out", "v", "--ledger", "mysql://x/y"]
        code, _, stderr = await command(fake, *argv)
        assert code == 2 and "mysql://" in stderr
        assert not (tmp_path / "mysql:").exists()
        assert _posts(fake) == 0


async def test_run_into_a_file_on_a_terminal_writes_its_lines_there(tmp_path: Path) -> None:
    jobs_file, out = _write(tmp_path / "jobs.jsonl", _jobs("clip", 3)), tmp_path / "videos"
    results = tmp_path / "results.txt"
    leader, follower = pty.openpty()  # stderr is a terminal: the status line goes there
    try:
        async with FakeDeerAPI(create_duration=0.1) as fake:
            with results.open("w") as sink:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "deerluma", "--api-key", fake.api_key,
                    "--base-url", fake.url, "run", str(jobs_file), "--out", str(out),
                    stdout=sink, stderr=follower,
                )  # fmt: skip
                code = await asyncio.wait_for(proc.wait(), timeout=30)
    finally:
        os.close(follower)
        os.close(leader)
    assert code == 0
    lines = results.read_text().splitlines()
    assert sorted(line.split("\t")[:2] for line in lines) == [
        [f"clip-{i}", "done"] for i in range(3)
    ]


async def test_status_names_a_job_a_killed_worker_left_submitting(tmp_path: Path) -> None:
    from .test_cli import run as cli

    async with await Ledger.open(tmp_path) as store:
        await store.add({"k": {"prompt": "p"}, "j": {"prompt": "q"}})
        (row,) = await store.claim("killed", 60.0, ["k"], running=1, max_active=10)
        sending = attrs.evolve(row, state=JobState.SUBMITTING, creates=1)
        await store.write("killed", [Move(JobState.NEW, sending)])
    code, out, _ = await cli(None, "status", str(tmp_path))
    assert code == 0
    assert "2 jobs: 1 new, 1 submitting" in out
    assert "outcome unknown (may be charged): k:" in out
