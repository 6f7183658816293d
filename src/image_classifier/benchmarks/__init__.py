"""Benchmarks that measure side by side, in one run, on one machine."""

from __future__ import annotations

import time
from collections.abc import Callable


def timings(action: Callable[[], object], seconds: float, at_least: int = 5) -> list[float]:
    """Seconds of each call of `action`, called again and again for `seconds` (and `at_least` times)."""
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < at_least or time.perf_counter() < deadline:
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times
