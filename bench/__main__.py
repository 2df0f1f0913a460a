"""`python -m bench`: every benchmark, one after the other."""

from . import (
    bench_batch,
    bench_callbacks,
    bench_gateway,
    bench_rows,
    bench_run,
    bench_sync,
    bench_wait,
    sim_gate,
    sim_rows,
)

bench_wait.cli([])
bench_rows.cli([])
sim_rows.cli([])
bench_batch.cli([])
bench_gateway.cli([])
sim_gate.cli([])
bench_sync.cli([])
bench_callbacks.cli([])
bench_run.cli([])
