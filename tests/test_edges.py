"""The edges a new user meets first: results that travel, paths, types, and wording."""

from __future__ import annotations

import asyncio
import copy
import json
import multiprocessing
import pickle
import random
import typing
from pathlib import Path

import pytest

import deerluma
from deerluma._create import AspectRatio
from deerluma.testing import FakeClock, FakeDeerAPI


async def test_results_and_errors_survive_pickle_json_and_another_process(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    done = await session.get_generation(fake.add_generation(duration=0))
    assert json.loads(json.dumps(done.raw))["id"] == done.id  # a real dict
    failed_id = fake.add_generation(duration=0, failure_reason="moderation")
    with pytest.raises(deerluma.GenerationFailed) as failed:
        await session.wait_until_completed(failed_id)
    with pytest.raises(deerluma.NotFoundError) as missing:
        await session.get_generation("no-such-task-1234")
    with pytest.raises(deerluma.WaitTimeout) as late:
        await session.wait_until_completed(fake.add_generation(duration=600), timeout=5)
    unread = await session.get_generation(done.id)  # its raw not read yet
    for value in (done, unread, failed.value, missing.value, late.value):
        again = pickle.loads(pickle.dumps(value))
        assert type(again) is type(value) and str(again) == str(value)
        assert copy.deepcopy(value) is not None
    assert pickle.loads(pickle.dumps(done)) == done
    assert pickle.loads(pickle.dumps(missing.value)).status == 404
    assert pickle.loads(pickle.dumps(late.value)).last == late.value.last
    # Through a multiprocessing queue, as worker pools pass results.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    queue.put(done)
    queue.put(missing.value)
    received = await asyncio.to_thread(lambda: [queue.get(timeout=10) for _ in range(2)])
    assert received[0] == done and str(received[1]) == str(missing.value)
    with pytest.raises(TypeError, match="read-only"):
        done.raw["state"] = "x"  # type: ignore[index]


async def test_a_generations_repr_is_short(fake: FakeDeerAPI, session: deerluma.Session) -> None:
    g = await session.get_generation(fake.add_generation(duration=0))
    assert g.video is not None and g.video.download_url and "?" in g.video.download_url
    text = repr(g)
    assert len(text) < 700 and "X-Amz" not in text and g.id in text  # was about 1,500
    assert "state=GenerationState.COMPLETED" in text


async def test_download_paths_mean_what_they_say(
    fake: FakeDeerAPI,
    session: deerluma.Session,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    g = await session.get_generation(fake.add_generation(duration=0))
    path = await session.download(g, "~/x.mp4")
    assert path == tmp_path / "x.mp4" and path.exists()
    assert not (tmp_path / "~").exists()
    with pytest.raises(ValueError, match="dest must name a file or a folder"):
        await session.download(g, "")
    (tmp_path / "out" / f"{g.id}.mp4").mkdir(parents=True)  # a folder where the file goes
    with pytest.raises(deerluma.DestinationError, match="is a folder") as caught:
        await session.download(g, tmp_path / "out", overwrite=True)
    assert "overwrite" not in str(caught.value)


def test_a_bad_aspect_ratio_is_a_type_error_for_type_checkers() -> None:
    hints = typing.get_type_hints(deerluma.CreateOptions)
    assert typing.get_args(hints["aspect_ratio"])[0] is AspectRatio
    assert "16:9" in typing.get_args(AspectRatio)


@pytest.mark.parametrize(
    ("call", "complaint"),
    [
        (lambda s: s.wait_until_completed("a", timeout=True), "timeout must be a number"),
        (lambda s: s.wait_until_completed("a", timeout=0), "timeout must be more than 0"),
        (lambda s: s.wait_until_completed("a", timeout=-1), "timeout must be more than 0"),
        (lambda s: s.get_generation("a", timeout=0), "timeout must be more than 0"),
        (lambda s: s.get_generation("a", timeout=True), "timeout must be a number"),
    ],
)
async def test_nonsense_timeouts_say_one_thing(
    session: deerluma.Session, call: typing.Any, complaint: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=complaint):
        await call(session)


async def test_get_and_create_are_bounded_by_their_timeout(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    from deerluma.testing import Fault

    task_id = fake.add_generation(duration=0)
    fake.inject(*[Fault.error(503)] * 10)
    # Backoffs whose jitter leaves the third try 0.17 s: a random draw could leave it a hair
    # before the deadline, which the fake clock hands aiohttp as a real timeout of that hair,
    # and the last try then met a timeout, not the 503 (seen once in CI's newest-Python leg).
    session._transport.rng = random.Random(4)
    start = clock()
    with pytest.raises(deerluma.DeadlineExceeded, match=r"get_generation gave up after") as ex:
        await session.get_generation(task_id, timeout=1)
    assert clock() - start <= 1.0 + 1e-6
    assert "attempts" in str(ex.value) and "503" in str(ex.value)
    fake.inject(*[Fault.error(503)] * 10)
    with pytest.raises(deerluma.ServerError) as spent:  # no timeout: the retry budget ends it
        await session.get_generation(task_id)
    assert spent.value.attempts == 4
