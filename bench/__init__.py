"""Benchmarks: each prints deerluma's numbers beside a baseline measured in the same run."""
