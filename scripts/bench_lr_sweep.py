"""The LR sweep's cost on the 10M-parameter benchmark transformer, as a ratio to the optimizer steps it runs.

Runs ``nandoctor``'s sweep exactly as ``lr-sweep`` does (the starting grid, the grid growing at an
edge, two rungs of successive halving, held-out scoring, snapshot restores, one sync a step) and
times a plain hand-written training step on the same model and batches. Prints the rates judged,
the optimizer steps the sweep ran, and

    ratio = sweep wall time / (optimizer steps run x median plain step time)

(everything beyond the plain steps: held-out scoring, restores, reading batches).

    python scripts/bench_lr_sweep.py [--steps N] [--threads 2] [--batch 16] [--length 128] [--cuda 1 [--read-every K]]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from types import SimpleNamespace

import torch
from bench_trace import Transformer, loss_fn
from torch.nn import functional as F

from nandoctor.runner import open_context
from nandoctor.settings import Settings
from nandoctor.spec import validate
from nandoctor.sweep.grid import recommend, run_sweep, sweep_rates
from nandoctor.sweep.plan import plan_sweep


def build(batch: int, length: int, count: int = 48):
    """Token sequences whose class shows in which tokens they hold: a third of each sequence's tokens
    come from its class's band of 400 ids, the rest from all 4000. Learnable by a mean-pooled model
    and on held-out sequences, so the sweep has a best rate."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(count):
        labels = torch.randint(0, 10, (batch,), generator=g)
        tokens = torch.randint(0, 4000, (batch, length), generator=g)
        banded = labels[:, None] * 400 + torch.randint(0, 400, (batch, length), generator=g)
        tokens = torch.where(torch.rand(batch, length, generator=g) < 1 / 3, banded, tokens)
        data.append((tokens, labels))
    return {"model": Transformer(), "data": data, "loss": loss_fn, "lr": 1e-3}


def plain_step_time(setup, batches, repeats: int = 5) -> float:
    """Median time of zero_grad + forward + backward + AdamW step, hand-written."""
    optimizer = torch.optim.AdamW(setup.model.parameters(), lr=1e-5)
    times = []
    sync = torch.cuda.synchronize if next(setup.model.parameters()).is_cuda else (lambda: None)
    for i in range(repeats + 1):
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(setup.model(batches[i % len(batches)][0]), batches[i % len(batches)][1]).backward()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first step allocates the optimizer state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="steps of the rates that reach the end (default: planned as diagnose plans them)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--cuda", type=int, default=0, help="1: run on the GPU")
    parser.add_argument(
        "--read-every", type=int, default=0, help="the sweep_read_every setting (GPU; default: its default)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.cuda else "cpu")
    setup = validate(dict(build(args.batch, args.length), device=str(device)), "bench")
    settings = Settings(sweep_read_every=args.read_every) if args.read_every else Settings()
    params = sum(p.numel() for p in setup.model.parameters())
    with open_context(setup, settings) as ctx:
        start = time.perf_counter()
        rates = sweep_rates(setup, settings)
        plan = plan_sweep(ctx, len(rates), args.steps or None)
        sweep = run_sweep(
            ctx,
            rates,
            plan,
            None,
            center=setup.lr,
            progress=lambda m: print(f"{time.perf_counter() - start:6.1f}s {m}", file=sys.stderr, flush=True),
        )
        sweep_s = time.perf_counter() - start
        best, why = recommend(sweep, settings)
    snapshot = {k: v.clone() for k, v in setup.model.state_dict().items()}
    model = setup.model.to(device)
    step_s = plain_step_time(SimpleNamespace(model=model), [(x.to(device), y.to(device)) for x, y in setup.data[:6]])
    setup.model.load_state_dict(snapshot)
    full = [r.lr for r in sweep.runs if r.reached >= sweep.checkpoints[-1]]
    where = torch.cuda.get_device_name() if args.cuda else f"{torch.get_num_threads()} threads"
    print(
        f"model: {params / 1e6:.1f}M parameters, batch {args.batch}x{args.length}, {where}, "
        f"read-back every {settings.sweep_read_every if args.cuda else 1} step(s)"
    )
    print(
        f"rates judged: {len(sweep.runs)} ({', '.join(f'{r.lr:.3g}' for r in sweep.runs)}); "
        f"{len(full)} to {sweep.checkpoints[-1]} steps, the rest to {sweep.checkpoints[0]} or until they diverged"
    )
    print(f"recommended: {best.lr if best else None} ({why})")
    print(
        f"optimizer steps run: {sweep.steps_run} (every rate to the end would be "
        f"{len(sweep.runs) * sweep.checkpoints[-1]})"
    )
    print(f"plain step (median)       : {step_s:7.3f} s")
    print(f"plain steps, same count   : {step_s * sweep.steps_run:7.1f} s   1.00x")
    print(f"nandoctor sweep           : {sweep_s:7.1f} s   {sweep_s / (step_s * sweep.steps_run):.2f}x")


if __name__ == "__main__":
    main()
