"""Step overhead of ``nandoctor.Guard`` against the same training loop without it, measured in one run.

The 10M-parameter benchmark transformer (scripts/bench_trace.py), AdamW, forward + backward +
step. Rounds alternate (plain, guarded, plain, guarded, ...) on the same model, optimizer and
batches so machine noise hits both alike; each round runs ``--steps`` steps, a whole sampling
period of the guard by default (its per-step checks, a window snapshot every ``check_every``
steps, and the sampled activation/update records). Prints the median time per step of each
and the overhead (target: under 3%).

    python scripts/bench_guard.py [--steps 32] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_trace import Transformer, loss_fn
from nandoctor.guard import Guard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [(torch.randint(0, 4000, (args.batch, args.length)), torch.randint(0, 10, (args.batch,)))
               for _ in range(4)]
    folder = tempfile.mkdtemp()

    def plain() -> float:
        start = time.perf_counter()
        for step in range(args.steps):
            batch = batches[step % len(batches)]
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / args.steps

    def guarded() -> float:
        start = time.perf_counter()
        with Guard(model, optimizer, path=str(Path(folder) / "capture.pt")) as guard:
            for step in range(args.steps):
                batch = batches[step % len(batches)]
                loss = loss_fn(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                guard.step(loss, batch)
                optimizer.step()
        assert guard.tripped is None
        return (time.perf_counter() - start) / args.steps

    plain()  # warm-up: the optimizer's state is created here
    times: dict[str, list[float]] = {"plain": [], "guard": []}
    for _ in range(args.rounds):
        times["plain"].append(plain())
        times["guard"].append(guarded())
    plain_s, guard_s = statistics.median(times["plain"]), statistics.median(times["guard"])
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, batch {args.batch}x{args.length}, "
          f"AdamW, {args.steps} steps x {args.rounds} rounds, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"plain training step   : {plain_s * 1e3:8.1f} ms")
    print(f"with nandoctor.Guard  : {guard_s * 1e3:8.1f} ms   overhead {guard_s / plain_s - 1:+.1%}  (target < 3%)")


if __name__ == "__main__":
    main()
