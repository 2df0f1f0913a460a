"""Building and checking create/extend requests, before anything is sent (pure)."""

from __future__ import annotations

import yarl

from ._validate import check_task_id

__all__ = ["ASPECT_RATIOS", "MAX_PROMPT_CHARS", "build_create_body"]

#: The aspect ratios the gateway documents.
ASPECT_RATIOS = frozenset({"1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21"})
MAX_PROMPT_CHARS = 5000


def _check_url(name: str, url: str) -> str:
    parsed = yarl.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{name} must be an http(s) URL, got {url!r}")
    return url


def build_create_body(
    prompt: str,
    *,
    aspect_ratio: str | None = None,
    loop: bool | None = None,
    model: str | None = None,
    resolution: str | None = None,
    duration: str | None = None,
    start_image: str | None = None,
    end_image: str | None = None,
    callback_url: str | None = None,
    extend: str | None = None,
) -> dict[str, object]:
    """The JSON body of `POST /dream-machine/v1/generations`; ValueError if it cannot be right.

    `extend` is the task id of a generation to continue (its last frame becomes frame0).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt is {len(prompt)} characters; the API takes {MAX_PROMPT_CHARS}")
    if aspect_ratio is not None and aspect_ratio not in ASPECT_RATIOS:
        known = ", ".join(sorted(ASPECT_RATIOS))
        raise ValueError(f"aspect_ratio {aspect_ratio!r} is not one of {known}")
    if loop and end_image is not None:
        raise ValueError("loop=True cannot be combined with end_image: a loop ends where it starts")
    if extend is not None and start_image is not None:
        raise ValueError("extend_generation continues the earlier video; it takes no start_image")
    body: dict[str, object] = {"prompt": prompt}
    optional = {
        "aspect_ratio": aspect_ratio,
        "loop": loop,
        "model": model,
        "resolution": resolution,
        "duration": duration,
        "callback_url": None if callback_url is None else _check_url("callback_url", callback_url),
    }
    body.update({key: value for key, value in optional.items() if value is not None})
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
