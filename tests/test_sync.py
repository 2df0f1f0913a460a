"""SyncSession: plain (non-async) tests against FakeDeerAPI served from its own thread."""

from __future__ import annotations

import _thread
import asyncio
import gc
import inspect
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import deerluma
from deerluma._sync import NOT_MIRRORED
from deerluma.testing import FakeClock, FakeDeerAPI


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeDeerAPI]:
    with FakeDeerAPI(clock=clock).in_thread() as server:
        yield server


@pytest.fixture
def sync(fake: FakeDeerAPI, clock: FakeClock) -> Iterator[deerluma.SyncSession]:
    with deerluma.SyncSession(
        api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
    ) as s:
        yield s
    assert not _sync_threads()


def _sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "deerluma-sync"]


def _interrupt_after(seconds: float) -> threading.Timer:
    """Raise KeyboardInterrupt in the main thread (as Ctrl-C would) after `seconds`."""
    timer = threading.Timer(seconds, _thread.interrupt_main)
    timer.start()
    return timer


def test_calls_in_a_row_share_one_loop_and_pool(
    fake: FakeDeerAPI, sync: deerluma.SyncSession
) -> None:
    # With asyncio.run per call, the second call fails with "Event loop is closed".
    first, second = fake.add_generation(duration=0), fake.add_generation(duration=30)
    assert sync.get_generation(first).is_completed
    assert sync.get_generation(second).state is deerluma.GenerationState.PENDING
    assert len(_sync_threads()) == 1


def test_wait_returns_the_completed_generation_and_raises_the_same_errors(
    fake: FakeDeerAPI, sync: deerluma.SyncSession
) -> None:
    done = fake.add_generation(duration=40, estimate=False)
    failed = fake.add_generation(duration=5, failure_reason="nsfw prompt")
    updates: list[deerluma.GenerationState] = []
    g = sync.wait_until_completed(done, on_update=lambda g: updates.append(g.state))
    assert g.is_completed and g.id == done
    assert updates[-1] is deerluma.GenerationState.COMPLETED
    with pytest.raises(deerluma.GenerationFailed, match="nsfw prompt"):
        sync.wait_until_completed(failed)
    with pytest.raises(deerluma.NotFoundError):
        sync.get_generation("no-such-task")
    with pytest.raises(TypeError):
        sync.wait_many("one-id")  # a str is not a list of ids: refused before sending
    assert sync.rate.rate_limited == 0 and sync.history.durations


def test_batches_iterate_plainly_and_map_every_id(
    fake: FakeDeerAPI, sync: deerluma.SyncSession
) -> None:
    ids = [fake.add_generation(duration=d, estimate=False) for d in (30, 5, 60)]
    order = [result.task_id for result in sync.as_completed(ids)]
    assert order == [ids[1], ids[0], ids[2]]
    outcomes = sync.wait_many([*ids, "missing"])
    assert list(outcomes) == [*ids, "missing"]
    assert isinstance(outcomes["missing"], deerluma.NotFoundError)
    states = [g.state for g in sync.watch(ids[0])]
    assert states == [deerluma.GenerationState.COMPLETED]


def test_create_download_and_generate_end_to_end(
    fake: FakeDeerAPI, sync: deerluma.SyncSession, tmp_path: Path
) -> None:
    created = sync.create_generation("a deer at dawn", aspect_ratio="16:9")
    assert fake.created[-1]["aspect_ratio"] == "16:9"
    g = sync.generate("a deer at dusk")
    path = sync.download(g, tmp_path)
    assert path.read_bytes() == fake.video_content(g.id)
    extended = sync.extend_generation(created.id, "and it runs")
    assert extended.id != created.id


def test_breaking_out_of_a_batch_stops_its_polling(
    fake: FakeDeerAPI, sync: deerluma.SyncSession
) -> None:
    # With a FakeClock, a batch still polling would poll again at every turn of the loop.
    ids = [fake.add_generation(duration=0)] + [fake.add_generation(duration=600) for _ in range(3)]

    def polls_after_a_few_round_trips() -> int:
        for _ in range(3):
            sync.get_generation(ids[0])
        return sum(fake.polls[task_id] for task_id in ids[1:])

    with sync.as_completed(ids) as results:
        for _ in results:
            break
    assert polls_after_a_few_round_trips() == polls_after_a_few_round_trips()
    for _ in sync.as_completed(ids):
        break  # a bare break: the iterator is collected at once and stops too
    assert polls_after_a_few_round_trips() == polls_after_a_few_round_trips()
    assert sync._portal.call(_other_tasks()) == []


async def _other_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def test_works_from_inside_a_running_event_loop(
    fake: FakeDeerAPI, sync: deerluma.SyncSession
) -> None:
    # A notebook cell or a plugin host: a loop already runs in this thread.
    task_id = fake.add_generation(duration=20)

    async def cell() -> deerluma.Generation:
        return sync.wait_until_completed(task_id)

    assert asyncio.run(cell()).is_completed


def test_ctrl_c_cancels_the_wait_cleanly_and_reraises(fake: FakeDeerAPI) -> None:
    # Real time: the wait must be blocked when the interrupt lands.
    task_id = fake.add_generation(duration=3600)
    with deerluma.SyncSession(api_key=fake.api_key, base_url=fake.url) as s:
        _interrupt_after(0.2)
        with pytest.raises(KeyboardInterrupt):
            s.wait_until_completed(task_id, timeout=None)
        assert s._portal.call(_other_tasks()) == []
        assert s.get_generation(task_id).id == task_id  # still usable afterwards
    assert not _sync_threads()


def test_ctrl_c_during_a_download_removes_the_partial_file(
    fake: FakeDeerAPI, sync: deerluma.SyncSession, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0, video_bytes=1 << 20)
    started = threading.Event()

    async def slow_progress(done: int, total: int | None) -> None:
        started.set()
        await asyncio.sleep(30)  # real time: the download is mid-way when Ctrl-C lands

    waiter = threading.Thread(target=lambda: started.wait(5) and _thread.interrupt_main())
    waiter.start()
    with pytest.raises(KeyboardInterrupt):
        sync.download(task_id, tmp_path / "out.mp4", on_progress=slow_progress)
    waiter.join()
    assert list(tmp_path.iterdir()) == []


def test_close_and_garbage_collection_leave_no_thread_behind(fake: FakeDeerAPI) -> None:
    task_id = fake.add_generation(duration=0)
    s = deerluma.SyncSession(api_key=fake.api_key, base_url=fake.url)
    assert not _sync_threads()  # nothing starts before the first call
    s.get_generation(task_id)
    s.close()
    assert not _sync_threads()
    assert s.get_generation(task_id).is_completed  # a closed one starts again when used
    del s
    gc.collect()
    assert not _sync_threads()  # and a forgotten one is closed by the collector


def test_calling_the_sync_session_from_its_own_callbacks_is_refused(
    fake: FakeDeerAPI, sync: deerluma.SyncSession
) -> None:
    task_id = fake.add_generation(duration=0)
    errors: list[BaseException] = []

    def on_update(g: deerluma.Generation) -> None:
        try:
            sync.get_generation(g.id)
        except RuntimeError as exc:
            errors.append(exc)

    sync.wait_until_completed(task_id, on_update=on_update)
    assert errors and "must not call the SyncSession" in str(errors[0])


def test_every_public_session_method_has_a_blocking_twin() -> None:
    public = {name for name in dir(deerluma.Session) if not name.startswith("_")}
    missing = public - set(dir(deerluma.SyncSession)) - set(NOT_MIRRORED)
    assert missing == set(), f"SyncSession lacks {sorted(missing)}: mirror them in _sync.py"
    for name in public - set(NOT_MIRRORED):
        ours = inspect.getattr_static(deerluma.SyncSession, name)
        theirs = inspect.getattr_static(deerluma.Session, name)
        assert ours.__doc__, f"SyncSession.{name} is undocumented"
        if hasattr(ours, "__mirrors__"):  # Session's own method: its own words
            assert ours.__mirrors__ is theirs, name
            assert ours.__doc__ == theirs.__doc__, name


def test_the_constructor_takes_sessions_arguments_except_a_borrowed_pool() -> None:
    theirs = dict(inspect.signature(deerluma.Session).parameters)
    del theirs["session"]  # an aiohttp session belongs to another loop: it cannot be borrowed
    ours = dict(inspect.signature(deerluma.SyncSession).parameters)
    assert list(ours) == list(theirs)
    assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]


def test_the_key_stays_out_of_the_repr() -> None:
    s = deerluma.SyncSession(api_key="sk-secret-123", base_url="http://127.0.0.1:1")
    assert "sk-secret-123" not in repr(s) and repr(s).startswith("SyncSession(")


def test_blocking_methods_show_their_own_signature_in_help_and_notebooks() -> None:
    import pydoc

    s = deerluma.SyncSession(api_key="k")
    try:
        bound = inspect.signature(s.wait_until_completed)
        assert next(iter(bound.parameters)) == "task_id"  # no spurious self
        assert bound.return_annotation == "Generation"
        unbound = inspect.signature(deerluma.SyncSession.wait_until_completed)
        assert next(iter(unbound.parameters)) == "self"
        assert inspect.signature(s.watch).return_annotation == "SyncUpdates[Generation]"
        assert inspect.signature(s.as_completed).return_annotation == "SyncUpdates[BatchResult]"
        text = pydoc.plain(pydoc.render_doc(deerluma.SyncSession))
        assert "object at 0x" not in text
        # 3.13 wraps a long signature over lines of " |      ".
        assert re.search(r"wait_until_completed\([\s|]*self,[\s|]*task_id", text)
    finally:
        s.close()
