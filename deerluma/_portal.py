"""A private event loop in a daemon thread, and a blocking way to run coroutines on it.

What anyio's ``BlockingPortal`` does, cut to what SyncSession and
``FakeDeerAPI.in_thread`` need: run a coroutine to its end from any thread
(a plain script, or a thread whose own loop is running, like a notebook's),
and on Ctrl-C cancel it on the loop, let it clean up, and re-raise.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")

#: How often a blocked caller wakes to let a pending Ctrl-C raise. Signals reach
#: the main thread's handler only between bytecodes, and a signal delivered to
#: another thread does not wake a blocked lock; a short timed wait bounds the delay.
_SIGNAL_CHECK = 0.05
#: After Ctrl-C, how long a cancelled operation may take to clean up (close
#: responses, remove partial files) before the KeyboardInterrupt goes on anyway.
_CLEANUP_GRACE = 5.0


class LoopThread:
    """One event loop running forever in a daemon thread, started on first use.

    ``stop()`` ends it; a later ``call()`` starts a new one.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stops = 0

    @property
    def epoch(self) -> int:
        """Counts the loops ended so far: what ran on an earlier loop is gone with it."""
        return self._stops

    @property
    def running(self) -> bool:
        """Whether the loop's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on the loop's own thread (where blocking would deadlock)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=_run_forever, args=(loop, ready), name=self._name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and block until it ends; return or raise what it did.

        A KeyboardInterrupt (or any exception raised in this thread while
        blocked) cancels the coroutine on the loop, waits for its cleanup,
        and is then re-raised.
        """
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(
                "a blocking call from the loop's own thread would wait forever: "
                "callbacks (on_update, on_progress) must not call the SyncSession"
            )
        if sys.is_finalizing():  # daemon threads are frozen now: nothing would ever answer
            coro.close()
            raise RuntimeError("the interpreter is shutting down; the event loop thread is gone")
        loop = self._started()
        thread = self._thread
        done = threading.Event()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = loop.create_task(coro)
            task.add_done_callback(lambda _: done.set())
            tasks.append(task)

        loop.call_soon_threadsafe(start)
        try:
            while not done.wait(_SIGNAL_CHECK):
                if thread is None or not thread.is_alive():
                    break
        except BaseException:  # Ctrl-C, or whatever a signal handler raised
            loop.call_soon_threadsafe(_cancel, tasks)
            done.wait(_CLEANUP_GRACE)
            raise
        if not done.is_set():
            coro.close()
            raise RuntimeError("the event loop thread ended before the call did")
        return tasks[0].result()

    def submit(self, coro: Coroutine[Any, Any, object]) -> None:
        """Start `coro` on the loop without waiting for it (if the loop runs at all)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop closed in between
            coro.close()

    def stop(self) -> None:
        """End the loop and its thread (after pending callbacks run); safe to call twice."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            if loop is not None:
                self._stops += 1
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join()


def _run_forever(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        # Whatever is still running was abandoned by its caller: cancel it and
        # let it unwind (closing responses, removing partial files) before closing.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
