"""Which kind of 429 an answer is: pure, from its status line's companions (message, headers).

Gateways send 429 for different reasons, and each asks for a different response:

- a **named limit**: the message or headers say how many requests the key may
  make in how long (new-api: ``您已达到请求数限制：1分钟内最多请求600次``;
  ``X-RateLimit-Limit`` with a window). The Session paces to it.
- **upstream**: the gateway's own supplier is saturated (new-api rewrites every
  upstream 429 on task routes to ``当前分组上游负载已饱和，请稍后再试``). It says
  nothing about this key's rate: only the request that got it waits.
- **rate**: a plain "too many requests". Probably our rate; the rate gate cuts,
  and undoes the cut if the 429s do not become fewer (then it was stray).
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Mapping

import attrs

from .exceptions import RateLimitError

__all__ = ["Throttle", "ThrottleKind", "classify", "header"]


class ThrottleKind(enum.Enum):
    """Why a 429 came, as far as deerluma can tell."""

    #: The gateway named this key's limit (count per window): the Session paces to it.
    LIMIT = "limit"
    #: A plain 429, taken as this Session's own rate: the rate is cut.
    RATE = "rate"
    #: The gateway's upstream is saturated: not about this key's rate; only this request waits.
    UPSTREAM = "upstream"
    #: A plain 429 that cutting the rate did not make rarer: stray, so only this request waits.
    STRAY = "stray"


@attrs.frozen
class Throttle:
    """What one 429 said: its kind, the limit it named, and when to ask again."""

    kind: ThrottleKind
    #: Requests allowed per `window` seconds, when the gateway named them.
    limit: int | None = None
    window: float | None = None
    #: Seconds to wait, from Retry-After or a reset header.
    retry_after: float | None = None

    @classmethod
    def of(cls, error: RateLimitError) -> Throttle:
        """What a decoded 429 said."""
        return cls(ThrottleKind(error.kind), error.limit, error.window, error.retry_after)

    @property
    def ours(self) -> bool:
        """Whether slowing this Session down is the cure."""
        return self.kind in (ThrottleKind.LIMIT, ThrottleKind.RATE)


_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "秒": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "分钟": 60.0, "分": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "小时": 3600.0,
    "d": 86400.0, "day": 86400.0, "天": 86400.0,
}  # fmt: skip
_UNIT = r"(秒|分钟|分|小时|天|seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|[smhd])\b"
_UNIT_ZH = r"(秒|分钟|分|小时|天)"

#: new-api: "1分钟内最多请求600次" (and the "total" variant "...，包括失败次数").
_ZH_LIMIT = re.compile(r"(\d+(?:\.\d+)?)\s*" + _UNIT_ZH + r"\s*内\s*最多\s*请求\s*(\d+)\s*次")
#: "at most 600 requests in 1 minute", "600 requests per minute", "60 requests / 10s",
#: "limit of 600 requests within 60 seconds".
_EN_COUNT_FIRST = re.compile(
    r"(\d+)\s*(?:requests?|reqs?|calls?)\s*(?:per|/|in|within|every|each|a|an)\s*"
    r"(?:(?:the\s+)?(?:last\s+)?(\d+(?:\.\d+)?)\s*)?" + _UNIT,
    re.IGNORECASE,
)
#: OpenAI's "... on requests per min (RPM): Limit 3, Used 3, Requested 1".
_EN_RPM = re.compile(
    r"requests per (min|minute|day|second)\b.*?limit:?\s*(\d+)", re.IGNORECASE | re.DOTALL
)
_UPSTREAM = re.compile(
    r"上游|负载已饱和|已饱和|并发上限|upstream|saturated|overloaded|over capacity",
    re.IGNORECASE,
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_EPOCH = 1e9  # a reset value beyond this is a Unix time, not seconds from now


def classify(
    message: str | None,
    headers: Mapping[str, str],
    retry_after: float | None,
    *,
    wall: float | None = None,
) -> Throttle:
    """The kind of one 429 answer, from its error message, headers and Retry-After.

    `wall` is the Unix time now (for reset headers given as Unix times).
    """
    text = message or ""
    reset = _reset(headers, time.time() if wall is None else wall)
    wait = retry_after if retry_after is not None else reset
    named = _named_limit(text) or _header_limit(headers)
    if named is not None:
        limit, window = named
        # new-api's "total" variant (包括失败次数) counts failed requests too: so do our
        # counts of what was sent.
        return Throttle(ThrottleKind.LIMIT, limit, window, wait)
    if _UPSTREAM.search(text):
        return Throttle(ThrottleKind.UPSTREAM, retry_after=wait)
    return Throttle(ThrottleKind.RATE, retry_after=wait)


def _unit(name: str) -> float:
    name = name.lower()
    return _UNITS.get(name) or _UNITS.get(name.rstrip("s"), 1.0)


def _named_limit(text: str) -> tuple[int, float] | None:
    """A count per window named in an error message."""
    if match := _ZH_LIMIT.search(text):
        amount, unit, count = match.groups()
        return _valid(int(count), float(amount) * _unit(unit))
    if match := _EN_COUNT_FIRST.search(text):
        count, amount, unit = match.groups()
        return _valid(int(count), float(amount or 1) * _unit(unit))
    if match := _EN_RPM.search(text):
        unit, count = match.groups()
        return _valid(int(count), _unit(unit))
    return None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, case-insensitively whatever the mapping (aiohttp's, or a plain dict)."""
    value = headers.get(name)  # a case-insensitive mapping (aiohttp's) answers here
    if value is not None:
        return value
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def _header(headers: Mapping[str, str], *names: str) -> str | None:
    """The first of these headers present and not blank, stripped."""
    for name in names:
        value = header(headers, name)
        if value and value.strip():
            return value.strip()
    return None


def _header_limit(headers: Mapping[str, str]) -> tuple[int, float] | None:
    """``X-RateLimit-Limit`` with a window (``RateLimit-Policy: 600;w=60``, or a window header)."""
    policy = _header(headers, "RateLimit-Policy", "X-RateLimit-Policy")
    if policy and (match := re.match(r"\s*(\d+)\s*;\s*w\s*=\s*(\d+(?:\.\d+)?)", policy)):
        return _valid(int(match[1]), float(match[2]))
    count = _header(headers, "X-RateLimit-Limit", "RateLimit-Limit", "X-RateLimit-Limit-Requests")
    window = _header(headers, "X-RateLimit-Window", "X-RateLimit-Interval", "RateLimit-Window")
    if count is None or not count.split(",")[0].strip().isdigit() or window is None:
        return None
    seconds = _seconds(window)
    return None if seconds is None else _valid(int(count.split(",")[0]), seconds)


def _reset(headers: Mapping[str, str], wall: float) -> float | None:
    """Seconds until the limit resets, from ``X-RateLimit-Reset`` and its kin."""
    value = _header(headers, "X-RateLimit-Reset-Requests", "X-RateLimit-Reset", "RateLimit-Reset")
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return _seconds(value)
    if number > _EPOCH:
        return max(0.0, number - wall)
    return max(0.0, number)


def _seconds(value: str) -> float | None:
    """A duration: plain seconds, or Go's form ("6m0s", "20ms")."""
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(a + u for a, u in parts) != value.replace(" ", ""):
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(amount) * scale[unit] for amount, unit in parts)


def _valid(count: int, window: float) -> tuple[int, float] | None:
    return (count, window) if count > 0 and window > 0 else None
