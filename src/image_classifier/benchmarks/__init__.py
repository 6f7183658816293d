"""Benchmarks that measure side by side, in one run, on one machine."""
