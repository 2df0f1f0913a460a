"""FakeDeerAPI: a real HTTP server that behaves like DeerAPI, for your own tests.

Start it as an async context manager; it listens on ``127.0.0.1`` on a free
port. Point a Session at ``fake.url`` with ``fake.api_key`` and everything the
SDK does runs over a real socket, with no network and no cost::

    from deerluma.testing import FakeClock, FakeDeerAPI, Fault

    async def test_my_app() -> None:
        clock = FakeClock()
        async with FakeDeerAPI(clock=clock) as fake:
            task_id = fake.add_generation(duration=30, estimate_bias=1.2)
            fake.inject(Fault.error(502), Fault.reset())   # the next two requests fail
            async with deerluma.Session(api_key=fake.api_key, base_url=fake.url,
                                        clock=clock, sleep=clock.sleep) as s:
                g = await s.wait_until_completed(task_id)   # no real waiting
            assert g.is_completed

What it does:

- Generations follow a scripted progression driven by ``clock``: ``pending``
  for ``pending_for`` seconds, then ``processing`` with a falling
  ``estimate_wait_seconds`` (whole seconds, skewed by ``estimate_bias``, or
  ``null`` when ``estimate=False``), then ``completed`` (or ``failed`` with
  ``failure_reason``). Bodies have the shape of the API page's example, the
  official Luma shape with ``shape="luma"``, or the gateway's newer shape with
  ``shape="new"`` (no ``prompt``, ``estimate_wait_seconds`` or ``queue_state``,
  a zero ``created_at``; ``media_type``, ``video.duration``, ``thumbnail.palette``).
- It checks ``Authorization: Bearer <api_key>`` (401 otherwise) and answers an
  unknown id with 404, both in the gateway's error body shapes.
- ``POST /dream-machine/v1/generations`` creates generations
  (``create_duration`` seconds long, or whatever ``create_script(body)``
  returns as ``add_generation`` arguments) and records each body in ``created``.
- Finished generations link to a storage route that serves fake video bytes
  behind presigned-style links expiring after ``link_ttl`` seconds; it refuses
  any request carrying an Authorization header and supports ``Range``
  (``Fault.misranged()`` answers one from elsewhere, or without saying where).
- Faults on demand (``Fault.error(502)``, ``Fault.reset()``, ...: each kind a
  small typed class, ``StatusFault``, ``ResetFault``, ...): ``inject(...)``
  queues faults for the next requests;
  ``fault_rate`` faults a random share of requests (seeded); ``max_rps``
  (with ``burst`` requests at once, by default one second's worth)
  answers 429 beyond a request rate, with ``Retry-After`` set to one
  request's spacing (``retry_after=True``), to a number of seconds, or
  absent (``retry_after=False``). ``window_limit`` (per ``window_minutes``)
  limits the key as new-api does: a sliding window of successful requests
  (every request with ``window_counts_failures=True``), then 429 with the
  message naming the limit and no ``Retry-After``.
  ``Fault.upstream_saturated()`` is new-api's 429 for a saturated upstream.
  ``unknown_after_create`` seconds: a created task answers 404
  (``task_not_exist``) for that long, as some gateways do.
- Callbacks: a create with ``callback_url`` gets a JSON POST of the
  generation on each state change (``processing``, then ``completed`` or
  ``failed``), as Luma sends them (5 s timeout, up to 3 retries), following
  ``clock`` in real time (use a ScaledClock, not a FakeClock);
  ``callback_loss`` loses a share of them and ``callback_duplicates`` sends a
  share twice; ``callbacks`` records each (``SentCallback``).
- Rows: with ``refresh`` (seconds), a GET answers from the gateway's own row,
  as new-api and its forks do: a background pass refreshes the unfinished
  rows oldest first, ``refresh_gap`` seconds apart, then rests ``refresh``
  seconds; ``shows_final_at(task_id)`` is when a row turned final.
- It records what it saw: ``requests`` (method, path, whether a key was sent,
  status, clock time), ``polls[task_id]``, ``completed_at[task_id]`` (clock
  time of the first answer showing it terminal) and ``max_in_flight``; set
  ``record_requests = False`` for long benchmark runs.
"""

from ._clock import FakeClock, ScaledClock
from ._faults import (
    DEFAULT_FAULT_MIX,
    CutFault,
    Fault,
    LatencyFault,
    MisrangedFault,
    OversizedFault,
    RedirectFault,
    ResetFault,
    StatusFault,
    TruncatedFault,
    WrongIdFault,
)
from ._server import FakeDeerAPI, SeenRequest, SentCallback

__all__ = [
    "DEFAULT_FAULT_MIX",
    "CutFault",
    "FakeClock",
    "FakeDeerAPI",
    "Fault",
    "LatencyFault",
    "MisrangedFault",
    "OversizedFault",
    "RedirectFault",
    "ResetFault",
    "ScaledClock",
    "SeenRequest",
    "SentCallback",
    "StatusFault",
    "TruncatedFault",
    "WrongIdFault",
]
