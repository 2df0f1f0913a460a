"""Property tests: no input crashes decoding, and no task id escapes its path segment."""

from __future__ import annotations

import json

import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deerluma
from deerluma import DeerLumaError, Generation, decode_generation

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "id",
    "state",
    "prompt",
    "created_at",
    "video",
    "video_raw",
    "thumbnail",
    "last_frame",
    "queue_state",
    "estimate_wait_seconds",
    "failure_reason",
    "fail_reason",
    "liked",
    "assets",
    "request",
]
generation_like = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=20)},
    optional={name: json_values for name in FIELDS[1:]},
)
statuses = st.sampled_from([200, 201, 301, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504])
content_types = st.sampled_from(["application/json", "text/html", "text/plain", ""])


def _decodes_or_raises_ours(status: int, headers: dict[str, str], body: bytes) -> None:
    try:
        result = decode_generation(status, headers, body)
    except DeerLumaError:
        return
    assert isinstance(result, Generation)
    assert 200 <= status < 300


@settings(max_examples=300, deadline=None)
@given(status=statuses, content_type=content_types, body=st.binary(max_size=300))
def test_any_bytes_give_a_generation_or_our_error(
    status: int, content_type: str, body: bytes
) -> None:
    _decodes_or_raises_ours(status, {"Content-Type": content_type}, body)


@settings(max_examples=75, deadline=None)
@given(status=statuses, value=json_values)
def test_any_json_value_gives_a_generation_or_our_error(status: int, value: object) -> None:
    _decodes_or_raises_ours(
        status, {"Content-Type": "application/json"}, json.dumps(value).encode()
    )


@settings(max_examples=75, deadline=None)
@given(body=generation_like)
def test_any_generation_shaped_body_gives_a_generation_or_decode_error(
    body: dict[str, object],
) -> None:
    try:
        g = decode_generation(200, {}, json.dumps(body).encode(), task_id=str(body["id"]))
    except deerluma.DecodeError:
        return
    assert g.id == body["id"]
    assert g.raw == body
    assert isinstance(g.state, deerluma.GenerationState)


SESSION = deerluma.Session(api_key="k", base_url="https://api.example.com/proxy")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task_id=st.text(max_size=60))
def test_any_task_id_is_safely_quoted_or_refused(task_id: str) -> None:
    try:
        url = SESSION.generation_url(task_id)
    except ValueError:
        return
    reparsed = yarl.URL(str(url))
    assert reparsed.host == "api.example.com"
    assert reparsed.parts == ("/", "proxy", "dream-machine", "v1", "generations", task_id)
    assert not reparsed.query_string
    assert not reparsed.fragment


async def _request_each(ids: list[str]) -> None:
    from deerluma.testing import FakeDeerAPI

    async with (
        FakeDeerAPI() as fake,
        deerluma.Session(api_key=fake.api_key, base_url=fake.url, max_retries=0) as s,
    ):
        for task_id in ids:
            fake.requests.clear()
            try:
                await s.get_generation(task_id)
            except ValueError:
                assert fake.requests == []  # refused before sending
                continue
            except deerluma.NotFoundError:
                pass
            (seen,) = fake.requests
            assert seen.path == f"/dream-machine/v1/generations/{task_id}"


@settings(max_examples=15, deadline=None)
@given(ids=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=20))
def test_over_a_real_socket_a_task_id_reaches_exactly_its_own_path(ids: list[str]) -> None:
    import asyncio

    asyncio.run(_request_each(ids))


plain_media = st.fixed_dictionaries(
    {},
    optional={
        "url": st.none() | st.text(max_size=10) | st.integers(),
        "width": st.none() | st.integers() | st.floats() | st.booleans(),
        "height": st.none() | st.integers() | st.text(max_size=3),
        "download_url": st.none() | st.text(max_size=10),
        "duration": st.none() | st.floats() | st.integers() | st.text(max_size=4),
        "palette": json_values,
    },
)
plain_like = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=20),
        "state": st.sampled_from(["pending", "completed", "dreaming", "odd"]) | json_values,
    },
    optional={
        "prompt": st.none() | st.text(max_size=10) | st.integers(),
        "created_at": st.none()
        | st.sampled_from(["0001-01-01T00:00:00Z", "2024-07-01T12:00:00.123456Z", "soon"])
        | st.integers(0, 2**31)
        | st.booleans(),
        "video": st.none() | plain_media | st.text(max_size=10),
        "video_raw": st.none() | plain_media,
        "thumbnail": st.none() | plain_media | st.lists(st.integers(), max_size=2),
        "last_frame": st.none() | plain_media,
        "queue_state": json_values,
        "estimate_wait_seconds": st.none() | st.floats() | st.integers() | st.text(max_size=4),
        "failure_reason": st.none() | st.text(max_size=10) | st.booleans(),
        "liked": st.none() | st.booleans() | st.integers(0, 1),
    },
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=plain_like)
def test_the_plain_decoding_path_agrees_with_the_converter(body: dict[str, object]) -> None:
    # The fast path for usual bodies must build exactly what the converter builds, and step
    # aside (None) for anything it would not take as it is.
    from deerluma._decode import _CONVERTER, _plain_generation

    try:
        expected: Generation | Exception = _CONVERTER.structure(body, Generation)
    except Exception as exc:  # the converter refuses it: the plain path must not take it
        expected = exc
    plain = _plain_generation(body)
    if isinstance(expected, Exception):
        assert plain is None
    elif plain is not None:
        assert plain == expected


@settings(max_examples=60, deadline=None)
@given(value=plain_media)
def test_the_plain_media_path_agrees_with_the_converter(value: dict[str, object]) -> None:
    from cattrs.gen import make_dict_structure_fn

    from deerluma import Media, Video
    from deerluma._decode import _CONVERTER

    for cls in (Media, Video):
        checked = make_dict_structure_fn(cls, _CONVERTER)  # every field through its hook
        try:
            expected: object = checked(value, cls)
        except Exception as exc:
            expected = type(exc)
        try:
            got: object = _CONVERTER.get_structure_hook(cls)(value, cls)
        except Exception as exc:
            got = type(exc)
        assert got == expected
