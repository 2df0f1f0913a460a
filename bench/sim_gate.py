"""The rate gate on a fake clock, against token-bucket servers at round trips of 3-300 ms.

The batch benchmark runs client and server on one machine, so round trips are
a few milliseconds. A far API answers in hundreds, and every request in flight
when a server's burst allowance runs out comes back a 429: that is where the
gate's behaviour changes most. This drives the real `RateGate` (no sockets,
1 ms ticks) with Sessions that always want to send, and a server of 100 req/s
whose bucket holds one second's worth, answering 429 with ``Retry-After: 1``
or without it; then 8 Sessions of one key (hearing each other's 429s, as
Sessions on one machine do, or not), and a server with room to spare that
answers a share of requests 429 anyway (stray 429s).

For each case it prints the 429 share (mean and worst over three seeds of
answer-time jitter) and the wall time over the ideal (all requests at
exactly the limit).
"""

from __future__ import annotations

import argparse
import heapq
import random
from typing import Any

import attrs

from deerluma._gate import RateGate
from deerluma._peers import MemoryPeers, PeerEvent, Sender
from deerluma._throttle import Throttle, ThrottleKind


@attrs.define
class _Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:  # never awaited: try_pass only
        self.now += seconds


@attrs.frozen
class Outcome:
    requests: int
    throttled: int
    wall: float
    ideal: float

    @property
    def share(self) -> float:
        return 100 * self.throttled / max(1, self.requests)


def simulate(
    *,
    sessions: int,
    rtt: float,
    retry_after: float | None,
    seed: int,
    total: int = 1650,
    rps: float = 100.0,
    burst: float = 1.0,
    concurrency: int = 64,
    stray: float = 0.0,
    share: bool = True,
) -> Outcome:
    """`sessions` Sessions share `total` successful requests; each always wants to send."""
    rng = random.Random(seed)
    clock = _Clock()
    board: list[PeerEvent] = []
    sending: dict[int, Sender] = {}
    gates = [
        RateGate(
            None,
            clock=clock,
            sleep=clock.sleep,
            peers=MemoryPeers(board, sending) if share else None,
        )
        for _ in range(sessions)
    ]
    quota = [total // sessions] * sessions
    idle = [concurrency] * sessions
    tokens, refilled = rps * burst, clock.now
    arriving: list[tuple[float, int, int, float]] = []  # at the server: when, order, who, sent
    answering: list[tuple[float, int, int, float, bool]] = []  # back at the Session
    order = requests = throttled = 0
    start = clock.now
    while any(quota) and clock.now - start < 300:
        while arriving and arriving[0][0] <= clock.now:  # the server judges in arrival order
            at, _, who, sent = heapq.heappop(arriving)
            tokens = min(rps * burst, tokens + (at - refilled) * rps)
            refilled = at
            ok = tokens >= 1
            tokens -= ok
            if ok and stray and rng.random() < stray:
                ok = False  # a 429 that is not about the rate (the token stays spent)
            throttled += not ok
            order += 1
            back = at + rtt * rng.uniform(0.3, 0.7)
            heapq.heappush(answering, (back, order, who, sent, ok))
        while answering and answering[0][0] <= clock.now:
            _, _, who, sent, ok = heapq.heappop(answering)
            idle[who] += 1
            if ok:
                quota[who] -= 1
                gates[who].answered(sent)
            else:
                gates[who].throttled(sent, Throttle(ThrottleKind.RATE, retry_after=retry_after))
        for who in rng.sample(range(sessions), sessions):
            while idle[who] and quota[who] > concurrency - idle[who]:
                sent = gates[who].try_pass()
                if sent is None:
                    break
                idle[who] -= 1
                requests += 1
                order += 1
                heapq.heappush(arriving, (sent + rtt * rng.uniform(0.3, 0.7), order, who, sent))
        clock.now += 0.001
    return Outcome(requests, throttled, clock.now - start, total / rps)


def _row(label: str, seeds: int, **options: Any) -> None:
    runs = [simulate(seed=seed, **options) for seed in range(1, seeds + 1)]
    shares = [r.share for r in runs]
    walls = [r.wall / r.ideal for r in runs]
    print(
        f"  {label:44}   {sum(shares) / len(shares):6.2f} % / {max(shares):5.2f} %"
        f"   {max(walls):17.2f}x"
    )


def main(seeds: int) -> None:
    print("sim_gate: the rate gate on a fake clock; server 100 req/s, a second's worth of burst")
    print(f"  {'case':44}   429s mean / worst   wall / ideal worst")
    for rtt in (0.003, 0.02, 0.07, 0.3):
        for retry_after in (1.0, None):
            for sessions in (1, 2):
                header = "Retry-After: 1" if retry_after else "no Retry-After"
                label = f"{rtt * 1000:3.0f} ms round trips, {header}, {sessions} Session(s)"
                _row(label, seeds, sessions=sessions, rtt=rtt, retry_after=retry_after)
    for share in (True, False):
        label = f"8 Sessions of one key{'' if share else ', not hearing each other'}"
        _row(label, seeds, sessions=8, rtt=0.003, retry_after=1.0, total=3000, share=share)
    print("  stray 429s (not about the rate) from a server of 1,000 req/s:")
    for stray, retry_after in ((0.02, 1.0), (0.05, None)):
        header = "Retry-After: 1" if retry_after else "no Retry-After"
        label = f"{stray:.0%} stray, {header}"
        _row(
            label,
            seeds,
            sessions=1,
            rtt=0.003,
            retry_after=retry_after,
            rps=1000.0,
            total=10_000,
            stray=stray,
        )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    main(parser.parse_args(argv).seeds)


if __name__ == "__main__":
    cli()
