"""The LR sweep's cost on the 10M-parameter benchmark transformer, as a ratio to the optimizer steps it runs.

Runs ``nandoctor``'s sweep exactly as ``lr-sweep`` does (the starting grid, the grid growing at an
edge, two rungs of successive halving, held-out scoring, snapshot restores, one sync a step) and
times a plain hand-written training step on the same model and batches. Prints the rates judged,
the optimizer steps the sweep ran, and

    ratio = sweep wall time / (optimizer steps run x median plain step time)

(everything beyond the plain steps: held-out scoring, restores, reading batches). The sweep runs twice in
the same process, rates one at a time (``sweep_stacked=off``) and several rates a pass
(``sweep_stacked=on``, stacked copies under vmap), and prints both against the plain steps and
against each other, with whether their verdicts agree. ``--small 1`` shrinks the transformer
(width 64, depth 2, batch 16x32): where per-op overhead, not arithmetic, is what a step costs.

    python scripts/bench_lr_sweep.py [--steps N] [--threads 2] [--batch 16] [--length 128] [--small 1]
                                     [--cuda 1 [--read-every K]]
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


def build(batch: int, length: int, count: int = 48, small: bool = False):
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
    model = Transformer(width=64, heads=4, depth=2) if small else Transformer()
    return {"model": model, "data": data, "loss": loss_fn, "lr": 1e-3}


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
    parser.add_argument("--order", default="on,off", help="which sweep runs first (the first pays the warm-up)")
    parser.add_argument("--small", type=int, default=0, help="1: the small transformer (overhead-bound)")
    parser.add_argument(
        "--read-every", type=int, default=0, help="the sweep_read_every setting (GPU; default: its default)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.cuda else "cpu")
    if args.small:
        args.batch, args.length = min(args.batch, 16), min(args.length, 32)
    results = {mode: timed_sweep(args, device, mode) for mode in args.order.split(",")}
    setup, settings = results["off"]["setup"], results["off"]["settings"]
    params = sum(p.numel() for p in setup.model.parameters())
    snapshot = {k: v.clone() for k, v in setup.model.state_dict().items()}
    model = setup.model.to(device)
    step_s = plain_step_time(SimpleNamespace(model=model), [(x.to(device), y.to(device)) for x, y in setup.data[:6]])
    setup.model.load_state_dict(snapshot)
    where = torch.cuda.get_device_name() if args.cuda else f"{torch.get_num_threads()} threads"
    print(
        f"model: {params / 1e6:.1f}M parameters, batch {args.batch}x{args.length}, {where}, "
        f"read-back every {settings.sweep_read_every if args.cuda else 1} step(s)"
    )
    for mode, label in (("off", "rates one at a time"), ("on", "several rates a pass")):
        sweep, best, why, sweep_s = (results[mode][k] for k in ("sweep", "best", "why", "seconds"))
        full = [r.lr for r in sweep.runs if r.reached >= sweep.checkpoints[-1]]
        print(f"--- sweep_stacked={mode} ({label}): {sweep.plan.get('stacked')}")
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
    one, many = results["off"], results["on"]
    same = [(a.lr, a.verdict) for a in one["sweep"].runs] == [(b.lr, b.verdict) for b in many["sweep"].runs]
    print(
        f"stacked / sequential wall time: {many['seconds'] / one['seconds']:.2f}x; verdicts "
        f"{'identical' if same else 'DIFFER'}; recommended {one['best'] and one['best'].lr} vs "
        f"{many['best'] and many['best'].lr}"
    )


def timed_sweep(args: argparse.Namespace, device: torch.device, mode: str) -> dict:
    """One whole sweep as lr-sweep runs it, with sweep_stacked=``mode``; its wall time."""
    setup = validate(dict(build(args.batch, args.length, small=bool(args.small)), device=str(device)), "bench")
    extra = {"sweep_read_every": args.read_every} if args.read_every else {}
    settings = Settings(sweep_stacked=mode, **extra)
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
            progress=lambda m: print(f"{mode} {time.perf_counter() - start:6.1f}s {m}", file=sys.stderr, flush=True),
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        best, why = recommend(sweep, settings)
    return {"setup": setup, "settings": settings, "sweep": sweep, "best": best, "why": why, "seconds": seconds}


if __name__ == "__main__":
    main()
