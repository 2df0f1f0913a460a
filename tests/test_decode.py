"""Pure decoding: recorded bodies in, Generations or typed errors out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from deerluma import (
    APIError,
    AuthenticationError,
    DecodeError,
    Generation,
    GenerationState,
    Media,
    NotFoundError,
    RateLimitError,
    ServerError,
    Video,
    decode_generation,
)
from deerluma._decode import decode_error, parse_retry_after

from .conftest import sample

JSON = {"Content-Type": "application/json"}


def test_seed_body_decodes_field_by_field() -> None:
    body = sample("seed_completed.json")
    g = decode_generation(200, JSON, body, task_id="32ec5549-7b7a-4111-a43b-445b3a89c8ef")
    base = (
        "https://storage.cdn-luma.com/lit_lite_inference_v1.6-xl/"
        "5bf08990-71ed-4a56-b531-2c2f02e18f51/"
    )
    tail = "video05a8efbcf1ba2498bb02aa9dcefab47f8.mp4"
    assert g.id == "32ec5549-7b7a-4111-a43b-445b3a89c8ef"
    assert g.state is GenerationState.COMPLETED
    assert g.is_completed and g.is_terminal
    assert g.prompt is not None and g.prompt.startswith("Please generate a video simulating")
    assert g.created_at == datetime(2024, 10, 15, 8, 56, 19, 325000, tzinfo=UTC)
    assert g.video == Video(
        url=base + "5f7ca010-7e0e-4faf-a654-f41ce735d0ff_watermarked_" + tail,
        width=752,
        height=1360,
        download_url=json.loads(body)["video"]["download_url"],
    )
    assert g.video_raw == Media(
        url=base + "0af7d264-0ab5-45f1-befb-e382c81d8023_" + tail,
        width=752,
        height=1360,
    )
    assert g.thumbnail == Media(
        url=base + "59ce5a3c-8fad-4735-94f7-243040c63a4e_video_0_thumb.jpg", width=752, height=1360
    )
    assert g.last_frame == Media(
        url=base + "0f434eba-2421-4abf-8a36-774abc3bf515_video_0_last_frame.jpg",
        width=752,
        height=1360,
    )
    assert g.queue_state is None
    assert g.estimate_wait_seconds is None
    assert g.failure_reason is None
    assert g.liked is None
    assert g.raw == json.loads(body)


def test_official_luma_shape_maps_assets_onto_media() -> None:
    g = decode_generation(200, JSON, sample("luma_official_completed.json"))
    assert g.state is GenerationState.COMPLETED
    assert g.video == Video(url="https://storage.cdn-luma.com/dream_machine/d1f6b1a8/video.mp4")
    assert g.thumbnail == Media(url="https://storage.cdn-luma.com/dream_machine/d1f6b1a8/thumb.jpg")
    assert g.prompt == "a deer in the snow"
    assert g.created_at == datetime(2025, 1, 20, 10, 15, 42, 123456, tzinfo=UTC)
    assert g.raw["model"] == "ray-2"


def test_dreaming_state_is_known_and_not_terminal() -> None:
    g = decode_generation(200, JSON, sample("luma_official_dreaming.json"))
    assert g.state is GenerationState.DREAMING
    assert not g.is_terminal
    assert g.video is None


def test_newer_body_keeps_extra_fields_in_raw() -> None:
    g = decode_generation(200, JSON, sample("new_shape_completed.json"))
    assert g.video is not None and g.video.duration == pytest.approx(5.04)
    assert g.prompt is None and g.liked is None and g.estimate_wait_seconds is None
    assert g.raw["media_type"] == "video"
    assert g.raw["thumbnail"]["palette"]["dominant"] == "#112233"  # type: ignore[index]
    assert g.created_at is not None and g.created_at.microsecond == 987654


def test_create_answer_with_zero_date_decodes() -> None:
    g = decode_generation(200, JSON, sample("create_answer.json"))
    assert g.state is GenerationState.PENDING
    assert g.created_at is None
    assert g.raw["request"] == {
        "prompt": "a lighthouse in a storm",
        "aspect_ratio": "16:9",
        "expand_prompt": True,
    }


def test_processing_body_carries_estimate_and_queue_state() -> None:
    g = decode_generation(200, JSON, sample("processing_hint.json"))
    assert g.estimate_wait_seconds == 42.0
    assert g.queue_state == {"position": 3}


def test_failed_body_reads_fail_reason_alias() -> None:
    g = decode_generation(200, JSON, sample("failed.json"))
    assert g.state is GenerationState.FAILED
    assert g.failure_reason == "prompt rejected by moderation"


@pytest.mark.parametrize("state", ["exploding", "", "COMPLETED ", 7, None])
def test_unknown_or_odd_state_decodes_to_unknown_or_member(state: object) -> None:
    g = decode_generation(200, JSON, json.dumps({"id": "x", "state": state}).encode())
    expected = GenerationState.COMPLETED if state == "COMPLETED " else GenerationState.UNKNOWN
    assert g.state is expected


@pytest.mark.parametrize("value", [12, 12.5, "12", None])
def test_estimate_accepts_int_float_string_or_null(value: object) -> None:
    g = decode_generation(
        200,
        JSON,
        json.dumps({"id": "x", "state": "pending", "estimate_wait_seconds": value}).encode(),
    )
    assert g.estimate_wait_seconds == (None if value is None else float(value))  # type: ignore[arg-type]


def test_generation_is_hashable_and_equal_by_value() -> None:
    body = sample("processing_hint.json")
    a, b = decode_generation(200, JSON, body), decode_generation(200, JSON, body)
    assert a == b
    assert hash(a) == hash(b)
    assert isinstance(a, Generation)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"id": "x", "state": "pend', "not valid JSON"),
        (b"[1, 2, 3]", "expected a JSON object"),
        (b'{"state": "pending"}', "no id"),
        (b'{"id": "x", "state": "pending", "video": {"width": "wide"}}', "$.video.width"),
        (b'{"id": "x", "state": "pending", "prompt": 12}', "$.prompt"),
        (b'{"id": "x", "state": "pending", "liked": "yes"}', "$.liked"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"id": "x", "state": "pending", "estimate_wait_seconds": NaN}', "$.estimate_wait"),
        (b'{"id": "x", "state": "pending", "estimate_wait_seconds": "inf"}', "$.estimate_wait"),
    ],
)
def test_malformed_bodies_raise_decode_error(body: bytes, why: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_generation(200, JSON, body, task_id="x")
    assert why in str(info.value)
    assert info.value.task_id == "x"


def test_html_page_with_200_is_a_decode_error_naming_the_page() -> None:
    with pytest.raises(DecodeError, match=r"HTML page \(504 Gateway Time-out\)"):
        decode_generation(200, {"Content-Type": "text/html"}, sample("error_proxy.html"))


def test_body_for_another_id_is_never_reported_as_ours() -> None:
    with pytest.raises(DecodeError, match="a proxy may have mixed up"):
        decode_generation(200, JSON, sample("seed_completed.json"), task_id="my-task")


@pytest.mark.parametrize(
    ("status", "file", "cls", "message", "code"),
    [
        (401, "error_openai_shape.json", AuthenticationError, "Invalid token", "invalid_api_key"),
        (404, "error_detail_string.json", NotFoundError, "Generation not found", None),
        (
            403,
            "error_detail_object.json",
            AuthenticationError,
            "quota exhausted",
            "insufficient_quota",
        ),
        (504, "error_proxy.html", ServerError, "504 Gateway Time-out", None),
        (400, "error_detail_object.json", APIError, "quota exhausted", "insufficient_quota"),
        (500, "error_openai_shape.json", ServerError, "Invalid token", "invalid_api_key"),
    ],
)
def test_error_shapes_map_to_typed_errors(
    status: int, file: str, cls: type[APIError], message: str, code: str | None
) -> None:
    with pytest.raises(cls) as info:
        decode_generation(status, {}, sample(file), task_id="t-1")
    err = info.value
    assert type(err) is cls
    assert err.status == status
    assert message in err.message
    assert err.code == code
    assert err.body_excerpt and len(err.body_excerpt) <= 200
    assert "t-1" in str(err)


def test_rate_limit_error_carries_retry_after() -> None:
    err = decode_error(429, {"retry-after": "7"}, b'{"error": {"message": "slow down"}}')
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 7.0
    assert "slow down" in str(err)


def test_error_without_body_still_explains_itself() -> None:
    err = decode_error(502, {}, b"")
    assert isinstance(err, ServerError)
    assert err.message == "no error message"


def test_redirect_is_an_error_not_followed() -> None:
    err = decode_error(302, {"Location": "https://elsewhere.example/x"}, b"")
    assert type(err) is APIError
    assert "elsewhere.example" in err.message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("5", 5.0),
        ("0.25", 0.25),
        ("-3", 0.0),
        ("Wed, 25 Nov 2026 12:00:30 GMT", 30.0),
        ("garbage", None),
        (None, None),
        ("nan", None),
    ],
)
def test_retry_after_parses_seconds_and_http_dates(
    header: str | None, expected: float | None
) -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now) == expected


def test_oversized_body_is_refused() -> None:
    with pytest.raises(DecodeError, match="more than a generation"):
        decode_generation(200, JSON, b" " * (4 * 1024 * 1024 + 1))


@pytest.mark.parametrize(
    ("media", "expected"),
    [
        ({"url": "u", "width": 752, "height": 1360}, Media("u", 752, 1360)),
        ({"url": "u", "width": 752.0, "height": 1360.0}, Media("u", 752, 1360)),  # coerced
        ({"url": None, "width": None}, Media()),
    ],
)
def test_media_values_of_exact_or_coercible_types_decode_alike(
    media: dict[str, object], expected: Media
) -> None:
    body = json.dumps({"id": "t", "state": "completed", "thumbnail": media}).encode()
    assert decode_generation(200, {}, body).thumbnail == expected


@pytest.mark.parametrize("video", [{"url": 5}, {"width": "wide"}, {"duration": "long"}])
def test_media_values_of_wrong_types_still_fail_with_their_field(video: dict[str, object]) -> None:
    body = json.dumps({"id": "t", "state": "completed", "video": video}).encode()
    with pytest.raises(DecodeError, match="video"):
        decode_generation(200, {}, body)


def test_a_non_finite_video_duration_fails_and_a_stray_one_on_a_thumbnail_is_ignored() -> None:
    body = b'{"id": "t", "state": "completed", "video": {"url": "u", "duration": 1e999}}'
    with pytest.raises(DecodeError, match="video"):
        decode_generation(200, {}, body)
    body = json.dumps({"id": "t", "state": "completed", "thumbnail": {"duration": "x"}}).encode()
    assert decode_generation(200, {}, body).thumbnail == Media()


def test_video_duration_may_be_quoted() -> None:
    body = json.dumps({"id": "t", "state": "completed", "video": {"duration": "5.04"}}).encode()
    video = decode_generation(200, {}, body).video
    assert video is not None and video.duration == 5.04


def test_raw_is_the_body_as_received_and_read_only() -> None:
    body = json.dumps({"id": "t", "state": "completed", "media_type": "video"}).encode()
    g = decode_generation(200, {}, body)
    assert g.raw["media_type"] == "video" and dict(g.raw) == json.loads(body)
    with pytest.raises(TypeError):
        g.raw["id"] = "other"  # type: ignore[index]


@pytest.mark.parametrize(
    "name",
    ["seed_completed.json", "new_shape_completed.json", "processing_hint.json", "failed.json"],
)
def test_usual_bodies_take_the_plain_path_and_decode_as_the_converter_does(name: str) -> None:
    from deerluma._decode import _CONVERTER, _normalize, _plain_generation

    fields = _normalize(json.loads(sample(name)))
    plain = _plain_generation(fields)
    assert plain is not None  # the fast path is the one batches take
    assert plain == _CONVERTER.structure(fields, Generation)
