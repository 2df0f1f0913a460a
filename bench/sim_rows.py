"""The poll engine behind a gateway that serves its own rows, on a fake clock, over many seeds.

`bench_rows` runs the real thing over sockets in scaled time: two rounds, some
noise. This drives the same `Engine` (no sockets, a fixed round trip) against
the same row model as `FakeDeerAPI(refresh=...)` (new-api's poller: a pass
over the unfinished rows, oldest first, `gap` seconds apart, then a 15 s
rest), for many seeds at once, with a plain 3 s loop judged on the same rows.
Lag counts from the moment a row turned final.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
from datetime import UTC, datetime, timedelta

import attrs

from deerluma._decode import decode_generation
from deerluma._engine import Engine, PollTracker, Verdict
from deerluma._gateway import RowClock
from deerluma._history import TimingHistory
from deerluma._policy import PollPolicy
from deerluma.testing._server import _Gen, _RowTable

from .common import percentile

RTT = 0.03
#: A rate gate: requests at most this often (per second). None here (the real gate grows its
#: rate as a batch wants more: bench_rows runs it); a lower one shows what a key's limit does.
RATE = math.inf
NAIVE = 3.0


@attrs.frozen
class Case:
    name: str
    tasks: int
    refresh: float
    hinted: bool = True
    batch: bool = False
    gap: float = 0.05
    #: Answers come this long after their request at most (a rate gate's queue, say).
    wait: float = 0.0
    #: Passes begin every `refresh` seconds (not `refresh` seconds after the last ended).
    ticker: bool = False
    #: The first pass begins a period after the tasks were created (as in FakeDeerAPI).
    aligned: bool = False
    #: Each pass takes the rows in an order of its own (a gateway that keeps none).
    shuffled: bool = False


CASES = (
    Case("R1 40 single waits, 15 s", 40, 15.0),
    Case("R2 200 ids batch, 15 s", 200, 15.0, batch=True),
    Case("R3 40 ids batch, 5 s", 40, 5.0, batch=True),
    Case("R4 40 ids batch, no estimate", 40, 15.0, hinted=False, batch=True),
    Case("R5 40 ids batch, 5 s, answers late", 40, 5.0, batch=True, wait=3.0),
    Case("R2t R2, passes on a 15 s ticker", 200, 15.0, batch=True, ticker=True),
    Case("R3a R3, first pass 5 s after the creates", 40, 5.0, batch=True, aligned=True),
    # As bench_rows meets them (FakeDeerAPI begins its first pass a period after a create).
    Case("R1a R1, first pass 15 s after the creates", 40, 15.0, aligned=True),
    Case("R2a R2, first pass 15 s after the creates", 200, 15.0, batch=True, aligned=True),
    Case("R2s R2, each pass in an order of its own", 200, 15.0, batch=True, shuffled=True),
)


#: The sim's clock reads 1000.0 at this wall time (created_at, as the gateway says it).
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _wall(at: float) -> datetime:
    return EPOCH + timedelta(seconds=at - 1000.0)


def _body(gen: _Gen, at: float) -> bytes:
    body = {"id": gen.id, "state": gen.state(at), "estimate_wait_seconds": gen.estimate_at(at)}
    body["created_at"] = _wall(gen.started).isoformat().replace("+00:00", "Z")
    return json.dumps({**body, "video": None}).encode()


def simulate(case: Case, seed: int) -> tuple[list[int], list[float], list[int], list[float]]:
    """Polls and lags of deerluma's waits, then of a plain loop's, on one seed's rows."""
    rng = random.Random(seed)
    shuffle = random.Random(seed + 1) if case.shuffled else None
    table = _RowTable(case.refresh, case.gap, ticker=case.ticker, shuffle=shuffle)
    # Passes fall anywhere against the waits, or (`aligned`) the first a period after them.
    start = 1000.0 + (case.refresh if case.aligned else rng.uniform(0, case.refresh))
    table._next_pass = None
    gens = []
    for index in range(case.tasks):
        gen = _Gen(
            id=f"t{index}",
            prompt="",
            started=1000.0,
            pending_for=0.0,
            duration=0.0,
            failure_reason=None,
            estimate=case.hinted,
            estimate_bias=rng.uniform(0.7, 1.3),
            shape="web",
            created_wall=datetime.now(UTC),
            video_bytes=0,
        )
        gen.duration = rng.uniform(20, 60)
        gen.pending_for = gen.duration * 0.2
        table.add(gen)
        gens.append(gen)
    table._next_pass = start
    rows = RowClock()
    history = TimingHistory()
    policy = PollPolicy(timeout=None)
    now = [1000.0]  # the clock time of the answer being judged

    def wall() -> datetime:
        return _wall(now[0])

    def engine() -> Engine:
        return Engine(policy, 1000.0, random.Random(seed), history, wall, rows=rows)

    shared = engine()
    engines = [shared if case.batch else engine() for _ in gens]
    trackers: list[PollTracker | None] = [None] * len(gens)
    polls = [0] * len(gens)
    lags = [math.nan] * len(gens)
    due = [(1000.0, index) for index in range(len(gens))]
    heapq.heapify(due)
    free = 0.0  # the Session's rate gate lets the next request through then
    while due:
        sent, index = heapq.heappop(due)
        later = engines[index].hold(trackers[index], sent)
        if later is not None:  # a wait that holds its look sends nothing
            heapq.heappush(due, (later, index))
            continue
        served, free = max(sent, free), max(sent, free) + 1 / RATE
        gen = gens[index]
        table.advance(served)
        generation = decode_generation(200, {}, _body(gen, table.refreshed_at[gen.id]))
        polls[index] += 1
        now[0] = answered = served + RTT + rng.uniform(0, case.wait)
        # The Session reads when the rate gate let the request go (`request_sent`).
        step, trackers[index] = engines[index].seen(
            trackers[index], gen.id, answered, generation, served
        )
        if step.verdict is Verdict.SLEEP:
            heapq.heappush(due, (answered + step.delay, index))
        else:
            lags[index] = answered - table.final_at[gen.id]
    # The plain loop on the same rows: a look every 3 s from the start.
    plain_polls, plain_lags = [], []
    for gen in gens:
        final = table.final_at[gen.id]
        looks = math.ceil((final - 1000.0) / NAIVE - 1e-9) + 1
        plain_polls.append(looks)
        plain_lags.append(1000.0 + (looks - 1) * NAIVE - final + rng.uniform(0, case.wait))
    return polls, lags, plain_polls, plain_lags


def main(seeds: int, only: str | None) -> None:
    print(f"sim_rows: the poll engine behind refreshed rows, {seeds} seeds, round trip {RTT} s")
    print(f"  {'case':<32} {'polls':>6} {'p50':>6} {'p95':>6}   plain: {'polls':>6} {'p95':>6}")
    for case in CASES:
        if only is not None and not case.name.startswith(only):
            continue
        polls: list[int] = []
        lags: list[float] = []
        plain_polls: list[int] = []
        plain_lags: list[float] = []
        for seed in range(seeds):
            a, b, c, d = simulate(case, seed)
            polls += a
            lags += b
            plain_polls += c
            plain_lags += d
        mean = sum(polls) / len(polls)
        plain_mean = sum(plain_polls) / len(plain_polls)
        p50, p95 = percentile(lags, 50), percentile(lags, 95)
        plain_p50, plain_p95 = percentile(plain_lags, 50), percentile(plain_lags, 95)
        print(
            f"  {case.name:<32} {mean:>6.2f} {p50:>5.2f}s {p95:>5.2f}s   "
            f"       {plain_mean:>6.2f} {plain_p95:>5.2f}s   "
            f"ratios: polls {mean / plain_mean:.2f}x, p95 {p95 / plain_p95:.2f}x,"
            f" p50 {p50 / plain_p50:.2f}x"
        )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--only", help="run the cases whose name starts with this")
    args = parser.parse_args(argv)
    main(args.seeds, args.only)


if __name__ == "__main__":
    cli()
