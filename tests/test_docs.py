"""The docs' examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _block_after(page: str, heading: str) -> str:
    text = (DOCS / page).read_text(encoding="utf-8")
    section = text.split(f"## {heading}", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no example under {heading!r} in {page}"
    return match.group(1)


def test_the_sync_testing_example_runs_as_written() -> None:
    namespace: dict[str, object] = {}
    exec(_block_after("sync.md", "Testing blocking code"), namespace)
    test = namespace["test_my_script"]
    assert callable(test)
    test()


def _blocks_under(page: str, heading: str) -> list[str]:
    """Every python block of a section (up to the next heading of its level or above)."""
    text = (DOCS / page).read_text(encoding="utf-8")
    section = re.split(r"\n#{1,3} ", text.split(f"\n{heading}\n", 1)[1], maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


async def _callback_through(port: int, path: str, token: str, body: bytes) -> tuple[int, dict]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as client,
        client.post(f"http://127.0.0.1:{port}{path}?token={token}", data=body) as resp,
    ):
        return resp.status, await resp.json()


async def _serve_asgi(app: object) -> tuple[object, int, object]:
    import asyncio
    import socket

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="error", lifespan="off"))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, port, task


async def test_the_callback_examples_for_other_frameworks_run_as_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    import deerluma

    monkeypatch.setenv("DEERAPI_API_KEY", "fake-key-0123456789")
    fastapi = _blocks_under("callbacks.md", "### FastAPI")[0]
    starlette = _blocks_under("callbacks.md", "### Starlette (or FastAPI) mount")[0]
    flask = _blocks_under("callbacks.md", "### Flask (or any blocking view)")[0]
    for code, path in ((fastapi, "/luma-callback"), (starlette, "/luma-callback/")):
        namespace: dict[str, object] = {"__name__": "example"}
        exec(code, namespace)
        s = namespace["s"]
        assert isinstance(s, deerluma.Session)
        s.expect_callbacks("task-1")
        server, port, task = await _serve_asgi(namespace["app"])
        try:
            body = json.dumps({"id": "task-1", "state": "completed"}).encode()
            status, answer = await _callback_through(port, path, s.callback_token, body)
            assert (status, answer) == (200, {"ok": True}), code
            assert s.callbacks.received == 1
            status, answer = await _callback_through(port, path, "wrong", body)
            assert status == 403
            status, _ = await _callback_through(port, path, s.callback_token, b"<html>")
            assert status == 400
        finally:
            server.should_exit = True  # type: ignore[attr-defined]
            await task  # type: ignore[misc]
            await s.aclose()
    namespace = {"__name__": "example"}
    exec(flask, namespace)
    sync = namespace["s"]
    assert isinstance(sync, deerluma.SyncSession)
    try:
        sync.expect_callbacks("task-2")
        client = namespace["app"].test_client()  # type: ignore[attr-defined]
        body = json.dumps({"id": "task-2", "state": "completed"})
        answer = client.post(f"/luma-callback?token={sync.session.callback_token}", data=body)
        assert (answer.status_code, answer.get_json()) == (200, {"ok": True})
        ignored = client.post(
            f"/luma-callback?token={sync.session.callback_token}",
            data=json.dumps({"id": "someone-else", "state": "completed"}),
        )
        assert ignored.get_json()["ignored"]
        assert client.post("/luma-callback", data=body).status_code == 403
    finally:
        sync.close()
