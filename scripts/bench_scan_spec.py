"""The build spec ``bench_scan.py --nproc`` scans under torchrun: the benchmark transformer over token batches.

``NANDOCTOR_BENCH_BATCHES``, ``_BATCH`` and ``_LENGTH`` size the data (the same on every rank: each rank
scans every world-size-th batch of it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_trace import Transformer, loss_fn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402


def build():
    batches = int(os.environ.get("NANDOCTOR_BENCH_BATCHES", "24"))
    batch = int(os.environ.get("NANDOCTOR_BENCH_BATCH", "16"))
    length = int(os.environ.get("NANDOCTOR_BENCH_LENGTH", "128"))
    torch.manual_seed(0)
    n = batches * batch
    g = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randint(0, 4000, (n, length), generator=g), torch.randint(0, 10, (n,), generator=g))
    return {"model": Transformer(), "data": DataLoader(dataset, batch_size=batch), "loss": loss_fn}
