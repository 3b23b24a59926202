"""The LR sweep's wall time over the time of the training steps it runs, measured in one run.

Runs ``nandoctor``'s sweep (snapshot, per-rate restore, loss evaluations, one sync a step) and
a plain hand-written loop that takes exactly the same optimizer steps on the same batches, then
prints both and their ratio (target <= 1.15x).

    python scripts/bench_lr_sweep.py [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from nandoctor.runner import open_context
from nandoctor.settings import Settings
from nandoctor.spec import validate
from nandoctor.sweep.grid import run_sweep


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.LayerNorm(1024), nn.Linear(1024, 1024), nn.GELU(),
                          nn.Linear(1024, 10))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(256, 256, generator=g), torch.randint(0, 10, (256,), generator=g)) for _ in range(4)]
    return {"model": model, "data": data, "loss": lambda m, b: F.cross_entropy(m(b[0]), b[1]), "lr": 1e-3}


def plain_steps(setup, batches, rates_and_steps):
    """The same optimizer steps, hand-written: no snapshot, no evaluation, no statistics."""
    start = time.perf_counter()
    for rate, steps in rates_and_steps:
        optimizer = torch.optim.AdamW(setup.model.parameters(), lr=rate)
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = setup.loss(setup.model, batches[step % len(batches)])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(setup.model.parameters(), math.inf)
            optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    setup = validate(build(), "bench")
    params = sum(p.numel() for p in setup.model.parameters())
    sweep_times, plain_times = [], []
    for _ in range(2):  # interleaved, best of two
        with open_context(setup, Settings()) as ctx:
            start = time.perf_counter()
            runs = run_sweep(ctx, rates, args.steps, None)
            sweep_times.append(time.perf_counter() - start)
            train_batches = ctx.batches[:-1]
        plain_times.append(plain_steps(setup, train_batches, [(r.lr, len(r.losses)) for r in runs]))
    steps_run = sum(len(r.losses) for r in runs)
    sweep_s, plain_s = min(sweep_times), min(plain_times)
    print(f"model: {params / 1e6:.1f}M parameters, {len(rates)} rates, {steps_run} optimizer steps, "
          f"{torch.get_num_threads()} threads")
    print(f"plain training loop, same steps : {plain_s:7.2f} s   1.00x")
    print(f"nandoctor sweep                 : {sweep_s:7.2f} s   {sweep_s / plain_s:.2f}x  (target <= 1.15x)")


if __name__ == "__main__":
    main()
