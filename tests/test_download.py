"""Downloads end to end: the fake server's storage route over a real socket."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import deerluma
from deerluma import DownloadError
from deerluma._download import is_expired, link_expires_at
from deerluma.testing import FakeClock, FakeDeerAPI, Fault

from .conftest import our_tasks


def _storage_requests(fake: FakeDeerAPI) -> list[deerluma.testing.SeenRequest]:
    return [r for r in fake.requests if r.path.startswith("/storage/")]


@pytest.mark.parametrize("asset", ["video", "video_raw", "thumbnail", "last_frame"])
async def test_each_asset_downloads_whole_to_the_destination(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path, asset: str
) -> None:
    task_id = fake.add_generation(duration=0)
    g = await session.get_generation(task_id)
    path = await session.download(g, tmp_path / f"out-{asset}", asset=asset)  # type: ignore[arg-type]
    assert path == tmp_path / f"out-{asset}"
    assert path.read_bytes() == fake.video_content(task_id, asset)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


async def test_download_into_a_folder_names_each_file_after_its_task_and_asset(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    # Both links end in video.mp4: named after the URL, the second would clobber the first.
    first, second = fake.add_generation(duration=0), fake.add_generation(duration=0)
    paths = [await session.download(task_id, tmp_path) for task_id in (first, second)]
    assert [p.name for p in paths] == [f"{first}.mp4", f"{second}.mp4"]
    assert paths[1].read_bytes() == fake.video_content(second)
    thumb = await session.download(first, f"{tmp_path}/thumbs/", asset="thumbnail")
    assert thumb == tmp_path / "thumbs" / f"{first}-thumbnail.jpg"


async def test_file_problems_are_download_errors_naming_the_destination(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0)
    (tmp_path / "a-file").write_text("in the way")
    with pytest.raises(deerluma.DestinationError, match="a-file") as info:
        await session.download(task_id, tmp_path / "a-file" / "out.mp4")
    assert isinstance(info.value, OSError) and isinstance(info.value, deerluma.DownloadError)
    (tmp_path / "taken.mp4").write_bytes(b"mine")
    with pytest.raises(deerluma.DestinationExists, match=r"taken\.mp4"):
        await session.download(task_id, tmp_path / "taken.mp4")
    assert (tmp_path / "taken.mp4").read_bytes() == b"mine"
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        if os.access(readonly, os.W_OK):  # root writes anywhere: nothing to prove here
            return
        with pytest.raises(deerluma.DestinationError, match=r"readonly/out\.mp4") as denied:
            await session.download(task_id, readonly / "out.mp4")
        assert ".part" not in str(denied.value)
    finally:
        readonly.chmod(0o700)


async def test_official_shape_video_downloads_from_assets(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0, shape="luma")
    path = await session.download(task_id, tmp_path / "luma.mp4")
    assert path.read_bytes() == fake.video_content(task_id)


async def test_the_api_key_is_never_sent_to_storage(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0)
    await session.download(task_id, tmp_path / "v.mp4")
    storage = _storage_requests(fake)
    assert storage
    assert not any(r.sent_authorization for r in storage)


async def test_existing_file_is_kept_unless_overwrite(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0)
    dest = tmp_path / "v.mp4"
    dest.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        await session.download(task_id, dest)
    assert dest.read_bytes() == b"precious"
    await session.download(task_id, dest, overwrite=True)
    assert dest.read_bytes() == fake.video_content(task_id)


async def test_connection_cut_mid_body_resumes_and_never_leaves_a_partial_file(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject_storage(Fault.cut(), Fault.cut())
    progress: list[tuple[int, int | None]] = []
    dest = tmp_path / "v.mp4"
    await session.download(task_id, dest, on_progress=lambda d, t: progress.append((d, t)))
    content = fake.video_content(task_id)
    assert dest.read_bytes() == content
    assert progress[-1] == (len(content), len(content))
    ranges = [r.status for r in _storage_requests(fake)]
    assert ranges == [200, 206, 206]  # resumed with Range twice
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


async def test_download_that_keeps_failing_leaves_nothing_at_dest(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject_storage(*[Fault.cut()] * 10)
    dest = tmp_path / "v.mp4"
    with pytest.raises(DownloadError, match="could not download the video") as info:
        await session.download(task_id, dest)
    assert info.value.task_id == task_id
    assert list(tmp_path.iterdir()) == []


async def test_expired_link_is_refreshed_once(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0)
    g = await session.get_generation(task_id)
    clock.advance(fake.link_ttl + 1)  # the hour is over: storage answers 403
    path = await session.download(g, tmp_path / "v.mp4")
    assert path.read_bytes() == fake.video_content(task_id)
    assert [r.status for r in _storage_requests(fake)] == [403, 200]
    assert fake.polls[task_id] == 2  # the second GET fetched the fresh link


async def test_storage_refusing_even_a_fresh_link_is_a_download_error(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject_storage(Fault.error(403, b"<Error/>"), Fault.error(403, b"<Error/>"))
    with pytest.raises(DownloadError, match="fresh link"):
        await session.download(task_id, tmp_path / "v.mp4")
    assert list(tmp_path.iterdir()) == []


async def test_not_completed_or_missing_asset_is_a_clear_error(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    pending = fake.add_generation(duration=100)
    with pytest.raises(DownloadError, match="is pending, not completed"):
        await session.download(pending, tmp_path)
    luma = fake.add_generation(duration=0, shape="luma")
    with pytest.raises(DownloadError, match="has no last_frame"):
        await session.download(luma, tmp_path, asset="last_frame")
    with pytest.raises(ValueError, match="asset must be one of"):
        await session.download(luma, tmp_path, asset="poster")  # type: ignore[arg-type]


async def test_cancelled_download_leaves_no_partial_file_and_no_tasks(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0, video_bytes=8 << 20)
    started = asyncio.Event()
    dest = tmp_path / "v.mp4"

    def on_progress(done: int, total: int | None) -> None:
        started.set()

    job = asyncio.create_task(session.download(task_id, dest, on_progress=on_progress))
    await started.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert list(tmp_path.iterdir()) == []
    assert our_tasks() == []


def test_presigned_expiry_is_read_from_the_link() -> None:
    url = (
        "https://x.r2.cloudflarestorage.com/v.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Date=20241015T085653Z&X-Amz-Expires=3600&X-Amz-Signature=abc"
    )
    assert link_expires_at(url) == datetime(2024, 10, 15, 9, 56, 53, tzinfo=UTC)
    assert is_expired(url, now=datetime(2024, 10, 15, 9, 56, 0, tzinfo=UTC))  # within the margin
    assert not is_expired(url, now=datetime(2024, 10, 15, 9, 0, 0, tzinfo=UTC))
    assert link_expires_at("https://cdn.example/v.mp4?Expires=1700000000") == datetime(
        2023, 11, 14, 22, 13, 20, tzinfo=UTC
    )
    assert link_expires_at("https://cdn.example/v.mp4") is None
    assert link_expires_at("https://x/v?X-Amz-Date=bogus&X-Amz-Expires=1") is None


async def test_skip_complete_keeps_a_finished_file_and_refuses_a_partial_one(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0)
    path = await session.download(task_id, tmp_path)
    before = len(_storage_requests(fake))
    assert await session.download(task_id, tmp_path, skip_complete=True) == path
    assert [r.status for r in _storage_requests(fake)[before:]] == [416]  # probed, not fetched
    path.write_bytes(fake.video_content(task_id)[:100])  # an interrupted copy of it
    with pytest.raises(deerluma.DestinationExists):
        await session.download(task_id, tmp_path, skip_complete=True)
    assert len(path.read_bytes()) == 100  # left as it was


async def test_a_failed_download_removes_the_folders_it_created(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject_storage(*[Fault.error(503)] * 10)  # storage keeps failing
    with pytest.raises(deerluma.DownloadError):
        await session.download(task_id, tmp_path / "new" / "deeper" / "out.mp4")
    assert list(tmp_path.iterdir()) == []  # neither folder is left behind
    (tmp_path / "mine").mkdir()
    fake.inject_storage(*[Fault.error(503)] * 10)
    with pytest.raises(deerluma.DownloadError):
        await session.download(task_id, tmp_path / "mine" / "sub" / "out.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # the user's own folder stays
    assert list((tmp_path / "mine").iterdir()) == []


@pytest.mark.parametrize("start", [None, 1024, 0])
async def test_a_resumed_download_that_does_not_start_where_asked_is_never_stitched_in(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path, start: int | None
) -> None:
    # Cut halfway; the resumed answer is a 206 from elsewhere, or one that does not say.
    task_id = fake.add_generation(duration=0)
    fake.inject_storage(Fault.cut(), Fault.misranged(start))
    dest = tmp_path / "v.mp4"
    await session.download(task_id, dest)
    assert dest.read_bytes() == fake.video_content(task_id)  # whole, never misaligned
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


async def test_the_file_is_written_off_the_event_loop(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    loop_thread = threading.current_thread()
    writers: set[threading.Thread] = set()
    import deerluma._download as download

    real = download._write

    def spy(out: object, chunk: bytes, start_over: bool) -> None:
        writers.add(threading.current_thread())
        real(out, chunk, start_over)  # type: ignore[arg-type]

    monkeypatch.setattr(download, "_write", spy)
    await session.download(fake.add_generation(duration=0), tmp_path / "v.mp4")
    assert writers and loop_thread not in writers


async def test_a_read_only_destination_is_a_destination_error_not_a_bare_oserror(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    real_open, real_unlink = Path.open, Path.unlink

    def read_only(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.name.endswith(".part"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    def cannot_unlink(path: Path, missing_ok: bool = False) -> None:
        if path.name.endswith(".part"):  # the clean-up meets the same read-only disk
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "open", read_only)
    monkeypatch.setattr(Path, "unlink", cannot_unlink)
    with pytest.raises(deerluma.DestinationError, match="Read-only") as caught:
        await session.download(fake.add_generation(duration=0), tmp_path / "v.mp4")
    assert caught.value.dest == tmp_path / "v.mp4"


@pytest.mark.parametrize(("status", "tries"), [(503, 2), (501, 1), (505, 1)])
async def test_storage_faults_are_retried_by_the_same_rule_as_the_apis(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path, status: int, tries: int
) -> None:
    # 500/502/503/504 are passing faults; another 5xx is an answer, as it is from the API.
    task_id = fake.add_generation(duration=0)
    fake.inject_storage(Fault.error(status))
    dest = tmp_path / "v.mp4"
    if tries == 1:
        with pytest.raises(deerluma.DownloadError, match=str(status)):
            await session.download(task_id, dest)
    else:
        await session.download(task_id, dest)
    assert len(_storage_requests(fake)) == tries


async def test_the_fake_serves_videos_of_any_size_without_holding_them(tmp_path: Path) -> None:
    import aiohttp

    from deerluma.testing import FakeDeerAPI

    big = 300 << 20  # it failed with OverflowError while serving
    async with FakeDeerAPI(video_bytes=3 << 20) as fake:
        task_id = fake.add_generation(duration=0)
        huge = fake.add_generation(duration=0, video_bytes=big)
        async with deerluma.Session(api_key=fake.api_key, base_url=fake.url) as s:
            path = await s.download(task_id, tmp_path / "a.mp4")  # more than one block
            assert path.read_bytes() == fake.video_content(task_id)
            g = await s.get_generation(huge)
        assert g.video is not None and g.video.download_url is not None
        async with (
            aiohttp.ClientSession() as client,
            client.get(g.video.download_url, headers={"Range": f"bytes={big - 10}-"}) as resp,
        ):
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes {big - 10}-{big - 1}/{big}"
            tail = await resp.read()
    block = fake.video_content(task_id)[: 1 << 20]  # (another file's block: same length)
    assert len(tail) == 10 and len(block) == 1 << 20
