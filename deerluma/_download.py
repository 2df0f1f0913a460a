"""Streaming a finished generation's files to disk, atomically and without leaking the key."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import inspect
import itertools
import logging
import os
import re
import secrets
import stat
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import aiohttp
import attrs
import yarl

from ._models import Generation, GenerationState, Media
from ._transport import client_failure
from ._validate import check_task_id
from .exceptions import (
    DeerLumaError,
    DestinationError,
    DestinationExists,
    DownloadError,
    GenerationFailed,
    ServerError,
    TransportError,
    is_transient,
)

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = [
    "ASSETS",
    "Asset",
    "OnProgress",
    "asset_url",
    "destination",
    "download_generation",
    "into",
    "is_expired",
    "link_expires_at",
]

Asset = Literal["video", "video_raw", "thumbnail", "last_frame"]
"""Which file of a generation `Session.download` saves."""
ASSETS: tuple[Asset, ...] = ("video", "video_raw", "thumbnail", "last_frame")
OnProgress = Callable[[int, int | None], object]
"""A download's progress callback: ``(done_bytes, total_bytes or None)``, sync or async."""

log = logging.getLogger("deerluma")

_CHUNK = 256 * 1024
#: Treat a presigned link as expired this long before it says, to allow for clock skew.
_EXPIRY_MARGIN = timedelta(seconds=60)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSIONS = {"video": ".mp4", "video_raw": ".mp4", "thumbnail": ".jpg", "last_frame": ".jpg"}


def asset_url(generation: Generation, asset: Asset) -> str:
    """The URL to fetch `asset` from; the presigned download_url is preferred for the video."""
    if asset not in ASSETS:
        raise ValueError(f"asset must be one of {', '.join(ASSETS)}, got {asset!r}")
    if generation.state is GenerationState.FAILED:
        raise GenerationFailed(generation)  # says why; there is nothing to download
    if generation.state is not GenerationState.COMPLETED:
        raise DownloadError(
            f"generation {generation.id!r} is {generation.state.value}, not completed yet; "
            "wait for it to finish first",
            task_id=generation.id,
        )
    media: Media | None = getattr(generation, asset)
    url = None
    if media is not None:
        url = getattr(media, "download_url", None) or media.url
    if not url:
        raise DownloadError(f"generation {generation.id!r} has no {asset}", task_id=generation.id)
    return url


def link_expires_at(url: str) -> datetime | None:
    """When a presigned link stops working (X-Amz-Date + X-Amz-Expires, or Expires=epoch)."""
    query = yarl.URL(url).query
    try:
        if "X-Amz-Date" in query and "X-Amz-Expires" in query:
            signed = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            return signed + timedelta(seconds=int(query["X-Amz-Expires"]))
        if "Expires" in query:
            return datetime.fromtimestamp(int(query["Expires"]), UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def is_expired(url: str, now: datetime | None = None) -> bool:
    """Whether a presigned link has (nearly) expired."""
    expires = link_expires_at(url)
    return expires is not None and (now or datetime.now(UTC)) >= expires - _EXPIRY_MARGIN


def destination(dest: str | os.PathLike[str], task_id: str, asset: Asset) -> Path:
    """The file to write: `dest` itself, or one named after the task and asset in a folder.

    URLs' own names repeat (many end in ``video.mp4``): in a folder, two
    generations must never write the same file. ``~`` stands for the home
    folder; an empty `dest` is refused (it would mean "here" without saying so).
    """
    if not str(dest).strip():
        raise ValueError("dest must name a file or a folder (\".\" for this folder), got ''")
    path = Path(dest).expanduser()
    if not (path.is_dir() or str(dest).endswith(("/", os.sep))):
        return path
    stem = _SAFE_NAME.sub("_", task_id).strip("._") or "generation"
    suffix = "" if asset == "video" else f"-{asset}"
    return path / f"{stem}{suffix}{_EXTENSIONS[asset]}"


class LinkRejected(DeerLumaError):
    """Storage refused the link (400/403): it has probably expired."""


@attrs.define
class Transfer:
    part: Path
    done: int = 0
    total: int | None = None
    resumable: bool = False


async def stream_to(
    http: aiohttp.ClientSession,
    url: str,
    transfer: Transfer,
    *,
    timeout: float,
    on_progress: OnProgress | None,
) -> None:
    """One attempt: fetch `url` into `transfer.part`, resuming with Range when possible.

    No Authorization header, ever: links are presigned, and the key must not
    reach a storage or CDN host.
    """
    request_headers: dict[str, str] = {}
    if transfer.done and transfer.resumable:
        request_headers["Range"] = f"bytes={transfer.done}-"
    host = yarl.URL(url).host
    # Disk work goes to a thread (a slow disk must not stall the event loop); the file is
    # open before the request, so the first bytes are read as soon as they come.
    opening = asyncio.ensure_future(asyncio.to_thread(transfer.part.open, "ab"))
    try:
        out = await asyncio.shield(opening)
    except asyncio.CancelledError:  # the thread still opens it: close it when it has
        opening.add_done_callback(_close_opened)
        raise
    try:
        await _stream(http, url, host, request_headers, timeout, transfer, out, on_progress)
    finally:
        out.close()  # at once, even when cancelled (a write's thread has finished by now)
    if transfer.total is not None and transfer.done != transfer.total:
        raise TransportError(
            f"download from {host} ended at {transfer.done} of {transfer.total} bytes"
        )


async def _stream(
    http: aiohttp.ClientSession,
    url: str,
    host: str | None,
    request_headers: dict[str, str],
    timeout: float,
    transfer: Transfer,
    out: BinaryIO,
    on_progress: OnProgress | None,
) -> None:
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    try:
        async with http.get(
            yarl.URL(url, encoded=True),
            headers=request_headers,
            timeout=client_timeout,
            raise_for_status=False,  # a borrowed session's default must not hide our errors
        ) as resp:
            if resp.status in (400, 401, 403):
                raise LinkRejected(f"storage at {host} refused the link (HTTP {resp.status})")
            if resp.status >= 500:
                raise ServerError(resp.status, message=f"storage at {host} failed")
            if resp.status not in (200, 206):
                raise DownloadError(f"storage at {host} answered HTTP {resp.status}")
            append = False
            if resp.status == 206:
                start, whole = _content_range(resp)
                if start != transfer.done and start != 0:
                    # Not the bytes asked for (or no telling which): never stitch them in.
                    asked = transfer.done
                    transfer.done, transfer.resumable = 0, False
                    raise TransportError(
                        f"storage at {host} sent bytes from {start}, not {asked}: starting over"
                    )
                append = start == transfer.done != 0
            else:
                whole = None
            if not append:
                transfer.done = 0
            transfer.resumable = resp.headers.get("Accept-Ranges", "").lower() == "bytes"
            length = resp.content_length
            transfer.total = whole or ((transfer.done + length) if length is not None else None)
            start_over = not append  # done with the first write: no hop before the first read
            async for chunk in resp.content.iter_chunked(_CHUNK):
                await asyncio.to_thread(_write, out, chunk, start_over)
                start_over = False
                transfer.done += len(chunk)
                await _report(on_progress, transfer)
            if start_over:
                await asyncio.to_thread(_write, out, b"", start_over)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise client_failure(exc, f"storage at {host}", timeout) from exc


def _close_opened(opening: asyncio.Future[Any]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _write(out: BinaryIO, chunk: bytes, start_over: bool) -> None:
    if start_over:
        out.seek(0)
        out.truncate()
    out.write(chunk)


def _content_range(resp: aiohttp.ClientResponse) -> tuple[int | None, int | None]:
    """A 206's first byte and the whole file's length, from ``Content-Range`` (None: unsaid)."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
    if match is None:
        return None, None
    whole = match.group(2)
    return int(match.group(1)), None if whole == "*" else int(whole)


async def _report(on_progress: OnProgress | None, transfer: Transfer) -> None:
    if on_progress is not None:
        result = on_progress(transfer.done, transfer.total)
        if inspect.isawaitable(result):
            await result


def part_path(final: Path) -> Path:
    """A temporary file beside `final`, so the last rename stays on one filesystem."""
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")


async def commit(part: Path, final: Path, *, overwrite: bool) -> None:
    """Flush the finished file to disk and move it into place in one step."""

    def finish() -> None:
        with part.open("rb+") as handle:
            os.fsync(handle.fileno())
        if not overwrite:
            # link() fails if `final` appeared meanwhile, where replace() would clobber it.
            try:
                os.link(part, final)
            except FileExistsError:
                raise FileExistsError(
                    f"{final} exists; pass overwrite=True to replace it"
                ) from None
            except OSError:
                pass  # no hard links on this filesystem: fall back to the check and rename
            else:
                part.unlink()
                return
            if final.exists():
                raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
        os.replace(part, final)

    await asyncio.to_thread(finish)


@attrs.frozen
class Downloads:
    """What a download needs from its Session: the pool and retries, and a way to re-fetch."""

    transport: Transport
    #: Fetch a generation again (a task id given, or a link that expired).
    fetch: Callable[[str], Awaitable[Generation]]


async def download_generation(
    downloads: Downloads,
    target: Generation | str,
    dest: str | os.PathLike[str],
    *,
    asset: Asset,
    overwrite: bool,
    on_progress: OnProgress | None,
    skip_complete: bool = False,
) -> Path:
    """Download one asset of a completed generation to `dest`; see Session.download."""
    if isinstance(target, str):
        target = await downloads.fetch(check_task_id(target))
    generation = target
    url = asset_url(generation, asset)
    if is_expired(url):
        generation = await downloads.fetch(generation.id)
        url = asset_url(generation, asset)
    final = destination(dest, generation.id, asset)
    found = _kind_of(final)  # one look at the disk from the event loop, not three
    if found == "folder":  # not a file overwrite=True could replace
        raise DestinationError(
            f"{final} is a folder; give a file name, or a folder to save into "
            f"(the file is then named {destination(into(final), generation.id, asset).name})",
            task_id=generation.id,
            dest=final,
        )
    if found == "file" and not overwrite:
        transport = downloads.transport
        if skip_complete and await _holds_all_of(transport.http(), url, final, transport.timeout):
            log.info("%s already holds the whole %s of %r; kept", final, asset, generation.id)
            return final
        raise _exists(final, generation.id)
    # The folders this call creates (deepest first; most often none): removed again if the
    # download fails.
    made = list(itertools.takewhile(lambda p: not p.exists(), final.parents))
    try:
        if made:
            final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(
            f"cannot create the folder {final.parent} for {final}: {exc.strerror or exc}",
            task_id=generation.id,
            dest=final,
        ) from exc
    transfer = Transfer(part_path(final))
    refreshed = saved = False
    try:
        while True:
            try:
                attempt = functools.partial(
                    stream_to,
                    downloads.transport.http(),
                    url,
                    transfer,
                    timeout=downloads.transport.timeout,
                    on_progress=on_progress,
                )
                await downloads.transport.with_retries(
                    attempt, deadline=None, retry_on=is_transient
                )
                break
            except LinkRejected as exc:
                if refreshed:
                    raise DownloadError(
                        f"storage keeps refusing the {asset} of {generation.id!r} even with a "
                        "fresh link",
                        task_id=generation.id,
                    ) from exc
                refreshed = True  # links expire after about an hour: ask for a fresh one, once
                generation = await downloads.fetch(generation.id)
                url = asset_url(generation, asset)
                transfer = Transfer(transfer.part)
            except (TransportError, ServerError) as exc:
                raise DownloadError(
                    f"could not download the {asset} of {generation.id!r}: {exc}",
                    task_id=generation.id,
                ) from exc
        await commit(transfer.part, final, overwrite=overwrite)
        saved = True
    except DeerLumaError:
        raise
    except FileExistsError as exc:  # appeared meanwhile
        raise _exists(final, generation.id) from exc
    except OSError as exc:  # a read-only or full disk: name what the caller gave, not .part
        raise DestinationError(
            f"cannot write {final}: {exc.strerror or exc}", task_id=generation.id, dest=final
        ) from exc
    finally:
        # A read-only folder refuses this too: it must not hide the error that got here.
        if not saved:
            with contextlib.suppress(OSError):
                transfer.part.unlink(missing_ok=True)
        if not saved and not final.exists():  # it failed: remove the folders made for it
            for folder in made:  # deepest first; a folder someone filled meanwhile stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return final


async def _holds_all_of(http: aiohttp.ClientSession, url: str, path: Path, timeout: float) -> bool:
    """Whether `path` is as long as the file at `url`: a finished download of it.

    Asks for the bytes past the local size: storage answers 416 with
    ``Content-Range: bytes */TOTAL`` when there are none. Anything else
    (more bytes, no total, a refused link, a fault) is "not known complete".
    """
    try:
        size = (await asyncio.to_thread(path.stat)).st_size
        async with http.get(
            yarl.URL(url, encoded=True),
            headers={"Range": f"bytes={size}-"},
            timeout=aiohttp.ClientTimeout(total=timeout),
            raise_for_status=False,
        ) as resp:
            total = re.fullmatch(r"bytes \*/(\d+)", resp.headers.get("Content-Range", ""))
            return resp.status == 416 and total is not None and int(total.group(1)) == size
    except (OSError, aiohttp.ClientError, TimeoutError):
        return False


def into(folder: Path) -> str:
    """`folder` as `destination` reads a folder (a trailing separator: a folder, even a new
    one), so that each file is named after its task: URLs' own names may repeat."""
    return f"{folder}{os.sep}"


def _kind_of(path: Path) -> str | None:
    """What is at `path`: "folder", "file", or None (nothing, as `Path.exists` reads it)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return None
        raise
    return "folder" if stat.S_ISDIR(mode) else "file"


def _exists(final: Path, task_id: str) -> DestinationExists:
    return DestinationExists(
        f"{final} exists; pass overwrite=True to replace it", task_id=task_id, dest=final
    )
