"""Faults FakeDeerAPI can apply to a request: each kind a small class that knows its answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
from aiohttp import web

__all__ = [
    "DEFAULT_FAULT_MIX",
    "CutFault",
    "Fault",
    "LatencyFault",
    "MisrangedFault",
    "OversizedFault",
    "RedirectFault",
    "ResetFault",
    "StatusFault",
    "TruncatedFault",
    "WrongIdFault",
]

# A typed request key where aiohttp has them (3.14+), a namespaced string before that.
FAULT_KEY: Any = getattr(web, "RequestKey", lambda name, _: f"deerluma.{name}")("fault", str)
#: Where a misranged answer starts (None: it says nothing of where).
RANGE_KEY: Any = getattr(web, "RequestKey", lambda name, _: f"deerluma.{name}")("range", object)
#: new-api's answer on task routes when its upstream said 429: the message is rewritten,
#: whatever the upstream said (controller/relay.go, respondTaskError).
UPSTREAM_SATURATED_BODY = json.dumps(
    {"code": "upstream_error", "message": "当前分组上游负载已饱和，请稍后再试", "data": None},
    ensure_ascii=False,
).encode()
_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


class Fault:
    """One misbehaviour of the server, applied to one request; make one with the class methods.

    `respond` gives the answer to send instead of the real one, or None to
    answer normally; faults that spoil the real answer (truncated, cut,
    wrong id) mark the request for the handler instead.
    """

    kind: ClassVar[str] = "mark"  #: recorded in SeenRequest.fault

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        """The answer to send instead of the real one (None: answer, perhaps spoiled)."""
        request[FAULT_KEY] = self.kind
        return None

    @classmethod
    def error(cls, status: int, body: bytes | Mapping[str, object] | None = None) -> Fault:
        """Answer with `status` and an error body (``{"error": {...}}`` unless given)."""
        if body is None:
            body = {"error": {"message": f"fake error {status}", "type": "fake", "code": status}}
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return StatusFault(status, raw)

    @classmethod
    def rate_limit(cls, retry_after: float | str | None = 1) -> Fault:
        """Answer 429, with a Retry-After header unless it is None."""
        header = None if retry_after is None else str(retry_after)
        body = b'{"error": {"message": "rate limit exceeded", "type": "rate_limit"}}'
        return StatusFault(429, body, retry_after=header)

    @classmethod
    def upstream_saturated(cls, retry_after: float | str | None = None) -> Fault:
        """Answer 429 as new-api does when its upstream answered 429 (``respondTaskError``):
        "this group's upstream is saturated", nothing to do with the caller's rate."""
        header = None if retry_after is None else str(retry_after)
        return StatusFault(429, UPSTREAM_SATURATED_BODY, retry_after=header)

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """Answer with a proxy's HTML error page."""
        return StatusFault(status, _HTML_PAGE, content_type="text/html")

    @classmethod
    def reset(cls) -> Fault:
        """Drop the connection without answering."""
        return ResetFault()

    @classmethod
    def truncated(cls) -> Fault:
        """Answer 200 with the first half of the JSON body."""
        return TruncatedFault()

    @classmethod
    def cut(cls) -> Fault:
        """Announce the full body, send half of it, then drop the connection."""
        return CutFault()

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """Answer normally after a real delay of `seconds`."""
        return LatencyFault(seconds)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Fault:
        """Answer with a redirect to `location` (another host, say)."""
        return RedirectFault(location, status)

    @classmethod
    def oversized(cls, size: int = 5 << 20) -> Fault:
        """Answer 200 with a chunked body of `size` bytes and no Content-Length."""
        return OversizedFault(size)

    @classmethod
    def misranged(cls, start: int | None = None) -> Fault:
        """Storage answers a Range request 206 with bytes from `start` instead of those asked
        for, saying so in Content-Range (None: the bytes asked for, with no Content-Range)."""
        return MisrangedFault(start)

    @classmethod
    def wrong_id(cls) -> Fault:
        """Answer with another generation's body, as a confused proxy might."""
        return WrongIdFault()


@attrs.frozen
class StatusFault(Fault):
    """An error status with a body (JSON, or a proxy's HTML page), maybe with Retry-After."""

    kind: ClassVar[str] = "status"
    status: int
    body: bytes
    content_type: str = "application/json"
    retry_after: str | None = None

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return web.Response(
            status=self.status,
            body=self.body,
            headers={**headers, "Content-Type": self.content_type},
        )


@attrs.frozen
class ResetFault(Fault):
    """The connection dropped without an answer."""

    kind: ClassVar[str] = "reset"

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        return drop(request)


@attrs.frozen
class LatencyFault(Fault):
    """The real answer, after a real delay."""

    kind: ClassVar[str] = "latency"
    seconds: float

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        await asyncio.sleep(self.seconds)
        return None


@attrs.frozen
class RedirectFault(Fault):
    """A redirect elsewhere (which the SDK must not follow with the key)."""

    kind: ClassVar[str] = "redirect"
    location: str
    status: int = 302

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        return web.Response(status=self.status, headers={"Location": self.location})


@attrs.frozen
class OversizedFault(Fault):
    """A chunked body of `size` bytes with no Content-Length."""

    kind: ClassVar[str] = "oversized"
    size: int

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        return await _chunked(request, self.size)


@attrs.frozen
class TruncatedFault(Fault):
    """200 with the first half of the JSON body."""

    kind: ClassVar[str] = "truncated"


@attrs.frozen
class CutFault(Fault):
    """The full length announced, half sent, then the connection dropped."""

    kind: ClassVar[str] = "cut"


@attrs.frozen
class MisrangedFault(Fault):
    """A 206 that does not start where the Range asked (or does not say where it starts)."""

    kind: ClassVar[str] = "misranged"
    start: int | None = None

    async def respond(self, request: web.Request) -> web.StreamResponse | None:
        request[RANGE_KEY] = self.start
        return await super().respond(request)


@attrs.frozen
class WrongIdFault(Fault):
    """Another generation's body."""

    kind: ClassVar[str] = "wrong_id"


#: The mix of faults `fault_rate` draws from.
DEFAULT_FAULT_MIX: tuple[Fault, ...] = (
    Fault.error(502),
    Fault.error(503, {"detail": "service unavailable"}),
    Fault.rate_limit(0.05),
    Fault.reset(),
    Fault.truncated(),
    Fault.html(502),
    Fault.latency(0.02),
)


def drop(request: web.Request) -> web.Response:
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


async def _chunked(request: web.Request, size: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    block = b" " * (256 * 1024)
    try:
        for _ in range(size // len(block)):
            await response.write(block)
    except (ConnectionError, RuntimeError):
        pass  # the client hung up once it had seen enough: that is the point
    return response


async def cut(
    request: web.Request, body: bytes, status: int, headers: Mapping[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    drop(request)
    return response
