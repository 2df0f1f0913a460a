"""Pure decoding: (status, headers, body) -> Generation, or a typed error.

Nothing here does I/O, so every response shape can be tested from recorded
samples without a server.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._models import Generation, GenerationState, Media, Unread, Video
from ._throttle import classify, header
from .exceptions import (
    APIError,
    AuthenticationError,
    DecodeError,
    NotFoundError,
    RateLimitError,
    ServerError,
)

__all__ = [
    "MAX_BODY_BYTES",
    "decode_error",
    "decode_generation",
    "excerpt",
    "make_converter",
    "parse_retry_after",
]

#: A generation body is a few KiB; anything past this is not one.
MAX_BODY_BYTES = 4 * 1024 * 1024

_ZERO_DATE_YEAR = 1
_EXCERPT_CHARS = 200
_MARKUP = re.compile(rb"\s*<")
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {value!r:.40}")


def _lenient_float(value: object, _: type) -> float:
    if isinstance(value, bool):
        raise TypeError("expected a number, got a boolean")
    if isinstance(value, int | float | str):
        # Some gateways quote numbers; a non-numeric string still fails here.
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    raise TypeError(f"expected a number, got {type(value).__name__}")


def _strict_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _state(value: object, _: type) -> GenerationState:
    return GenerationState(value) if isinstance(value, str) else GenerationState.UNKNOWN


def _datetime(value: object, _: type) -> datetime | None:
    if isinstance(value, bool):
        raise TypeError("expected a date, got a boolean")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str):
        raise TypeError(f"expected a date, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None  # a date we cannot read is not worth losing the generation over
    if parsed.year == _ZERO_DATE_YEAR:
        return None  # Go's zero time: "not set"
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _is_optional(type_: object) -> bool:
    args = get_args(type_)
    return get_origin(type_) in (Union, UnionType) and len(args) == 2 and NoneType in args


_Hook = Callable[[object, object], object]


def _optional_hook(type_: object, converter: cattrs.Converter) -> _Hook:
    # cattrs' generic Optional handling dispatches on every call; decoding is on
    # the hot path of batch polling, so resolve the inner hook once.
    inner = next(arg for arg in get_args(type_) if arg is not NoneType)
    hook = converter.get_structure_hook(inner)

    def structure(value: object, _: object) -> object:
        return None if value is None else hook(value, inner)

    return structure


def make_converter() -> cattrs.Converter:
    """Build the one converter that turns normalized bodies into models, strictly typed."""
    converter = cattrs.Converter()
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _lenient_float)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(GenerationState, _state)
    converter.register_structure_hook(datetime, _datetime)
    # Untyped fields (queue_state) pass through; an exact match, not a subclass one.
    converter.register_structure_hook_func(lambda t: t is object, lambda value, _: value)
    converter.register_structure_hook_factory(_is_optional, _optional_hook)
    for cls in (Media, Video):
        converter.register_structure_hook(cls, _media_hook(cls, converter))
    # `raw` is the body itself, set after structuring; a body key named "raw" is not it.
    generation = make_dict_structure_fn(Generation, converter, _raw=override(omit=True))
    converter.register_structure_hook(Generation, generation)
    return converter


def _media_hook(cls: type[Media], converter: cattrs.Converter) -> _Hook:
    from_dict = make_dict_structure_fn(cls, converter)  # extra keys (palette, ...) ignored
    names = tuple(f.name for f in attrs.fields(cls))
    assert names in (("url", "width", "height"), _VIDEO_FIELDS), names
    timed = names == _VIDEO_FIELDS

    def structure(value: object, _: object) -> object:
        if type(value) is not dict:  # a plain dict from json.loads is the usual case
            if isinstance(value, str):
                return cls(url=value)  # the official shape's assets are plain URLs
            if not isinstance(value, Mapping):
                raise TypeError(f"expected an object or a URL, got {type(value).__name__}")
            return from_dict(value, cls)
        # Batches decode thousands of these: values already of their exact type (the usual
        # case) are taken as they are, in field order; anything else goes through the
        # converter's checks.
        get = value.get
        url, width, height = get("url"), get("width"), get("height")
        if (
            (url is not None and type(url) is not str)
            or (width is not None and type(width) is not int)
            or (height is not None and type(height) is not int)
        ):
            return from_dict(value, cls)
        if not timed:
            return cls(url, width, height)
        link, duration = get("download_url"), get("duration")
        if (link is not None and type(link) is not str) or (
            duration is not None and (type(duration) is not float or not math.isfinite(duration))
        ):
            return from_dict(value, cls)
        return Video(url, width, height, link, duration)

    return structure


#: Video's fields, in order (the plain path above builds it positionally).
_VIDEO_FIELDS = ("url", "width", "height", "download_url", "duration")


_CONVERTER = make_converter()
#: Generation's media fields, in field order, with their hooks.
_MEDIA_FIELDS = tuple(
    (name, _CONVERTER.get_structure_hook(cls))
    for name, cls in (
        ("video", Video),
        ("video_raw", Media),
        ("thumbnail", Media),
        ("last_frame", Media),
    )
)


def _plain_generation(fields: Mapping[str, object]) -> Generation | None:
    """The usual body (a dict from json.loads, each value of its exact type) as a Generation.

    Batches decode thousands of these, and the converter's per-field dispatch
    is most of the cost. Anything unusual returns None and goes the
    converter's way, with its checks and its messages.
    """
    if type(fields) is not dict:
        return None
    get = fields.get
    id_, state, prompt, created = get("id"), get("state"), get("prompt"), get("created_at")
    estimate, failure, liked = get("estimate_wait_seconds"), get("failure_reason"), get("liked")
    if (
        type(id_) is not str
        or type(state) is not str
        or (prompt is not None and type(prompt) is not str)
        or (created is not None and type(created) is not str)
        or (failure is not None and type(failure) is not str)
        or (liked is not None and type(liked) is not bool)
    ):
        return None
    if estimate is not None:
        if type(estimate) is int and abs(estimate) < 2**53:  # seconds are often whole
            estimate = float(estimate)
        elif type(estimate) is not float or not math.isfinite(estimate):
            return None
    media: list[Any] = []
    for name, hook in _MEDIA_FIELDS:
        value = get(name)
        if value is not None:
            if type(value) is not dict:
                return None
            try:
                value = hook(value, None)
            except Exception:  # the converter's way names the field and the fault
                return None
        media.append(value)
    video, video_raw, thumbnail, last_frame = media
    return Generation(
        id_,
        _state(state, GenerationState),
        prompt,
        None if created is None else _datetime(created, datetime),
        video,
        video_raw,
        thumbnail,
        last_frame,
        get("queue_state"),
        estimate,
        failure,
        liked,
    )


def excerpt(body: bytes | str, limit: int = _EXCERPT_CHARS) -> str:
    """A short single-line preview of a body, for error messages."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _looks_like_html(headers: Mapping[str, str], body: bytes) -> bool:
    content_type = (header(headers, "Content-Type") or "").lower()
    return "html" in content_type or _MARKUP.match(body) is not None


def _html_title(body: bytes) -> str:
    match = _TITLE.search(body)
    title = excerpt(match.group(1), 80) if match else ""
    return f"an HTML page ({title})" if title else "an HTML page"


def _json(body: bytes) -> object:
    return json.loads(body.decode("utf-8"))


def _error_fields(payload: object) -> tuple[str | None, str | None]:
    """(message, code) from any of the error shapes gateways send."""
    if not isinstance(payload, Mapping):
        return None, None
    error = payload.get("error")
    if isinstance(error, Mapping):
        code = error.get("code") if error.get("code") is not None else error.get("type")
        return _text(error.get("message")), _text(code)
    if isinstance(error, str):
        return error, _text(payload.get("code"))
    detail = payload.get("detail")
    if isinstance(detail, Mapping):
        message = detail.get("reason") or detail.get("message") or detail.get("msg")
        return _text(message), _text(detail.get("code"))
    if isinstance(detail, list):
        parts = [_text(d.get("msg")) if isinstance(d, Mapping) else _text(d) for d in detail]
        return "; ".join(p for p in parts if p) or None, None
    if detail is not None:
        return _text(detail), _text(payload.get("code"))
    return _text(payload.get("message")), _text(payload.get("code"))


def _text(value: object) -> str | None:
    if value is None or isinstance(value, Mapping | list):
        return None
    return str(value)


def decode_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    task_id: str | None = None,
    now: datetime | None = None,
) -> APIError:
    """The typed APIError for an error response, whatever shape its body has."""
    message: str | None = None
    code: str | None = None
    if _looks_like_html(headers, body):
        message = f"the server answered with {_html_title(body)}"
    else:
        try:
            message, code = _error_fields(_json(body))
        except (ValueError, UnicodeDecodeError):
            message = None
    if 300 <= status < 400:
        where = header(headers, "Location") or "an unknown place"
        message = f"the API redirected to {where}; set base_url to the final address"
    message = message or (excerpt(body, 120) if body.strip() else "no error message")
    preview = excerpt(body)
    if status == 429:
        retry_after = parse_retry_after(header(headers, "Retry-After"), now)
        wall = None if now is None else now.timestamp()
        throttle = classify(message, headers, retry_after, wall=wall)
        return RateLimitError(
            status,
            code,
            message,
            preview,
            retry_after=throttle.retry_after,
            task_id=task_id,
            kind=throttle.kind.value,
            limit=throttle.limit,
            window=throttle.window,
        )
    cls = _ERROR_CLASSES.get(status, ServerError if status >= 500 else APIError)
    return cls(status, code, message, preview, task_id=task_id)


_ERROR_CLASSES: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
}


def _normalize(body: Mapping[str, object]) -> Mapping[str, object]:
    """Map both body shapes (web-app and official Luma) onto Generation's fields.

    The web-app shape already has them: it is passed through without a copy,
    since decoding sits on the hot path of batch polling.
    """
    request = body.get("request")
    needs_mapping = (
        body.get("state") is None
        or "assets" in body
        or (body.get("failure_reason") is None and "fail_reason" in body)
        or (body.get("prompt") is None and isinstance(request, Mapping))
    )
    if not needs_mapping:
        return body
    fields = dict(body)
    assets = body.get("assets")
    if isinstance(assets, Mapping):
        fields["video"] = body.get("video") or assets.get("video")
        fields["thumbnail"] = body.get("thumbnail") or assets.get("image")
    if body.get("prompt") is None and isinstance(request, Mapping):
        fields["prompt"] = request.get("prompt")
    if body.get("failure_reason") is None:
        fields["failure_reason"] = body.get("fail_reason")
    if body.get("state") is None:
        fields["state"] = GenerationState.UNKNOWN.value
    return fields


def _structure(payload: object, task_id: str | None) -> Generation:
    if not isinstance(payload, Mapping):
        raise DecodeError(f"expected a JSON object, got {type(payload).__name__}", task_id=task_id)
    if not isinstance(payload.get("id"), str) or not payload["id"]:
        message, _ = _error_fields(payload)
        why = f": {message}" if message else ""
        raise DecodeError(f"the body is not a generation (no id){why}", task_id=task_id)
    fields = _normalize(payload)
    try:
        generation = _plain_generation(fields) or _CONVERTER.structure(fields, Generation)
    except cattrs.BaseValidationError as exc:  # names each failing field and why
        details = "; ".join(cattrs.transform_error(exc))
        raise DecodeError(
            f"the body is not a valid generation: {details}", task_id=task_id
        ) from exc
    if task_id is not None and generation.id != task_id:
        raise DecodeError(
            f"asked for generation {task_id!r} but the server answered with "
            f"{generation.id!r}; a proxy may have mixed up responses",
            task_id=task_id,
            transient=True,
        )
    return generation


def decode_generation(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    task_id: str | None = None,
    now: datetime | None = None,
) -> Generation:
    """Turn one HTTP response into a Generation, or raise the matching DeerLumaError."""
    if status >= 300:
        raise decode_error(status, headers, body, task_id=task_id, now=now)
    if len(body) > MAX_BODY_BYTES:
        raise DecodeError(
            f"the body is {len(body)} bytes, more than a generation can be", task_id=task_id
        )
    if _looks_like_html(headers, body):
        raise DecodeError(
            f"expected JSON but got {_html_title(body)}; a proxy may be failing",
            body_excerpt=excerpt(body),
            task_id=task_id,
            transient=True,
        )
    try:
        payload = _json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(
            f"the body is not valid JSON ({exc}); it may have been cut off",
            body_excerpt=excerpt(body),
            task_id=task_id,
            transient=True,
        ) from exc
    try:
        generation = _structure(payload, task_id)
    except DecodeError as exc:
        exc.body_excerpt = excerpt(body)
        raise
    # Keep the body as bytes, read again only if someone looks (see Unread).
    object.__setattr__(generation, "_raw", Unread(body))
    return generation
