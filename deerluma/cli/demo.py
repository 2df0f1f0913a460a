"""demo: everything against a built-in fake server, with no key; and --serve."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._download import into
from .._policy import seconds_of

if TYPE_CHECKING:
    pass
from .app import App
from .errors import EXIT_FAILED, EXIT_OK, exit_code_for
from .output import save, track


async def cmd_demo(app: App) -> int:
    from ..testing import FakeDeerAPI, ScaledClock
    from .output import summary_table

    duration, refresh = app.args.duration, app.args.refresh
    if app.args.serve:
        duration = 5.0 if duration is None else duration
        return await _serve_fake(
            app,
            seconds_of("--duration", duration, zero=True),
            None if refresh is None else seconds_of("--refresh", refresh),
            app.args.port,
        )
    if duration is not None:
        raise ValueError("--duration goes with --serve (the demo's generations take 3-13 s)")
    if refresh is not None:
        raise ValueError("--refresh goes with --serve (the demo's fake answers live)")
    prompts = _DEMO_PROMPTS[: app.args.tasks]

    def script(body: Any) -> dict[str, object]:
        index = prompts.index(body["prompt"]) if body["prompt"] in prompts else 0
        fails = index in (5, 13)
        return {
            "duration": 3.0 + (index * 7 % 11),
            "estimate": index % 4 != 3,  # some gateways send no estimate
            "estimate_bias": (0.8, 1.0, 1.25)[index % 3],
            "failure_reason": "prompt flagged by moderation" if fails else None,
            "pending_for": 1.0,
        }

    app.console.print(
        "[bold]deerluma demo[/]: a fake DeerAPI on this machine; no key, no network, no cost."
    )
    clock = ScaledClock(app.args.speed)
    app.clock, app.sleep = clock, clock.sleep
    async with FakeDeerAPI(create_script=script, clock=clock) as fake:
        app.args.api_key, app.args.base_url = fake.api_key, fake.url
        async with app.session() as s:
            created = await asyncio.gather(*(s.create_generation(p) for p in prompts))
            ids = [g.id for g in created]
            rows = await track(app, s, ids, timeout=60, labels=prompts, title="generations")
            done = next((r.generation for r in rows if r.error is None), None)
            if done is not None:
                with contextlib.ExitStack() as stack:
                    folder = app.args.out
                    if folder is None:  # nothing left behind in the temp dir: --out keeps it
                        temporary = tempfile.TemporaryDirectory(prefix="deerluma-demo-")
                        folder = Path(stack.enter_context(temporary))
                    path = await save(app, s, done, into(folder))
                    size = path.stat().st_size
                    kept = "" if app.args.out else "; removed again at exit (--out DIR keeps it)"
                    app.console.print(f"downloaded one result to {path} ({size} bytes){kept}")
    app.console.print(summary_table(rows))
    failed = exit_code_for(r.error for r in rows)
    # Two generations fail on purpose: that is the demo working, not the command failing.
    return EXIT_OK if failed == EXIT_FAILED else failed


async def _serve_fake(app: App, duration: float, refresh: float | None, port: int) -> int:
    """Serve a fake DeerAPI on this machine (real time: each generation takes `duration`
    seconds; rows refreshed every `refresh` seconds, if given) until Ctrl-C; print the two
    variables that point every other command at it."""
    from ..testing import FakeDeerAPI

    async with FakeDeerAPI(
        create_duration=duration, refresh=refresh, refresh_gap=0.05, port=port
    ) as fake:
        fake.record_requests = False  # it may serve for hours
        print(
            f"a fake DeerAPI serves at {fake.url} (no network, no cost); Ctrl-C stops it.\n"
            "In another shell:\n"
            f"  export DEERAPI_BASE_URL={fake.url} DEERAPI_API_KEY={fake.api_key}\n"
            '  echo \'{"key": "clip-001", "prompt": "a deer"}\' > jobs.jsonl\n'
            "  deerluma run jobs.jsonl --out videos/",
            file=app.out,
            flush=True,
        )
        await asyncio.Event().wait()  # until Ctrl-C
    return EXIT_OK


_DEMO_PROMPTS = [
    "a deer walking through a misty forest at dawn",
    "waves rolling over black sand, slow motion",
    "a paper boat drifting down a rainy street",
    "timelapse of clouds over a mountain ridge",
    "a hummingbird hovering at a red flower",
    "neon city street in the rain, cyberpunk",
    "a cup of coffee steaming on a wooden table",
    "northern lights over a frozen lake",
    "a cat stretching in a sunbeam",
    "lanterns rising into a night sky",
    "a river delta seen from above, golden hour",
    "a lighthouse in a storm",
    "cherry blossoms falling in a quiet temple garden",
    "an astronaut planting a flag on a red planet",
    "a fox curling up in fresh snow",
    "dust motes in a library's light",
    "a hot air balloon over vineyards",
    "koi fish circling in a pond",
    "a train crossing a stone viaduct",
    "fireworks reflected in a harbour",
    "a snail crossing a mossy log",
    "sand dunes shifting in the wind",
    "a violinist on an empty stage",
    "rain on a tin roof, close up",
]
