"""Step overhead of ``nandoctor.Guard`` against the same training loop without it, measured in one run.

The 10M-parameter benchmark transformer (scripts/bench_trace.py), AdamW, forward + backward +
step. Plain and guarded steps alternate one by one (plain-guarded, guarded-plain, ...) on the
same model, optimizer and batches, so machine noise hits both alike; one guard lives through
the whole run, so its periodic work (a window snapshot every ``check_every`` steps, the sampled
activation and update records every ``sample_every``) is paid in proportion. Prints the total
time of each kind of step, wall clock and process CPU time (CPU time is what to read on a busy
shared machine), and the overhead (target: under 3%).

    python scripts/bench_guard.py [--pairs 64] [--threads 1]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from bench_trace import loss_fn
from benchtools import model_benchmark

from nandoctor.guard import Guard


def main() -> None:
    args, model = model_benchmark(__doc__, threads=1, pairs=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [
        (torch.randint(0, 4000, (args.batch, args.length)), torch.randint(0, 10, (args.batch,))) for _ in range(4)
    ]
    guard = Guard(model, optimizer, path=str(Path(tempfile.mkdtemp()) / "capture.pt"))

    def step(index: int, guarded: bool) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        batch = batches[index % len(batches)]
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if guarded:
            guard.step(loss, batch)
        optimizer.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    step(0, False)  # warm-up: the optimizer's state is created here
    totals = {"plain": [0.0, 0.0], "guard": [0.0, 0.0]}
    for index in range(args.pairs):
        for guarded in (False, True) if index % 2 == 0 else (True, False):
            wall, cpu = step(index, guarded)
            kind = totals["guard" if guarded else "plain"]
            kind[0] += wall
            kind[1] += cpu
    guard.close()
    assert guard.tripped is None and guard.steps_seen == args.pairs
    (plain_wall, plain_cpu), (guard_wall, guard_cpu) = totals["plain"], totals["guard"]
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, batch {args.batch}x{args.length}, "
        f"AdamW, {args.pairs} plain and {args.pairs} guarded steps alternating, {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}"
    )
    print(
        f"plain training step  : {plain_wall / args.pairs * 1e3:8.1f} ms wall   {plain_cpu / args.pairs * 1e3:8.1f} ms CPU"
    )
    print(
        f"with nandoctor.Guard : {guard_wall / args.pairs * 1e3:8.1f} ms wall   {guard_cpu / args.pairs * 1e3:8.1f} ms CPU"
    )
    print(
        f"overhead             : {guard_wall / plain_wall - 1:+8.1%} wall     {guard_cpu / plain_cpu - 1:+8.1%} CPU   (target < 3%)"
    )


if __name__ == "__main__":
    main()
