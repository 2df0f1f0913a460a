"""Session end to end over real sockets against FakeDeerAPI."""

from __future__ import annotations

import logging
import socket
import traceback
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

import deerluma
from deerluma import (
    AuthenticationError,
    ConfigurationError,
    DecodeError,
    NotFoundError,
    RateLimitError,
    ServerError,
    TransportError,
)
from deerluma.testing import FakeClock, FakeDeerAPI, Fault

from .conftest import sample


async def test_get_generation_returns_the_fakes_body_field_by_field(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    task_id = fake.add_generation(duration=0)
    g = await session.get_generation(task_id)
    assert g == deerluma.decode_generation(200, {}, _json(fake.body_of(task_id)), task_id=task_id)
    assert g.is_completed
    assert g.video is not None and g.video.download_url is not None


async def test_seed_body_served_by_fake_decodes_to_the_seed_generation(
    clock: FakeClock,
) -> None:
    seed = sample("seed_completed.json")
    expected = deerluma.decode_generation(200, {}, seed)
    async with FakeDeerAPI(clock=clock) as fake, _session(fake, clock) as s:
        fake.serve_raw(expected.id, seed)
        assert await s.get_generation(expected.id) == expected


@pytest.mark.parametrize(
    "fault",
    [
        Fault.error(502),
        Fault.error(503, {"detail": "busy"}),
        Fault.error(500),
        Fault.error(504),
        Fault.rate_limit(0.5),
        Fault.rate_limit(None),
        Fault.reset(),
        Fault.truncated(),
        Fault.cut(),
        Fault.html(502),
        Fault.wrong_id(),
    ],
    ids=lambda f: f"{f.kind}-{getattr(f, 'status', 500)}",
)
async def test_transient_fault_is_retried_then_succeeds(
    fake: FakeDeerAPI, session: deerluma.Session, fault: Fault
) -> None:
    other = fake.add_generation(duration=0)  # what a confused proxy answers with
    task_id = fake.add_generation(duration=0)
    fake.inject(fault)
    g = await session.get_generation(task_id)
    assert g.id == task_id and g.id != other
    assert [r.fault for r in fake.requests] == [fault.kind, None]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.error(502), ServerError),
        (Fault.rate_limit(1), RateLimitError),
        (Fault.reset(), TransportError),
        (Fault.truncated(), DecodeError),
        (Fault.html(503), ServerError),
    ],
    ids=lambda x: getattr(x, "kind", getattr(x, "__name__", "")),
)
async def test_retry_budget_exhausted_raises_the_last_error(
    fake: FakeDeerAPI, session: deerluma.Session, fault: Fault, error: type[Exception]
) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject(*[fault] * 8)
    with pytest.raises(error) as info:
        await session.get_generation(task_id)
    # max_retries=3: four attempts (aiohttp itself resends once on a reset keep-alive socket)
    assert 4 <= len(fake.requests) <= 8
    assert info.value.task_id == task_id
    assert task_id in str(info.value)


async def test_rate_limit_retry_honours_retry_after(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject(Fault.rate_limit(7))
    await session.get_generation(task_id)
    assert sum(clock.sleeps) >= 7.0
    assert session.rate.rate_limited == 1
    with pytest.deprecated_call():
        assert session.rate_limited_count == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, deerluma.APIError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
    ],
)
async def test_client_errors_are_never_retried(
    fake: FakeDeerAPI, session: deerluma.Session, status: int, error: type[Exception]
) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject(Fault.error(status))
    with pytest.raises(error):
        await session.get_generation(task_id)
    assert len(fake.requests) == 1


async def test_unknown_task_id_raises_not_found_with_advice(session: deerluma.Session) -> None:
    with pytest.raises(NotFoundError, match=r"HTTP 404 for task 'no-such-task'.*check the task id"):
        await session.get_generation("no-such-task")


async def test_wrong_key_raises_authentication_error_without_the_key(
    fake: FakeDeerAPI, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=0)
    secret = "sk-wrong-secret-value"
    async with deerluma.Session(api_key=secret, base_url=fake.url, sleep=clock.sleep) as s:
        with pytest.raises(AuthenticationError) as info:
            await s.get_generation(task_id)
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert "check the API key" in str(info.value)


async def test_missing_key_is_a_clear_error_at_first_request(
    fake: FakeDeerAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEERAPI_API_KEY", raising=False)
    async with deerluma.Session(base_url=fake.url) as s:
        with pytest.raises(ConfigurationError, match="DEERAPI_API_KEY"):
            await s.get_generation("abc")
    assert fake.requests == []


async def test_key_and_base_url_come_from_the_environment(
    fake: FakeDeerAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEERAPI_API_KEY", fake.api_key)
    monkeypatch.setenv("DEERAPI_BASE_URL", fake.url)
    task_id = fake.add_generation(duration=0)
    async with deerluma.Session() as s:
        assert (await s.get_generation(task_id)).id == task_id
    assert fake.requests[0].authorized


@pytest.mark.parametrize(
    "task_id",
    [
        "",
        " ",
        "a b",
        "a/b",
        "..",
        ".",
        "a?b",
        "a#b",
        "a\x00b",
        "a\nb",
        "a%2Fb",
        "x" * 201,
        "\u200b",
    ],
)
async def test_bad_task_ids_raise_value_error_before_any_request(
    fake: FakeDeerAPI, session: deerluma.Session, task_id: str
) -> None:
    with pytest.raises(ValueError, match="invalid task id"):
        await session.get_generation(task_id)
    assert fake.requests == []


async def test_unusual_but_safe_task_id_is_quoted(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    task_id = fake.add_generation("täsk:1~ä", duration=0)
    assert (await session.get_generation(task_id)).id == task_id
    assert fake.requests[0].path == "/dream-machine/v1/generations/täsk:1~ä"


async def test_key_never_appears_in_repr_logs_or_errors(
    fake: FakeDeerAPI, session: deerluma.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="deerluma")
    task_id = fake.add_generation(duration=0)
    fake.inject(Fault.error(502), Fault.rate_limit(0.1), Fault.reset())
    await session.get_generation(task_id)
    with pytest.raises(NotFoundError) as info:
        await session.get_generation("missing")
    seen = [repr(session), str(info.value), repr(info.value), caplog.text]
    seen += [str(record.args) for record in caplog.records]
    assert caplog.records, "expected debug logging to be captured"
    assert all(fake.api_key not in text for text in seen)
    assert "<redacted>" in repr(session)


@pytest.mark.parametrize(
    "url",
    ["http://api.deerapi.com", "http://10.0.0.1:8080", "ftp://x", "https://user:pw@h", "nohost"],
)
def test_unsafe_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"base_url|http"):
        deerluma.Session(api_key="k", base_url=url)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout must be more than 0 seconds"),
        ({"max_retries": -1}, "retries"),
    ],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        deerluma.Session(api_key="k", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "http://localhost:8080", "http://[::1]:9"])
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    assert deerluma.Session(api_key="k", base_url=url).base_url.startswith("http://")


async def test_borrowed_client_session_is_left_open(fake: FakeDeerAPI) -> None:
    task_id = fake.add_generation(duration=0)
    async with aiohttp.ClientSession() as http:
        async with deerluma.Session(api_key=fake.api_key, base_url=fake.url, session=http) as s:
            await s.get_generation(task_id)
        assert not http.closed


async def test_owned_client_session_is_closed_on_exit(fake: FakeDeerAPI) -> None:
    task_id = fake.add_generation(duration=0)
    s = deerluma.Session(api_key=fake.api_key, base_url=fake.url)
    await s.get_generation(task_id)
    http = s._transport.http()
    await s.aclose()
    assert http.closed


async def test_connection_refused_is_a_transport_error_marked_unsent(clock: FakeClock) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    secret = "sk-never-shown-0123"
    async with deerluma.Session(
        api_key=secret, base_url=f"http://127.0.0.1:{port}", sleep=clock.sleep
    ) as s:
        with pytest.raises(TransportError, match="could not connect") as info:
            await s.get_generation("abc")
    assert info.value.request_sent is False
    assert info.value.task_id == "abc"
    assert secret not in "".join(traceback.format_exception(info.value))  # causes included
    assert len([s for s in clock.sleeps if s >= 0.25]) == 3  # retried max_retries times


async def test_slow_answer_times_out_as_transport_error(fake: FakeDeerAPI) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject(Fault.latency(1.0))
    async with deerluma.Session(
        api_key=fake.api_key, base_url=fake.url, timeout=0.05, max_retries=0
    ) as s:
        with pytest.raises(TransportError, match="no answer"):
            await s.get_generation(task_id)


async def test_timeout_then_success_is_retried(fake: FakeDeerAPI, clock: FakeClock) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject(Fault.latency(1.0))
    async with deerluma.Session(
        api_key=fake.api_key, base_url=fake.url, timeout=0.05, sleep=clock.sleep
    ) as s:
        assert (await s.get_generation(task_id)).id == task_id


async def test_dns_failure_is_a_transport_error() -> None:
    # A fake server cannot fail name resolution; aioresponses can.
    with aioresponses() as mocked:
        mocked.get(
            "https://api.deerapi.com/dream-machine/v1/generations/abc",
            exception=aiohttp.ClientConnectionError("Cannot connect: Name or service not known"),
            repeat=True,
        )
        clock = FakeClock()
        async with deerluma.Session(api_key="k", sleep=clock.sleep) as s:
            with pytest.raises(TransportError, match="Name or service not known"):
                await s.get_generation("abc")


async def test_huge_announced_body_is_refused_without_reading(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    fake.serve_raw("big", b'{"id": "big", "state": "pending", "pad": "' + b"x" * (5 << 20) + b'"}')
    with pytest.raises(DecodeError, match="refusing"):
        await session.get_generation("big")


def _json(body: object) -> bytes:
    import json

    return json.dumps(body).encode()


def _session(fake: FakeDeerAPI, clock: FakeClock) -> deerluma.Session:
    return deerluma.Session(api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep)


async def test_nothing_is_sent_once_the_deadline_has_passed(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=0)
    with pytest.raises(deerluma.DeadlineExceeded):
        await session._fetch(task_id, deadline=clock() - 1.0)
    assert fake.requests == []


async def test_a_borrowed_session_that_raises_for_status_does_not_hide_our_errors(
    fake: FakeDeerAPI,
) -> None:
    import aiohttp

    async with aiohttp.ClientSession(raise_for_status=True) as http:
        async with deerluma.Session(api_key=fake.api_key, base_url=fake.url, session=http) as s:
            with pytest.raises(deerluma.NotFoundError):
                await s.get_generation("no-such-task")
        async with deerluma.Session(api_key="wrong", base_url=fake.url, session=http) as s:
            with pytest.raises(deerluma.AuthenticationError):
                await s.get_generation("any")
            with pytest.raises(deerluma.AuthenticationError):
                await s.create_generation("a fox")
        assert not http.closed
    assert len(fake.requests) == 3  # nothing was retried


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.get_generation(None), TypeError),
        (lambda s: s.wait_until_completed(42), TypeError),
        (lambda s: s.wait_many("id-1"), TypeError),
        (lambda s: s.wait_many(["ok-id", 7]), TypeError),
        (lambda s: s.wait_many(["ok-id"], concurrency=1.5), TypeError),
        (lambda s: s.wait_many(["ok-id"], concurrency=0), ValueError),
    ],
)
async def test_argument_mistakes_are_refused_before_anything_is_sent(
    fake: FakeDeerAPI, session: deerluma.Session, call: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await call(session)
    assert fake.requests == []


def test_batch_arguments_are_checked_when_as_completed_is_called(
    session: deerluma.Session,
) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        session.as_completed(["a"], concurrency=0)  # not only once iteration starts
    with pytest.raises(TypeError, match="one string"):
        session.as_completed("abc")


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": float("nan")}, "timeout must be a finite number"),
        ({"max_rps": float("nan")}, "max_rps"),
        ({"max_rps": 0}, "max_rps"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
    ],
)
def test_nonsense_settings_are_refused_at_construction(
    settings: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        deerluma.Session(api_key="k", **settings)


def test_fault_kinds_are_typed_and_carry_their_own_fields() -> None:
    from deerluma.testing import OversizedFault, RedirectFault, StatusFault

    assert Fault.oversized(10) == OversizedFault(10) and OversizedFault(10).size == 10
    redirect = Fault.redirect("https://elsewhere.example/x", 307)
    assert isinstance(redirect, RedirectFault) and redirect.location.endswith("/x")
    limited = Fault.rate_limit(2)
    assert isinstance(limited, StatusFault) and (limited.status, limited.retry_after) == (429, "2")


async def test_a_key_read_with_its_newline_is_stripped(fake: FakeDeerAPI, clock: FakeClock) -> None:
    task_id = fake.add_generation(duration=0)
    async with deerluma.Session(
        api_key=f"  {fake.api_key}\n", base_url=fake.url, clock=clock, sleep=clock.sleep
    ) as s:
        assert (await s.get_generation(task_id)).id == task_id


@pytest.mark.parametrize("key", ["sk-abc\ndef", "sk-abc\tdef", "sk-\x00"])
def test_a_key_with_a_control_character_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(ConfigurationError, match="control character") as caught:
        deerluma.Session(api_key=key)
    assert "sk-" not in str(caught.value)


async def test_a_key_of_spaces_is_no_key(fake: FakeDeerAPI) -> None:
    async with deerluma.Session(api_key="   ", base_url=fake.url) as s:
        with pytest.raises(ConfigurationError, match="no API key"):
            await s.get_generation("abc")
    assert fake.requests == []


def test_an_unsafe_base_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unencrypted") as caught:
        deerluma.Session(api_key="k", base_url="http://api.example.com")
    assert isinstance(caught.value, deerluma.DeerLumaError) and isinstance(caught.value, ValueError)


async def test_a_closed_session_refuses_and_says_what_to_do(fake: FakeDeerAPI) -> None:
    task_id = fake.add_generation(duration=0)
    async with deerluma.Session(api_key=fake.api_key, base_url=fake.url) as s:
        await s.get_generation(task_id)
    with pytest.raises(ConfigurationError, match="closed: make a new one"):
        await s.get_generation(task_id)
    assert len(fake.requests) == 1


# The first loop's pool is left open, as the user who makes this mistake leaves it.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_session_reused_in_another_event_loop_says_what_to_do() -> None:
    import asyncio

    async def serve_and_use(s: deerluma.Session, fake: FakeDeerAPI) -> None:
        await s.get_generation(fake.add_generation(duration=0))

    async def first() -> tuple[deerluma.Session, str]:
        async with FakeDeerAPI() as fake:
            s = deerluma.Session(api_key=fake.api_key, base_url=fake.url)
            await serve_and_use(s, fake)
            return s, fake.url

    s, _ = asyncio.run(first())

    async def second() -> None:
        async with FakeDeerAPI() as fake:
            with pytest.raises(ConfigurationError, match="another event loop"):
                await serve_and_use(s, fake)

    asyncio.run(second())


def test_an_argument_error_names_its_arguments_in_fields() -> None:
    with pytest.raises(deerluma.ArgumentError) as caught:
        deerluma.Session(api_key="k" * 20, max_rps=-1)
    error = caught.value
    assert (error.arguments, error.value) == ({"max_rps": "max_rps"}, -1)
    assert str(error) == "max_rps must be a positive number, got -1"
    assert error.spelled({"max_rps": "MAX"}) == "MAX must be a positive number, got -1"
    from deerluma._create import build_create_body

    with pytest.raises(deerluma.ArgumentError) as caught:
        build_create_body("p", loop=True, end_image="http://a/b.png")
    assert str(caught.value).startswith("loop=True cannot be combined with end_image")
    assert caught.value.spelled({"loop": "-l"}).startswith("-l cannot be combined with end_image")
