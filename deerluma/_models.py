"""Typed, immutable views of a Dream Machine generation."""

from __future__ import annotations

import copy
import enum
import json
from collections.abc import Mapping
from datetime import datetime
from typing import NoReturn

import attrs

__all__ = ["Generation", "GenerationState", "Media", "Video"]


class RawBody(dict[str, object]):
    """A generation's body as received: a read-only dict (``json.dumps`` and pickle take it)."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a generation's raw body is read-only (copy it with dict(g.raw))")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def __reduce__(self) -> tuple[type[RawBody], tuple[dict[str, object]]]:
        return RawBody, (dict(self),)

    def __copy__(self) -> RawBody:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> RawBody:
        return RawBody(copy.deepcopy(dict(self), memo))


class Unread:
    """A body kept as its bytes until someone reads ``raw``: a parsed copy held by every
    result of a large batch costs memory, and garbage-collection time on every later poll."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body

    def parse(self) -> RawBody:
        value = json.loads(self.body.decode("utf-8"))
        return RawBody(value if isinstance(value, dict) else {})

    def __reduce__(self) -> tuple[type[Unread], tuple[bytes]]:
        return Unread, (self.body,)


def _body_of(raw: Mapping[str, object] | Unread) -> Mapping[str, object]:
    return raw.parse() if isinstance(raw, Unread) else raw


_EMPTY = RawBody()


class GenerationState(enum.StrEnum):
    """Where a generation is in its life; values the server adds later become UNKNOWN."""

    PENDING = "pending"
    QUEUED = "queued"
    PROCESSING = "processing"
    DREAMING = "dreaming"
    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def _missing_(cls, value: object) -> GenerationState:
        # A gateway may invent new states (or change case); never crash on them.
        if isinstance(value, str):
            lowered = value.strip().lower()
            for member in cls:
                if member.value == lowered:
                    return member
        return cls.UNKNOWN

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED and FAILED: polling it again will not change it."""
        return self in (GenerationState.COMPLETED, GenerationState.FAILED)


def _short(value: object, limit: int = 60) -> str:
    """A value for a repr: URLs without their (long, presigned) query, long text cut."""
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, datetime):
        return repr(value.isoformat())
    if isinstance(value, str):
        if "://" in value:
            head, _, tail = value.partition("?")
            scheme, _, rest = head.partition("://")
            host, _, path = rest.partition("/")
            name = path.rsplit("/", 1)[-1]
            value = f"{scheme}://{host}/" + ("…/" if "/" in path else "") + name
            value += "?…" if tail else ""
        elif len(value) > limit:
            value = value[: limit - 1] + "…"
        return repr(value)
    return repr(value)


def _repr(obj: object, fields: tuple[str, ...]) -> str:
    """`Name(field=value, ...)` of the fields that are set, each kept short."""
    parts = (
        f"{name}={_short(value) if not isinstance(value, Media) else repr(value)}"
        for name in fields
        if (value := getattr(obj, name)) is not None
    )
    return f"{type(obj).__name__}({', '.join(parts)})"


@attrs.frozen(repr=False)
class Media:
    """A file the generation produced (thumbnail, last frame, raw video)."""

    url: str | None = None
    width: int | None = None
    height: int | None = None

    def __repr__(self) -> str:
        return _repr(self, ("url", "width", "height"))


@attrs.frozen(repr=False)
class Video(Media):
    """The generated video; `download_url` is a presigned link that expires after about an hour."""

    download_url: str | None = None
    duration: float | None = None

    def __repr__(self) -> str:
        return _repr(self, ("url", "download_url", "width", "height", "duration"))


_SHOWN = (
    "id",
    "state",
    "prompt",
    "created_at",
    "estimate_wait_seconds",
    "failure_reason",
    "video",
    "video_raw",
    "thumbnail",
    "last_frame",
)


@attrs.frozen(repr=False)
class Generation:
    """One video generation as the API reported it.

    `raw` keeps the body exactly as received, so fields this version does not
    model (``media_type``, ``request``, ...) are never lost.
    """

    id: str
    state: GenerationState
    prompt: str | None = None
    created_at: datetime | None = None
    video: Video | None = None
    video_raw: Media | None = None
    thumbnail: Media | None = None
    last_frame: Media | None = None
    queue_state: object = attrs.field(default=None, hash=False)
    estimate_wait_seconds: float | None = None
    failure_reason: str | None = None
    liked: bool | None = None
    _raw: Mapping[str, object] | Unread = attrs.field(
        default=_EMPTY, alias="raw", hash=False, repr=False, eq=_body_of
    )

    def __repr__(self) -> str:
        # Short: presigned URLs run to hundreds of characters each (their query is left out).
        return _repr(self, _SHOWN)

    @property
    def raw(self) -> Mapping[str, object]:
        """The body exactly as received: a read-only dict (``json.dumps(g.raw)`` works)."""
        raw = self._raw
        if isinstance(raw, Unread):
            raw = raw.parse()
            object.__setattr__(self, "_raw", raw)  # parsed once, when first read
        return raw

    @property
    def is_terminal(self) -> bool:
        """True once the state is completed or failed."""
        return self.state.is_terminal

    @property
    def is_completed(self) -> bool:
        """True when the video is ready."""
        return self.state is GenerationState.COMPLETED
