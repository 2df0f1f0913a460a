"""create and extend: start a generation; wait, download, hear callbacks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .._create import CreateOptions
from .._session import Session
from ..exceptions import (
    DeerLumaError,
)

if TYPE_CHECKING:
    pass
from .app import App
from .errors import exit_code_for
from .output import save_row, track


async def cmd_create(app: App) -> int:
    from .output import generation_json

    a = app.args
    options: CreateOptions = {
        "aspect_ratio": a.aspect_ratio,
        "loop": a.loop,
        "model": a.model,
        "resolution": a.resolution,
        "duration": a.duration,
        "end_image": a.end_image,
        "callback_url": a.callback_url,
    }
    async with app.session() as s, contextlib.AsyncExitStack() as stack:
        if a.callback_listen:
            options["callback_url"] = await stack.enter_async_context(
                _receiver(s, a.callback_listen, a.callback_url)
            )
        if a.command == "extend":
            g = await s.extend_generation(a.task_id, a.prompt, **options)
        else:
            options["start_image"] = a.start_image
            g = await s.create_generation(a.prompt, **options)
        app.console.print(f"created {g.id}", highlight=False)
        error: DeerLumaError | None = None
        if a.wait or a.download or a.callback_listen:
            listening = bool(a.callback_listen)
            (row,) = await track(app, s, [g.id], timeout=a.timeout, callbacks=listening)
            g, error = row.generation or g, row.error
            if error is None and a.download:
                error = await save_row(app, s, g, a.download)
    if a.json:
        app.emit(generation_json(g.id, g, error))
    else:
        print(g.id if error is None else f"{g.id}\t{type(error).__name__}\t{error}", file=app.out)
    return exit_code_for([error])


@contextlib.asynccontextmanager
async def _receiver(
    session: Session, listen: tuple[str, int], public: str | None
) -> AsyncIterator[str]:
    """Serve the Session's callback handler on `listen` while the block runs; yield its URL.

    A random token in the URL keeps others' POSTs out.
    """
    import secrets

    import yarl
    from aiohttp import web

    token = secrets.token_urlsafe(16)
    app = web.Application()
    app.router.add_post("/deerluma-callback", session.callback_handler(secret=token))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        host, port = listen
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ValueError(
                f"--callback-listen: cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        if public is None:
            bound_host, bound_port = runner.addresses[0][:2]
            public = f"http://{bound_host}:{bound_port}/deerluma-callback"
        yield str(yarl.URL(public).update_query(token=token))
    finally:
        await runner.cleanup()
