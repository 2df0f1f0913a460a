"""`python -m bench`: every benchmark, one after the other."""

from . import bench_batch, bench_wait

bench_wait.cli([])
bench_batch.cli([])
