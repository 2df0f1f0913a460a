"""The `deerluma` command through its real entry point, against FakeDeerAPI over sockets."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deerluma.cli import main
from deerluma.cli.parser import _parser
from deerluma.testing import FakeDeerAPI, Fault


async def run(fake: FakeDeerAPI | None, *argv: str) -> tuple[int, str, str]:
    """Run main() in a thread (it owns its event loop) while the fake serves from ours."""
    stdout, stderr = io.StringIO(), io.StringIO()
    prefix = ["--api-key", fake.api_key, "--base-url", fake.url] if fake else []
    code = await asyncio.to_thread(main, [*prefix, *argv], stdout=stdout, stderr=stderr)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture
async def live_fake() -> FakeDeerAPI:  # real time: the CLI waits with a real clock
    async with FakeDeerAPI() as server:
        yield server  # type: ignore[misc]


async def test_get_prints_json_of_the_body(live_fake: FakeDeerAPI) -> None:
    task_id = live_fake.add_generation(duration=0)
    code, out, _ = await run(live_fake, "get", task_id, "--json")
    body = json.loads(out)  # the generation itself, as the API sent it
    assert code == 0
    assert body["id"] == task_id
    assert body["state"] == "completed"
    assert body["video"]["download_url"].startswith(live_fake.url)


async def test_global_options_go_before_or_after_the_command(live_fake: FakeDeerAPI) -> None:
    task_id = live_fake.add_generation(duration=0)
    argv = ["get", task_id, "--json", "--api-key", live_fake.api_key, "--base-url", live_fake.url]
    code, out, _ = await run(None, *argv)
    assert code == 0 and json.loads(out)["id"] == task_id
    # One given before the command is not undone by its absence after it.
    code, out, _ = await run(live_fake, "get", task_id, "--json")
    assert code == 0 and json.loads(out)["id"] == task_id


def test_every_command_and_option_explains_itself() -> None:
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        assert command.description and "example: deerluma" in (command.epilog or ""), name
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


async def test_get_pretty_prints_a_table(live_fake: FakeDeerAPI) -> None:
    task_id = live_fake.add_generation(duration=0, prompt="a very particular prompt")
    code, out, _ = await run(live_fake, "get", task_id)
    assert code == 0
    assert "completed" in out
    assert "a very particular prompt" in out


async def test_wait_reports_results_and_exit_code_1_when_one_failed(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    good = live_fake.add_generation(duration=0.5)
    other = live_fake.add_generation(duration=0)
    bad = live_fake.add_generation(duration=0, failure_reason="nope")
    code, out, err = await run(
        live_fake, "wait", good, other, bad, "--json", "--download", str(tmp_path)
    )
    records = {r["task_id"]: r for r in map(json.loads, out.splitlines())}
    assert code == 1
    assert records[good]["state"] == "completed"
    assert records[bad]["state"] == "failed"
    assert records[bad]["error"]["type"] == "GenerationFailed"
    assert (tmp_path / f"{good}.mp4").read_bytes() == live_fake.video_content(good)
    assert (tmp_path / f"{other}.mp4").read_bytes() == live_fake.video_content(other)
    assert "\x1b[" not in err  # not a terminal: no animation codes


async def test_wait_timeout_exits_3(live_fake: FakeDeerAPI) -> None:
    task_id = live_fake.add_generation(duration=1000)
    code, out, _ = await run(live_fake, "wait", task_id, "--timeout", "0.2")
    assert code == 3
    assert "WaitTimeout" in out


async def test_wait_many_returns_at_its_timeout_whatever_retry_after_says(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    ids = [live_fake.add_generation(duration=1000) for _ in range(3)]
    live_fake.inject(*[Fault.rate_limit(30)] * 50)
    id_file = tmp_path / "ids.txt"
    id_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
    started = time.monotonic()
    code, out, _ = await run(live_fake, "wait-many", "--from", str(id_file), "--timeout", "0.5")
    assert code == 3
    assert time.monotonic() - started < 10  # not the 30 s the server asked for
    assert out.count("asked to wait 30s: a longer timeout lets it answer") == 3  # the cause


async def test_wait_many_writes_jsonl_and_resumes(live_fake: FakeDeerAPI, tmp_path: Path) -> None:
    ids = [live_fake.add_generation(duration=0) for _ in range(5)]
    id_file = tmp_path / "ids.txt"
    out_file = tmp_path / "results.jsonl"
    id_file.write_text("\n".join(ids[:3]) + "\n# a comment\n\n", encoding="utf-8")
    code, _, _ = await run(live_fake, "wait-many", "--from", str(id_file), "--out", str(out_file))
    assert code == 0
    assert len(out_file.read_text().splitlines()) == 3
    polls_before = sum(live_fake.polls.values())
    id_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
    code, _, err = await run(live_fake, "wait-many", "--from", str(id_file), "--out", str(out_file))
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert code == 0
    assert sorted(r["task_id"] for r in records) == sorted(ids)
    assert sum(live_fake.polls.values()) - polls_before == 2  # only the new ids
    assert "skipping 3" in err


async def test_download_into_a_new_folder_named_with_a_trailing_slash(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    task_id = live_fake.add_generation(duration=0)
    code, out, _ = await run(live_fake, "download", task_id, f"{tmp_path}/new/")
    assert code == 0
    assert Path(out.strip()) == tmp_path / "new" / f"{task_id}.mp4"
    assert (tmp_path / "new" / f"{task_id}.mp4").read_bytes() == live_fake.video_content(task_id)


async def test_download_command_saves_the_asset(live_fake: FakeDeerAPI, tmp_path: Path) -> None:
    task_id = live_fake.add_generation(duration=0)
    dest = tmp_path / "thumb.jpg"
    code, out, _ = await run(live_fake, "download", task_id, str(dest), "--asset", "thumbnail")
    assert code == 0
    assert out.strip() == str(dest)
    assert dest.read_bytes() == live_fake.video_content(task_id, "thumbnail")
    code, _, err = await run(live_fake, "download", task_id, str(dest), "--asset", "thumbnail")
    assert code == 2
    assert "--overwrite" in err


async def test_create_with_wait_and_download(live_fake: FakeDeerAPI, tmp_path: Path) -> None:
    live_fake.create_duration = 0.5
    code, out, err = await run(
        live_fake,
        "create",
        "a fox",
        "--aspect-ratio",
        "16:9",
        "--download",
        str(tmp_path),
        "--json",
    )
    record = json.loads(out)
    assert code == 0
    assert record["state"] == "completed"
    assert live_fake.created == [{"prompt": "a fox", "aspect_ratio": "16:9"}]
    assert (tmp_path / f"{record['task_id']}.mp4").exists()
    assert "created" in err


async def test_usage_errors_exit_2_with_one_line(
    live_fake: FakeDeerAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run(live_fake, "create", "a fox", "--aspect-ratio", "2:1")
    err += capsys.readouterr().err  # argparse writes to the process's stderr
    assert code == 2
    assert "--aspect-ratio" in err and "16:9" in err  # the flag and its choices, no Python name
    assert "Traceback" not in err
    code, _, _ = await run(live_fake, "get", "a/b")
    assert code == 2
    code, _, _ = await run(None, "no-such-command")
    assert code == 2


async def test_api_errors_exit_4_without_traceback_or_key(live_fake: FakeDeerAPI) -> None:
    code, _, err = await run(live_fake, "get", "missing-task")
    assert code == 4
    assert "HTTP 404" in err
    assert "Traceback" not in err
    live_fake.inject(Fault.error(401))
    task_id = live_fake.add_generation(duration=0)
    code, _, err = await run(live_fake, "-v", "get", task_id)
    assert code == 4
    assert "Traceback" in err  # -v shows it
    assert live_fake.api_key not in err


async def test_missing_key_is_a_clear_error(
    live_fake: FakeDeerAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEERAPI_API_KEY", raising=False)
    code, _, err = await run(None, "--base-url", live_fake.url, "get", "abc")
    assert code == 4
    assert "DEERAPI_API_KEY" in err


@pytest.mark.parametrize("keep", [True, False], ids=["--out", "temporary"])
async def test_demo_runs_with_no_key_and_leaves_only_what_out_asks_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = ["--out", str(tmp_path / "out")] if keep else []
    code, _, err = await run(None, "demo", "--speed", "25", *out)
    assert code == 0
    assert "summary" in err
    assert len(list((tmp_path / "out").glob("*.mp4"))) == (1 if keep else 0)
    assert list((tmp_path / "tmp").iterdir()) == []  # no deerluma-demo-* folder left behind
    assert ("removed again" in err) is not keep


async def spawn(
    fake: FakeDeerAPI, *argv: str, terminal: int | None = None
) -> asyncio.subprocess.Process:
    """`python -m deerluma` in a child process, pointed at the fake.

    With `terminal` (a pseudo-terminal's follower end), its output goes there
    instead of pipes: it then draws its live table, as on a real terminal.
    """
    output = asyncio.subprocess.PIPE if terminal is None else terminal
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deerluma",
        "--api-key",
        fake.api_key,
        "--base-url",
        fake.url,
        *argv,
        stdout=output,
        stderr=output,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"},
    )


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
async def test_ctrl_c_on_a_terminal_prints_one_line_and_nothing_else(
    live_fake: FakeDeerAPI,
) -> None:
    import pty

    task_id = live_fake.add_generation(duration=1000)
    leader, follower = pty.openpty()
    try:
        proc = await spawn(live_fake, "wait", task_id, terminal=follower)
        os.close(follower)
        follower = -1
        reader = asyncio.create_task(asyncio.to_thread(_read_all, leader))
        while not live_fake.polls[task_id]:  # it is waiting, its live table on screen
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == 130
        screen = (await reader).decode(errors="replace")
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert "interrupted" in screen
    for noise in ("Traceback", "never retrieved", "Exception", "Task was destroyed"):
        assert noise not in screen


async def test_python_dash_m_runs_the_same_command(live_fake: FakeDeerAPI) -> None:
    task_id = live_fake.add_generation(duration=0)
    proc = await spawn(live_fake, "get", task_id, "--json")
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert json.loads(out)["id"] == task_id


async def test_ctrl_c_stops_cleanly_with_exit_130(live_fake: FakeDeerAPI) -> None:
    task_id = live_fake.add_generation(duration=1000)
    proc = await spawn(live_fake, "wait", task_id)
    while not live_fake.polls[task_id]:  # it is waiting now
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = await proc.communicate()
    assert proc.returncode == 130
    assert b"interrupted" in err
    assert b"Traceback" not in err


async def test_wait_many_records_the_last_state_of_a_timeout(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    task_id = live_fake.add_generation(duration=1000, pending_for=0)
    ids = tmp_path / "ids.txt"
    ids.write_text(task_id + "\n", encoding="utf-8")
    code, out, _ = await run(live_fake, "wait-many", "--from", str(ids), "--timeout", "0.3")
    record = json.loads(out)
    assert code == 3
    assert record["error"]["type"] == "WaitTimeout"
    assert record["state"] == "processing"  # not terminal: a re-run with --out retries it


async def test_wait_returns_what_finished_just_before_its_timeout(live_fake: FakeDeerAPI) -> None:
    task_id = live_fake.add_generation(duration=1.2, estimate=False, shape="new")
    code, out, _ = await run(live_fake, "wait", task_id, "--timeout", "1.5", "--json")
    assert code == 0, out
    assert json.loads(out)["state"] == "completed"


async def test_wait_keeps_to_its_concurrency(live_fake: FakeDeerAPI) -> None:
    ids = [live_fake.add_generation(duration=0) for _ in range(12)]
    live_fake.inject(*[Fault.latency(0.05)] * 12)
    code, _, _ = await run(live_fake, "wait", *ids, "--concurrency", "2")
    assert code == 0
    assert live_fake.max_in_flight <= 2


async def test_wait_takes_a_hard_rate_cap() -> None:
    async with FakeDeerAPI(max_rps=40, burst=1) as fake:
        ids = [fake.add_generation(duration=0) for _ in range(20)]
        # A third of the server's rate: the CLI's loop and the fake's share the GIL (and a
        # loaded machine its cores), so arrivals jitter by milliseconds, tens of them at worst
        # (at half the rate, one 429 in about ten full runs), around the client's spacing.
        code, _, _ = await run(fake, "wait", *ids, "--max-rps", "13", "--json")
    assert code == 0
    assert [r.status for r in fake.requests] == [200] * 20  # spaced: never a 429


async def test_a_rate_store_out_of_reach_is_said_once_and_the_wait_goes_on(
    live_fake: FakeDeerAPI,
) -> None:
    task_id = live_fake.add_generation(duration=1.0)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = f"redis://127.0.0.1:{port}/0"
    code, out, err = await run(live_fake, "wait", task_id, "--rate-store", store, "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["state"] == "completed"
    said = [line for line in err.splitlines() if "out of reach" in line]
    assert said == [said[0]] and said[0].startswith(f"deerluma: the rate store at {store} ")
    # Once the command ends, its handler is gone: a library's warnings are the host's again.
    assert all(
        not isinstance(h, logging.StreamHandler) or h.level != logging.WARNING
        for h in logging.getLogger("deerluma").handlers
    )


async def test_download_of_a_failed_generation_exits_1_with_its_reason(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    task_id = live_fake.add_generation(duration=0, failure_reason="prompt flagged")
    code, _, err = await run(live_fake, "download", task_id, str(tmp_path))
    assert code == 1
    assert "prompt flagged" in err and "wait_until_completed" not in err


async def test_a_missing_ids_file_is_a_usage_error_naming_it(live_fake: FakeDeerAPI) -> None:
    code, _, err = await run(live_fake, "wait-many", "--from", "no-such-ids.txt")
    assert code == 2
    assert "no-such-ids.txt" in err


async def test_a_file_in_the_way_points_at_the_flag_not_the_python_argument(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    task_id = live_fake.add_generation(duration=0)
    (tmp_path / "taken.mp4").write_bytes(b"mine")
    code, _, err = await run(live_fake, "download", task_id, str(tmp_path / "taken.mp4"))
    assert code == 2
    assert "--overwrite" in err and "overwrite=True" not in err


async def test_extend_continues_a_generation_and_can_wait_and_download(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    live_fake.create_duration = 0.2
    earlier = live_fake.add_generation(duration=0)
    argv = ["extend", earlier, "the deer walks on", "--download", str(tmp_path), "--json"]
    code, out, _ = await run(live_fake, *argv)
    record = json.loads(out)
    assert code == 0 and record["state"] == "completed"
    assert live_fake.created[-1]["prompt"] == "the deer walks on"
    assert earlier in json.dumps(live_fake.created[-1])  # the earlier one is what it continues
    assert (tmp_path / f"{record['task_id']}.mp4").exists()


async def test_rerunning_wait_with_download_keeps_every_line_and_overwrite_replaces(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    ids = [live_fake.add_generation(duration=0) for _ in range(2)]
    (tmp_path / f"{ids[0]}.mp4").write_bytes(b"an earlier run's file")
    code, out, err = await run(live_fake, "wait", *ids, "--download", str(tmp_path), "--json")
    assert code == 5  # one row could not be saved (a local file in the way); both lines are there
    assert len(out.splitlines()) == 2 and "--overwrite" in err
    assert (tmp_path / f"{ids[1]}.mp4").read_bytes() == live_fake.video_content(ids[1])
    argv = ["wait", *ids, "--download", str(tmp_path), "--overwrite"]
    code, _, _ = await run(live_fake, *argv)
    assert code == 0
    assert (tmp_path / f"{ids[0]}.mp4").read_bytes() == live_fake.video_content(ids[0])


async def test_rerunning_wait_after_a_finished_download_skips_it_and_says_so(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    task_id = live_fake.add_generation(duration=0)
    argv = ["wait", task_id, "--download", str(tmp_path), "--json"]
    assert (await run(live_fake, *argv))[0] == 0
    storage_before = sum(r.path.startswith("/storage/") for r in live_fake.requests)
    code, out, err = await run(live_fake, *argv)
    assert code == 0 and json.loads(out)["state"] == "completed"
    assert "already complete; skipped" in err
    assert (tmp_path / f"{task_id}.mp4").read_bytes() == live_fake.video_content(task_id)
    probes = [r for r in live_fake.requests if r.path.startswith("/storage/")][storage_before:]
    assert [r.status for r in probes] == [416]  # one Range probe, no second download


def test_get_and_wait_show_the_same_link_to_fetch() -> None:
    from rich.console import Console

    from deerluma import Generation, GenerationState, Video
    from deerluma.cli.output import Row, print_generation
    from deerluma.cli.wait import _plain

    video = Video(url="https://cdn/x.mp4", download_url="https://bucket/x.mp4?X-Amz-Expires=3600")
    g = Generation(id="t", state=GenerationState.COMPLETED, video=video)
    table = io.StringIO()
    print_generation(Console(file=table, width=400), g)
    row = Row("t")
    row.generation = g
    assert video.download_url in table.getvalue()
    assert _plain(row).endswith(video.download_url)


async def test_wait_many_resume_skips_permanent_errors_and_retries_timeouts(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    slow = live_fake.add_generation(duration=1000)
    id_file, out_file = tmp_path / "ids.txt", tmp_path / "results.jsonl"
    id_file.write_text(f"no-such-task\n{slow}\n", encoding="utf-8")
    argv = ["wait-many", "--from", str(id_file), "--out", str(out_file), "--timeout", "0.3"]
    await run(live_fake, *argv)
    assert len(out_file.read_text().splitlines()) == 2
    code, _, err = await run(live_fake, *argv)
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    # The 404 is settled; the timeout was tried again and recorded again.
    assert [r["task_id"] for r in records].count("no-such-task") == 1
    assert [r["task_id"] for r in records].count(slow) == 2
    assert code == 3 and "skipping 1" in err


async def test_create_with_callback_listen_is_woken_by_the_apis_callback(
    live_fake: FakeDeerAPI,
) -> None:
    live_fake.create_duration = 0.5
    argv = ["create", "a deer", "--callback-listen", "127.0.0.1:0", "--timeout", "30", "--json"]
    code, out, _ = await run(live_fake, *argv)
    record = json.loads(out)
    assert code == 0 and record["state"] == "completed"
    sent = live_fake.created[-1]["callback_url"]
    assert sent.startswith("http://127.0.0.1:") and "token=" in sent  # ours, with a secret
    delivered = [c for c in live_fake.callbacks if c.status == 200]
    assert {c.state for c in delivered} == {"processing", "completed"}
    # Woken by the callback and confirmed once: no 3 s polling loop ran.
    assert live_fake.polls[record["task_id"]] == 1  # the create answer was the first look


async def test_callback_listen_refuses_a_bad_address(
    live_fake: FakeDeerAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = await run(live_fake, "create", "a deer", "--callback-listen", "nowhere")
    assert code == 2 and "expected HOST:PORT" in capsys.readouterr().err  # argparse's own
    assert live_fake.created == []


async def test_get_is_bounded_by_its_timeout_and_says_how_long_and_how_often(
    live_fake: FakeDeerAPI,
) -> None:
    task_id = live_fake.add_generation(duration=0)
    live_fake.inject(Fault.latency(30))  # accepts, then does not answer
    started = time.monotonic()
    code, _, err = await run(live_fake, "get", task_id, "--timeout", "1")
    assert code == 3 and time.monotonic() - started < 10
    assert "gave up after 1.0s (--timeout=1s, 1 attempt)" in err


async def test_a_closed_pipe_ends_the_command_quietly(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    ids = [live_fake.add_generation(duration=0) for _ in range(400)]
    (tmp_path / "ids.txt").write_text("\n".join(ids), encoding="utf-8")
    proc = await spawn(live_fake, "wait-many", "--from", str(tmp_path / "ids.txt"))
    assert proc.stdout is not None and proc.stderr is not None
    await proc.stdout.readline()  # `| head -1`
    proc.stdout.feed_eof()
    transport = proc._transport  # type: ignore[attr-defined]
    transport.get_pipe_transport(1).close()
    err = await proc.stderr.read()
    assert await proc.wait() == 141
    assert b"Broken pipe" not in err and b"Traceback" not in err


async def test_local_file_problems_exit_5_naming_the_file(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    task_id = live_fake.add_generation(duration=0)
    (tmp_path / "ids.txt").write_text(task_id, encoding="utf-8")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    argv = ["wait-many", "--from", str(tmp_path / "ids.txt")]
    code, _, err = await run(live_fake, *argv, "--out", str(folder))
    assert code == 5 and str(folder) in err
    if os.path.exists("/dev/full"):
        with Path("/dev/full").open("w") as full:  # noqa: ASYNC230 - a device, never blocks
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "deerluma",
                "--api-key",
                live_fake.api_key,
                "--base-url",
                live_fake.url,
                *argv,
                stdout=full,
                stderr=asyncio.subprocess.PIPE,
            )
            assert proc.stderr is not None
            err_bytes = await proc.stderr.read()
            assert await proc.wait() == 5, err_bytes
            assert b"No space left" in err_bytes


async def test_an_ids_file_that_is_not_utf8_is_named(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"abc\n\xff\xfe-latin1-\xe9\n")
    code, _, err = await run(live_fake, "wait-many", "--from", str(ids))
    assert code == 2 and str(ids) in err and "UTF-8" in err


async def test_wait_many_ends_with_a_summary_on_stderr_even_off_a_terminal(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    done = live_fake.add_generation(duration=0)
    failed = live_fake.add_generation(duration=0, failure_reason="moderation")
    (tmp_path / "ids.txt").write_text(f"{done}\n{failed}\nnever-made-1234\n", encoding="utf-8")
    code, _, err = await run(live_fake, "wait-many", "--from", str(tmp_path / "ids.txt"))
    assert code == 4
    assert "3 ids: " in err
    assert "1 completed" in err and "1 failed" in err and "1 NotFoundError" in err


async def test_a_cut_line_in_out_is_reported_and_the_next_record_starts_a_line(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    ids = [live_fake.add_generation(duration=0) for _ in range(2)]
    (tmp_path / "ids.txt").write_text("\n".join(ids), encoding="utf-8")
    out = tmp_path / "results.jsonl"
    out.write_text(f'{{"task_id": "{ids[0]}", "state": "compl', encoding="utf-8")  # killed
    code, _, err = await run(
        live_fake, "wait-many", "--from", str(tmp_path / "ids.txt"), "--out", str(out)
    )
    assert code == 0 and "could not read line 1" in err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert sorted(json.loads(line)["task_id"] for line in lines[1:]) == sorted(ids)


def test_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for code in ("0 ok", "1 a generation failed", "2 usage", "3 timeout", "4 API", "5 local"):
        assert code in text
    assert "130 interrupted" in text and "141" in text


def test_demo_refuses_zero_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--tasks", "0"]) == 2
    assert "--tasks: must be 1 to 24, got 0" in capsys.readouterr().err


async def test_wait_with_download_to_a_read_only_folder_prints_each_row_and_exits_5(
    live_fake: FakeDeerAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    ids = [live_fake.add_generation(duration=0) for _ in range(2)]
    real_open = Path.open

    def read_only(path: Path, *args: object, **kwargs: object) -> object:
        if path.name.endswith(".part"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", read_only)
    code, out, _ = await run(live_fake, "wait", *ids, "--download", str(tmp_path), "--json")
    assert code == 5
    records = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["task_id"] for r in records) == sorted(ids)
    assert all("Read-only" in r["error"]["message"] for r in records)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["wait", "x", "--max-rps", "-1"], "--max-rps must be a positive number"),
        (["--base-url", "ftp://example.com", "get", "x"], "--base-url must be"),
        (["wait", "x", "--timeout", "inf"], "--timeout must be a finite number of seconds, got"),
        (["create", "a deer", "--loop", "--end-image", "https://e.x/a.jpg"], "--loop cannot"),
    ],
)
async def test_messages_name_flags_not_python_arguments(argv: list[str], said: str) -> None:
    code, _, err = await run(None, "--api-key", "k", *argv)
    assert code == 2 and said in err
    for python in ("max_rps", "base_url", "loop=True", "end_image", "None"):
        assert python not in err


@contextlib.asynccontextmanager
async def served(*options: str) -> AsyncIterator[list[str]]:
    """`deerluma demo --serve` in its own process; yields the options that point at it, and
    stops it with Ctrl-C (exit 130)."""
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deerluma",
        "demo",
        "--serve",
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        lines = [(await server.stdout.readline()).decode() for _ in range(3)]
        variables = dict(
            pair.split("=", 1) for pair in lines[2].split("export", 1)[1].split()
        )  # "  export DEERAPI_BASE_URL=... DEERAPI_API_KEY=..."
        yield [
            "--api-key",
            variables["DEERAPI_API_KEY"],
            "--base-url",
            variables["DEERAPI_BASE_URL"],
        ]
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C stops it
        assert await asyncio.wait_for(server.wait(), timeout=10) == 130


async def test_demo_serve_lets_run_and_status_be_tried_with_no_key(tmp_path: Path) -> None:
    async with served("--duration", "0") as point:
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text('{"key": "clip-001", "prompt": "a deer"}\n{"prompt": "a fox"}\n')
        code, out, err = await run(None, *point, "run", str(jobs), "--out", str(tmp_path / "v"))
        assert code == 0, err
        assert out.count("\tdone\t") == 2
        assert (tmp_path / "v" / "clip-001.mp4").stat().st_size > 0
        code, out, err = await run(None, "status", str(tmp_path / "v"))
        assert (code, "2 jobs: 2 done" in out) == (0, True), err  # on stdout


async def test_demo_serve_with_refresh_serves_rows_a_wait_finds() -> None:
    # Generations end after half a second, but a GET answers from rows refreshed every 3 s:
    # until its row's first refresh a generation still shows as created (a live fake would
    # say completed a second on); then a wait finds it done.
    async with served("--duration", "0.5", "--refresh", "3") as point:
        code, out, err = await run(None, *point, "create", "a deer", "--json")
        assert code == 0, err
        task_id = json.loads(out)["task_id"]
        await asyncio.sleep(1.0)
        code, out, err = await run(None, *point, "get", task_id, "--json")
        assert (code, json.loads(out)["state"]) == (0, "pending"), err
        code, out, err = await run(None, *point, "wait", task_id, "--json")
        assert (code, json.loads(out)["state"]) == (0, "completed"), err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["demo", "--refresh", "5"], "--refresh goes with --serve"),
        (["demo", "--serve", "--refresh", "0"], "--refresh must be more than 0 seconds"),
    ],
)
async def test_demo_refresh_is_checked(argv: list[str], said: str) -> None:
    code, _, err = await run(None, *argv)
    assert code == 2 and said in err


async def test_one_rule_for_each_mistake_in_every_command(
    live_fake: FakeDeerAPI, tmp_path: Path
) -> None:
    for argv in (["get", "bad id!"], ["wait", "bad id!", "--timeout", "1"]):
        code, _, err = await run(live_fake, *argv)
        assert code == 2, (argv, err)  # an invalid task id is a mistake in the command
    ids = tmp_path / "ids.txt"
    ids.write_text(live_fake.add_generation(duration=0) + "\nbad id!\n")
    code, out, err = await run(live_fake, "wait-many", "--json", "--from", str(ids))
    assert code == 2, err  # --json accepted where JSON is printed; the bad id: 2 here too
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["state"] for r in records].count("completed") == 1
    (bad,) = [r for r in records if r["error"]]
    assert set(bad["error"]) == {"type", "message"}


async def test_terminal_manners_plain_lines_no_color_and_quiet(
    live_fake: FakeDeerAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = live_fake.add_generation(duration=0)
    code, out, _ = await run(live_fake, "get", task_id)  # piped: plain lines
    assert code == 0
    fields = dict(line.split("\t", 1) for line in out.splitlines())
    assert fields["state"] == "completed" and fields["video"].startswith(live_fake.url)
    assert "│" not in out and "─" not in out
    monkeypatch.setenv("NO_COLOR", "1")
    code, out, err = await run(live_fake, "wait", task_id)
    assert code == 0 and "\x1b" not in out + err
    monkeypatch.delenv("NO_COLOR")
    code, out, err = await run(live_fake, "-q", "wait", task_id)
    assert code == 0 and task_id in out and err == ""  # no summary table


async def test_demo_serve_listens_on_the_port_asked_for() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with served("--port", str(port)) as point:
        assert point[3] == f"http://127.0.0.1:{port}"


def test_help_of_each_command_lists_only_the_flags_it_uses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["status", "--help"]) == 0
    status = capsys.readouterr().out
    assert "--api-key" not in status and "--base-url" not in status and "--quiet" in status
    assert main(["get", "--help"]) == 0
    assert "--api-key" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["wait", "abc", "--max-rps", "-1"], "--max-rps must be"),
        (["wait", "abc", "--concurrency", "0"], "--concurrency must be"),
        (["wait", "abc", "--timeout", "-5"], "--timeout must be"),
        (["create", "x", "--start-image", "notaurl"], "--start-image must be"),
        (["create", "x", "--callback-url", "ftp://x"], "--callback-url must be"),
        (["--base-url", "ftp://x", "get", "abc"], "--base-url must be"),
        (
            ["create", "x", "--loop", "--end-image", "http://a/b.png"],
            "--loop cannot be combined with --end-image",
        ),
    ],
)
def test_the_librarys_messages_name_the_flags_on_a_terminal(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The messages are the library's, each argument it names spelled as its flag, from the
    # error's structured fields (no rewriting of its words).
    assert main(["--api-key", "fake-key-0123456789", *argv]) == 2
    err = capsys.readouterr().err
    assert said in err, err
    assert "_" not in err.split("error:", 1)[1].split(",")[0]  # no Python name left


async def _importing(pid: int) -> None:
    """Until the process maps a compiled module of an installed package: then it is importing
    the command's dependencies (the interpreter's own start is over, and the package's first
    import, the quiet Ctrl-C, is done)."""
    maps = Path(f"/proc/{pid}/maps")
    for _ in range(2000):
        with contextlib.suppress(OSError):
            mapped = maps.read_text().splitlines()
            if any("-packages/" in line and ".so" in line for line in mapped):
                return
        await asyncio.sleep(0.002)
    raise AssertionError("the command never began importing its dependencies")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="POSIX signals, /proc")
async def test_ctrl_c_while_the_command_still_imports_exits_130_without_a_traceback() -> None:
    for delay in (0.0, 0.1):  # as its dependencies begin to load, and well within
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "deerluma", "demo", "--serve",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await _importing(proc.pid)
        await asyncio.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=20)
        assert proc.returncode == 130, err
        assert b"Traceback" not in err and b"interrupted" in err


def test_the_status_line_shows_running_jobs_and_when_creates_are_the_bottleneck() -> None:
    from deerluma.cli.run import status_line
    from deerluma.jobs import JobState, RunStats

    starting = status_line(0, 8, {}, RunStats(active=8, creating=1), elapsed=0.5)
    assert starting.startswith("0/8 settled (1 creating, 7 running)")  # not "(starting)"
    held = RunStats(active=20, creating=1, waiting_to_create=12)
    line = status_line(3, 60, {JobState.DONE: 3}, held, elapsed=60.0)
    assert "3 done, 1 creating, 7 running, 12 waiting to be created" in line
    assert "--creates-in-flight" in line and "3.0 jobs/min" in line and "left" in line
    assert "(starting)" in status_line(0, 8, {}, RunStats(), elapsed=0.1)


def test_a_flag_a_message_suggests_exists_on_that_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import deerluma.cli as cli

    async def exists(app: object) -> int:
        raise FileExistsError(f"{tmp_path / 'x.mp4'} exists")

    for command, argv, suggested in (
        ("download", ["download", "abc", str(tmp_path)], True),
        ("status", ["status", str(tmp_path)], False),  # status has no --overwrite
    ):
        monkeypatch.setitem(cli._COMMANDS, command, exists)
        assert main(["--api-key", "fake-key-0123456789", *argv]) == 2
        said = capsys.readouterr().err
        assert "x.mp4 exists" in said and ("--overwrite" in said) is suggested, said
