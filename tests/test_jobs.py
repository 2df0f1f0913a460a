"""Durable jobs: the ledger's state machine, resumes, unknown outcomes, shared ledgers.

Against FakeDeerAPI over real sockets; the SQLite ledger is a real file, and
the PostgreSQL one a real server (127.0.0.1:5432, a database made per test).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

import deerluma
from deerluma.jobs import Job, JobState, Ledger, load_jobs
from deerluma.jobs.store import LedgerRow, Move, SQLiteLedger
from deerluma.testing import FakeClock, FakeDeerAPI, Fault


def _jobs(count: int, prefix: str = "clip") -> list[dict[str, Any]]:
    return [{"key": f"{prefix}-{i:03}", "prompt": f"{prefix} {i}"} for i in range(count)]


async def _run(session: deerluma.Session, jobs: Any, out: Path, **kwargs: Any) -> list[Any]:
    async with session.run(jobs, out=out, **kwargs) as results:
        return [r async for r in results]


async def _run_until_stopped(
    session: deerluma.Session, jobs: Any, out: Path, **kwargs: Any
) -> tuple[list[Any], BaseException]:
    """A run that a fault stops: what it settled first, and the fault."""
    settled = []
    try:
        async with session.run(jobs, out=out, **kwargs) as results:
            async for result in results:
                settled.append(result)
    except Exception as exc:  # each caller checks which
        return settled, exc
    raise AssertionError(f"the run was not stopped: {settled}")


async def _rows(where: Any) -> list[LedgerRow]:
    async with await Ledger.open(where) as ledger:
        return await ledger.rows()


def _creates(fake: FakeDeerAPI) -> collections.Counter[str]:
    return collections.Counter(str(body["prompt"]) for body in fake.created)


def _videos(fake: FakeDeerAPI, out: Path, keys: list[str]) -> None:
    """Every job's video is on disk, whole, and no temporary file is left in the folder."""
    for key in keys:
        assert (out / f"{key}.mp4").stat().st_size == fake.video_bytes
    assert not list(out.glob(".*.part"))


def test_a_job_needs_a_prompt_and_a_safe_key_and_its_default_key_is_its_request() -> None:
    one = Job.of({"prompt": "a deer", "aspect_ratio": "16:9"})
    assert one.key == Job.of({"aspect_ratio": "16:9", "prompt": "a deer"}).key
    assert one.key != Job.of({"prompt": "a deer"}).key
    with pytest.raises(ValueError, match="prompt"):
        Job.of({"key": "x"})
    with pytest.raises(ValueError, match="key"):
        Job.of({"key": "../etc/passwd", "prompt": "p"})
    with pytest.raises(ValueError, match="aspect_ratio"):
        Job.of({"prompt": "p", "aspect_ratio": "17:9"})  # refused before anything is sent
    with pytest.raises(ValueError, match="line 2"):
        load_jobs(['{"prompt": "ok"}', "{not json"], "jobs.jsonl")
    assert [
        j.key for j in load_jobs(['{"key": "a", "prompt": "1"}', '{"key": "a", "prompt": "2"}'])
    ] == ["a"]


async def test_a_run_puts_every_video_on_disk_and_a_rerun_sends_nothing(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    jobs = _jobs(12)
    results = await _run(session, jobs, tmp_path)
    assert sorted(r.key for r in results) == [j["key"] for j in jobs]
    assert all(r.state is JobState.DONE and r.path for r in results)
    _videos(fake, tmp_path, [j["key"] for j in jobs])
    requests = len(fake.requests)
    again = await _run(session, jobs, tmp_path)
    assert {r.state for r in again} == {JobState.DONE}
    assert len(fake.requests) == requests  # not one create, not one poll
    assert max(_creates(fake).values()) == 1


async def test_a_jobs_end_is_written_with_the_next_create_when_one_goes(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    fake.create_duration = 0.0  # each video is ready while the next job is being sent
    writes: list[list[JobState]] = []

    class Counting(SQLiteLedger):
        async def write(self, owner: str, moves: Any) -> None:
            writes.append([move.row.state for move in moves])
            await super().write(owner, moves)

    async with Counting(tmp_path / "jobs.sqlite") as ledger:
        await ledger._migrate()
        results = await _run(session, _jobs(20), tmp_path, ledger=ledger)
        rows = await ledger.rows()
    assert {r.state for r in results} == {r.state for r in rows} == {JobState.DONE}
    assert any(JobState.DONE in w and JobState.SUBMITTING in w for w in writes)
    # Not two writes per job (20 SUBMITTING, 20 DONE): most ends ride (21-26 writes most
    # times), fewer on a loaded machine, where a download can outlast the next create (30
    # seen once in a full run).
    assert len(writes) <= 36


async def test_a_ledger_that_fails_stops_the_run_with_its_error(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    import sqlite3

    class Failing(SQLiteLedger):
        async def write(self, owner: str, moves: Any) -> None:
            if any(move.row.state is JobState.DONE for move in moves):
                raise sqlite3.OperationalError("disk I/O error")
            await super().write(owner, moves)

    fake.create_duration = 0.0
    async with Failing(tmp_path / "jobs.sqlite") as ledger:
        await ledger._migrate()
        with pytest.raises(sqlite3.OperationalError):
            # Every driver hears of it: the run stops, rather than wait for a write that failed.
            await asyncio.wait_for(_run(session, _jobs(6), tmp_path, ledger=ledger), timeout=10)


async def test_an_interrupted_run_continues_where_it_was(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    jobs = _jobs(10)
    async with session.run(jobs, out=tmp_path, max_active=3) as results:
        async for _ in results:
            break  # stopped after the first: the others are mid-way
    rows = await _rows(tmp_path)
    assert any(row.state is not JobState.DONE for row in rows)
    assert all(row.state is not JobState.SUBMITTING for row in rows)
    results = await _run(session, jobs, tmp_path)
    assert {r.state for r in results} == {JobState.DONE}
    assert max(_creates(fake).values()) == 1  # nothing created twice
    _videos(fake, tmp_path, [j["key"] for j in jobs])


async def test_a_create_whose_answer_is_lost_is_unknown_and_never_sent_again_unasked(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    fake.inject(Fault.reset())  # the first create is sent, and its answer lost
    jobs = _jobs(3)
    settled, error = await _run_until_stopped(session, jobs, tmp_path)
    # The next create would fare no better: the run stops, and sends nothing more.
    assert isinstance(error, deerluma.CreateOutcomeUnknown)
    (unknown,) = settled
    assert unknown.state is JobState.UNKNOWN and "lost" in (unknown.error or "")
    assert [r.method for r in fake.requests] == ["POST"]  # one create sent, no more
    assert {r.state for r in await _rows(tmp_path)} == {JobState.UNKNOWN, JobState.NEW}
    await _run(session, jobs, tmp_path)  # the others now
    creates = sum(_creates(fake).values())
    assert creates == 2
    again = {r.key: r for r in await _run(session, jobs, tmp_path)}
    assert again[unknown.key].state is JobState.UNKNOWN
    assert sum(_creates(fake).values()) == creates  # not sent again
    resent = {r.key: r for r in await _run(session, jobs, tmp_path, resubmit_unknown=True)}
    assert resent[unknown.key].state is JobState.DONE
    assert sum(_creates(fake).values()) == creates + 1


async def test_a_failed_generation_is_reported_and_created_again_only_when_asked(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    fail = {"once": True}

    def script(body: Any) -> dict[str, object]:
        if body["prompt"] == "clip 1" and fail["once"]:
            fail["once"] = False
            return {"duration": 3.0, "failure_reason": "moderation: blocked"}
        return {"duration": 3.0}

    fake.create_script = script
    jobs = _jobs(3)
    results = {r.key: r for r in await _run(session, jobs, tmp_path)}
    assert results["clip-001"].state is JobState.FAILED
    assert "moderation: blocked" in (results["clip-001"].error or "")
    assert (await _run(session, jobs, tmp_path))[0].state is not None
    assert _creates(fake)["clip 1"] == 1
    retried = {r.key: r for r in await _run(session, jobs, tmp_path, retry_failed=True)}
    assert retried["clip-001"].state is JobState.DONE and _creates(fake)["clip 1"] == 2


async def test_a_refused_create_fails_the_job_without_retrying_it(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    fake.inject(Fault.error(400, {"error": {"message": "prompt rejected", "code": "bad"}}))
    results = await _run(session, _jobs(1), tmp_path)
    assert results[0].state is JobState.FAILED and "refused" in (results[0].error or "")


async def test_no_more_than_max_active_generations_run_at_once(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path, clock: FakeClock
) -> None:
    fake.create_duration = 20.0
    await _run(session, _jobs(12), tmp_path, max_active=3)
    spans = sorted(
        (fake.finishes_at(task) - 20.0, fake.completed_at[task]) for task in fake.completed_at
    )
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most <= 3


async def test_the_claims_of_a_worker_that_is_gone_go_to_the_others(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    from deerluma.jobs.store import _MACHINE

    jobs = _jobs(4)
    keys = [Job.of(j).key for j in jobs]
    async with await Ledger.open(tmp_path) as ledger:
        await ledger.add({Job.of(j).key: Job.of(j).request for j in jobs})
        # A process of this machine that no longer runs held two, one of them mid-create;
        # a worker elsewhere held one with a lease that runs out in a moment.
        dead = f"{socket.gethostname()}:{_dead_pid()}:{_MACHINE}:x"
        held = await ledger.claim(dead, 3600, keys, running=2, max_active=2)
        sending = attrs.evolve(held[0], state=JobState.SUBMITTING, creates=1)
        await ledger.write(dead, [Move(JobState.NEW, sending)])
        await ledger.claim("elsewhere:1:-:y", 0.5, keys, running=1, max_active=10)
    results = {r.key: r for r in await _run(session, jobs, tmp_path)}
    assert results[held[0].key].state is JobState.UNKNOWN  # it may have been created
    assert sorted(k for k, r in results.items() if r.state is JobState.DONE) == sorted(
        j["key"] for j in jobs if j["key"] != held[0].key
    )


def _dead_pid() -> int:
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            pass
        pid -= 1


async def test_two_workers_on_one_postgresql_ledger_share_the_jobs(
    fake: FakeDeerAPI, tmp_path: Path, clock: FakeClock, pg_url: str
) -> None:
    fake.create_duration = 5.0
    jobs = _jobs(16)

    async def worker(out: Path) -> list[Any]:
        async with deerluma.Session(
            api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
        ) as s:
            return await _run(s, jobs, out, ledger=pg_url, max_active=6)

    one, two = tmp_path / "one", tmp_path / "two"  # each machine downloads to its own --out
    first, second = await asyncio.gather(worker(one), worker(two))
    assert max(_creates(fake).values()) == 1 and len(_creates(fake)) == 16
    done = {r.key: r.path for r in first + second if r.state is JobState.DONE}
    assert sorted(done) == [j["key"] for j in jobs]
    for key, path in done.items():
        assert path is not None and Path(path).stat().st_size == fake.video_bytes, key
    async with await Ledger.open(pg_url) as ledger:
        assert {row.state for row in await ledger.rows()} == {JobState.DONE}
        assert "@" not in ledger.url or ":" not in ledger.url.split("@")[0].split("//")[1]


@pytest.mark.skipif(sys.platform == "win32", reason="kill -9 is POSIX")
@pytest.mark.parametrize("in_flight", [1, 4])
async def test_kill_9_at_random_moments_never_creates_a_job_twice(
    tmp_path: Path, in_flight: int
) -> None:
    jobs_file, out = tmp_path / "jobs.jsonl", tmp_path / "videos"
    jobs = _jobs(40)
    jobs_file.write_text("".join(json.dumps(j) + "\n" for j in jobs), encoding="utf-8")
    rng = random.Random(int(os.environ.get("DEERLUMA_KILL_SEED", "4")))
    # Real time, real processes; creates answer after 0.05 s, as a gateway's take a while.
    async with FakeDeerAPI(create_duration=0.2, create_latency=0.05) as fake:

        async def deerluma_run() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "deerluma", "--api-key", fake.api_key,
                "--base-url", fake.url, "run", str(jobs_file), "--out", str(out),
                "--max-active", "20", "--creates-in-flight", str(in_flight),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip

        kills = 0
        for _ in range(int(os.environ.get("DEERLUMA_KILLS", "3"))):
            proc = await deerluma_run()
            await asyncio.sleep(rng.uniform(0.5, 1.2))  # imports take about half a second
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            await proc.wait()
        proc = await deerluma_run()
        assert proc.stderr is not None
        said = (await proc.stderr.read()).decode()
        code = await proc.wait()
    rows = {row.key: row for row in await _rows(out)}
    unknown = [row for row in rows.values() if row.state is JobState.UNKNOWN]
    print(f"kills {kills}, unknown {len(unknown)}, creates {sum(_creates(fake).values())}")
    assert kills >= 2  # the runs really were cut short
    # At most `in_flight` creates in flight per worker: that many unknown per kill at most.
    assert len(unknown) <= kills * in_flight
    assert code == (1 if unknown else 0), said
    for row in unknown:
        assert f"outcome unknown (may be charged): {row.key}" in said
    assert max(_creates(fake).values()) == 1  # no job created twice
    done = [key for key, row in rows.items() if row.state is JobState.DONE]
    assert sorted(done + [row.key for row in unknown]) == [j["key"] for j in jobs]
    _videos(fake, out, done)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".mp4") == sorted(
        f"{key}.mp4" for key in done
    )


async def test_a_wrong_key_stops_the_run_and_leaves_the_jobs_to_send(
    fake: FakeDeerAPI, clock: FakeClock, tmp_path: Path
) -> None:
    async with deerluma.Session(
        api_key="wrong-key-0123456789", base_url=fake.url, clock=clock, sleep=clock.sleep
    ) as s:
        with pytest.raises(deerluma.AuthenticationError):
            await asyncio.wait_for(_run(s, _jobs(5), tmp_path), timeout=10)
    rows = await _rows(tmp_path)
    assert {row.state for row in rows} == {JobState.NEW}  # nothing was created: send later
    assert all(row.creates == 0 for row in rows)


async def test_no_key_stops_the_run_and_leaves_the_jobs_to_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing is sent without a key: every job would meet it, so none fails for it (they
    # used to end `failed`, to be sent again only with --retry-failed).
    from .test_cli import run as cli

    monkeypatch.delenv("DEERAPI_API_KEY", raising=False)
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text("".join(json.dumps(job) + "\n" for job in _jobs(3)), encoding="utf-8")
    async with FakeDeerAPI(create_duration=0.0) as fake:
        argv = ["--base-url", fake.url, "run", str(jobs_file), "--out", str(tmp_path)]
        code, _, err = await cli(None, *argv)
        assert code == 4 and "DEERAPI_API_KEY" in err and "Traceback" not in err
        assert not _creates(fake)
        rows = await _rows(tmp_path)
        assert {row.state for row in rows} == {JobState.NEW}
        assert all(row.creates == 0 for row in rows)
        code, _, _ = await cli(fake, "run", str(jobs_file), "--out", str(tmp_path))
        assert code == 0  # with the key, the same run sends them
        assert {row.state for row in await _rows(tmp_path)} == {JobState.DONE}


async def test_the_command_reports_each_job_that_needs_a_person_and_exits_alike_again(
    tmp_path: Path,
) -> None:
    from .test_cli import run as cli

    def script(body: Any) -> dict[str, object]:
        failure = "moderation: blocked" if body["prompt"] == "clip 2" else None
        return {"duration": 0.1, "failure_reason": failure}

    jobs_file, out = tmp_path / "jobs.jsonl", tmp_path / "videos"
    jobs_file.write_text("".join(json.dumps(j) + "\n" for j in _jobs(4)), encoding="utf-8")
    async with FakeDeerAPI(create_script=script) as fake:
        fake.inject(Fault.reset())  # the first create: sent, its answer lost
        argv = ["run", str(jobs_file), "--out", str(out), "--json"]
        code, stdout, stderr = await cli(fake, *argv)
        # No answer: the next create would fare no better, so the run stops (exit 4).
        assert code == 4, stderr
        assert [json.loads(line)["state"] for line in stdout.splitlines()] == ["unknown"]
        assert "stopped after 1 jobs settled: 1 unknown" in stderr
        assert "outcome unknown (may be charged): clip-000" in stderr
        assert [r.method for r in fake.requests if r.path.endswith("generations")] == ["POST"]
        code, stdout, stderr = await cli(fake, *argv)  # the rest, now the API answers
        records = {r["key"]: r for r in map(json.loads, stdout.splitlines())}
        assert code == 1, stderr
        (unknown,) = [key for key, r in records.items() if r["state"] == "unknown"]
        assert f"outcome unknown (may be charged): {unknown}" in stderr
        assert records["clip-002"]["state"] == "failed"
        assert "failed: clip-002: the generation failed: moderation: blocked" in stderr
        done = [key for key, r in records.items() if r["state"] == "done"]
        assert all(records[key]["path"] == str(out / f"{key}.mp4") for key in done)
        creates = len(fake.created)
        again, _, stderr_again = await cli(fake, *argv)
        assert again == 1 and len(fake.created) == creates  # as before, nothing sent
        code, stdout, _ = await cli(None, "status", str(out), "--json")
        assert code == 0
        states = sorted(json.loads(line)["state"] for line in stdout.splitlines())
        assert states.count("unknown") == 1 and states.count("done") >= 2
        counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
        assert f"4 jobs: {counts}" in stderr_again


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_a_worker_that_lost_its_claim_cannot_write_the_job(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    from deerluma.jobs import LostClaim

    where = tmp_path if store == "sqlite" else request.getfixturevalue("pg_url")
    async with await Ledger.open(where) as ledger:
        await ledger.add({"a": {"prompt": "1"}, "b": {"prompt": "2"}})
        keys = ["a", "b"]
        claimed = await ledger.claim("one", 0.0, keys, running=5, max_active=5)
        assert [r.key for r in claimed] == keys
        # one's lease ran out: two takes them (judged at a time given here)
        taken = await ledger.claim("two", 60.0, keys, running=5, max_active=5, now=10**10)
        assert [r.key for r in taken] == keys
        sending = [Move(JobState.NEW, attrs.evolve(r, state=JobState.SUBMITTING)) for r in taken]
        with pytest.raises(LostClaim):
            await ledger.write("one", sending[:1])
        stray = Move(JobState.NEW, attrs.evolve(sending[1].row, key="zz"))
        with pytest.raises(LostClaim):  # all or nothing
            await ledger.write("two", [sending[0], stray])
        seen_wrong = Move(JobState.SUBMITTING, attrs.evolve(taken[1], state=JobState.CREATED))
        with pytest.raises(LostClaim):  # not where the writer saw it: nothing written
            await ledger.write("two", [sending[0], seen_wrong])
        assert {r.state for r in await ledger.rows()} == {JobState.NEW}
        first = sending[0]._replace(row=attrs.evolve(sending[0].row, task_id="t-a"))
        await ledger.write("two", [first, sending[1]])
        assert [(r.state, r.task_id) for r in await ledger.rows()] == [
            (JobState.SUBMITTING, "t-a"),
            (JobState.SUBMITTING, None),
        ]
        assert await ledger.renew("one", keys, 60.0) == set()
        assert await ledger.renew("two", keys, 60.0) == {"a", "b"}


async def test_two_processes_on_one_ledger_create_each_job_once(
    tmp_path: Path, pg_url: str
) -> None:
    # SQLite: both workers in one folder (its ledger); PostgreSQL: each machine its own --out.
    # Both cases at once: the suite stays short.
    await asyncio.gather(
        _two_processes(tmp_path / "sqlite", [], ["videos", "videos"]),
        _two_processes(tmp_path / "pg", ["--ledger", pg_url], ["a", "b"]),
    )


async def _two_processes(folder: Path, shared: list[str], outs: list[str]) -> None:
    folder.mkdir()
    jobs_file = folder / "jobs.jsonl"
    jobs = _jobs(12)
    jobs_file.write_text("".join(json.dumps(j) + "\n" for j in jobs), encoding="utf-8")
    async with FakeDeerAPI(create_duration=0.1) as fake:
        argv = ["--api-key", fake.api_key, "--base-url", fake.url, "run", str(jobs_file)]
        argv += [*shared, "--json", "--max-active", "8"]
        pipe = asyncio.subprocess.PIPE
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "deerluma",
                *argv,
                "--out",
                str(folder / out),
                stdout=pipe,
                stderr=pipe,
            )
            for out in outs
        ]
        outputs = [await proc.communicate() for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert len(fake.created) == len(jobs) and max(_creates(fake).values()) == 1
    settled = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    paths = {r["key"]: r["path"] for r in settled if r["state"] == "done"}
    assert sorted(paths) == [j["key"] for j in jobs]  # each settled, by one or the other
    for path in paths.values():
        assert Path(path).stat().st_size == fake.video_bytes


def test_a_bad_line_of_a_jobs_file_names_the_files_own_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deerluma.cli import main

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "ok"}\n{"prompt": "x", "aspect_ratio": "17:9"}\n', encoding="utf-8")
    assert main(["--api-key", "k", "run", str(jobs), "--out", str(tmp_path / "v")]) == 2
    said = capsys.readouterr().err
    assert f"{jobs}, line 2: aspect_ratio '17:9'" in said and "--aspect-ratio" not in said


def _force(ledger: Any, key: str, state: JobState, owner: str | None = None) -> None:
    """Put a row in `state` (held by `owner`), as the test needs, past the state table."""
    ledger._db.execute(
        "UPDATE deerluma_jobs SET state = ?, owner = ?, lease_until = ? WHERE key = ?",
        (state.value, owner, 1e18 if owner else 0, key),
    )


async def test_the_ledger_writes_every_move_of_the_state_table_and_no_other(
    tmp_path: Path,
) -> None:
    from deerluma.jobs.state import MOVES, IllegalMove, check

    async with await Ledger.open(tmp_path) as ledger:
        await ledger.add({"k": {"prompt": "p"}})
        (row,) = await ledger.rows()
        for was in JobState:
            for to in JobState:
                _force(ledger, "k", was, owner="me")
                move = Move(was, attrs.evolve(row, state=to))
                if (was, to) in MOVES:
                    await ledger.write("me", [move])
                    assert [r.state for r in await ledger.rows()] == [to], (was, to)
                else:
                    with pytest.raises(IllegalMove):
                        check(was, to)
                    with pytest.raises(IllegalMove):
                        await ledger.write("me", [move])
                    assert [r.state for r in await ledger.rows()] == [was]
    # Each state but DONE has a way on; DONE is the end.
    assert {was for was, _ in MOVES} == set(JobState) - {JobState.DONE}


async def test_a_sqlite_move_of_several_jobs_finds_them_by_key(tmp_path: Path) -> None:
    # With no table statistics SQLite took the owner's index for a write of three moves or
    # more, and walked every row the worker held: the plan is pinned.
    async with await Ledger.open(tmp_path) as ledger:
        assert isinstance(ledger, SQLiteLedger)
        keys = [f"k{i:02}" for i in range(64)]
        await ledger.add({k: {"prompt": k} for k in keys})
        held = await ledger.claim("me", 60.0, keys, running=64, max_active=64)
        statements: list[str] = []
        ledger._db.set_trace_callback(statements.append)
        moves = [Move(JobState.NEW, attrs.evolve(r, state=JobState.SUBMITTING)) for r in held[:4]]
        await ledger.write("me", moves)
        ledger._db.set_trace_callback(None)
        (update,) = [sql for sql in statements if sql.lstrip().startswith("UPDATE")]
        plan = " | ".join(row[3] for row in ledger._db.execute("EXPLAIN QUERY PLAN " + update))
        assert "sqlite_autoindex_deerluma_jobs_1 (key=?)" in plan, plan
        assert "_owner" not in plan, plan
        assert {r.key for r in await ledger.rows() if r.state is JobState.SUBMITTING} == {
            m.row.key for m in moves
        }


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_leases_are_judged_on_the_databases_clock_and_claims_are_bounded(
    tmp_path: Path, store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    where = tmp_path if store == "sqlite" else request.getfixturevalue("pg_url")
    async with await Ledger.open(where) as ledger:
        keys = [f"k{i}" for i in range(10)]
        await ledger.add({k: {"prompt": k} for k in keys})
        one = await ledger.claim("one", 60.0, keys[:6], running=4, max_active=10)
        assert [r.key for r in one] == keys[:4]  # what the worker can use, not more
        # A worker whose own clock runs a day fast takes nothing held: the database says when.
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 86400)
        two = await ledger.claim("two", 60.0, keys, running=10, max_active=10)
        assert [r.key for r in two] == keys[4:]


def test_a_worker_is_judged_gone_only_on_this_very_machine() -> None:
    from deerluma.jobs.store import _MACHINE, _gone, new_owner

    pid = _dead_pid()
    host = socket.gethostname()
    assert _gone(f"{host}:{pid}:{_MACHINE}:x")
    # Another container with the same hostname: its processes are not ours to judge.
    assert not _gone(f"{host}:{pid}:0123456789ab:x")
    assert not _gone(f"{host}:{pid}:x")  # an owner of an older deerluma: its lease decides
    assert not _gone(new_owner())  # this process


async def test_an_old_sqlite_is_refused_clearly_and_an_old_ledger_is_brought_up_to_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:  # as deerluma made it before schema versions
        db.execute(
            "CREATE TABLE deerluma_jobs (key TEXT PRIMARY KEY, request TEXT NOT NULL, "
            "state TEXT NOT NULL, task_id TEXT, error TEXT, path TEXT, owner TEXT, "
            "lease_until DOUBLE PRECISION NOT NULL DEFAULT 0, "
            "creates INTEGER NOT NULL DEFAULT 0, updated_at DOUBLE PRECISION NOT NULL DEFAULT 0)"
        )
        db.execute(
            "INSERT INTO deerluma_jobs (key, request, state, task_id) "
            "VALUES ('a', '{\"prompt\": \"p\"}', 'created', 't-1')"
        )
    db.close()
    async with await Ledger.open(old) as ledger:
        assert [(r.key, r.state, r.task_id) for r in await ledger.rows()] == [
            ("a", JobState.CREATED, "t-1")
        ]
    with sqlite3.connect(old) as db:
        assert db.execute("SELECT version FROM deerluma_jobs_version").fetchall() == [(2,)]
    db.close()
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    with pytest.raises(deerluma.ConfigurationError, match=r"SQLite 3\.35\.0 or newer"):
        await Ledger.open(tmp_path / "new")


def test_a_jobs_file_with_a_bom_every_bad_line_named_and_an_empty_one_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deerluma.cli import main
    from deerluma.jobs import JobsFileError

    assert [j.key for j in load_jobs(['\ufeff{"key": "a", "prompt": "p"}'])] == ["a"]
    lines = ['{"prompt": "ok"}'] + ["{not json"] * 25
    with pytest.raises(JobsFileError) as caught:
        load_jobs(lines, "jobs.jsonl")
    said = str(caught.value)
    assert "line 2:" in said and "line 21:" in said and "line 22:" not in said
    assert "and 5 more bad lines" in said
    empty = tmp_path / "empty.jsonl"
    empty.write_text("# nothing yet\n\n", encoding="utf-8")
    assert main(["--api-key", "k" * 20, "run", str(empty), "--out", str(tmp_path / "v")]) == 2
    assert "holds no job" in capsys.readouterr().err
