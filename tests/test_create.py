"""Create, extend and generate: request bodies, validation, and no blind resends."""

from __future__ import annotations

import pytest

import deerluma
from deerluma import CreateOutcomeUnknown, GenerationState, RateLimitError, TransportError
from deerluma.testing import FakeClock, FakeDeerAPI, Fault


async def test_create_sends_the_documented_body_and_decodes_the_answer(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    g = await session.create_generation(
        "a red fox in fresh snow",
        aspect_ratio="16:9",
        loop=False,
        model="ray-2",
        resolution="720p",
        duration="5s",
        start_image="https://example.com/start.jpg",
        end_image="https://example.com/end.jpg",
        callback_url="https://example.com/hook",
    )
    assert fake.created == [
        {
            "prompt": "a red fox in fresh snow",
            "aspect_ratio": "16:9",
            "loop": False,
            "model": "ray-2",
            "resolution": "720p",
            "duration": "5s",
            # The Session's token, which its callback handler asks for by default.
            "callback_url": f"https://example.com/hook?token={session.callback_token}",
            "keyframes": {
                "frame0": {"type": "image", "url": "https://example.com/start.jpg"},
                "frame1": {"type": "image", "url": "https://example.com/end.jpg"},
            },
        }
    ]
    assert g.state is GenerationState.PENDING
    assert g.prompt == "a red fox in fresh snow"
    assert g.raw["request"] == fake.created[0]
    assert "media_request" in g.raw


async def test_extend_continues_the_earlier_generation(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    earlier = fake.add_generation(duration=0)
    g = await session.extend_generation(earlier, "the fox runs into the forest")
    assert fake.created[-1] == {
        "prompt": "the fox runs into the forest",
        "keyframes": {"frame0": {"type": "generation", "id": earlier}},
    }
    assert g.id != earlier


async def test_generate_creates_then_waits_until_completed(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    seen: list[GenerationState] = []
    g = await session.generate("a heron takes flight", on_update=lambda g: seen.append(g.state))
    assert g.is_completed
    assert seen[0] is GenerationState.PENDING
    assert seen[-1] is GenerationState.COMPLETED
    assert len(fake.created) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "non-empty"),
        ({"prompt": "   "}, "non-empty"),
        ({"prompt": "x" * 5001}, "5000"),
        ({"prompt": "ok", "aspect_ratio": "2:1"}, "aspect_ratio"),
        ({"prompt": "ok", "loop": True, "end_image": "https://e.com/a.jpg"}, "loop"),
        ({"prompt": "ok", "start_image": "file:///etc/passwd"}, "start_image"),
        ({"prompt": "ok", "callback_url": "not a url"}, "callback_url"),
    ],
)
async def test_invalid_create_arguments_raise_before_sending(
    fake: FakeDeerAPI, session: deerluma.Session, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await session.create_generation(**kwargs)  # type: ignore[arg-type]
    assert fake.requests == []


async def test_extend_rejects_a_bad_task_id(fake: FakeDeerAPI, session: deerluma.Session) -> None:
    with pytest.raises(ValueError, match="invalid task id"):
        await session.extend_generation("../x", "more")
    assert fake.requests == []


@pytest.mark.parametrize(
    "fault", [Fault.error(502), Fault.error(500), Fault.reset(), Fault.truncated(), Fault.html()]
)
async def test_create_is_never_resent_after_sending(
    fake: FakeDeerAPI, session: deerluma.Session, fault: Fault
) -> None:
    fake.inject(fault)
    with pytest.raises(CreateOutcomeUnknown, match="may or may not have been created"):
        await session.create_generation("an owl at dusk")
    assert len([r for r in fake.requests if r.method == "POST"]) == 1


async def test_create_rate_limited_is_reported_not_resent(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    fake.inject(Fault.rate_limit(3))
    with pytest.raises(RateLimitError):
        await session.create_generation("an owl at dusk")
    assert len(fake.requests) == 1
    assert fake.created == []


async def test_create_is_retried_when_it_never_left(clock: FakeClock) -> None:
    async with deerluma.Session(api_key="k", base_url="http://127.0.0.1:9", sleep=clock.sleep) as s:
        with pytest.raises(TransportError, match="could not connect") as info:
            await s.create_generation("an owl at dusk")
    assert info.value.request_sent is False
    assert len([s for s in clock.sleeps if s >= 0.25]) == 3  # backoff, not the rate gate
