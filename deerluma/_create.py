"""Building and checking create/extend requests, before anything is sent (pure)."""

from __future__ import annotations

from typing import Literal, TypedDict, Unpack, get_args

import yarl

from ._validate import check_task_id
from .exceptions import ArgumentError

__all__ = ["ASPECT_RATIOS", "MAX_PROMPT_CHARS", "AspectRatio", "CreateOptions", "build_create_body"]

AspectRatio = Literal["1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21"]
"""The aspect ratios the gateway documents (a type checker catches a bad one)."""
#: The same, as a set for checking at run time.
ASPECT_RATIOS = frozenset(get_args(AspectRatio))
MAX_PROMPT_CHARS = 5000


def _check_url(name: str, url: str) -> str:
    parsed = yarl.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ArgumentError(f"{{{name}}} must be an http(s) URL, got {url!r}", [name], value=url)
    return url


class CreateOptions(TypedDict, total=False):
    """What a create request may carry besides the prompt; None means "not sent"."""

    aspect_ratio: AspectRatio | None
    loop: bool | None
    model: str | None  # e.g. "ray-2"
    resolution: str | None  # e.g. "720p"
    duration: str | None  # e.g. "5s"
    start_image: str | None  # URL: keyframes.frame0
    end_image: str | None  # URL: keyframes.frame1
    callback_url: str | None


def build_create_body(
    prompt: str, *, extend: str | None = None, **options: Unpack[CreateOptions]
) -> dict[str, object]:
    """The JSON body of `POST /dream-machine/v1/generations`; ValueError if it cannot be right.

    `extend` is the task id of a generation to continue (its last frame becomes frame0).
    """
    unknown = set(options) - set(CreateOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown create option(s): {', '.join(sorted(unknown))}")
    aspect_ratio = options.get("aspect_ratio")
    loop = options.get("loop")
    start_image = options.get("start_image")
    end_image = options.get("end_image")
    callback_url = options.get("callback_url")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt is {len(prompt)} characters; the API takes {MAX_PROMPT_CHARS}")
    if aspect_ratio is not None and aspect_ratio not in ASPECT_RATIOS:
        known = ", ".join(sorted(ASPECT_RATIOS))
        raise ArgumentError(
            f"{{aspect_ratio}} {aspect_ratio!r} is not one of {known}",
            ["aspect_ratio"],
            value=aspect_ratio,
        )
    if loop and end_image is not None:
        raise ArgumentError(
            "{loop} cannot be combined with {end_image}: a loop ends where it starts",
            {"loop": "loop=True", "end_image": "end_image"},
        )
    if extend is not None and start_image is not None:
        raise ValueError("extend_generation continues the earlier video; it takes no start_image")
    body: dict[str, object] = {"prompt": prompt}
    if callback_url is not None:
        _check_url("callback_url", callback_url)
    plain = ("aspect_ratio", "loop", "model", "resolution", "duration", "callback_url")
    body.update(
        (key, value) for key, value in options.items() if key in plain and value is not None
    )
    keyframes: dict[str, object] = {}
    if extend is not None:
        keyframes["frame0"] = {"type": "generation", "id": check_task_id(extend)}
    elif start_image is not None:
        keyframes["frame0"] = {"type": "image", "url": _check_url("start_image", start_image)}
    if end_image is not None:
        keyframes["frame1"] = {"type": "image", "url": _check_url("end_image", end_image)}
    if keyframes:
        body["keyframes"] = keyframes
    return body
