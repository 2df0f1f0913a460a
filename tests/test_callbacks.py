"""Callbacks end to end: FakeDeerAPI calls back into a receiver the Session mounted.

Callback delivery runs in real time, so these tests use a ScaledClock (virtual
seconds pass 50 times faster) and generations of a few virtual seconds.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

import deerluma
from deerluma.testing import FakeDeerAPI, ScaledClock

SPEED = 10.0
SECRET = "s3cret"


@pytest.fixture
def scaled() -> ScaledClock:
    return ScaledClock(SPEED)


@pytest.fixture
async def api(scaled: ScaledClock) -> AsyncIterator[FakeDeerAPI]:
    async with FakeDeerAPI(clock=scaled, create_duration=4.0) as server:
        yield server


@pytest.fixture
async def cb_session(api: FakeDeerAPI, scaled: ScaledClock) -> AsyncIterator[deerluma.Session]:
    async with deerluma.Session(
        api_key=api.api_key, base_url=api.url, clock=scaled, sleep=scaled.sleep
    ) as s:
        yield s


@pytest.fixture
async def receiver(cb_session: deerluma.Session) -> AsyncIterator[str]:
    """The app a user would run: the handler mounted at /luma-callback; yields its URL."""
    app = web.Application()
    app.router.add_post("/luma-callback", cb_session.callback_handler(secret=SECRET))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/luma-callback"
    await runner.cleanup()


async def _post(
    url: str, body: bytes | io.BytesIO | AsyncIterator[bytes], *, token: str | None = SECRET
) -> tuple[int, str]:
    target = url if token is None else f"{url}?token={token}"
    async with aiohttp.ClientSession() as http, http.post(target, data=body) as resp:
        return resp.status, await resp.text()


async def _chunks(count: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b" " * size


def _gets(api: FakeDeerAPI, task_id: str) -> int:
    return sum(1 for r in api.requests if r.method == "GET" and r.path.endswith(task_id))


async def test_a_callback_wakes_the_wait_which_confirms_with_one_get(
    api: FakeDeerAPI, cb_session: deerluma.Session, receiver: str, scaled: ScaledClock
) -> None:
    api.callback_duplicates = 1.0  # every callback twice: harmless
    created = await cb_session.create_generation("a deer", callback_url=f"{receiver}?token=s3cret")
    seen: list[deerluma.GenerationState] = []
    g = await cb_session.wait_until_completed(created.id, on_update=lambda g: seen.append(g.state))
    assert g.is_completed
    lag = scaled() - api.finishes_at(created.id)
    assert 0 <= lag < 0.5  # noticed at once, not at the next 3 s poll
    states = [s for i, s in enumerate(seen) if not i or s != seen[i - 1]]  # estimates change too
    # The create answer is the first look (no GET), then what the callbacks woke it for.
    assert states == [
        deerluma.GenerationState.PENDING,
        deerluma.GenerationState.PROCESSING,
        deerluma.GenerationState.COMPLETED,
    ]
    assert _gets(api, created.id) <= 2  # the confirming GET, and at most one look before
    assert cb_session.callbacks.received >= 2


async def test_a_forged_completed_callback_never_completes_a_wait(
    api: FakeDeerAPI, cb_session: deerluma.Session, receiver: str, scaled: ScaledClock
) -> None:
    created = await cb_session.create_generation("a deer", callback_url=f"{receiver}?token=s3cret")
    wait = asyncio.create_task(cb_session.wait_until_completed(created.id))
    await asyncio.sleep(0.005)
    forged = {**api.body_of(created.id), "state": "completed"}
    assert (await _post(receiver, json.dumps(forged).encode()))[0] == 200
    g = await wait
    assert scaled() >= api.finishes_at(created.id)  # returned only once it really was done
    assert g.is_completed and cb_session.callbacks.refuted == 1


async def test_the_receiver_refuses_bad_bodies_and_wrong_tokens(
    api: FakeDeerAPI, receiver: str
) -> None:
    task_id = api.add_generation(duration=0)
    body = json.dumps(api.body_of(task_id)).encode()
    assert (await _post(receiver, body, token=None))[0] == 403
    assert (await _post(receiver, body, token="wrong"))[0] == 403
    assert (await _post(receiver, b"{not json"))[0] == 400
    assert (await _post(receiver, b"<html>502</html>"))[0] == 400
    assert (await _post(receiver, b'{"no": "id"}'))[0] == 400
    assert (await _post(receiver, io.BytesIO(b" " * (5 << 20))))[0] == 413  # announced
    assert (await _post(receiver, _chunks(80, 64 << 10)))[0] == 413  # chunked, no length
    assert (await _post(receiver, body))[0] == 200


async def test_lost_callbacks_fall_back_to_polling_and_lose_nothing(
    api: FakeDeerAPI, cb_session: deerluma.Session, receiver: str
) -> None:
    api.callback_loss = 1.0  # not one arrives
    created = [
        await cb_session.create_generation("a deer", callback_url=f"{receiver}?token=s3cret")
        for _ in range(5)
    ]
    results = await cb_session.wait_many([g.id for g in created], timeout=60)
    assert all(isinstance(g, deerluma.Generation) and g.is_completed for g in results.values())
    assert cb_session.callbacks.missed >= 5 and cb_session.callbacks.delivered == 0


async def test_a_batch_is_woken_by_callbacks_too(
    api: FakeDeerAPI, cb_session: deerluma.Session, receiver: str, scaled: ScaledClock
) -> None:
    created = [
        await cb_session.create_generation("a deer", callback_url=f"{receiver}?token=s3cret")
        for _ in range(4)
    ]
    plain = api.add_generation(duration=4.0)  # no callback_url: polled as usual
    updates: list[deerluma.Generation] = []
    lags = []
    async with cb_session.as_completed(
        [g.id for g in created] + [plain], on_update=updates.append
    ) as results:
        async for result in results:
            assert result.ok
            if result.task_id != plain:
                lags.append(scaled() - api.finishes_at(result.task_id))
    assert max(lags) < 0.5
    assert sum(_gets(api, g.id) for g in created) <= 2 * len(created)
    processing = [u for u in updates if u.state is deerluma.GenerationState.PROCESSING]
    assert {u.id for u in processing} >= {g.id for g in created}  # progress by callback


async def test_callbacks_true_listens_on_an_id_created_elsewhere(
    api: FakeDeerAPI, cb_session: deerluma.Session, receiver: str, scaled: ScaledClock
) -> None:
    # Created by another process with a callback_url pointing here.
    async with deerluma.Session(
        api_key=api.api_key, base_url=api.url, clock=scaled, sleep=scaled.sleep
    ) as other:
        created = await other.create_generation("a deer", callback_url=f"{receiver}?token=s3cret")
    g = await cb_session.wait_until_completed(created.id, callbacks=True)
    assert g.is_completed and scaled() - api.finishes_at(created.id) < 0.5
    assert cb_session.callbacks.received >= 1


def test_a_secret_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="secret"):
        deerluma.Session(api_key="k").callback_handler(secret="")


@pytest.mark.parametrize("callbacks", [None, False])
@pytest.mark.parametrize("failure", [None, "moderation: the prompt was blocked"])
async def test_a_create_answer_already_terminal_ends_every_wait_at_once(
    api: FakeDeerAPI,
    cb_session: deerluma.Session,
    receiver: str,
    callbacks: bool | None,
    failure: str | None,
) -> None:
    # Moderated at once, or a cached result: the create answer is already terminal.
    api.create_script = lambda _: {"duration": 0.0, "failure_reason": failure}
    created = await cb_session.create_generation("a deer", callback_url=f"{receiver}?token=s3cret")
    assert created.is_terminal
    terminal = created.state
    if failure:
        with pytest.raises(deerluma.GenerationFailed, match="moderation"):
            await cb_session.wait_until_completed(created.id, callbacks=callbacks)
    else:
        g = await cb_session.wait_until_completed(created.id, callbacks=callbacks)
        assert g.state is terminal
    async with cb_session.watch(created.id, callbacks=callbacks) as updates:
        assert [g.state async for g in updates] == [terminal]
    heard: list[deerluma.Generation] = []
    results = await cb_session.wait_many([created.id], callbacks=callbacks, on_update=heard.append)
    outcome = results[created.id]
    if failure:
        assert isinstance(outcome, deerluma.GenerationFailed)
    else:
        assert isinstance(outcome, deerluma.Generation) and outcome.state is terminal
    assert [g.state for g in heard] == [terminal]
    assert _gets(api, created.id) == 0  # the create answer said it all
    assert cb_session.history.running == 0
    while not api.callbacks:  # let its callback land before the receiver goes
        await asyncio.sleep(0.01)


async def test_a_progress_callback_is_passed_on_but_never_taken_as_a_poll_result(
    api: FakeDeerAPI, cb_session: deerluma.Session, receiver: str
) -> None:
    api.create_script = lambda _: {"duration": 600.0, "pending_for": 600.0}
    created = await cb_session.create_generation("a deer", callback_url=f"{receiver}?token=s3cret")
    hint = {**api.body_of(created.id), "state": "dreaming"}  # says it runs: only a hint
    assert (await _post(receiver, json.dumps(hint).encode()))[0] == 200
    heard: list[deerluma.Generation] = []
    single = asyncio.create_task(
        cb_session.wait_until_completed(created.id, timeout=2, on_update=heard.append)
    )
    batch = await cb_session.wait_many([created.id], timeout=2, on_update=heard.append)
    with pytest.raises(deerluma.WaitTimeout) as caught:
        await single
    for error in (caught.value, batch[created.id]):
        assert isinstance(error, deerluma.WaitTimeout)
        # What polls (and the create answer) saw: never what a callback claimed.
        assert error.last is not None and error.last.state is deerluma.GenerationState.PENDING
    assert deerluma.GenerationState.DREAMING in {g.state for g in heard}  # passed on


async def test_by_default_the_receiver_asks_for_the_sessions_token_and_keeps_only_ids_it_waits_for(
    api: FakeDeerAPI, cb_session: deerluma.Session, scaled: ScaledClock
) -> None:
    app = web.Application()
    app.router.add_post("/hook", cb_session.callback_handler())  # no secret given
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/hook"
    try:
        stranger = api.add_generation(duration=0)
        body = json.dumps(api.body_of(stranger)).encode()
        assert (await _post(url, body, token=None))[0] == 403  # open no more
        token = cb_session.callback_token
        for i in range(200):  # a flood of made-up ids remembers nothing
            fake = {**api.body_of(stranger), "id": f"made-up-{i}"}
            status, text = await _post(url, json.dumps(fake).encode(), token=token)
            assert status == 200 and "ignored" in text
        assert cb_session.callbacks.received == 0 and not cb_session._callbacks._records
        # The Session puts its token in the callback_url it sends: its callbacks get through.
        created = await cb_session.create_generation("a deer", callback_url=url)
        assert f"token={token}" in str(api.created[-1]["callback_url"])
        g = await cb_session.wait_until_completed(created.id)
        assert g.is_completed and cb_session.callbacks.received >= 1
        assert scaled() - api.finishes_at(created.id) < 0.5
    finally:
        await runner.cleanup()


async def test_receive_callback_answers_as_the_aiohttp_handler_does() -> None:
    import json

    from deerluma._callbacks import MAX_CALLBACK_BYTES

    async with deerluma.Session(api_key="fake-key-0123456789") as s:
        s.expect_callbacks("task-1")
        token = s.callback_token
        done = json.dumps({"id": "task-1", "state": "completed"})
        answer = await s.receive_callback(done, token=token)
        assert (answer.status, answer.json) == (200, {"ok": True})
        assert answer.content_type == "application/json"
        other = json.dumps({"id": "task-9", "state": "completed"}).encode()
        assert "ignored" in (await s.receive_callback(other, token=token)).json
        assert (await s.receive_callback(b"<html>", token=token)).status == 400
        assert (await s.receive_callback(done)).status == 403
        assert (await s.receive_callback(done, token="wrong")).status == 403
        huge = b" " * (MAX_CALLBACK_BYTES + 1)
        assert (await s.receive_callback(huge, token=token)).status == 413
        answer = await s.receive_callback(done, token="mine", secret="mine")
        assert answer.status == 200
        assert s.callbacks.received == 2


async def test_the_asgi_app_refuses_what_is_not_a_post_and_bodies_too_large() -> None:
    from deerluma._callbacks import MAX_CALLBACK_BYTES

    async with deerluma.Session(api_key="fake-key-0123456789") as s:
        app = s.callback_asgi()
        sent: list[dict[str, object]] = []

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        async def nothing() -> dict[str, object]:
            raise AssertionError("the body is not read")

        scope = {"type": "http", "method": "GET", "query_string": b"", "headers": []}
        await app(scope, nothing, send)
        assert sent[0]["status"] == 405
        sent.clear()
        query = f"token={s.callback_token}".encode()
        length = str(MAX_CALLBACK_BYTES + 1).encode()
        scope = {
            "type": "http",
            "method": "POST",
            "query_string": query,
            "headers": [(b"content-length", length)],
        }
        await app(scope, nothing, send)  # refused before a byte is read
        assert sent[0]["status"] == 413
