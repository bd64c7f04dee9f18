"""Benchmarks: `make bench` (full) and `make bench-quick`. Measurements, not tests."""
