"""`python -m bench`: every benchmark, one after the other."""

from . import (
    bench_batch,
    bench_callbacks,
    bench_gateway,
    bench_run,
    bench_sync,
    bench_wait,
    sim_gate,
)

bench_wait.cli([])
bench_batch.cli([])
bench_gateway.cli([])
sim_gate.cli([])
bench_sync.cli([])
bench_callbacks.cli([])
bench_run.cli([])
