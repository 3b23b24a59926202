"""Timing helpers shared by the benchmark scripts (run them as ``python scripts/bench_*.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(step: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of ``step`` after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
