"""Typed, immutable views of a Dream Machine generation."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

import attrs

__all__ = ["Generation", "GenerationState", "Media", "Video"]

_EMPTY: Mapping[str, object] = MappingProxyType({})


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


@attrs.frozen
class Media:
    """A file the generation produced (thumbnail, last frame, raw video)."""

    url: str | None = None
    width: int | None = None
    height: int | None = None


@attrs.frozen
class Video(Media):
    """The generated video; `download_url` is a presigned link that expires after about an hour."""

    download_url: str | None = None
    duration: float | None = None


@attrs.frozen
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
    raw: Mapping[str, object] = attrs.field(default=_EMPTY, hash=False, repr=False)

    @property
    def is_terminal(self) -> bool:
        """True once the state is completed or failed."""
        return self.state.is_terminal

    @property
    def is_completed(self) -> bool:
        """True when the video is ready."""
        return self.state is GenerationState.COMPLETED
