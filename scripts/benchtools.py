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


def model_benchmark(doc: str, threads: int, **options: int):
    """Parse ``--threads --batch --length`` plus ``options`` (name=default), set the threads and
    the seed, and build the 10.4M-parameter benchmark transformer: ``(args, model)``."""
    import argparse

    import torch
    from bench_trace import Transformer

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in options.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return args, Transformer()
